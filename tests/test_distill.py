"""Tests of knowledge distillation: taps, losses, layer pairing, Distiller, distill, kd_finetune."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.modelinfo import info
from edgeslim.distill import (
    LOSSES,
    AttentionTransferLoss,
    Distiller,
    FeatureTaps,
    HintLoss,
    KDLoss,
    LayerPair,
    LossContext,
    NoisyKDLoss,
    UnknownLossError,
    distill,
    find_stage_ends,
    kd_finetune,
    pair_layers,
    parse_loss_spec,
)
from edgeslim.errors import ConfigError
from edgeslim.models import create_model
from edgeslim.transforms.lighten import lighten


class TinyNet(nn.Module):
    """conv(16x16) -> strided conv (8x8) -> conv -> GAP -> linear; two stage ends."""

    def __init__(self, width: int = 8, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.body(self.down(self.stem(x)))), 1))


def _batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)


# --------------------------------------------------------------------- specs
def test_parse_loss_spec_forms() -> None:
    assert parse_loss_spec("kd:0.9,hint:1.0") == {"kd": 0.9, "hint": 1.0}
    assert parse_loss_spec(" KD : 0.5 , ce ") == {"kd": 0.5, "ce": 1.0}
    assert parse_loss_spec({"noisy_kd": 0.7, "attention": 2}) == {"noisy_kd": 0.7, "attention": 2.0}
    assert set(LOSSES.names()) >= {"ce", "kd", "noisy_kd", "hint", "attention"}


def test_parse_loss_spec_errors() -> None:
    with pytest.raises(UnknownLossError, match="Did you mean 'hint'") as raised:
        parse_loss_spec("kd:0.9,hnt:1.0")
    assert isinstance(raised.value, ConfigError) and isinstance(raised.value, KeyError)
    for bad, match in [("kd:x", "number"), ("kd:-1", ">= 0"), ("kd,kd", "twice"), ("", "empty")]:
        with pytest.raises(ConfigError, match=match):
            parse_loss_spec(bad)


# -------------------------------------------------------------------- losses
def test_kd_is_zero_for_equal_logits_and_matches_formula() -> None:
    logits = torch.randn(6, 10) * 5
    ctx = LossContext(student_logits=logits, teacher_logits=logits.clone())
    assert KDLoss(T=4.0)(ctx).item() == 0.0
    noisy = NoisyKDLoss(T=4.0, noise_std=0.0, noise_prob=1.0)
    assert noisy(LossContext(logits, teacher_logits=logits.clone(), training=True)).item() == 0.0

    s, t, T = torch.randn(4, 7), torch.randn(4, 7), 3.0
    p_t, p_s = F.softmax(t / T, 1), F.softmax(s / T, 1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * T * T
    got = KDLoss(T)(LossContext(s, teacher_logits=t))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_noisy_kd_noise_only_in_training() -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 10) * 3
    loss = NoisyKDLoss(T=2.0, noise_std=0.5, noise_prob=1.0)
    assert loss(LossContext(logits, teacher_logits=logits.clone(), training=True)).item() > 0
    assert loss(LossContext(logits, teacher_logits=logits.clone(), training=False)).item() == 0.0
    never = NoisyKDLoss(T=2.0, noise_std=0.5, noise_prob=0.0)
    assert never(LossContext(logits, teacher_logits=logits.clone(), training=True)).item() == 0.0
    # multiplicative noise: a zero logit stays zero, so the noise scales with the logits
    assert torch.equal(loss.perturb(torch.zeros(3, 4)), torch.zeros(3, 4))


def test_attention_loss_matches_hand_computation() -> None:
    # sample 0: student one channel [1, 1] -> Q=[1, 1]; teacher [3, 4] -> Q=[9, 16]
    # sample 1: student channels [1, 0], [1, 0] -> Q=[2, 0]; teacher [0, 3], [0, 4] -> Q=[0, 25]
    s = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]], [[[1.0, 0.0]], [[1.0, 0.0]]]])
    t = torch.tensor([[[[3.0, 4.0]], [[0.0, 0.0]]], [[[0.0, 3.0]], [[0.0, 4.0]]]])
    r2, r337 = math.sqrt(2), math.sqrt(337)
    d0 = math.sqrt((1 / r2 - 9 / r337) ** 2 + (1 / r2 - 16 / r337) ** 2)
    d1 = math.sqrt(1 + 1)  # [1, 0] vs [0, 1]
    pair = LayerPair("a", "b", tuple(s.shape), tuple(t.shape))
    loss = AttentionTransferLoss([pair])
    ctx = LossContext(torch.zeros(2, 3), student_features={"a": s}, teacher_features={"b": t})
    assert loss(ctx).item() == pytest.approx((d0 + d1) / 2, rel=1e-6)
    # identical maps -> 0; maps of different sizes are pooled to the smaller one
    assert loss.pair_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)
    big = torch.randn(2, 4, 8, 8)
    assert loss.pair_loss(big, torch.randn(2, 6, 4, 4)).shape == ()


def test_hint_loss_adapter_and_resizing() -> None:
    pair = LayerPair("s", "t", (2, 4, 8, 8), (2, 6, 4, 4))
    for resize in ("pool", "interpolate"):
        loss = HintLoss([pair], bn=True, resize=resize)
        assert isinstance(loss.adapters[0][0], nn.Conv2d) and loss.adapters[0][0].out_channels == 6
        ctx = LossContext(torch.zeros(2, 3), student_features={"s": torch.randn(2, 4, 8, 8)},
                          teacher_features={"t": torch.randn(2, 6, 4, 4)})
        value = loss(ctx)
        value.backward()
        assert value.item() > 0 and loss.adapters[0][0].weight.grad is not None
    same = HintLoss([LayerPair("s", "t", (1, 4, 4, 4), (1, 4, 4, 4))])
    assert isinstance(same.adapters[0], nn.Identity)
    with pytest.raises(ConfigError, match="resize"):
        HintLoss([pair], resize="nearest")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- taps
def test_feature_taps_record_and_remove() -> None:
    model = TinyNet()
    x, _ = _batch(2)
    with FeatureTaps(model, ["stem", "down.0"]) as taps:
        model(x)
        assert taps["stem"].shape == (2, 8, 16, 16) and taps["down.0"].shape == (2, 16, 8, 8)
        assert taps.calls == {"stem": 1, "down.0": 1}
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ConfigError, match="Did you mean 'stem'"):
        FeatureTaps(model, ["stm"])


# ------------------------------------------------------------------- pairing
def test_pair_layers_auto_manual_and_alignment() -> None:
    teacher, student = TinyNet(8), TinyNet(4)
    x, _ = _batch(2)
    assert [p for p, _ in find_stage_ends(teacher, x)] == ["stem", "body"]
    pairs = pair_layers(student, teacher, x)
    assert [(p.student, p.teacher) for p in pairs] == [("stem", "stem"), ("body", "body")]
    assert pairs[0].student_shape == (2, 4, 16, 16) and pairs[0].teacher_shape == (2, 8, 16, 16)
    # fewer student layers: aligned from the end
    one = pair_layers(student, teacher, x, student_paths=["down"])
    assert [(p.student, p.teacher) for p in one] == [("down", "body")]
    with pytest.raises(ConfigError, match="differ in length"):
        pair_layers(student, teacher, x, student_paths=["stem"], teacher_paths=["stem", "body"])
    with pytest.raises(ConfigError, match="4-D"):
        pair_layers(student, teacher, x, student_paths=["fc"], teacher_paths=["body"])


ZOO = {
    "lenet5": ({}, (1, 28, 28)),
    "vgg16": ({"width_mult": 0.125}, (3, 32, 32)),
    "resnet20": ({"width_mult": 0.25}, (3, 16, 16)),
    "mobilenetv2": ({"width_mult": 0.25}, (3, 16, 16)),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_hint_adapters_match_teacher_shapes_for_zoo_pairs(name: str) -> None:
    kwargs, size = ZOO[name]
    torch.manual_seed(0)
    teacher = create_model(name, **kwargs)
    x = torch.randn(2, *size)
    # a narrower student where the zoo allows it, so the adapters really map channels
    student = lighten(teacher, x, width_mult=0.5 if "width_mult" in kwargs else 1.0)
    with Distiller(student, teacher, "hint:1.0,attention:1.0,kd:1.0", example_inputs=x) as distiller:
        assert len(distiller.pairs) >= 2
        hint = distiller.terms["hint"]
        with torch.no_grad(), FeatureTaps(student, [p.student for p in distiller.pairs]) as s_taps, \
                FeatureTaps(teacher, [p.teacher for p in distiller.pairs]) as t_taps:
            student(x)
            teacher(x)
        for i, pair in enumerate(distiller.pairs):
            adapted = hint.adapt(i, s_taps[pair.student])
            assert adapted.shape == t_taps[pair.teacher].shape == pair.teacher_shape
        loss, logits = distiller(student, x, torch.zeros(2, dtype=torch.long))
    assert logits.shape == (2, 10) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in distiller.parameters())


# ------------------------------------------------------------------ Distiller
def test_distiller_kd_zero_when_student_equals_teacher() -> None:
    teacher = TinyNet().eval()
    student = copy.deepcopy(teacher).eval()
    x, y = _batch(4)
    distiller = Distiller(student, teacher, "kd:0.9,noisy_kd:1.0,ce:0.1",
                          loss_options={"noisy_kd": {"noise_std": 0.0}})
    loss, logits = distiller(student, x, y)
    parts = distiller.last_components
    assert parts["kd"] == 0.0 and parts["noisy_kd"] == 0.0
    assert parts["ce"] == pytest.approx(F.cross_entropy(logits, y).item())
    assert loss.item() == pytest.approx(0.1 * parts["ce"])


def test_distiller_parameters_are_only_adapters() -> None:
    teacher, student = TinyNet(8), TinyNet(4)
    x, _ = _batch(2)
    distiller = Distiller(student, teacher, "kd:1,hint:1", example_inputs=x)
    own = {id(p) for p in distiller.parameters()}
    assert own and not own & {id(p) for p in student.parameters()}
    assert not own & {id(p) for p in teacher.parameters()}
    assert all(k.startswith("terms.hint.adapters") for k in distiller.state_dict())
    with pytest.raises(ConfigError, match="example_inputs"):
        Distiller(student, teacher, "hint:1")
    with pytest.raises(ConfigError, match="noise_std"):
        Distiller(student, teacher, "kd:1", loss_options={"kd": {"noise_std": 0.1}})


def test_distillation_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    teacher, student = TinyNet(8), TinyNet(4)
    x, y = _batch(16)
    distiller = Distiller(student, teacher, "kd:0.5,hint:1.0,attention:1.0,ce:0.5", example_inputs=x[:2])
    params = list(student.parameters()) + list(distiller.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    student.train()
    losses, first = [], {}
    for _ in range(15):
        loss, _ = distiller(student, x, y)
        first = first or distiller.last_components
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    distiller.close()
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
    last = distiller.last_components
    assert last["hint"] < first["hint"] and last["attention"] < first["attention"]
    assert set(distiller.last_components) == {"kd", "hint", "attention", "ce", "total"}
    assert all(not m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))


# -------------------------------------------------------------- distill / kd
def test_distill_trains_student_and_leaves_teacher_unchanged() -> None:
    torch.manual_seed(0)
    teacher, student = TinyNet(8), TinyNet(4)
    teacher_state = copy.deepcopy(teacher.state_dict())
    student_state = copy.deepcopy(student.state_dict())
    data = _batch(32)
    out = distill(student, teacher, data, losses="kd:0.9,hint:1.0,ce:0.1", epochs=2,
                  batch_size=16, lr=0.05, device="cpu", progress=False)
    assert out is student
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(student_state[k], v) for k, v in student.state_dict().items())
    assert len(info(student).distill_history) == 2
    assert all(not m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))
    with pytest.raises(ConfigError, match="'lrr'.*'lr'"):
        distill(student, teacher, data, epochs=1, lrr=0.1)


def _teacher_formats(teacher: nn.Module, channels_last: object) -> tuple[list[bool], nn.Module]:
    """Distil a TinyNet student from ``teacher``; the format of its second conv at every step."""
    seen: list[bool] = []
    record = SimpleNamespace(on_step_end=lambda t: seen.append(
        t.loss_hook.teacher.down[0].weight.is_contiguous(memory_format=torch.channels_last)
        and not t.loss_hook.teacher.down[0].weight.is_contiguous()))
    torch.manual_seed(1)
    student = TinyNet(4)
    distill(student, teacher, _batch(32), losses="kd:0.9,ce:0.1", epochs=2, batch_size=16, lr=0.05,
            device="cpu", progress=False, callbacks=[record], channels_last=channels_last)
    return seen, student


def test_distill_runs_the_teacher_in_the_students_memory_format() -> None:
    torch.manual_seed(0)
    teacher = TinyNet(8)
    seen, nhwc_student = _teacher_formats(teacher, "auto")
    assert seen == [True] * 4  # the teacher trained beside the student in NHWC ...
    assert all(p.is_contiguous() for p in teacher.parameters())  # ... and is handed back in NCHW
    seen, nchw_student = _teacher_formats(teacher, False)
    assert seen == [False] * 4
    for a, b in zip(nhwc_student.parameters(), nchw_student.parameters()):  # the same training, in
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)               # another kernel order
    teacher.to(memory_format=torch.channels_last)  # a teacher that was NHWC already stays so
    seen, _ = _teacher_formats(teacher, "auto")
    assert seen == [True] * 4 and not teacher.down[0].weight.is_contiguous()


def test_kd_finetune_distills_from_a_frozen_copy() -> None:
    torch.manual_seed(0)
    teacher = TinyNet(8)
    pruned = copy.deepcopy(teacher)
    finetune = kd_finetune(teacher, 1, _batch(16), batch_size=8, lr=0.05, device="cpu", progress=False)
    with torch.no_grad():  # changing the original after creating the callback must not matter
        teacher.fc.weight.zero_()
    before = copy.deepcopy(pruned.state_dict())
    assert finetune(pruned, 0) is None
    assert any(not torch.equal(before[k], v) for k, v in pruned.state_dict().items())
    with pytest.raises(ConfigError, match="epoch"):
        kd_finetune(teacher, 1, _batch(4), epoch=3)
