"""Pruning never crashes, never silently does nothing, never silently changes the model.

Regression tests for models that used to crash a criterion (an unused branch, a
``(logits, features)`` output), that came back unchanged without a word (grouped
convs, a conv called twice, everything locked), that were changed behind the
user's back (tied weights untied, a mistyped ``ignore=`` path), and for requests
whose error message was wrong or a traceback (no BatchNorm for ``bn_scale``,
``calib_batches=0``, NaN weights, inputs that do not fit the model, a model on
the meta device, an unknown keyword).
"""
from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeslim
import nets
from edgeslim.cli import main
from edgeslim.errors import ConfigError, UnsupportedModelError
from edgeslim.export import export_onnx
from edgeslim.graph import build_dependency_graph
from edgeslim.profile import count_flops, count_params
from edgeslim.prune import (ImportanceContext, PruneArgumentError, PruneWarning, apply_plan,
                            get_importance)
from nets import example_input, randomize_bn_

X = example_input(2)
CALIB = (example_input(8, seed=3), torch.randint(0, 10, (8,)))
DATA_CRITERIA = ["taylor", "information_gain", "information_gain_taylor"]


def _conv(cin: int, cout: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, groups=groups)


class Plain(nn.Module):
    """conv-relu x3, global average pool, linear; optional extra outputs and an unused branch."""

    def __init__(self, out: str = "logits", unused: bool = False, bn: bool = False) -> None:
        super().__init__()
        self.out, self.has_unused = out, unused
        self.c1, self.c2, self.c3 = _conv(3, 8), _conv(8, 12), _conv(12, 16)
        self.bn = nn.BatchNorm2d(12) if bn else nn.Identity()
        self.side = nn.Conv2d(12, 6, 1)  # called only when ``unused``; its output goes nowhere
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor):
        a = F.relu(self.bn(self.c2(F.relu(self.c1(x)))))
        if self.has_unused:
            self.side(a)
        f = F.relu(self.c3(a)).mean((2, 3))
        logits = self.fc(f)
        if self.out == "tuple":
            return logits, f
        if self.out == "dict":
            return {"logits": logits, "features": f}
        return logits


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with seeded weights and non-trivial BN statistics, in eval mode (in place)."""
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, 0.0, 0.3)
    return randomize_bn_(model).eval()


def _assert_exact_counts(pruned: nn.Module, x: torch.Tensor = X) -> None:
    assert count_params(pruned) == nets.analytic_params(pruned)
    assert count_flops(pruned, x)[1] == nets.analytic_macs(pruned, x)


def _no_warning_prune(model: nn.Module, **kwargs) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PruneWarning)
        return edgeslim.prune(model, X, **kwargs)


# ----------------------------------------------------------------------------------------
# item 5: data-driven criteria on unused branches and tuple outputs

@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_prune_a_model_with_an_unused_branch(criterion: str) -> None:
    model = _seeded(Plain(unused=True))
    pruned = edgeslim.prune(model, X, ratio=0.3, criterion=criterion, calib_data=CALIB)
    assert pruned(X).shape == (2, 10)
    assert count_params(pruned) < count_params(model)
    _assert_exact_counts(pruned)


def test_taylor_scores_an_unused_branch_zero() -> None:
    model = _seeded(Plain(unused=True))
    graph = build_dependency_graph(model, X)
    scores = get_importance("taylor").scores(graph, model, ImportanceContext(CALIB))
    assert torch.equal(scores["side"], torch.zeros(6))
    assert (scores["c2"] > 0).all()


@pytest.mark.parametrize("out", ["tuple", "dict"])
@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_score_the_first_output_tensor(criterion: str, out: str) -> None:
    """A model returning ``(logits, features)`` is scored on its logits: exactly the scores of
    the same weights returning the logits alone (c2's channels; c3's feed the features
    output, so they are locked there)."""
    multi = _seeded(Plain(out=out))
    single = copy.deepcopy(multi)
    single.out = "logits"
    imp = get_importance(criterion)
    got, want = (imp.scores(build_dependency_graph(m, X), m, ImportanceContext(CALIB))
                 for m in (multi, single))
    torch.testing.assert_close(got["c2"].float(), want["c2"].float(), rtol=1e-5, atol=1e-7)
    pruned = edgeslim.prune(multi, X, ratio=0.3, criterion=criterion, calib_data=CALIB)
    outs = pruned(X)
    logits, feats = (outs["logits"], outs["features"]) if out == "dict" else outs
    assert logits.shape == (2, 10) and feats.shape == (2, 16)
    assert pruned.c2.out_channels < 12 and pruned.c3.out_channels == 16


def test_taylor_scores_frozen_layers_by_their_activations() -> None:
    """Frozen parameters (requires_grad=False) still get a gradient term from their
    activations: the scores equal those of the unfrozen model."""
    model = _seeded(Plain())
    frozen = copy.deepcopy(model).requires_grad_(False)
    imp, ctx = get_importance("taylor"), ImportanceContext(CALIB)
    want = imp.scores(build_dependency_graph(model, X), model, ctx)
    got = imp.scores(build_dependency_graph(frozen, X), frozen, ctx)
    for path in ("c1", "c2", "c3"):
        torch.testing.assert_close(got[path], want[path])
    assert not any(p.requires_grad for p in frozen.parameters())


def test_taylor_under_no_grad() -> None:
    model = _seeded(Plain())
    with torch.no_grad():
        pruned = edgeslim.prune(model, X, ratio=0.3, criterion="taylor", calib_data=CALIB)
    assert pruned.c2.out_channels < 12


# ----------------------------------------------------------------------------------------
# item 7: grouped convs, a conv called twice, tied weights, ignore= typos, no-op warnings

class Grouped(nn.Module):
    """A plain conv, then grouped convs with 2 and 4 groups, and a depthwise conv with a
    channel multiplier of 2."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.g2, self.g4 = _conv(3, 8), _conv(8, 16, groups=2), _conv(16, 16, groups=4)
        self.pw = nn.Conv2d(16, 8, 1)
        self.dw = _conv(8, 16, groups=8)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.g4(F.relu(self.g2(F.relu(self.c1(x))))))
        x = F.relu(self.dw(F.relu(self.pw(x))))
        return self.fc(x.mean((2, 3)))


def test_grouped_convs_are_pruned_group_consistently() -> None:
    model = _seeded(Grouped())
    pruned = _no_warning_prune(model, ratio=0.5, planner="layerwise")  # every group loses some
    for name, groups in (("g2", 2), ("g4", 4), ("dw", None)):
        before, after = getattr(model, name), getattr(pruned, name)
        assert after.out_channels < before.out_channels, name
        if groups is not None:  # the group count stays; every group keeps as many channels
            assert after.groups == groups and after.in_channels % groups == after.out_channels % groups == 0
    dw = pruned.dw  # depthwise x2: whole groups go, the multiplier stays
    assert dw.groups == dw.in_channels == pruned.pw.out_channels and dw.out_channels == 2 * dw.groups
    assert pruned(X).shape == (2, 10)
    _assert_exact_counts(pruned)
    graph = build_dependency_graph(pruned, X, protect_first=True)
    assert graph.cost() == (count_flops(pruned, X)[1] // 2, count_params(pruned))


def test_grouped_conv_graph_ties_position_k_of_every_group() -> None:
    graph = build_dependency_graph(_seeded(Grouped()), X)
    cls = [int(graph.class_of[e]) for e in graph.records["g2"].out_label]
    assert cls[:8] == cls[8:]  # g2: 2 groups of 8
    g4_in = [int(graph.class_of[e]) for e in graph.records["g4"].in_label]
    assert g4_in[:4] == g4_in[4:8] == g4_in[8:12] == g4_in[12:]  # g4 reads 4 groups of 4
    assert len(set(cls)) == 4 and not any(graph.class_locked[c] for c in cls)
    dw_out = [int(graph.class_of[e]) for e in graph.records["dw"].out_label]
    pw_out = [int(graph.class_of[e]) for e in graph.records["pw"].out_label]
    assert dw_out == [c for c in pw_out for _ in range(2)]


def _silence(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: list[int]) -> None:
    with torch.no_grad():
        conv.weight[channels] = 0
        bn.weight[channels] = 0
        bn.bias[channels] = 0


def test_removing_silent_grouped_channels_is_exact() -> None:
    """ResNeXt (groups=4, 4 channels per group): silence in-group position 1 of conv1 (which
    feeds the grouped conv) and position 2 of the grouped conv's output, then cut them."""
    model = randomize_bn_(nets.resnext()).eval()
    block, x = model.layer1[0], example_input(4)
    _silence(block.conv1, block.bn1, [1, 5, 9, 13])
    _silence(block.conv2, block.bn2, [2, 6, 10, 14])
    ref = model(x)
    plan = {"groups": {"layer1.0.conv1": [0, 2, 3], "layer1.0.conv2": [0, 1, 3]}}
    pruned = apply_plan(copy.deepcopy(model), x, plan)
    conv2 = pruned.layer1[0].conv2
    assert (conv2.groups, conv2.in_channels, conv2.out_channels) == (4, 12, 12)
    assert pruned.layer1[0].conv1.out_channels == 12 and pruned.layer1[0].conv3.in_channels == 12
    torch.testing.assert_close(pruned(x), ref, atol=1e-5, rtol=1e-5)


def test_removing_silent_depthwise_multiplier_groups_is_exact() -> None:
    model = _seeded(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 10, 1),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    _silence(model[0], model[1], [3])
    with torch.no_grad():
        model[0].bias[3] = 0
    _silence(model[3], model[4], [6, 7])  # the two outputs of group 3
    ref = model(X)
    pruned = apply_plan(copy.deepcopy(model), X, {"groups": {"0": [0, 1, 2, 4, 5, 6, 7]}})
    assert (pruned[3].groups, pruned[3].in_channels, pruned[3].out_channels) == (7, 7, 14)
    assert pruned[4].num_features == 14 and pruned[6].in_channels == 14
    torch.testing.assert_close(pruned(X), ref, atol=1e-5, rtol=1e-5)


def test_pruned_grouped_net_matches_onnxruntime(tmp_path: Path) -> None:
    pruned = edgeslim.prune(_seeded(Grouped()), X, ratio=0.5, planner="layerwise")
    assert pruned.g2.out_channels < 16 and pruned.g4.out_channels < 16 and pruned.dw.groups < 8
    assert export_onnx(pruned, X, tmp_path / "g.onnx") <= 1e-4


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = _conv(3, 8), _conv(8, 8), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c2(F.relu(self.c2(F.relu(self.c1(x))))))
        return self.fc(y.mean((2, 3)))


def test_a_conv_called_twice_warns_when_nothing_can_go() -> None:
    """c2 runs on its own output, so its input, its output and c1's output are one set of
    channels; protect_first locks c1, hence all of them: say so instead of nothing."""
    model = _seeded(Twice())
    with pytest.warns(PruneWarning, match=r"unchanged.*every channel group is locked.*protect_first"):
        pruned = edgeslim.prune(model, X, ratio=0.5)
    assert count_params(pruned) == count_params(model)


def test_a_conv_called_twice_prunes_exactly_without_protect_first() -> None:
    model = _seeded(Twice())
    with torch.no_grad():  # channel 5 contributes nothing: c1's filter 5 and c2's filter 5 are 0
        for conv in (model.c1, model.c2):
            conv.weight[5] = 0
            conv.bias[5] = 0
    ref = model(X)
    pruned = apply_plan(copy.deepcopy(model), X, {"groups": {"c1": [0, 1, 2, 3, 4, 6, 7]}})
    assert (pruned.c1.out_channels, pruned.c2.in_channels, pruned.c2.out_channels) == (7, 7, 7)
    torch.testing.assert_close(pruned(X), ref, atol=1e-5, rtol=1e-5)
    auto = _no_warning_prune(model, ratio=0.5, protect_first=False)
    assert auto.c1.out_channels == auto.c2.out_channels == 4


def test_a_module_called_twice_costs_its_macs_twice() -> None:
    """The planner's cost model (what target_flops is planned against) is the profiler's."""
    model = _seeded(Twice())
    assert build_dependency_graph(model, X).cost() == (count_flops(model, X)[1] // 2, count_params(model))
    pruned = edgeslim.prune(model, X, target_flops=0.5, protect_first=False)
    assert 0.4 <= count_flops(pruned, X)[0] / count_flops(model, X)[0] <= 0.5


class Tied(nn.Module):
    def __init__(self, kind: str = "conv") -> None:
        super().__init__()
        self.c1, self.c2, self.c4, self.fc = _conv(3, 8), _conv(8, 8), _conv(8, 8), nn.Linear(8, 10)
        self.c3 = _conv(8, 8) if kind == "conv" else nn.ConvTranspose2d(8, 8, 3, padding=1)
        self.c3.weight = self.c2.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))))
        return self.fc(F.relu(self.c4(x)).mean((2, 3)))


def test_tied_weights_stay_tied() -> None:
    model = _seeded(Tied())
    pruned = _no_warning_prune(model, ratio=0.5, protect_first=False, planner="layerwise")
    assert pruned.c3.weight is pruned.c2.weight
    assert pruned.c2.out_channels == pruned.c3.out_channels < 8
    assert pruned.c2.in_channels == pruned.c3.in_channels == pruned.c1.out_channels
    assert count_params(pruned) == count_params(pruned.c1) + count_params(pruned.c2) + \
        pruned.c3.bias.numel() + count_params(pruned.c4) + count_params(pruned.fc)
    assert pruned(X).shape == (2, 10)


def test_tied_weights_in_different_roles_are_refused_or_locked() -> None:
    model = _seeded(Tied("transpose"))
    with pytest.raises(UnsupportedModelError, match=r"c2\.weight and c3\.weight.*'c2' and 'c3'"):
        edgeslim.prune(model, X, ratio=0.5)
    pruned = edgeslim.prune(model, X, ratio=0.5, protect_first=False, on_unsupported="lock")
    assert pruned.c3.weight is pruned.c2.weight and pruned.c2.weight.shape == (8, 8, 3, 3)
    assert pruned.c4.out_channels < 8


def test_a_tied_weight_of_an_unused_module_stays_tied() -> None:
    model = _seeded(Plain())
    model.spare = _conv(8, 12)  # never called
    model.spare.weight = model.c2.weight
    pruned = edgeslim.prune(model, X, ratio=0.5, protect_first=False)
    assert pruned.spare.weight is pruned.c2.weight and pruned.c2.weight.shape[0] == 12
    assert pruned.c3.out_channels < 16


def test_mistyped_ignore_path_is_refused_with_a_suggestion() -> None:
    model = randomize_bn_(nets.resnet_basic()).eval()
    with pytest.raises(ConfigError, match=r"no submodule 'layer1.0.cnv1'\. Did you mean 'layer1.0.conv1'"):
        edgeslim.prune(model, X, ratio=0.5, ignore=["layer1.0.cnv1"])
    one = edgeslim.prune(model, X, ratio=0.5, ignore="layer2")  # one path, not its letters
    assert one.layer2[0].conv1.out_channels == model.layer2[0].conv1.out_channels


def test_a_ratio_that_rounds_to_nothing_warns() -> None:
    with pytest.warns(PruneWarning, match=r"ratio=0.01 of the \d+ prunable channels rounds to 0"):
        edgeslim.prune(_seeded(Plain()), X, ratio=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edgeslim.prune(_seeded(Plain()), X, ratio=0.0)  # asked for nothing: no warning


def test_an_unreachable_target_on_a_fully_locked_model_says_why() -> None:
    with pytest.raises(ConfigError, match=r"no channel can be removed.*'c1' is ignored"):
        edgeslim.prune(_seeded(Plain()), X, target_flops=0.5, ignore=["c1", "c2", "c3"])


# ----------------------------------------------------------------------------------------
# item 8: a clear message per cause, not "target not reachable"

def test_bn_scale_without_batchnorm() -> None:
    with pytest.raises(ConfigError, match="criterion bn_scale needs BatchNorm layers after the pruned "
                                          "convs; model has none: use l1"):
        edgeslim.prune(_seeded(Plain()), X, ratio=0.5, criterion="bn_scale")
    pruned = edgeslim.prune(_seeded(Plain(bn=True)), X, ratio=0.2, criterion="bn_scale")
    assert pruned.c2.out_channels < 12


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_calib_batches_zero(criterion: str) -> None:
    with pytest.raises(ConfigError, match=f"criterion {criterion} needs calibration data: "
                                          "calib_batches must be >= 1"):
        edgeslim.prune(_seeded(Plain()), X, ratio=0.5, criterion=criterion, calib_data=CALIB,
                       calib_batches=0)


@pytest.mark.parametrize("where,value", [("c2.weight", float("nan")), ("bn.running_var", float("inf"))])
def test_non_finite_weights_are_named(where: str, value: float) -> None:
    model = _seeded(Plain(bn=True))
    module, name = where.split(".")
    with torch.no_grad():
        getattr(getattr(model, module), name).view(-1)[3] = value
    with pytest.raises(UnsupportedModelError, match=rf"'{where}' has 1 NaN/inf value"):
        edgeslim.prune(model, X, ratio=0.5)


def test_nan_calibration_data_is_named() -> None:
    bad = (torch.full_like(CALIB[0], float("nan")), CALIB[1])
    with pytest.raises(ConfigError, match=r"criterion taylor scored none.*calib_data for NaN"):
        edgeslim.prune(_seeded(Plain()), X, ratio=0.5, criterion="taylor", calib_data=bad)


# ----------------------------------------------------------------------------------------
# item 9: inputs that do not fit, meta device, unknown keywords: one clear error each

class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.fc = _conv(3, 8), nn.Linear(12, 10)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([F.relu(self.c1(x)).mean((2, 3)), z], 1))


ENTRY_POINTS = {
    "prune": lambda m, x: edgeslim.prune(m, x, ratio=0.5),
    "profile": lambda m, x: edgeslim.profile(m, x, latency=False, memory=False),
    "export_onnx": lambda m, x: export_onnx(m, x, Path("/nonexistent/never/written.onnx")),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_wrong_input_shape(entry: str) -> None:
    with pytest.raises(ConfigError, match=rf"{entry}: Plain does not run on the example input\(s\) of "
                                          r"shape \(2, 1, 16, 16\).*'c1' takes 3 input channels"):
        ENTRY_POINTS[entry](_seeded(Plain()), torch.randn(2, 1, 16, 16))


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_missing_second_input(entry: str) -> None:
    with pytest.raises(ConfigError, match=rf"{entry}: TwoInputs.forward\(x, z\) takes 2 input\(s\), "
                                          r"but 1 example input\(s\) were given.*example_inputs=\(x, z\)"):
        ENTRY_POINTS[entry](TwoInputs(), X)
    assert edgeslim.prune(TwoInputs(), (X, torch.randn(2, 4)), ratio=0.5, protect_first=False)(
        X, torch.randn(2, 4)).shape == (2, 10)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_meta_device_model(entry: str) -> None:
    with pytest.raises(UnsupportedModelError, match=r"meta device \(first: 'c1.weight'\).*to_empty"):
        ENTRY_POINTS[entry](Plain().to("meta"), X)


def test_unknown_keyword_suggests_the_right_one() -> None:
    with pytest.raises(PruneArgumentError, match=r"unexpected keyword argument 'min_channel'\. Did "
                                                 r"you mean 'min_channels'\?") as err:
        edgeslim.prune(_seeded(Plain()), X, ratio=0.5, min_channel=2)
    assert isinstance(err.value, TypeError) and isinstance(err.value, ConfigError)
    assert "calib_batches" in str(err.value)  # the valid names are listed


@pytest.mark.parametrize("command", ["profile", "export"])
@pytest.mark.parametrize("flag, message", [
    ("3,28,28", r"does not run on the example input.*\(1, 28, 28\) per sample.*--input-size C,H,W"),
    ("1,x,28", r"--input-size '1,x,28': give the per-sample shape as positive integers"),
])
def test_cli_input_size_errors_without_traceback(command: str, flag: str, message: str,
                                                 capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    argv = [command, "--model", "lenet5", "--input-size", flag]
    if command == "export":
        argv += ["--out", str(tmp_path / "m.onnx")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "m.onnx").exists()
