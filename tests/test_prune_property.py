"""Property-based tests: random networks of residual, concat, dense, depthwise, grouped and
SE blocks, pruned with random ratios, criteria, planners and ``round_to``.

For every draw (every registered criterion; the data-driven ones on a small calibration
batch): the pruned model runs with the same output shape; its parameter
count and MACs equal an independent count from the layers' constructor attributes
(``nets.analytic_params`` / ``nets.analytic_macs``) and from the plan's per-layer
channel counts; the planner's cost model stays exact on the pruned model; the
channel budget, ``round_to`` and ``min_channels`` hold; the input model is
untouched. A few draws also go through ONNX and onnxruntime.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import edgeslim
import nets
from edgeslim.modelinfo import info
from edgeslim.errors import ConfigError
from edgeslim.export import export_onnx
from edgeslim.graph import build_dependency_graph
from edgeslim.profile import count_flops, count_params
from edgeslim.prune import IMPORTANCES, PruneWarning
from nets import BlockSpec, build_random_net, example_input

CALIB = (example_input(4, seed=1), torch.arange(4))

blocks = st.builds(BlockSpec, kind=st.sampled_from(sorted(nets.BLOCKS)),
                   width=st.sampled_from(nets.WIDTHS), stride=st.sampled_from(nets.STRIDES))
architectures = st.lists(blocks, min_size=1, max_size=nets.MAX_BLOCKS).filter(nets.valid_specs)
options = st.fixed_dictionaries({
    "ratio": st.floats(0.05, 0.8),
    "criterion": st.sampled_from(IMPORTANCES.names()),  # the data-driven ones on CALIB
    "planner": st.sampled_from(["global", "layerwise"]),
    "round_to": st.sampled_from([1, 1, 2, 4]),
    "protect_first": st.booleans(),
})
# CI draws 25 networks; EDGESLIM_FUZZ_EXAMPLES=500 fuzzes harder locally (see also
# benchmarks/fuzz_prune.py, which draws from the same architecture space).
SETTINGS = settings(max_examples=int(os.environ.get("EDGESLIM_FUZZ_EXAMPLES", "25")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _prune_or_reject(model: nn.Module, x: torch.Tensor, opts: dict,
                     warned: list | None = None) -> nn.Module:
    """Prune; a target that ``round_to`` makes unreachable, or bn_scale on a net whose prunable
    convs have no BatchNorm, is a valid answer, not a failure. ``warned`` collects the
    PruneWarnings (a target that removed nothing)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PruneWarning)
            pruned = edgeslim.prune(model, x, calib_data=CALIB, calib_batches=1, **opts)
        if warned is not None:
            warned += [w for w in caught if issubclass(w.category, PruneWarning)]
        return pruned
    except ConfigError as exc:
        assert "not reachable" in str(exc) or "bn_scale needs BatchNorm" in str(exc), exc
        assume(False)
        raise


def _channel_counts(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) channels from a layer's constructor attributes; None for stateless layers."""
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features, module.num_features
    return None


def _conv_kind(conv: nn.Conv2d) -> str:
    return "plain" if conv.groups == 1 else "depthwise" if conv.groups == conv.in_channels else "grouped"


@SETTINGS
@given(specs=architectures, opts=options, seed=st.integers(0, 2**16))
def test_random_networks_prune_consistently(specs: list[BlockSpec], opts: dict, seed: int) -> None:
    model = build_random_net(specs, seed)
    x = example_input(2, seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph0 = build_dependency_graph(model, x, protect_first=opts["protect_first"])
    warned: list = []
    pruned = _prune_or_reject(model, x, opts, warned)

    with torch.no_grad():
        y = pruned(x)
    assert y.shape == (2, nets.NUM_CLASSES) and torch.isfinite(y).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())

    # parameters and MACs: tensors == constructor attributes == the planner's cost model
    params, macs = count_params(pruned), count_flops(pruned, x)[1]
    assert params == nets.analytic_params(pruned)
    assert macs == nets.analytic_macs(pruned, x)
    graph1 = build_dependency_graph(pruned, x, protect_first=opts["protect_first"])
    assert graph1.cost() == (macs // 2, params)

    # the plan's channel counts are the layers' new shapes
    plan = info(pruned).plans[-1]
    for path, counts in plan["modules"].items():
        shape = _channel_counts(pruned.get_submodule(path))
        if shape is not None:
            assert shape == (counts["in"], counts["out"]), path

    # channel budget, round_to, min_channels
    removed = sum(graph0.group_by_id[gid].size - len(kept) for gid, kept in plan["groups"].items())
    n0 = len(graph0.prunable_classes())
    assert removed >= round(opts["ratio"] * n0)
    # A conv cut so far that it changes kind (a grouped conv left with one input channel per
    # group is depthwise, a depthwise conv left with one group is plain) couples differently.
    if all(_conv_kind(m) == _conv_kind(pruned.get_submodule(path))
           for path, m in model.named_modules() if isinstance(m, nn.Conv2d)):
        assert len(graph1.prunable_classes()) == n0 - removed
    for gid, kept in plan["groups"].items():
        size = graph0.group_by_id[gid].size
        assert len(kept) >= 1
        assert len(kept) % opts["round_to"] == 0 or len(kept) == size, (gid, len(kept), size)
    if removed:
        assert params < count_params(model)
    assert bool(warned) == (removed == 0)  # a target that removes nothing says so, once


@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs=architectures, opts=options, seed=st.integers(0, 2**16))
def test_random_pruned_networks_match_onnxruntime(specs: list[BlockSpec], opts: dict, seed: int) -> None:
    model = build_random_net(specs, seed)
    x = example_input(2, seed)
    pruned = _prune_or_reject(model, x, opts)
    with tempfile.TemporaryDirectory() as tmp:
        diff = export_onnx(pruned, x, Path(tmp) / "pruned.onnx", tol=1e-4)
    assert diff <= 1e-4
