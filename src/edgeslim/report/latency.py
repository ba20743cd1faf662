"""The report's latency section: predicted vs measured latency per stage, the latency
realisation, and per-layer latency before/after compression, each with its runtime,
threads and batch stated.

Stage rows may carry (from ``pipeline.runner.measure`` and the stage handlers):
``onnx_latency_ms`` / ``latency_ms`` (measured, every stage), ``latency_setup`` (how
those were measured), ``latency_plan`` (a latency-targeted prune stage's record:
runtime, threads, batch, predicted_ms, measured_ms, per_layer_before_ms/after_ms),
``layer_latency_ms`` (eager per-layer ms) and ``trained`` (False: an untrained stage,
see ``pipeline/trained.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from edgeslim.report.table import Row, stage_name

NONE = "—"
#: the realisation is shown only where FLOPs fell by more than this fraction (else it divides noise by ~1)
MIN_FLOPS_CUT = 0.01
#: rows of the per-layer before/after table (the slowest layers before compression)
MAX_LAYER_ROWS = 15

REALISATION_NOTE = (
    "Realisation = speed-up ÷ FLOPs reduction (both against the first stage): 1.00 means latency "
    "fell as much as FLOPs did; below 1, part of the FLOPs saved did not become time (fixed "
    "per-inference cost, memory-bound layers); shown where FLOPs fell by more than 1%. Predicted: "
    "the latency planner's estimate from per-layer tables on its runtime; measured (planner): the "
    "pruned model timed whole on that runtime; error = measured ÷ predicted − 1. Stages without a "
    "latency target have no prediction (—). Untrained: the stage changed the model's structure "
    "and nothing has trained it since (e.g. a freshly lightened student)."
)


def _num(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    return float(value) if ok else None


def measured_ms(row: Mapping[str, Any]) -> float | None:
    """A stage's measured deployment latency: onnxruntime, else eager PyTorch."""
    value = _num(row.get("onnx_latency_ms"))
    return value if value is not None else _num(row.get("latency_ms"))


def _ratio(base: float | None, value: float | None) -> float | None:
    return None if base is None or value is None or value <= 0 else base / value


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return NONE if value is None else f"{value:{spec}}{suffix}"


def latency_setup(stages: Sequence[Row]) -> Mapping[str, Any]:
    """The first stage's ``latency_setup`` (how :func:`measured_ms` was taken), or ``{}``."""
    return next((r["latency_setup"] for r in stages if isinstance(r.get("latency_setup"), Mapping)), {})


def threads_text(threads: Any) -> str:
    """``"1 thread"``, ``"4 threads"``."""
    return f"{threads} thread{'' if threads == 1 else 's'}"


def short_setup(stages: Sequence[Row]) -> str:
    """``"onnxruntime, 1 thread, batch 1"``: for axis labels."""
    setup = latency_setup(stages)
    return f"onnxruntime, {threads_text(setup.get('threads', 1))}, batch {setup.get('batch', 1)}"


def setup_text(stages: Sequence[Row]) -> str:
    """How the per-stage latencies were measured (runtime, version, threads, batch, runs)."""
    setup = latency_setup(stages)
    version = f" {setup['onnxruntime_version']}" if setup.get("onnxruntime_version") else ""
    torch_v = f" {setup['torch_version']}" if setup.get("torch_version") else ""
    runs = f", median of {setup['onnx_runs']} runs" if setup.get("onnx_runs") else ", median"
    cpu = f" on {setup['cpu']}" if setup.get("cpu") else ""
    return (f"Measured latency: onnxruntime{version} (CPU execution provider, full graph optimisation)"
            f"{cpu}, {threads_text(setup.get('threads', 1))}, batch {setup.get('batch', 1)}{runs}; where "
            f"onnxruntime could not run the model, eager PyTorch{torch_v} with the same threads and batch.")


def plan_runtime(plan: Mapping[str, Any]) -> str:
    """``"onnxruntime 1.20, 1 thread, batch 1"`` of a latency planner record."""
    version = f" {plan['runtime_version']}" if plan.get("runtime_version") else ""
    return f"{plan.get('runtime', '?')}{version}, {threads_text(plan.get('threads', '?'))}, " \
           f"batch {plan.get('batch', '?')}"


def _plan_cells(plan: Any) -> list[str]:
    if not isinstance(plan, Mapping):
        return [NONE] * 4
    predicted, measured = _num(plan.get("predicted_ms")), _num(plan.get("measured_ms"))
    ratio = _ratio(measured, predicted)  # measured / predicted
    error = None if ratio is None else 100 * (ratio - 1)
    return [_fmt(predicted, ".3f"), _fmt(measured, ".3f"), _fmt(error, "+.1f", "%"), plan_runtime(plan)]


LATENCY_HEADERS = ["#", "stage", "trained", "measured ms", "speed-up ×", "FLOPs ×", "realisation",
                   "predicted ms", "measured ms (planner)", "error", "planner runtime"]


def latency_cells(stages: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows)`` of the latency table, one row per stage."""
    first = stages[0] if stages else {}
    base_ms, base_flops = measured_ms(first), _num(first.get("flops"))
    rows = []
    for i, row in enumerate(stages):
        speedup = _ratio(base_ms, measured_ms(row))
        flops_x = _ratio(base_flops, _num(row.get("flops")))
        real = speedup / flops_x if speedup is not None and flops_x and flops_x > 1 / (1 - MIN_FLOPS_CUT) \
            else None
        trained = {True: "yes", False: "no (untrained)"}.get(row.get("trained"), NONE)
        rows.append([str(i), stage_name(row, i), trained, _fmt(measured_ms(row), ".3f"),
                     _fmt(speedup, ".2f", "x"), _fmt(flops_x, ".2f", "x"), _fmt(real, ".2f")]
                    + _plan_cells(row.get("latency_plan")))
    return list(LATENCY_HEADERS), rows


def has_latency(stages: Sequence[Row]) -> bool:
    """Whether any stage has a measured or predicted latency (else the section is left out)."""
    return any(measured_ms(r) is not None or isinstance(r.get("latency_plan"), Mapping) for r in stages)


@dataclass(frozen=True)
class LayerComparison:
    """Per-layer ms of the model before and after compression, and how they were measured."""

    before: dict[str, float]
    after: dict[str, float]
    how: str


def _ms_dict(value: Any) -> dict[str, float] | None:
    if not isinstance(value, Mapping) or not value:
        return None
    out = {str(k): _num(v) for k, v in value.items()}
    return {k: v for k, v in out.items() if v is not None} or None


def layer_comparison(stages: Sequence[Row]) -> LayerComparison | None:
    """Per-layer latency before/after: the last latency plan's tables on its chosen runtime
    (each layer timed alone there), else eager PyTorch of the first and the last stage."""
    for row in reversed(stages):
        plan = row.get("latency_plan")
        if isinstance(plan, Mapping):
            before = _ms_dict(plan.get("per_layer_before_ms"))
            after = _ms_dict(plan.get("per_layer_after_ms"))
            if before and after:
                i = stages.index(row)
                step = " (its last pruning step)" if plan.get("origin_ms") != plan.get("baseline_ms") else ""
                how = (f"{plan_runtime(plan)}; prunable layers, each timed alone with its BatchNorm "
                       f"and ReLU (latency tables), before and after stage {i} ({stage_name(row, i)}){step}")
                return LayerComparison(before, after, how)
    before, after = (_ms_dict(stages[0].get("layer_latency_ms")),
                     _ms_dict(stages[-1].get("layer_latency_ms"))) if stages else (None, None)
    if not before or not after or len(stages) < 2:
        return None
    setup = latency_setup(stages)
    how = (f"eager PyTorch, {threads_text(setup.get('threads', 1))}, batch {setup.get('batch', 1)}, "
           f"median per leaf module; first stage ({stage_name(stages[0], 0)}) vs last "
           f"({stage_name(stages[-1], len(stages) - 1)})")
    return LayerComparison(before, after, how)


def layer_cells(cmp: LayerComparison) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows)``: the slowest layers before (at most :data:`MAX_LAYER_ROWS`), then totals."""
    names = sorted(cmp.before, key=lambda k: -cmp.before[k])[:MAX_LAYER_ROWS]
    names += [k for k in cmp.after if k not in cmp.before][: max(0, MAX_LAYER_ROWS - len(names))]
    rows = []
    for name in names + ["total"]:
        b = sum(cmp.before.values()) if name == "total" else cmp.before.get(name)
        a = sum(cmp.after.values()) if name == "total" else cmp.after.get(name)
        rows.append([name, _fmt(b, ".4f"), _fmt(a, ".4f"), _fmt(_ratio(b, a), ".2f", "x")])
    return ["layer", "before ms", "after ms", "×"], rows
