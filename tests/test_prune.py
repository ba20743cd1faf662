"""``edgeslim.prune`` / ``prune_`` on the zoo and on torchvision-style blocks.

Invariants: the pruned model runs with the same output shape; parameters and
FLOPs drop; ``target_flops`` is met in the profiler's units; ``round_to`` and
``ignore`` hold; the original is untouched; removing channels that contribute
nothing leaves eval outputs unchanged; bad requests raise ``ConfigError``.
"""
from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from torch import nn

import edgeslim
import nets
from edgeslim.modelinfo import info
from edgeslim.errors import ConfigError, UnsupportedModelError
from edgeslim.graph import build_dependency_graph
from edgeslim.models import MODELS, create_model, list_models
from edgeslim.profile import count_flops, count_params
from edgeslim.prune import apply_plan, plan_to_removal, prune_channels_
from edgeslim.registry import RegistryError
from nets import NETS, example_input, randomize_bn_

SMALL = {"width_mult": 0.25, "growth_rate": 4}


def zoo(name: str, **overrides) -> tuple[nn.Module, torch.Tensor]:
    """A small, eval-mode zoo model with random BN statistics, and one example input."""
    params = inspect.signature(MODELS.get(name)).parameters
    kwargs = {k: v for k, v in SMALL.items() if k in params and name != "lenet5"} | overrides  # lenet5 is small
    torch.manual_seed(0)
    model = randomize_bn_(create_model(name, **kwargs)).eval()
    return model, torch.randn(1, *model.default_input_size, generator=torch.Generator().manual_seed(1))


def flops(model: nn.Module, x: torch.Tensor) -> int:
    return count_flops(model, x)[0]


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------
# the zoo

@pytest.mark.parametrize("planner", ["global", "layerwise"])
@pytest.mark.parametrize("name", list_models())
def test_zoo_prunes_at_30_50_70_percent(name: str, planner: str) -> None:
    model, x = zoo(name)
    p0, f0 = count_params(model), flops(model, x)
    before = state_copy(model)
    shape = model(x).shape
    last_params = p0
    for ratio in (0.3, 0.5, 0.7):
        pruned = edgeslim.prune(model, x, ratio=ratio, planner=planner)
        with torch.no_grad():
            y = pruned(x)
        assert y.shape == shape and torch.isfinite(y).all()
        p, f = count_params(pruned), flops(pruned, x)
        assert p < last_params and f < f0, f"{name} {planner} {ratio}: params {p}/{p0}, flops {f}/{f0}"
        last_params = p
        assert info(pruned).plans[-1]["groups"], "the plan records what was cut"
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert info(model).plans == []


@pytest.mark.parametrize("name", list_models())
def test_cost_model_is_the_profiler(name: str) -> None:
    """What ``target_flops``/``target_params`` are planned against: per-sample conv/linear MACs
    and the parameter count, exactly as edgeslim.profile measures them."""
    model, x = zoo(name)
    graph = build_dependency_graph(model, x.repeat(2, 1, 1, 1))
    assert graph.cost() == (count_flops(model, x)[1], count_params(model))


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "mobilenetv2", "densenet_cifar", "lenet5"])
def test_target_flops_is_met_in_profiler_units(name: str) -> None:
    """The planner's cost model counts conv/linear MACs exactly as ``count_flops`` does
    (BN, activations, pooling and adds are uncounted in both; see edgeslim.profile.counters),
    so the measured FLOPs after pruning are <= 50% with no tolerance. From below, the cut
    is the shortest prefix of the ranking that meets the budget, so it undershoots by at
    most the cost of the last channel taken (plus channels other constraints return); the
    0.05 bound is checked against the largest one-channel cost below."""
    model, x = zoo(name)
    f0 = flops(model, x)
    pruned = edgeslim.prune(model, x, target_flops=0.5)
    kept = flops(pruned, x) / f0
    graph = build_dependency_graph(model, x, protect_first=True)
    total = graph.cost()[0]
    one = np.zeros(len(graph.class_locked), dtype=bool)
    biggest = 0
    for g in graph.groups:  # one channel per group: within a group they cost about the same
        for c, ok in zip(g.classes, g.prunable):
            if ok:
                one[c] = True
                biggest = max(biggest, total - graph.cost(one)[0])
                one[c] = False
                break
    assert biggest / total < 0.05
    assert 0.45 <= kept <= 0.5, f"{name}: kept {kept:.4f} of the FLOPs"


def test_target_params_is_met() -> None:
    model, x = zoo("resnet20")
    pruned = edgeslim.prune(model, x, target_params=0.4)
    assert 0.35 <= count_params(pruned) / count_params(model) <= 0.4


def _group_fully_prunable(graph, path: str) -> bool:
    classes = {int(graph.class_of[e]) for e in graph.records[path].out_label}
    by_class = graph.group_of_class()
    return all(all(by_class[c].prunable) for c in classes)


@pytest.mark.parametrize("name,kwargs", [("vgg11", {}), ("resnet20", {"width_mult": 0.5}),
                                         ("mobilenetv2", {}), ("densenet_cifar", {"growth_rate": 8})])
def test_round_to_8(name: str, kwargs: dict) -> None:
    model, x = zoo(name, **kwargs)
    graph = build_dependency_graph(model, x, protect_first=True)
    pruned = edgeslim.prune(model, x, ratio=0.5, round_to=8)
    modules = dict(pruned.named_modules())
    checked = 0
    for path, rec in graph.records.items():
        if not isinstance(rec.module, nn.Conv2d) or not _group_fully_prunable(graph, path):
            continue
        size = len(rec.out_label)
        assert size % 8 == 0, "pick widths that are multiples of 8 for this test"
        assert modules[path].out_channels % 8 == 0, f"{name}.{path}: {modules[path].out_channels}"
        checked += 1
    assert checked > 3
    assert count_params(pruned) < count_params(model)


def test_ignore_leaves_layers_alone() -> None:
    model, x = zoo("resnet20")
    keep = ["layer1.0.conv1", "layer2", "fc"]
    pruned = edgeslim.prune(model, x, ratio=0.5, ignore=keep)
    old, new = dict(model.named_modules()), dict(pruned.named_modules())
    for path, module in old.items():
        if any(path == p or path.startswith(p + ".") for p in keep):
            for pname, t in module.named_parameters(recurse=False):
                assert new[path].get_parameter(pname).shape == t.shape, f"{path}.{pname} changed"
    assert count_params(pruned) < count_params(model)


def test_prune_in_place() -> None:
    model, x = zoo("vgg11")
    p0 = count_params(model)
    out = edgeslim.prune_(model, x, ratio=0.5)
    assert out is model and count_params(model) < p0
    assert model(x).shape == (1, 10)


def test_iterative_steps_call_finetune_each_step() -> None:
    model, x = zoo("resnet20")
    calls: list[tuple[int, int]] = []

    def finetune(m: nn.Module, step: int) -> None:
        assert m(x).shape == (1, 10)
        calls.append((step, count_params(m)))

    pruned = edgeslim.prune(model, x, ratio=0.6, steps=3, finetune=finetune)
    assert [s for s, _ in calls] == [1, 2, 3]
    sizes = [n for _, n in calls]
    assert sizes[0] > sizes[1] > sizes[2] == count_params(pruned)
    assert len(info(pruned).plans) == 3
    # the channel budget refers to the original model, in one step or three
    n0 = len(build_dependency_graph(model, x, protect_first=True).prunable_classes())
    for m in (pruned, edgeslim.prune(model, x, ratio=0.6)):
        left = build_dependency_graph(m, x, protect_first=True)
        assert len(left.prunable_classes()) <= n0 - round(0.6 * n0)


def test_iterative_target_flops_compounds_to_the_target() -> None:
    model, x = zoo("vgg11")
    pruned = edgeslim.prune(model, x, target_flops=0.5, steps=3)
    assert 0.45 <= flops(pruned, x) / flops(model, x) <= 0.5


# ----------------------------------------------------------------------------------------
# torchvision/timm-style blocks

@pytest.mark.parametrize("planner", ["global", "layerwise"])
@pytest.mark.parametrize("name", sorted(NETS))
def test_nets_prune(name: str, planner: str) -> None:
    model = randomize_bn_(NETS[name]()).eval()
    x = example_input(2)
    for ratio in (0.3, 0.6):
        pruned = edgeslim.prune(model, x, ratio=ratio, planner=planner)
        y = pruned(x)
        assert y.shape == (2, nets.NUM_CLASSES) and torch.isfinite(y).all()
        assert count_params(pruned) < count_params(model)
        assert count_params(pruned) == nets.analytic_params(pruned)
        assert count_flops(pruned, x)[1] == nets.analytic_macs(pruned, x)


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenetv2", "densenet", "inception", "split"])
def test_nets_target_flops(name: str) -> None:
    model = randomize_bn_(NETS[name]()).eval()
    x = example_input(1)
    kept = count_flops(edgeslim.prune(model, x, target_flops=0.5), x)[0] / count_flops(model, x)[0]
    assert 0.4 <= kept <= 0.5


def test_prelu_and_groupnorm_are_sliced() -> None:
    model = randomize_bn_(nets.PReLUGroupNormNet()).eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.5, protect_first=False)
    assert pruned.conv1.out_channels < 16
    assert pruned.gn1.num_channels == pruned.act1.num_parameters == pruned.conv1.out_channels
    assert pruned.gn2.num_channels == pruned.gn2.num_groups == pruned.conv2.out_channels
    assert pruned.act2.weight.numel() == 1
    # GroupNorm(2, 16): the same count goes from both groups, which stay 2
    assert pruned.conv3.out_channels == pruned.gn3.num_channels == pruned.act3.num_parameters
    assert pruned.gn3.num_groups == 2 and pruned.gn3.num_channels % 2 == 0
    assert pruned(x).shape == (2, 10)


def test_channel_shuffle_prunes_group_consistently(tmp_path) -> None:
    x = example_input(2)
    for model, opts in ((nets.shuffle_net(), {}), (nets.shuffle_module_net(), {}),
                        (nets.shuffle_module_net(), {"ignore": ["shuffle"]})):
        model = randomize_bn_(model).eval()
        pruned = edgeslim.prune(model, x, ratio=0.6, **opts, protect_first=False)
        assert pruned(x).shape == (2, 10)
        assert count_params(pruned) < count_params(model)
        assert edgeslim.export_onnx(pruned, x, tmp_path / "m.onnx") < 1e-4
        if not opts:  # the stream through the shuffle is cut too, equally in both halves
            assert pruned.stem[0].out_channels < 16 and pruned.stem[0].out_channels % 2 == 0
            assert pruned.block1.branch2[5].out_channels == pruned.stem[0].out_channels // 2
        else:
            assert pruned.block1.branch2[5].out_channels == 8  # feeds the ignored shuffle: untouched


def test_control_flow_model_raises() -> None:
    with pytest.raises(UnsupportedModelError, match="control flow"):
        edgeslim.prune(nets.ControlFlowNet(), example_input(1), ratio=0.5)


# ----------------------------------------------------------------------------------------
# exactness: channels that contribute nothing can be removed without changing anything

def _silence_(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: list[int]) -> None:
    with torch.no_grad():
        conv.weight[channels] = 0
        if conv.bias is not None:
            conv.bias[channels] = 0
        bn.weight[channels] = 0
        bn.bias[channels] = 0


def test_removing_silent_channels_is_exact_vgg() -> None:
    model, x = zoo("vgg11")
    x = torch.randn(4, 3, 32, 32)
    feats = model.features
    convs = [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]
    silenced = {}
    for j, i in enumerate(convs[1:5]):  # conv 0 is protected by default
        chans = list(range(j, feats[i].out_channels, 5))
        _silence_(feats[i], feats[i + 1], chans)
        silenced[f"features.{i}"] = chans
    graph = build_dependency_graph(model, x, protect_first=True)
    n = sum(len(c) for c in silenced.values())
    ref = model(x)
    pruned = edgeslim.prune(model, x, ratio=n / len(graph.prunable_classes()))
    for path, chans in silenced.items():
        conv = pruned.get_submodule(path)
        kept = info(pruned).plans[-1]["groups"][path]
        assert sorted(set(range(len(kept) + len(chans))) - set(kept)) == chans
        assert conv.out_channels == len(kept)
    torch.testing.assert_close(pruned(x), ref, atol=1e-5, rtol=1e-5)


def test_removing_a_silent_residual_channel_is_exact() -> None:
    """A channel of a residual stream is removable only if every branch adding into it
    is silent: silence it in the stem and in both blocks' last conv, then cut it."""
    model = randomize_bn_(nets.resnet_basic()).eval()
    x = example_input(4)
    chans = [2, 7, 11]
    _silence_(model.conv1, model.bn1, chans)
    for block in model.layer1:
        _silence_(block.conv2, block.bn2, chans)
    ref = model(x)
    graph = build_dependency_graph(model, x)
    stream = graph.group_by_id["conv1"]
    removed = plan_to_removal(graph, {"groups": {"conv1": [i for i in range(16) if i not in chans]}})
    assert removed.sum() == 3 and all(removed[stream.classes[i]] for i in chans)
    pruned = copy.deepcopy(model)
    prune_channels_(pruned, build_dependency_graph(pruned, x), removed)
    assert pruned.conv1.out_channels == pruned.layer1[1].conv2.out_channels == 13
    assert pruned.layer2[0].downsample[0].in_channels == 13
    torch.testing.assert_close(pruned(x), ref, atol=1e-5, rtol=1e-5)
    # the same cut found by the l1 ranking
    auto = edgeslim.prune(model, x, ratio=3 / len(build_dependency_graph(model, x).prunable_classes()),
                          protect_first=False)
    assert info(auto).plans[-1]["groups"] == {"conv1": [i for i in range(16) if i not in chans]}
    torch.testing.assert_close(auto(x), ref, atol=1e-5, rtol=1e-5)


def test_removing_silent_channels_is_exact_through_depthwise() -> None:
    model = randomize_bn_(nets.TinyMobileNetV2()).eval()
    x = example_input(4)
    # the expand conv of block 2 feeds a depthwise conv: silence both
    expand, dw = model.features[2].conv[0], model.features[2].conv[1]
    _silence_(expand[0], expand[1], [1, 5])
    with torch.no_grad():
        dw[0].weight[[1, 5]] = 0
        dw[1].weight[[1, 5]] = 0
        dw[1].bias[[1, 5]] = 0
    ref = model(x)
    plan = {"groups": {"features.2.conv.0.0": [i for i in range(32) if i not in (1, 5)]}}
    pruned = apply_plan(copy.deepcopy(model), x, plan)
    dw = pruned.features[2].conv[1][0]
    assert dw.groups == dw.in_channels == dw.out_channels == 30
    assert pruned.features[2].conv[2].in_channels == 30
    torch.testing.assert_close(pruned(x), ref, atol=1e-5, rtol=1e-5)


def test_plan_replays_on_a_fresh_copy() -> None:
    model, x = zoo("densenet_cifar")
    pruned = edgeslim.prune(model, x, ratio=0.4)
    replay = apply_plan(copy.deepcopy(model), x, info(pruned).plans[-1], protect_first=True)
    a, b = pruned.state_dict(), replay.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------
# criteria

@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "random", "taylor"])
def test_every_criterion(criterion: str) -> None:
    model = randomize_bn_(nets.resnet_basic()).eval()
    x = example_input(4)
    calib = (example_input(8, seed=3), torch.randint(0, 10, (8,)))
    pruned = edgeslim.prune(model, x, ratio=0.4, criterion=criterion, calib_data=calib)
    assert pruned(x).shape == (4, 10)
    assert count_params(pruned) < count_params(model)


def test_bn_scale_cuts_the_smallest_gammas() -> None:
    model, x = zoo("vgg11")
    bn = model.features[5]  # BN of conv 2
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(1.0, 2.0, bn.num_features))
        bn.weight[[3, 9]] = 1e-3
    pruned = edgeslim.prune(model, x, ratio=0.01, criterion="bn_scale")
    kept = info(pruned).plans[-1]["groups"]["features.4"]
    assert 3 not in kept and 9 not in kept


# ----------------------------------------------------------------------------------------
# bad requests

@pytest.mark.parametrize("kwargs,match", [
    ({"ratio": 1.5}, r"ratio=1\.5.*\[0, 1\)"),
    ({"ratio": -0.1}, r"ratio=-0\.1"),
    ({"target_flops": 0.0}, r"target_flops=0\.0"),
    ({"target_params": 1.5}, r"target_params=1\.5"),
    ({"ratio": 0.5, "target_flops": 0.5}, r"exactly one.*ratio.*target_flops"),
    ({}, r"exactly one"),
    ({"ratio": 0.5, "steps": 0}, r"steps"),
    ({"ratio": 0.5, "round_to": 0}, r"round_to"),
    ({"ratio": 0.5, "finetune": "bogus"}, r"finetune='bogus'"),
    ({"ratio": 0.5, "finetune": "plain"}, r"train_data"),
    ({"ratio": 0.5, "criterion": "taylor"}, r"calib_data"),
])
def test_bad_requests_raise_config_error(kwargs: dict, match: str) -> None:
    model, x = zoo("lenet5")
    with pytest.raises(ConfigError, match=match):
        edgeslim.prune(model, x, **kwargs)


def test_unreachable_target_names_the_limit() -> None:
    model, x = zoo("resnet20")
    with pytest.raises(ConfigError, match=r"not reachable.*min_channels=1.*round_to=1"):
        edgeslim.prune(model, x, target_flops=0.01)
    with pytest.raises(ConfigError, match="not reachable"):
        edgeslim.prune(model, x, target_params=0.05, round_to=8)


def test_unknown_names_list_the_valid_ones() -> None:
    model, x = zoo("lenet5")
    with pytest.raises(RegistryError, match="global"):
        edgeslim.prune(model, x, ratio=0.5, planner="globl")
    with pytest.raises(RegistryError, match="l1"):
        edgeslim.prune(model, x, ratio=0.5, criterion="l3")


def test_zero_ratio_is_a_no_op() -> None:
    model, x = zoo("resnet20")
    pruned = edgeslim.prune(model, x, ratio=0.0)
    assert count_params(pruned) == count_params(model)
    torch.testing.assert_close(pruned(x), model(x), atol=0, rtol=0)


def test_train_mode_flags_survive_pruning() -> None:
    """A model in train mode with one BatchNorm frozen in eval mode (a common fine-tuning
    setup) keeps both flags: pruning runs in eval mode and restores each module's own."""
    model, x = zoo("resnet20")
    model.train()
    model.bn1.eval()
    for m in (model, edgeslim.prune(model, x, ratio=0.3, criterion="taylor",
                                    calib_data=(x.repeat(4, 1, 1, 1), torch.arange(4)))):
        assert m.training and not m.bn1.training and m.layer1[0].bn1.training


def test_prune_is_callable_after_importing_the_subpackage() -> None:
    """``import edgeslim.prune`` binds the subpackage over the lazy function name;
    ``edgeslim.prune(...)`` must still prune."""
    import edgeslim.prune as subpackage

    assert callable(edgeslim.prune) and callable(subpackage)
    model, x = zoo("lenet5")
    assert count_params(edgeslim.prune(model, x, ratio=0.5)) < count_params(model)


def test_no_layer_loses_all_its_channels() -> None:
    """A concat feeding a residual sum puts two convs' outputs in one group: the group keeping
    a channel is not enough, each conv must keep one (found by the property tests)."""
    specs = [nets.BlockSpec("concat", 8), nets.BlockSpec("depthwise", 8)]
    model = nets.build_random_net(specs)
    x = example_input(2)
    for planner in ("global", "layerwise"):
        pruned = edgeslim.prune(model, x, ratio=0.75, planner=planner, protect_first=False)
        assert pruned(x).shape == (2, 10)
        assert min(m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)) >= 1
        assert pruned.blocks[0].a[0].out_channels >= 1 and pruned.blocks[0].b[1][0].out_channels >= 1


def test_training_only_branches_are_traced_in_eval_mode() -> None:
    """timm's DropPath samples a mask with ``new_empty().bernoulli_()`` in train mode only; a
    model handed over in train mode prunes (the graph is traced in eval mode) and stays in
    train mode."""
    model = randomize_bn_(nets.TimmStyleNet()).train()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.4)
    assert pruned.training and pruned.drop_path.training
    assert pruned.conv_pw.out_channels < 32 and pruned.se_expand.out_channels == pruned.conv_pw.out_channels
    assert pruned.eval()(x).shape == (2, 10)


def test_target_flops_counts_ignored_blocks() -> None:
    """An ignored block is opaque to the graph's cost model, but its FLOPs are part of the
    total that ``target_flops`` is a fraction of (and can never be cut)."""
    model, x = zoo("resnet20")
    pruned = edgeslim.prune(model, x, target_flops=0.5, ignore=["layer2"])
    assert 0.45 <= flops(pruned, x) / flops(model, x) <= 0.5
    a, b = model.layer2.state_dict(), pruned.layer2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    kept = count_params(edgeslim.prune(model, x, target_params=0.5, ignore=["layer2"]))
    assert 0.45 <= kept / count_params(model) <= 0.5


def test_convnext_channels_last_block_and_layer_scale_prune(tmp_path) -> None:
    """permute -> LayerNorm -> Linear -> GELU -> Linear -> permute, a per-channel gamma read in
    forward (timm's flat one and torchvision's (C, 1, 1) one), LayerNorm2d: all cut together."""
    from edgeslim.profile import count_flops

    model = nets.TinyConvNeXt().eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.4, protect_first=False)
    b1, b2 = pruned.block1, pruned.block2
    assert b1.conv_dw.out_channels < 16 and b2.conv_dw.out_channels < 24
    assert b1.fc1.in_features == b1.norm.normalized_shape[0] == b1.gamma.shape[0] == b1.conv_dw.out_channels
    assert b2.gamma.shape == (b2.conv_dw.out_channels, 1, 1) and b2.fc2.out_features == b2.conv_dw.out_channels
    assert pruned.stem[1].normalized_shape == (pruned.stem[0].out_channels,)
    assert pruned(x).shape == (2, 10)
    assert count_params(pruned) == nets.analytic_params(pruned)
    assert count_flops(pruned, x)[1] == nets.analytic_macs(pruned, x)
    assert edgeslim.export_onnx(pruned, x, tmp_path / "m.onnx") < 1e-4


def test_convnext_pruning_zero_channels_is_exact() -> None:
    model = nets.TinyConvNeXt().eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.0)
    torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-5)


def test_eca_attention_prunes_through_its_channel_axis_conv(tmp_path) -> None:
    model = nets.ECANet().eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.4, protect_first=False)
    assert pruned.conv1.out_channels < 16 and pruned.conv2.in_channels == pruned.conv1.out_channels
    assert pruned.eca.weight.shape == (1, 1, 3) and pruned(x).shape == (2, 10)
    assert edgeslim.export_onnx(pruned, x, tmp_path / "m.onnx") < 1e-4
    torch.testing.assert_close(edgeslim.prune(model, x, ratio=0.0)(x), model(x), atol=1e-5, rtol=1e-5)


def test_uneven_splits_from_a_module_attribute_are_cut_piece_by_piece(tmp_path) -> None:
    """MixNet: torch.split(x, self.splits, 1) with uneven constant sizes; surgery rewrites them."""
    model = randomize_bn_(nets.MixNet()).eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.5, protect_first=False)
    mixed = pruned.mixed
    assert sum(mixed.splits) == pruned.conv1.out_channels < 18
    assert [c.in_channels for c in mixed.values()] == mixed.splits
    assert pruned(x).shape == (2, 10) and count_params(pruned) == nets.analytic_params(pruned)
    assert edgeslim.export_onnx(pruned, x, tmp_path / "m.onnx") < 1e-4
    torch.testing.assert_close(edgeslim.prune(model, x, ratio=0.0)(x), model(x), atol=1e-5, rtol=1e-5)


def test_selective_kernel_and_split_attention_prune_every_path_alike(tmp_path) -> None:
    """SKNet's stack of paths and ResNeSt's radix reshape + RadixSoftmax: each path keeps the
    same channels, the attention follows, the reshapes stay valid."""
    from edgeslim.profile import count_flops

    model = randomize_bn_(nets.RadixNet()).eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.5, protect_first=False)
    sk, sa = pruned.sk, pruned.split
    c = pruned.stem[0].out_channels
    assert c < 16 and all(p[0].out_channels == c for p in sk.paths) and sk.fc_select.out_channels == 2 * c
    assert sa.conv.out_channels == sa.fc2.out_channels == 2 * sa.fc1.in_channels < 32
    assert pruned(x).shape == (2, 10) and count_params(pruned) == nets.analytic_params(pruned)
    assert count_flops(pruned, x)[1] == nets.analytic_macs(pruned, x)
    assert edgeslim.export_onnx(pruned, x, tmp_path / "m.onnx") < 1e-4
    torch.testing.assert_close(edgeslim.prune(model, x, ratio=0.0)(x), model(x), atol=1e-5, rtol=1e-5)


def test_finetune_none_is_spelled_the_same_in_python_as_in_yaml() -> None:
    model = randomize_bn_(nets.resnet_basic()).eval()
    x = example_input(2)
    a = edgeslim.prune(model, x, ratio=0.3, finetune="none")
    b = edgeslim.prune(model, x, ratio=0.3, finetune=None)
    torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ConfigError, match="'none'"):
        edgeslim.prune(model, x, ratio=0.3, finetune="nope")


def test_res2net_dpn_and_repvgg_patterns_prune_exactly(tmp_path) -> None:
    from edgeslim.profile import count_flops

    model = randomize_bn_(nets.MultiPathNet()).eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.4, protect_first=False)
    assert count_params(pruned) < count_params(model) and pruned(x).shape == (2, 10)
    r2 = pruned.res2  # torch.split(x, self.width, 1): the width follows the cut, pieces stay equal
    assert r2.width * 4 == pruned.stem.out_channels < 16 and all(c.in_channels == r2.width for c in r2.convs)
    assert count_params(pruned) == nets.analytic_params(pruned)
    assert count_flops(pruned, x)[1] == nets.analytic_macs(pruned, x)
    assert edgeslim.export_onnx(pruned, x, tmp_path / "m.onnx") < 1e-4
    torch.testing.assert_close(edgeslim.prune(model, x, ratio=0.0)(x), model(x), atol=1e-5, rtol=1e-5)
    again = edgeslim.load(edgeslim.save(pruned, tmp_path / "m.safetensors"))
    torch.testing.assert_close(again(x), pruned(x))
