"""Exact merges (BN folding) as free moves of the latency planner.

Checked exactly with ``CostRuntime``: where a BatchNorm costs time the planner folds it
(every variant it builds is folded the same way, so the prediction stays exact), where it
costs nothing it is left alone. One eager-torch test checks only that folds are taken.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import edgeslim
from edgeslim.errors import CheckpointError, ConfigError
from edgeslim.graph import build_dependency_graph
from edgeslim.modelinfo import info
from edgeslim.models import create_model
from edgeslim.profile import CostRuntime
from edgeslim.profile.latency_table import LatencyModel, LatencyTable
from edgeslim.prune.latency_planner import free_merges, plan_latency
from edgeslim.prune.surgery import apply_plan
from edgeslim.transforms.fold import foldable_pairs

from nets import randomize_bn_
from test_latency import Chain, stair_cost


def bn_cost(module: nn.Module, shape: tuple) -> float:
    """``stair_cost`` plus 0.05 ms per BatchNorm (a kernel of its own, as in eager PyTorch)."""
    return 0.05 if isinstance(module, nn.BatchNorm2d) else stair_cost(module, shape)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))


def _chain():
    torch.manual_seed(0)
    return randomize_bn_(Chain()).eval(), torch.randn(1, 3, 8, 8)


def _bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _macs(model: nn.Module, x: torch.Tensor) -> float:
    return float(build_dependency_graph(model, x).cost()[0])


def test_folds_are_taken_where_bn_costs_time_and_the_prediction_is_exact():
    model, x = _chain()
    pruned = edgeslim.prune(model, x, target_speedup=1.3, runtime=CostRuntime(bn_cost))
    lat = info(pruned).latency
    assert len(lat.merges) == 3 and _bns(pruned) == 0
    assert lat.predicted_ms == pytest.approx(lat.measured_ms)
    assert lat.measured_ms <= lat.target_ms + 1e-9
    assert info(pruned).plans[-1]["folded_bn"] == [["features.0", "features.1"], ["features.3", "features.4"],
                                                   ["features.6", "features.7"]]
    # exact: the same channels cut without folding compute the same function
    unfolded = copy.deepcopy(model)
    plan = {k: v for k, v in info(pruned).plans[-1].items() if k != "folded_bn"}
    apply_plan(unfolded, x, plan)
    torch.testing.assert_close(pruned(x), unfolded(x), rtol=1e-5, atol=1e-5)


def test_folds_are_not_taken_where_bn_costs_nothing():
    model, x = _chain()
    pruned = edgeslim.prune(model, x, target_speedup=1.3, runtime=CostRuntime(stair_cost))
    assert info(pruned).latency.merges == [] and _bns(pruned) == 3
    assert "folded_bn" not in info(pruned).plans[-1]


class FusingRuntime(CostRuntime):
    """A runtime whose graph optimiser folds BNs itself (as onnxruntime and OpenVINO do)."""

    def folds_batchnorm(self) -> bool:
        return True


def test_no_folds_are_offered_on_a_runtime_that_folds_bns_itself():
    from edgeslim.profile.runtimes import OnnxRuntime, OpenVinoRuntime

    assert OnnxRuntime().folds_batchnorm() and OpenVinoRuntime().folds_batchnorm()
    model, x = _chain()
    pruned = edgeslim.prune(model, x, target_speedup=1.3, runtime=FusingRuntime(bn_cost))
    assert info(pruned).latency.merges == [] and _bns(pruned) == 3


def test_folding_keeps_more_flops_at_the_same_target():
    model, x = _chain()
    folded = edgeslim.prune(model, x, target_speedup=1.3, runtime=CostRuntime(bn_cost))
    plain = edgeslim.prune(model, x, target_speedup=1.3, runtime=CostRuntime(bn_cost), merge="none")
    assert info(plain).latency.merges == [] and _bns(plain) == 3
    assert info(plain).latency.measured_ms <= info(plain).latency.target_ms + 1e-9
    assert _macs(folded, x) >= _macs(plain, x)
    assert _macs(folded, x) > _macs(plain, x), "the BN time folded away is time not cut from channels"


def test_auto_does_not_fold_when_fine_tuning_follows():
    model, x = _chain()
    tuned = []
    pruned = edgeslim.prune(model, x, target_speedup=1.3, runtime=CostRuntime(bn_cost),
                            finetune=lambda m, step: tuned.append(_bns(m)))
    assert tuned == [3] and info(pruned).latency.merges == []
    forced = edgeslim.prune(model, x, target_speedup=1.3, runtime=CostRuntime(bn_cost), merge="exact",
                            finetune=lambda m, step: None)
    assert _bns(forced) == 0
    with pytest.raises(ConfigError, match="merge='fold'"):
        edgeslim.prune(model, x, target_speedup=1.3, runtime=CostRuntime(bn_cost), merge="fold")


def test_planner_folds_only_convs_whose_folded_unit_is_faster():
    model, x = _chain()
    graph = build_dependency_graph(model, x, protect_first=True)
    lat = LatencyModel(graph, LatencyTable(CostRuntime(bn_cost)), 1.0)
    pairs = foldable_pairs(model, x)
    offered = lat.offer_folds([p.layer for p in pairs])
    assert sorted(offered.values()) == ["features.0", "features.3", "features.6"]  # not the Linear
    assert free_merges(lat, offered) == frozenset(offered)
    free = LatencyModel(graph, LatencyTable(CostRuntime(stair_cost)), 1.0)
    assert free_merges(free, free.offer_folds([p.layer for p in pairs])) == frozenset()
    # the prediction counts every fold's saving (0.05 ms per BN) before any channel move
    plan = plan_latency(graph, np.ones(len(graph.class_locked)), lat, 1.0 - 0.15 + 1e-9, folds=offered)
    assert plan.merged == frozenset(offered) and not plan.removed.any()
    assert plan.predicted_ms == pytest.approx(0.85)


def test_save_load_round_trip_of_a_folded_latency_prune(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn_(create_model("resnet20")).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned = edgeslim.prune(model, x, target_speedup=1.2, runtime=CostRuntime(bn_cost))
    assert info(pruned).latency.merges and _bns(pruned) < _bns(model)
    path = edgeslim.save(pruned, tmp_path / "folded.safetensors")
    for loaded in (edgeslim.load(path), edgeslim.load(path, model=model)):
        assert _bns(loaded) == _bns(pruned)
        torch.testing.assert_close(loaded(x), pruned(x))


def test_a_malformed_folded_bn_in_a_plan_is_refused():
    model, x = _chain()
    with pytest.raises(CheckpointError, match="folded_bn"):
        apply_plan(copy.deepcopy(model), x, {"groups": {}, "folded_bn": [["features.0"]]})
    with pytest.raises(CheckpointError, match="cannot"):
        apply_plan(copy.deepcopy(model), x, {"groups": {}, "folded_bn": [["features.0", "features.2"]]})


def test_eager_torch_folds_batchnorms(monkeypatch):
    monkeypatch.setenv("EDGESLIM_LATENCY_CLOCK", "thread")
    model, x = _chain()
    pruned = edgeslim.prune(model, x, target_speedup=1.05, runtime="torch", latency_runs=10)
    assert info(pruned).latency.merges, "eager PyTorch runs a BatchNorm as a kernel of its own"
    assert math.isfinite(info(pruned).latency.measured_ms)


def test_two_steps_fold_once_and_reach_the_target():
    model, x = _chain()
    pruned = edgeslim.prune(model, x, target_speedup=1.3, steps=2, runtime=CostRuntime(bn_cost))
    plans = info(pruned).plans
    assert "folded_bn" in plans[0] and "folded_bn" not in plans[1] and _bns(pruned) == 0
    assert info(pruned).latency.measured_ms <= info(pruned).latency.target_ms + 1e-9
