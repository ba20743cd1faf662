"""``prune(..., target_latency=ms | target_speedup=x, runtime=..., threads=...)``.

Measure the unpruned model in the runtime, plan with the per-layer tables
(``latency_planner``), build the pruned model, *measure it*, and re-plan with a
corrected latency model when the measurement misses the target (the tables cannot see
everything a runtime does across layers). Before the first plan, up to three probe variants
(channels cut to 0.5 and 0.75 of each group, every other block removed) are measured to
calibrate the model's two scales. The result records what was measured in
``edgeslim.info(model).latency``.

Exact merges (``merge="exact"``): every BatchNorm that ``fold_batchnorm`` could fold into
its convolution is offered to the planner as a free move (``latency_planner``,
``free_merges``); the ones whose folded unit times faster are folded in every variant
built and measured, and in the result (``LatencyResult.merges``; the plan's ``folded_bn``,
which ``apply_plan`` replays). A folded model has no BatchNorm left to fine-tune, so
``prune`` resolves ``merge="auto"`` to ``"none"`` when it fine-tunes (``finetune=``) and
to ``"exact"`` otherwise.
"""
from __future__ import annotations

import copy
import functools
import logging
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..modelinfo import LatencyResult
from ..modelinfo import info as record  # ``info`` is the measurement dict below
from ..graph import DependencyGraph
from ..profile.latency_table import LatencyModel, LatencyTable
from ..profile.runtimes import get_runtime
from ..transforms.fold import FoldedPair, fold_pairs_, foldable_pairs
from .blocks import block_importance, find_residual_blocks, remove_blocks_
from .importance import ImportanceContext, get_importance
from .latency_planner import LatencyPlan, LatencyTargetError, plan_latency, probe_plans
from .planner import Constraints, apply_constraints
from .surgery import apply_plan, prune_channels_, removal_to_plan

log = logging.getLogger(__name__)
#: measured within this fraction of the target counts as met (timing noise on a CPU); a plan
#: faster than the target by more than it is re-planned (its speed costs FLOPs it need not)
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


def _build(model: nn.Module, inputs: tuple, graph: DependencyGraph, plan: LatencyPlan,
           folds: dict[int, FoldedPair]) -> nn.Module:
    trial = copy.deepcopy(model)
    apply_plan(trial, inputs, removal_to_plan(graph, plan.removed))
    return fold_pairs_(remove_blocks_(trial, plan.blocks), _folded(plan, folds))


def _folded(plan: LatencyPlan, folds: dict[int, FoldedPair]) -> list[FoldedPair]:
    return [folds[i] for i in sorted(plan.merged)]


def _fold_moves(model: nn.Module, inputs: tuple, lat: LatencyModel, merge: str) -> dict[int, FoldedPair]:
    """``{LatencyModel layer: (conv, bn)}`` of the folds offered to the planner: none unless
    ``merge="exact"``, none on a runtime that folds BNs itself (``Runtime.folds_batchnorm``:
    onnxruntime timed 4 of ResNet-20's 21 folded units >= 2% faster, by noise alone)."""
    if merge != "exact" or getattr(lat.table.runtime, "folds_batchnorm", lambda: False)():
        return {}
    pairs = {p.layer: p for p in foldable_pairs(model, inputs)}
    return {i: pairs[path] for i, path in lat.offer_folds(list(pairs)).items()}


def _scores(graph: DependencyGraph, model: nn.Module, cfg: Any, calib_data: Any) -> np.ndarray:
    ctx = ImportanceContext(calib_data=calib_data, max_batches=cfg.calib_batches)
    return np.asarray(get_importance(cfg.criterion)(graph, model, ctx), dtype=np.float64)


def _attempts(build: Callable[[LatencyPlan], nn.Module], lat: LatencyModel,
              plan_for: Callable[[float], LatencyPlan], measure, target, keep_fastest: bool = False):
    """Plan, build, measure; feed the measurement back into the latency model (``observe``
    refits its scales) and plan again at the target, corrected by the miss the refitted
    model still cannot explain. Returns the feasible attempt with the largest budget (else
    the fastest) and every attempt's record (``predicted_ms`` as planned, before the refit).
    ``keep_fastest``: a target out of reach of the fastest plan returns that plan instead of
    raising."""
    budget, tried, best = target, [], None
    for _ in range(MAX_ATTEMPTS):
        try:
            plan = plan_for(budget)
            # a plan that changes nothing is the model measured at the start: a second timing of it
            # could only add noise (on a busy machine, a "met" target with nothing pruned)
            ms = lat.baseline_ms if _changes_nothing(plan) else measure(build(plan))
        except LatencyTargetError as exc:
            if best is not None:
                break  # a corrected budget beyond reach: keep the best model measured so far
            plan, ms = _fastest_if_fast_enough(exc, build, measure, target, keep_fastest)  # or raises
        tried.append({"budget_ms": budget, "predicted_ms": plan.predicted_ms, "measured_ms": ms,
                      "scale": list(lat.scale)})
        ok = ms <= target * (1 + TOLERANCE)
        if ok and (best is None or not best[2] or budget > best[3]):
            best = (plan, ms, True, budget)
        elif best is None or (not best[2] and ms < best[1]):
            best = (plan, ms, ok, budget)
        if ok and ms >= target * (1 - TOLERANCE):
            break  # met, and not needlessly fast
        lat.observe(plan.removed, plan.dropped, ms, plan.merged)
        budget = target * lat.predict(plan.removed, plan.dropped, plan.merged) / ms
    return best, tried


def _changes_nothing(plan: LatencyPlan) -> bool:
    return not np.any(plan.removed) and not plan.blocks and not plan.merged


def _fastest_if_fast_enough(exc: LatencyTargetError, build: Callable[[LatencyPlan], nn.Module], measure,
                            target: float, keep_fastest: bool = False) -> tuple[LatencyPlan, float]:
    """The first plan is predicted out of reach: measure the fastest plan the planner made
    (per-layer tables timed on a busy machine can overstate it) and go on from it, with its
    measurement, if it meets ``target`` (or ``keep_fastest``); otherwise raise ``exc`` with that
    measurement added."""
    if exc.fastest is None:
        raise exc
    ms = measure(build(exc.fastest))
    if ms > target * (1 + TOLERANCE) and not keep_fastest:
        raise LatencyTargetError(f"{exc} (measured: {ms:.4g} ms)", exc.fastest) from None
    log.info("latency: the fastest plan was predicted at %.4g ms but measured %.4g ms (target %.4g)",
             exc.fastest.predicted_ms, ms, target)
    return exc.fastest, ms


def _calibrate(build: Callable[[LatencyPlan], nn.Module], lat: LatencyModel, probes: list[LatencyPlan],
               measure) -> list[dict]:
    """Measure the probe variants (no folds: they calibrate channels and depth) and fit the
    latency model's scales to them."""
    records = []
    for probe in probes:
        ms = measure(build(probe))
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
    ``edgeslim.info(model).latency`` (runtime, batch, threads, baseline, target, predicted, measured)."""
    measure = _Measurer(cfg, inputs)
    baseline = measure(model)
    origin = origin_ms or baseline
    target = step_target(cfg, origin, fraction)
    info = {"runtime": measure.runtime.name, "runtime_version": measure.runtime.version(),
            "threads": cfg.threads, "batch": _batch(inputs), "origin_ms": origin,
            "baseline_ms": baseline, "target_ms": target}
    if target >= baseline:
        record(model).latency = LatencyResult.from_dict(
            info | {"predicted_ms": baseline, "measured_ms": baseline, "attempts": []})
        return {"groups": {}, "removed": 0}
    table = LatencyTable(measure.runtime, cfg.threads)
    lat = LatencyModel(graph, table, baseline)
    scores = _scores(graph, model, cfg, calib_data)
    blocks = find_residual_blocks(model) if cfg.depth else []
    block_scores = block_importance(model, blocks, calib_data if calib_data is not None else inputs,
                                    cfg.calib_batches) if blocks else {}
    try:
        folds = _fold_moves(model, inputs, lat, cfg.merge)
        build = functools.partial(_build, model, inputs, graph, folds=folds)
        probes = _calibrate(build, lat, probe_plans(graph, scores, lat, blocks, cfg.min_channels), measure)
        best, tried = _attempts(build, lat, lambda b: plan_latency(
            graph, scores, lat, b, blocks, block_scores, cfg.min_channels,
            folds={i: p.layer for i, p in folds.items()}), measure, target,
            keep_fastest=cfg.on_unreachable == "fastest")
    finally:
        table.save()
    plan, measured = best[0], best[1]
    removed = apply_constraints(graph, plan.removed, scores, Constraints(cfg.min_channels, 1))
    result = prune_channels_(model, graph, removed)
    remove_blocks_(model, plan.blocks)
    folded = _folded(plan, folds)
    fold_pairs_(model, folded)  # exact in eval mode: the BN's running statistics
    if plan.blocks:
        result["identity_blocks"] = dict(plan.blocks)
    if folded:
        result["folded_bn"] = [[p.layer, p.bn] for p in folded]
    record(model).latency = LatencyResult.from_dict(info | {
        "predicted_ms": plan.predicted_ms, "measured_ms": measured, "met": bool(best[2]),
        "attempts": tried, "probes": probes, "scale": list(lat.scale), "removed_blocks": sorted(plan.blocks),
        "measured_entries": table.measured, "merges": [f"fold_bn {p.bn} -> {p.layer}" for p in folded],
        "per_layer_before_ms": lat.per_layer(), "per_layer_after_ms": lat.per_layer(plan.removed, plan.merged)})
    if not best[2]:
        from .api import PruneWarning, _caller_level

        warnings.warn(PruneWarning(
            f"latency target {target:.4g} ms missed: the closest model measured {measured:.4g} ms on "
            f"{measure.runtime.name} after {len(tried)} plans ({baseline / measured:.3g}x faster than "
            "the model it started from); it is returned. Ask for target_speedup <= "
            f"{origin / measured:.3g} to meet it, or measure again on a quiet machine"),
            stacklevel=_caller_level())
    log.info("latency: %.3f -> %.3f ms measured (target %.3f, predicted %.3f) on %s",
             baseline, measured, target, plan.predicted_ms, measure.runtime.name)
    return result | {"removed": int(removed.sum()) + len(plan.blocks) + len(plan.merged)}


class LatencyBudget:
    """A latency target for a planner that projects many times (``admm_prune``'s Z-steps).

    Measures the unpruned model, builds the per-layer tables and calibrates the latency
    model on the probe variants (as ``prune`` does), so that each projection is one
    ``plan_latency`` call on the predicted latency; ``finish`` measures the hard-pruned
    model and re-plans with the measurement fed back when it misses. Channels only:
    ADMM's variables are filters, a removed residual branch has no place in them.
    """

    def __init__(self, model: nn.Module, inputs: tuple, graph: DependencyGraph, cfg: Any) -> None:
        self.model, self.inputs, self.graph, self.cfg = model, inputs, graph, cfg
        self.measure = _Measurer(cfg, inputs)
        self.baseline = self.measure(model)
        self.target = step_target(cfg, self.baseline, 1.0)
        self.table = LatencyTable(self.measure.runtime, cfg.threads)
        self.lat = LatencyModel(graph, self.table, self.baseline)
        # the probes need an order of the channels only: L1, no data
        scores = np.asarray(get_importance("l1")(graph, model, ImportanceContext()), dtype=np.float64)
        try:
            self.probes = _calibrate(functools.partial(_build, model, inputs, graph, folds={}), self.lat,
                                     probe_plans(graph, scores, self.lat, [], cfg.min_channels), self.measure)
            self.plan(scores)  # LatencyTargetError now, before any training, if out of reach
        finally:
            self.table.save()

    def budget_ms(self, fraction: float = 1.0) -> float:
        return step_target(self.cfg, self.baseline, fraction)

    def plan(self, scores: np.ndarray, fraction: float = 1.0, budget_ms: float | None = None) -> np.ndarray:
        """The removal mask keeping the most importance within the (predicted) budget.

        Raises:
            LatencyTargetError: the budget cannot be reached (states the best reachable).
        """
        budget = self.budget_ms(fraction) if budget_ms is None else budget_ms
        plan = plan_latency(self.graph, scores, self.lat, budget, min_channels=self.cfg.min_channels)
        self.table.save()
        return plan.removed

    def meets(self, removed: np.ndarray, fraction: float = 1.0) -> bool:
        return self.lat.predict(removed) <= self.budget_ms(fraction) * (1 + 1e-9)

    def finish(self, replan: Callable[[float], np.ndarray],
               removed: np.ndarray) -> tuple[np.ndarray, LatencyResult]:
        """Measure ``removed`` (built on a copy); while it misses, feed the measurement back
        and ``replan(budget_ms)``. Returns the mask to cut and the model's latency record."""
        tried = []
        for attempt in range(MAX_ATTEMPTS):
            trial = copy.deepcopy(self.model)
            apply_plan(trial, self.inputs, removal_to_plan(self.graph, removed))
            ms = self.measure(trial)
            tried.append({"predicted_ms": self.lat.predict(removed), "measured_ms": ms})
            if ms <= self.target * (1 + TOLERANCE) or attempt == MAX_ATTEMPTS - 1:
                break
            self.lat.observe(removed, frozenset(), ms)
            try:
                removed = replan(self.target * self.lat.predict(removed) / ms)
            except LatencyTargetError:
                break  # the corrected budget is beyond reach: keep the mask just measured
        info = {"runtime": self.measure.runtime.name, "runtime_version": self.measure.runtime.version(),
                "threads": self.cfg.threads, "batch": _batch(self.inputs), "baseline_ms": self.baseline,
                "target_ms": self.target, "predicted_ms": tried[-1]["predicted_ms"],
                "measured_ms": tried[-1]["measured_ms"],
                "met": tried[-1]["measured_ms"] <= self.target * (1 + TOLERANCE),
                "attempts": tried, "probes": self.probes, "scale": list(self.lat.scale),
                "origin_ms": self.baseline}
        return removed, LatencyResult.from_dict(info)
