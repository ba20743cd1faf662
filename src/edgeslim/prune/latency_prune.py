"""``prune(..., target_latency=ms | target_speedup=x, runtime=..., threads=...)``.

Measure the unpruned model in the runtime, plan with the per-layer tables
(``latency_planner``), build the pruned model, *measure it*, and re-plan with a
corrected latency model when the measurement misses the target (the tables cannot see
everything a runtime does across layers). Before the first plan, two probe variants
(channels cut, blocks removed) are measured to calibrate the model's two scales. The result records what was measured
in ``model.edgeslim_latency``.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..graph import DependencyGraph
from ..profile.latency_table import LatencyModel, LatencyTable
from ..profile.runtimes import get_runtime
from .blocks import block_importance, find_residual_blocks, remove_blocks_
from .importance import ImportanceContext, get_importance
from .latency_planner import LatencyPlan, plan_latency, probe_plans
from .planner import Constraints, apply_constraints
from .surgery import apply_plan, prune_channels_, removal_to_plan

log = logging.getLogger(__name__)
#: measured within this fraction of the target counts as met (timing noise on a CPU)
TOLERANCE = 0.05
MAX_ATTEMPTS = 4


def _batch(inputs: tuple) -> int:
    return next((int(t.shape[0]) for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 0), 1)


class _Measurer:
    """Times whole models in the chosen runtime (interleaving is the benchmark's job)."""

    def __init__(self, cfg: Any, inputs: tuple) -> None:
        self.runtime = get_runtime(cfg.runtime)
        self.threads, self.inputs = cfg.threads, inputs
        self.runs = cfg.latency_runs

    def __call__(self, model: nn.Module) -> float:
        from ..profile.runtimes import measure_latency

        return measure_latency(model, self.inputs, runtime=self.runtime, threads=self.threads,
                               runs=self.runs, warmup=max(3, self.runs // 5))


def _build(model: nn.Module, inputs: tuple, graph: DependencyGraph, plan: LatencyPlan) -> nn.Module:
    trial = copy.deepcopy(model)
    apply_plan(trial, inputs, removal_to_plan(graph, plan.removed))
    return remove_blocks_(trial, plan.blocks)


def _scores(graph: DependencyGraph, model: nn.Module, cfg: Any, calib_data: Any) -> np.ndarray:
    ctx = ImportanceContext(calib_data=calib_data, max_batches=cfg.calib_batches)
    return np.asarray(get_importance(cfg.criterion)(graph, model, ctx), dtype=np.float64)


def _attempts(model, inputs, graph, lat: LatencyModel, plan_for: Callable[[float], LatencyPlan],
              measure, target):
    """Plan, build, measure; feed the measurement back into the latency model (``observe``
    refits its scales) and plan again at the target, corrected by the miss the refitted
    model still cannot explain. Returns the feasible attempt with the largest budget (else
    the fastest) and every attempt's record (``predicted_ms`` as planned, before the refit)."""
    budget, tried, best = target, [], None
    for _ in range(MAX_ATTEMPTS):
        plan = plan_for(budget)
        ms = measure(_build(model, inputs, graph, plan))
        tried.append({"budget_ms": budget, "predicted_ms": plan.predicted_ms, "measured_ms": ms,
                      "scale": list(lat.scale)})
        ok = ms <= target * (1 + TOLERANCE)
        if ok and (best is None or not best[2] or budget > best[3]):
            best = (plan, ms, True, budget)
        elif best is None or (not best[2] and ms < best[1]):
            best = (plan, ms, ok, budget)
        if ok and ms >= target * (1 - 2 * TOLERANCE):
            break  # met, and not needlessly fast
        lat.observe(plan.removed, plan.dropped, ms)
        budget = target * lat.predict(plan.removed, plan.dropped) / ms
    return best, tried


def _calibrate(model, inputs, graph, lat: LatencyModel, probes: list[LatencyPlan], measure) -> list[dict]:
    """Measure the probe variants and fit the latency model's scales to them."""
    records = []
    for probe in probes:
        ms = measure(_build(model, inputs, graph, probe))
        records.append({"predicted_ms": probe.predicted_ms, "measured_ms": ms,
                        "blocks": len(probe.blocks), "channels": int(probe.removed.sum())})
        lat.observe(probe.removed, probe.dropped, ms)
    return records


def step_target(cfg: Any, origin_ms: float, fraction: float) -> float:
    """The target after ``fraction`` of the steps: geometric from the unpruned latency."""
    final = cfg.target_latency or origin_ms / cfg.target_speedup
    return origin_ms * (final / origin_ms) ** fraction


def prune_to_latency_(model: nn.Module, inputs: tuple, cfg: Any, calib_data: Any,
                      graph: DependencyGraph, fraction: float = 1.0,
                      origin_ms: float | None = None) -> dict:
    """Prune ``model`` in place to the latency target of ``cfg`` (``fraction`` of the way from
    ``origin_ms``, the unpruned latency, measured now when None); returns the plan and records
    ``model.edgeslim_latency`` (runtime, batch, threads, baseline, target, predicted, measured)."""
    measure = _Measurer(cfg, inputs)
    baseline = measure(model)
    origin = origin_ms or baseline
    target = step_target(cfg, origin, fraction)
    info = {"runtime": measure.runtime.name, "runtime_version": measure.runtime.version(),
            "threads": cfg.threads, "batch": _batch(inputs), "origin_ms": origin,
            "baseline_ms": baseline, "target_ms": target}
    if target >= baseline:
        model.edgeslim_latency = info | {"predicted_ms": baseline, "measured_ms": baseline, "attempts": []}
        return {"groups": {}, "removed": 0}
    table = LatencyTable(measure.runtime, cfg.threads)
    lat = LatencyModel(graph, table, baseline)
    scores = _scores(graph, model, cfg, calib_data)
    blocks = find_residual_blocks(model) if cfg.depth else []
    block_scores = block_importance(model, blocks, calib_data if calib_data is not None else inputs,
                                    cfg.calib_batches) if blocks else {}
    try:
        probes = _calibrate(model, inputs, graph, lat,
                            probe_plans(graph, scores, lat, blocks, cfg.min_channels), measure)
        best, tried = _attempts(model, inputs, graph, lat, lambda b: plan_latency(
            graph, scores, lat, b, blocks, block_scores, cfg.min_channels), measure, target)
    finally:
        table.save()
    plan, measured = best[0], best[1]
    removed = apply_constraints(graph, plan.removed, scores, Constraints(cfg.min_channels, 1))
    result = prune_channels_(model, graph, removed)
    remove_blocks_(model, plan.blocks)
    if plan.blocks:
        result["identity_blocks"] = dict(plan.blocks)
    model.edgeslim_latency = info | {
        "predicted_ms": plan.predicted_ms, "measured_ms": measured, "met": bool(best[2]),
        "attempts": tried, "probes": probes, "scale": list(lat.scale), "removed_blocks": sorted(plan.blocks), "measured_entries": table.measured,
        "per_layer_before_ms": lat.per_layer(), "per_layer_after_ms": lat.per_layer(plan.removed)}
    log.info("latency: %.3f -> %.3f ms measured (target %.3f, predicted %.3f) on %s",
             baseline, measured, target, plan.predicted_ms, measure.runtime.name)
    return result | {"removed": int(removed.sum()) + len(plan.blocks)}
