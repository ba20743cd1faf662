"""The channel dependency graph on torchvision/timm-style blocks (see ``nets.py``).

Each test states which channels a block couples: a residual sum ties its
branches, a depthwise conv follows its input, a concatenation only stacks, an
SE gate multiplies into its input, ``chunk`` halves shrink together, a grouped
conv keeps its groups equal; GroupNorm with several groups, constant channel slices and channel
shuffles lock what they touch (or refuse, with a message that says how to go on).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nets
from edgeslim.errors import UnsupportedModelError
from edgeslim.graph import DependencyGraph, Group, build_dependency_graph
from edgeslim.profile import count_flops, count_params
from nets import NETS, example_input


def graph_of(model: nn.Module, **kwargs) -> DependencyGraph:
    return build_dependency_graph(model.eval(), example_input(2), **kwargs)


def out_classes(graph: DependencyGraph, path: str) -> list[int]:
    return [int(graph.class_of[e]) for e in graph.records[path].out_label]


def in_classes(graph: DependencyGraph, path: str) -> list[int]:
    return [int(graph.class_of[e]) for e in graph.records[path].in_label]


def group_of(graph: DependencyGraph, path: str) -> Group:
    """The one group holding all output channels of ``path``."""
    by_class = graph.group_of_class()
    ids = {by_class[c].id for c in out_classes(graph, path)}
    assert len(ids) == 1, f"{path} spans groups {ids}"
    return graph.group_by_id[ids.pop()]


def same_channels(graph: DependencyGraph, a: str, b: str) -> bool:
    return out_classes(graph, a) == out_classes(graph, b)


def all_locked(graph: DependencyGraph, path: str) -> bool:
    return all(graph.class_locked[c] for c in out_classes(graph, path))


def none_locked(graph: DependencyGraph, path: str) -> bool:
    return not any(graph.class_locked[c] for c in out_classes(graph, path))


@pytest.mark.parametrize("name", sorted(NETS))
def test_groups_partition_the_channels(name: str) -> None:
    model = NETS[name]()
    graph = graph_of(model)
    seen = [c for g in graph.groups for c in g.classes]
    assert len(seen) == len(set(seen)), "a channel class is in two groups"
    modules = dict(model.named_modules())
    for g in graph.groups:
        assert g.size == len(g.prunable) > 0
        assert g.prunable == [not graph.class_locked[c] for c in g.classes]
        assert all(m in modules for m in g.members)
    assert graph.prunable_classes(), f"{name}: nothing prunable"
    assert f"{len(graph.groups)} groups" in graph.summary()


@pytest.mark.parametrize("name", sorted(NETS))
def test_cost_model_matches_the_profiler(name: str) -> None:
    """The planner's (MACs, params) estimate is what edgeslim.profile measures, per sample."""
    model = NETS[name]().eval()
    graph = graph_of(model)
    macs, params = graph.cost()
    assert params == count_params(model)
    assert macs == count_flops(model, example_input(2))[1] // 2


def test_batch_size_does_not_change_the_groups() -> None:
    model = nets.resnet_basic().eval()
    a = build_dependency_graph(model, example_input(1))
    b = build_dependency_graph(model, example_input(3))
    assert [(g.id, g.size, g.members) for g in a.groups] == [(g.id, g.size, g.members) for g in b.groups]


def test_basic_block_residual_and_shared_relu() -> None:
    """torchvision's BasicBlock calls one ``self.relu`` on two unrelated tensors: that must not
    couple conv1's channels with the residual stream."""
    graph = graph_of(nets.resnet_basic())
    stream = group_of(graph, "conv1")
    for path in ("layer1.0.conv2", "layer1.1.conv2", "layer1.0.bn2", "layer1.1.bn2"):
        assert same_channels(graph, "conv1", path)
    assert {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.downsample.0"} <= set(stream.members)
    inner = group_of(graph, "layer1.0.conv1")
    assert inner is not stream and inner.size == 16 and all(inner.prunable)
    assert set(inner.members) == {"layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"}
    # the projection shortcut carries the stage-2 stream
    assert same_channels(graph, "layer2.0.downsample.0", "layer2.0.conv2")
    assert same_channels(graph, "layer2.0.downsample.1", "layer2.1.bn2")
    assert "fc" in group_of(graph, "layer2.1.conv2").members
    assert all_locked(graph, "fc")  # the logits never shrink


def test_bottleneck_with_downsample() -> None:
    graph = graph_of(nets.resnet_bottleneck())
    assert same_channels(graph, "layer1.0.conv3", "layer1.0.downsample.0")
    assert same_channels(graph, "layer1.0.conv3", "layer1.1.conv3")
    assert not same_channels(graph, "layer1.0.conv3", "conv1")
    for path in ("layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1"):
        assert none_locked(graph, path)
        assert group_of(graph, path).id == path


def test_resnext_grouped_conv_keeps_its_groups_equal() -> None:
    """A grouped (not depthwise) conv's groups must stay equal: in-group position k of every
    group is one channel, on its input side (conv1's filters) and on its output side, so a cut
    removes the same channels from each of the 4 groups; nothing is locked."""
    graph = graph_of(nets.resnext())
    assert graph.records["layer1.0.conv2"].module.groups == 4
    for path in ("layer1.0.conv1", "layer1.0.conv2"):
        cls = out_classes(graph, path)
        assert len(cls) == 16 and cls[:4] == cls[4:8] == cls[8:12] == cls[12:] and len(set(cls)) == 4
        assert none_locked(graph, path) and group_of(graph, path).size == 4
    assert in_classes(graph, "layer1.0.conv2") == out_classes(graph, "layer1.0.conv1")
    assert none_locked(graph, "layer1.0.conv3")


def test_depthwise_follows_its_input() -> None:
    graph = graph_of(nets.TinyMobileNetV2())
    expand, dw = "features.2.conv.0.0", "features.2.conv.1.0"
    assert graph.records[dw].module.groups == graph.records[dw].module.in_channels
    assert same_channels(graph, expand, dw)
    assert {expand, dw, "features.2.conv.1.1", "features.2.conv.2"} <= set(group_of(graph, expand).members)
    # block 3 has a residual: its projection is tied to block 2's
    assert same_channels(graph, "features.2.conv.2", "features.3.conv.2")


def test_dense_concat_stacks_without_coupling() -> None:
    graph = graph_of(nets.TinyDenseNet())
    stem = group_of(graph, "conv0")
    for i in (1, 2, 3):
        assert f"block1.denselayer{i}.conv1" in stem.members  # every later layer reads conv0
    assert "transition.2" in stem.members
    grow = group_of(graph, "block1.denselayer1.conv2")
    assert grow is not stem and all(grow.prunable)
    assert {"block1.denselayer2.norm1", "block1.denselayer3.conv1", "transition.0"} <= set(grow.members)
    # the transition input is the concatenation, in order
    concat = out_classes(graph, "conv0") + [c for i in (1, 2, 3)
                                            for c in out_classes(graph, f"block1.denselayer{i}.conv2")]
    assert in_classes(graph, "transition.2") == concat


def test_squeeze_excitation_couples_the_gate() -> None:
    graph = graph_of(nets.SENet())
    # 1x1-conv SE: the expand conv's output multiplies the block's channels
    assert same_channels(graph, "se1.fc2", "conv1.0")
    assert none_locked(graph, "se1.fc1") and group_of(graph, "se1.fc1").id == "se1.fc1"
    # Linear SE with view(b, c) / view(b, c, 1, 1) / expand_as
    assert same_channels(graph, "se2.fc.2", "conv2.0")
    assert none_locked(graph, "se2.fc.2") and none_locked(graph, "se2.fc.0")
    assert "se2.fc.0" in group_of(graph, "conv2.0").members


def test_chunk_halves_shrink_together() -> None:
    """``chunk(2)`` splits whatever it gets in half, so channel i of each half is one unit."""
    graph = graph_of(nets.split_net())
    stem = out_classes(graph, "stem.0")
    assert stem[:8] == stem[8:]
    assert group_of(graph, "stem.0").size == 8
    removed = np.zeros(len(graph.class_locked), dtype=bool)
    removed[stem[3]] = True
    _, out_keep = graph.keep_positions(removed)["stem.0"]
    assert out_keep == [i for i in range(16) if i not in (3, 11)]


def test_split_with_runtime_size_couples_like_chunk() -> None:
    """block2 splits with ``x.shape[1] // 2``: its halves (block1's pass-through half and
    block1's branch output) must keep equal sizes, so they are coupled too."""
    graph = graph_of(nets.split_net())
    assert out_classes(graph, "block1.branch2.6") == out_classes(graph, "stem.0")[:8]
    assert in_classes(graph, "block2.branch2.0") == out_classes(graph, "block1.branch2.6")


def test_constant_split_sizes_lock() -> None:
    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 12, 1)
            self.b = nn.Conv2d(4, 4, 1)
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            u, v = torch.split(self.a(x), [4, 8], dim=1)
            return self.b(u).mean((2, 3)) + self.c(v).mean((2, 3))

    graph = graph_of(Split())
    assert all_locked(graph, "a")


def test_channel_shuffle_couples_each_in_group_position() -> None:
    """view(b, g, c/g) -> transpose -> view: position k of every group is one unit, so a cut
    keeps the groups equal and both reshapes valid (ShuffleNet, not locked any more)."""
    graph = graph_of(nets.shuffle_net())
    feeder = graph.records["block1.branch2.5"]  # the conv whose output reaches the shuffle
    assert not all_locked(graph, "block1.branch2.5")
    group = next(g for g in graph.groups if "block1.branch2.5" in g.members)
    assert group.size == feeder.module.out_channels // 2  # 2 groups: one unit per in-group position
    assert none_locked(graph, "block1.branch2.0")


def test_channel_shuffle_lock_and_ignore() -> None:
    graph = graph_of(nets.shuffle_module_net(), ignore=["shuffle"])
    assert "shuffle" in graph.records and graph.records["shuffle"].ignored
    assert all_locked(graph, "block1.branch2.6") and all_locked(graph, "shuffle")
    assert none_locked(graph, "block2.branch2.0")


def test_python_control_flow_is_refused_with_a_fix() -> None:
    with pytest.raises(UnsupportedModelError) as err:
        graph_of(nets.ControlFlowNet())
    msg = str(err.value)
    assert "ControlFlowNet" in msg and "control flow" in msg and "ignore=" in msg


def test_unknown_operation_names_node_and_module() -> None:
    class Rolled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
            self.fc = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.roll(self.body(x), 1, dims=1).mean((2, 3)))

    with pytest.raises(UnsupportedModelError, match=r"'roll'.*not known.*'<top level>'"):
        graph_of(Rolled())
    graph = graph_of(Rolled(), on_unsupported="lock")
    assert all_locked(graph, "body.0")


def test_linear_on_tokens_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Flatten(2), nn.Linear(256, 4))
    with pytest.raises(UnsupportedModelError, match="more than 2 dims"):
        graph_of(model)


def test_group_norm_and_prelu() -> None:
    """GroupNorm with 1 group or one group per channel and per-channel PReLU follow their
    input; GroupNorm(2, C) couples position k of both groups (a cut keeps them equal); a
    shared PReLU slope is not tied to any channel."""
    graph = graph_of(nets.PReLUGroupNormNet())
    assert {"gn1", "act1", "conv2"} <= set(group_of(graph, "conv1").members)
    assert none_locked(graph, "conv1") and none_locked(graph, "conv2")
    assert "gn2" in group_of(graph, "conv2").members
    assert graph.records["act2"].in_label is None  # one shared slope: nothing to slice
    assert none_locked(graph, "conv3") and "act3" in group_of(graph, "conv3").members
    assert group_of(graph, "conv3").size == 8  # GroupNorm(2, 16): 8 in-group positions


def test_ignore_locks_a_layer_and_a_whole_block() -> None:
    model = nets.resnet_basic()
    graph = graph_of(model, ignore=["layer1.0.conv1"])
    assert all_locked(graph, "layer1.0.conv1")
    assert all(graph.class_locked[c] for c in in_classes(graph, "layer1.0.conv1"))
    assert none_locked(graph, "layer1.1.conv1")
    graph = graph_of(model, ignore=["layer2.0"])  # a block: traced as one opaque leaf
    assert graph.records["layer2.0"].ignored and "layer2.0.conv1" not in graph.records
    assert all_locked(graph, "layer2.0") and all_locked(graph, "layer2.1.conv2")
    assert none_locked(graph, "layer2.1.conv1")


def test_protect_first_locks_the_first_conv() -> None:
    graph = graph_of(nets.TinyDenseNet(), protect_first=True)
    assert all_locked(graph, "conv0")
    assert none_locked(graph, "block1.denselayer1.conv1")


def test_inception_branches_are_separate_groups() -> None:
    graph = graph_of(nets.InceptionNet())
    branches = ["mixed_a.branch1x1.conv", "mixed_a.branch5x5_2.conv", "mixed_a.branch3x3dbl_3.conv",
                "mixed_a.branch_pool.conv"]
    assert len({group_of(graph, b).id for b in branches}) == 4
    concat = [c for b in branches for c in out_classes(graph, b)]
    for reader in ("mixed_b.branch1x1.conv", "mixed_b.branch5x5_1.conv", "mixed_b.branch_pool.conv"):
        assert in_classes(graph, reader) == concat
    assert all(none_locked(graph, b) for b in branches)


def test_constant_channel_slices_lock_what_they_index() -> None:
    """``cat(...)[:, :20]`` then ``[:, :8]`` / ``[:, 8:20]``: the bounds are constants in the
    forward code, so every channel below them is frozen."""
    graph = graph_of(nets.SliceNet())
    assert all_locked(graph, "primary.0")  # all 12 primary channels are inside [:20]
    assert same_channels(graph, "primary.0", "cheap.0")  # depthwise
    assert none_locked(graph, "conv_a.0") and same_channels(graph, "conv_a.0", "conv_b.0")
    assert in_classes(graph, "conv_b.0") == out_classes(graph, "primary.0")[8:] + \
        out_classes(graph, "primary.0")[:8]


def test_open_ended_slice_keeps_the_tail_prunable() -> None:
    class Tail(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(3, 8, 1)
            self.c = nn.Conv2d(12, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.cat([self.a(x), self.b(x)], 1)[:, 4:])

    graph = graph_of(Tail())
    a = out_classes(graph, "a")
    assert all(graph.class_locked[c] for c in a[:4]) and not any(graph.class_locked[c] for c in a[4:])
    assert none_locked(graph, "b")
    assert in_classes(graph, "c") == a[4:] + out_classes(graph, "b")


@pytest.mark.parametrize("make", [nets.TinyConvNeXt, nets.RadixNet, nets.TimmLayersNet, nets.MixNet,
                                  nets.ECANet, nets.resnet_basic, nets.shuffle_net])
def test_cost_model_is_the_profilers_or_says_it_is_not(make) -> None:
    """prune(target_flops=) skips its counting pass when the graph says every MAC is modelled:
    then the graph's MACs must equal count_flops's exactly."""
    from edgeslim.profile import count_flops

    model = make().eval()
    x = example_input(2)
    graph = graph_of(model)
    macs = count_flops(model, x)[1]
    if graph.fully_modelled:
        assert graph.cost()[0] * 2 == macs  # cost() is per sample; the batch is 2
    else:
        assert graph.cost()[0] * 2 < macs


def test_python_control_flow_names_its_module_and_lock_prunes_the_rest() -> None:
    """A block with data-dependent control flow: the error names it; with on_unsupported='lock'
    it becomes an opaque locked leaf (a warning says so) and the rest is still prunable."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.branchy = nets.ControlFlowNet()
            self.mid = nn.Conv2d(3, 8, 3, padding=1)
            self.out = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.out(torch.relu(self.mid(x))).mean((2, 3)) + self.branchy(x)[:, :8]

    with pytest.raises(UnsupportedModelError, match="in module 'branchy'") as err:
        graph_of(Net())
    assert err.value.module == "branchy" and "ignore=['branchy']" in str(err.value)
    with pytest.warns(UserWarning, match="'branchy' has Python control flow"):
        graph = graph_of(Net(), on_unsupported="lock")
    assert graph.records["branchy"].ignored and none_locked(graph, "mid")
