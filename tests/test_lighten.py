"""Tests of the lightweight-student builder (edgeslim.transforms.lighten)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.modelinfo import info
from edgeslim.distill import FeatureTaps
from edgeslim.errors import ConfigError
from edgeslim.models import create_model
from edgeslim.profile import count_flops, count_params
from edgeslim.transforms.lighten import DepthwiseSeparableConv2d, lighten


# Small widths / inputs keep the suite fast; the architectures are the zoo's.
ZOO = {
    "lenet5": ({}, (1, 28, 28)),
    "vgg11_mlp": ({"name": "vgg11", "width_mult": 0.125, "classifier": "mlp"}, (3, 32, 32)),
    "vgg16": ({"width_mult": 0.125}, (3, 32, 32)),
    "resnet20": ({"width_mult": 0.25}, (3, 16, 16)),
    "mobilenetv2": ({"width_mult": 0.25}, (3, 16, 16)),
    "densenet_cifar": ({"growth_rate": 4, "block_config": [2, 2, 2]}, (3, 16, 16)),
}


def _zoo(key: str) -> tuple[nn.Module, torch.Tensor]:
    kwargs, size = ZOO[key]
    kwargs = dict(kwargs)
    name = kwargs.pop("name", key)
    torch.manual_seed(0)
    return create_model(name, **kwargs).eval(), torch.randn(2, *size)


def _separable_params(k: int, cin: int, cout: int, pw_bn: bool) -> int:
    """dw KxK (no bias) + BN(cin) + pw 1x1 (no bias) [+ BN(cout)]."""
    return k * k * cin + 2 * cin + cin * cout + (2 * cout if pw_bn else 0)


@pytest.mark.parametrize("key", sorted(ZOO))
def test_lighten_zoo_invariants(key: str) -> None:
    teacher, x = _zoo(key)
    before = copy.deepcopy(teacher.state_dict())
    # MobileNetV2's only standard conv is the stem, so convert it there too.
    student = lighten(teacher, x, keep_first_conv=key != "mobilenetv2")
    report = info(student).lighten

    # the teacher is untouched, the student is a new object with the same output shape
    assert student is not teacher
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(isinstance(m, DepthwiseSeparableConv2d) for m in teacher.modules())
    with torch.no_grad():
        assert student.eval()(x).shape == teacher(x).shape

    converted = report.converted
    assert converted, f"{key}: nothing converted"
    paths = [c["path"] for c in converted]
    with torch.no_grad(), FeatureTaps(teacher, paths) as t_taps, FeatureTaps(student, paths) as s_taps:
        teacher(x)
        student(x)
    for entry in converted:
        old = teacher.get_submodule(entry["path"])
        new = student.get_submodule(entry["path"])
        assert isinstance(old, nn.Conv2d) and isinstance(new, DepthwiseSeparableConv2d)
        k, cin, cout = old.kernel_size[0], old.in_channels, old.out_channels
        assert new.dw.weight.shape == (cin, 1, k, k) and new.dw.groups == cin
        assert (new.dw.stride, new.dw.padding, new.dw.dilation) == (old.stride, old.padding, old.dilation)
        assert new.pw.weight.shape == (cout, cin, 1, 1)
        old_params = k * k * cin * cout + (cout if old.bias is not None else 0)
        new_params = _separable_params(k, cin, cout, entry["pointwise_bn"])
        assert count_params(old) == old_params and count_params(new) == new_params
        assert new_params < old_params
        assert k * k * cin + cin * cout < k * k * cin * cout  # MACs per output pixel
        assert entry["macs_after"] < entry["macs_before"]
        assert s_taps[entry["path"]].shape == t_taps[entry["path"]].shape

    assert report.params_after == count_params(student) < count_params(teacher) == report.params_before
    assert report.flops_after == count_flops(student, x)[0] < count_flops(teacher, x)[0]
    # no Linear stack left: at most one Linear, reading pooled channel features
    linears = [m for m in student.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1


def test_lighten_replaces_linear_stack_by_gap_linear() -> None:
    teacher, x = _zoo("lenet5")
    student = lighten(teacher, x)
    head = info(student).lighten.head
    assert head["converted"] and head["replaced"] == ["classifier.0", "classifier.2", "classifier.4"]
    linears = [m for m in student.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 16 and linears[0].out_features == 10
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in student.modules())
    assert student(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_lighten_conv_head_has_no_linear() -> None:
    teacher, x = _zoo("vgg11_mlp")
    student = lighten(teacher, x, head="conv")
    assert not any(isinstance(m, nn.Linear) for m in student.modules())
    head = student.get_submodule("head")
    assert isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.out_channels == 10
    assert student(x).shape == (2, 10)


def test_lighten_keep_head_and_exclude() -> None:
    teacher, x = _zoo("lenet5")
    student = lighten(teacher, x, head="keep", keep_first_conv=False, exclude=["features.3"])
    assert type(student) is type(teacher)
    assert isinstance(student.features[3], nn.Conv2d)
    assert isinstance(student.features[0], DepthwiseSeparableConv2d)
    assert [m.out_features for m in student.classifier if isinstance(m, nn.Linear)] == [120, 84, 10]
    reasons = {s["path"]: s["reason"] for s in info(student).lighten.skipped}
    assert "excluded" in reasons["features.3"]
    with pytest.raises(ConfigError, match="features"):
        lighten(teacher, x, exclude=["feature"])


def test_lighten_keeps_existing_bn_and_matches_activation() -> None:
    teacher, x = _zoo("resnet20")
    student = lighten(teacher, x, activation="match")
    block = student.get_submodule("layer1.0.conv1")
    # the teacher's own BN follows, so no extra pointwise BN; ReLU copied from the teacher
    assert "pw_bn" not in block._modules and isinstance(block.act, nn.ReLU)
    m_teacher, m_x = _zoo("mobilenetv2")
    m_student = lighten(m_teacher, m_x, activation="match", keep_first_conv=False)
    assert isinstance(m_student.get_submodule("features.0.0").act, nn.ReLU6)
    with pytest.raises(ConfigError, match="activation"):
        lighten(teacher, x, activation="swishy")
    with pytest.raises(ConfigError, match="head"):
        lighten(teacher, x, head="mlp")  # type: ignore[arg-type]


def test_lighten_width_mult_rebuilds_zoo_model() -> None:
    teacher, x = _zoo("resnet20")  # widths 4/8/16
    student = lighten(teacher, x, width_mult=0.5)
    assert info(student).arch.kwargs["width_mult"] == pytest.approx(0.125)
    assert student.get_submodule("conv1").in_channels == 3
    assert student.get_submodule("layer3.2.conv2").pw.out_channels == 8
    assert student(x).shape == (2, 10)  # residual sums still consistent
    assert info(student).lighten.options["width_mult"] == 1.0
    wide = lighten(create_model("lenet5").eval(), torch.randn(2, 1, 28, 28), width_mult=4 / 3)
    assert info(wide).arch.kwargs["width_mult"] == pytest.approx(4 / 3)
    assert wide.get_submodule("features.0").out_channels == 8
    assert wide.get_submodule("features.3").pw.out_channels == 21
    assert wide.head.in_features == 21 and wide(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    dense = create_model("densenet_cifar", block_config=(1, 1, 1)).eval()
    with pytest.raises(ConfigError, match="width_mult"):
        lighten(dense, torch.randn(1, 3, 16, 16), width_mult=0.5)


def test_lighten_skips_conv_that_would_not_shrink() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 1, 3), nn.Conv2d(1, 4, 1))
    student = lighten(model, torch.randn(1, 3, 8, 8), head="keep")
    reasons = {s["path"]: s["reason"] for s in info(student).lighten.skipped}
    assert "would not be smaller" in reasons["2"] and "1x1" in reasons["3"]
    assert isinstance(student[2], nn.Conv2d)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x))
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = x * 2
        return self.fc(x.mean((2, 3)))


def test_lighten_untraceable_model_converts_convs_and_reports_head() -> None:
    model = _Untraceable()
    student = lighten(model, torch.randn(2, 3, 8, 8))
    report = info(student).lighten
    assert [c["path"] for c in report.converted] == ["body"]
    assert not report.head["converted"] and "torch.fx" in report.head["reason"]
    assert report.trace_error
    assert student(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_lightened_student_rebuilds_from_arch_and_options() -> None:
    teacher, x = _zoo("lenet5")
    student = lighten(teacher, x, head="conv").eval()
    arch = info(student).arch.to_dict()
    again = lighten(create_model(arch["name"], **arch["kwargs"]), x, **info(student).lighten.options)
    again.load_state_dict(student.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(x), student(x))


class _ViewHead(nn.Module):
    """``x.view(x.size(0), -1)`` into Linear-ReLU-Dropout-Linear (a classic FC head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 7)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = x.view(x.size(0), -1)
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class _MeanHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.conv1(x)).mean((2, 3)))


def test_lighten_custom_heads() -> None:
    x = torch.randn(2, 3, 8, 8)
    student = lighten(_ViewHead(), x, activation="match")
    head = info(student).lighten.head
    assert head["converted"] and head["replaced"] == ["fc1", "fc2"] and head["in_channels"] == 16
    assert [m.in_features for m in student.modules() if isinstance(m, nn.Linear)] == [16]
    assert student(torch.randn(3, 3, 16, 16)).shape == (3, 7)  # GAP: any input size now works
    assert [c["path"] for c in info(student).lighten.converted] == ["conv2"]
    assert isinstance(student.get_submodule("conv2").act, nn.ReLU)

    mean_student = lighten(_MeanHead(), x)
    assert info(mean_student).lighten.head["reason"].startswith("already")
    assert isinstance(mean_student.fc, nn.Linear)


def test_lighten_student_builds_the_zoo_model_for_the_teachers_data() -> None:
    """student=: a designed zoo student with the teacher's input channels, classes and input size."""
    torch.manual_seed(0)
    teacher = create_model("lenet5", num_classes=7, in_channels=3, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    student = lighten(teacher, x, student="dsnet", width_mult=0.5)
    arch = info(student).arch
    assert arch.name == "dsnet"
    assert (arch.kwargs["in_channels"], arch.kwargs["num_classes"], arch.kwargs["input_size"]) == (3, 7, 32)
    assert arch.kwargs["width_mult"] == 0.5
    assert student(x).shape == (2, 7)
    rep = info(student).lighten
    assert rep.head["student"] == "dsnet" and rep.converted == []
    assert (rep.params_before, rep.params_after) == (count_params(teacher), count_params(student))
    assert rep.params_after < rep.params_before
    assert student.training == teacher.training and not any(p is q for p in student.parameters()
                                                            for q in teacher.parameters())
    # the recorded architecture rebuilds the same network
    rebuilt = create_model(arch.name, **arch.kwargs)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in student.parameters()]


def test_lighten_student_errors_name_the_problem() -> None:
    teacher, x = _zoo("lenet5")
    with pytest.raises(Exception, match="lenet_5|valid|dsnet"):
        lighten(teacher, x, student="lenet_5")
    with pytest.raises(ConfigError, match="takes no width_mult"):
        lighten(teacher, x, student="densenet_cifar", width_mult=0.5)
    for option in ({"head": "keep"}, {"exclude": ["features"]}, {"keep_first_conv": False},
                   {"activation": "relu6"}):
        with pytest.raises(ConfigError, match=f"{next(iter(option))}.*do not apply"):
            lighten(teacher, x, student="dsnet", **option)

    class Features(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t  # 4-d feature map, not logits

    with pytest.raises(ConfigError, match="logits"):
        lighten(Features(), x, student="dsnet")
