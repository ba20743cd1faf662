"""The report's latency section and the untrained-stage rule.

Unit tests of the rule (``pipeline/trained.py``), the latency table and the plot that
draws untrained stages apart, then one run on tiny generated data with a latency target
planned on a deterministic cost runtime (so nothing depends on timing; no timed asserts).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from tinydata import tiny_recipe
from torch import nn

from edgeslim.pipeline import parse_recipe, run_recipe
from edgeslim.pipeline.stages import STAGES
from edgeslim.pipeline.trained import Effect, stage_effect, trained_flags
from edgeslim.profile import CostRuntime
from edgeslim.profile.runtimes import RUNTIMES
from edgeslim.report import write_report
from edgeslim.report.latency import NONE, latency_cells
from edgeslim.report.plots import _draw_stages, merged_order

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _flags(stages: list, **model) -> list[bool]:
    recipe = {"name": "t", "model": {"name": "lenet5"} | model, "data": {"name": "mnist"}, "stages": stages}
    return trained_flags(parse_recipe(recipe))


# ------------------------------------------------------------------ the untrained-stage rule
@pytest.mark.parametrize("stages, flags", [
    # the default job: a freshly lightened student is untrained until distillation
    ([{"train": {}}, {"lighten": {}}, {"distill": {}}, {"prune": {"target_params": 0.2, "finetune": "kd"}},
      "export", "profile"], [False, True, False, True, True, True, True]),
    ([{"train": {}}, {"prune": {"remove_channels": 0.5, "finetune": "none"}}], [False, True, False]),
    ([{"train": {}}, {"prune": {"remove_channels": 0.5, "finetune_epochs": 0}}], [False, True, False]),
    # exact merges, quantize and export keep the status they were given, whichever it is
    ([{"train": {}}, {"lighten": {}}, {"merge": {"mode": "exact"}}, "quantize", "export"],
     [False, True, False, False, False, False]),
    ([{"train": {}}, {"merge": {"mode": "exact"}}, "export"], [False, True, True, True]),
    ([{"train": {}}, {"merge": {"mode": "streamline", "steps": 0}}], [False, True, False]),
    ([{"train": {}}, {"merge": {"mode": "streamline", "steps": 5}}], [False, True, True]),
    ([{"train": {}}, {"prune": {"method": "unstructured", "sparsity": 0.9, "finetune": "none"}},
      {"finetune": {"epochs": 1}}], [False, True, False, True]),
    ([{"train": {}}, {"prune": {"method": "easiedge", "remove_filters": 0.5, "admm_epochs": 0,
                                "finetune": "none"}}], [False, True, False]),
    ([{"train": {}}, {"prune": {"method": "easiedge", "remove_filters": 0.5}}], [False, True, True]),
    ([{"train": {"epochs": 0}}, {"lighten": {}}, {"distill": {"epochs": 0, "warmup_epochs": 0}}], [False, False, False, False]),
])
def test_untrained_rule(stages: list, flags: list) -> None:
    assert _flags(stages) == flags


def test_input_from_a_checkpoint_counts_as_trained() -> None:
    assert _flags([{"prune": {"remove_channels": 0.5, "finetune": "none"}}], checkpoint="m.safetensors") \
        == [True, False]
    assert _flags([{"load": {"path": "m.safetensors"}}, "export"]) == [False, True, True]


def test_every_stage_kind_has_an_effect() -> None:
    for name in STAGES.names():
        config = STAGES.get(name).config
        try:
            cfg = config()
        except Exception:  # configs that need a target: the kinds with required fields
            cfg = {"prune": lambda: config(remove_channels=0.5), "load": lambda: config(path="m")}[name]()
        assert isinstance(stage_effect(cfg), Effect)
    assert stage_effect(object()) is Effect.KEEPS  # a kind the rule does not know keeps the status


# ------------------------------------------------------------------ the latency table
PLAN = {"runtime": "onnxruntime", "runtime_version": "1.0", "threads": 1, "batch": 1,
        "predicted_ms": 0.05, "measured_ms": 0.06,
        "per_layer_before_ms": {"conv": 0.04, "fc": 0.02}, "per_layer_after_ms": {"conv": 0.02, "fc": 0.02}}
ROWS = [
    {"stage": "train", "trained": True, "accuracy": 0.99, "flops": 1000, "bytes": 4000, "onnx_latency_ms": 0.1},
    {"stage": "lighten", "trained": False, "accuracy": 0.1, "flops": 500, "bytes": 2000, "onnx_latency_ms": 0.08},
    {"stage": "distill", "trained": True, "accuracy": 0.98, "flops": 500, "bytes": 2000, "onnx_latency_ms": 0.08},
    {"stage": "prune", "trained": True, "accuracy": 0.97, "flops": 250, "bytes": 1000, "onnx_latency_ms": 0.05,
     "latency_plan": PLAN,
     "latency_setup": {"batch": 1, "threads": 1, "onnx_runs": 200, "onnxruntime_version": "1.0"}},
]


def test_latency_table_predicted_measured_and_realisation() -> None:
    headers, rows = latency_cells(ROWS)
    cell = {h: [r[j] for r in rows] for j, h in enumerate(headers)}
    assert len(rows) == len(ROWS)
    assert cell["predicted ms"] == [NONE, NONE, NONE, "0.050"]  # only the planned stage predicts
    assert cell["measured ms (planner)"][3] == "0.060" and cell["error"][3] == "+20.0%"
    assert cell["planner runtime"][3] == "onnxruntime 1.0, 1 thread, batch 1"
    assert cell["trained"] == ["yes", "no (untrained)", "yes", "yes"]
    assert cell["speed-up ×"][0] == "1.00x" and cell["realisation"][0] == NONE  # no FLOPs cut: none
    speedup, flops_x = 0.1 / 0.05, 1000 / 250
    assert cell["speed-up ×"][3] == f"{speedup:.2f}x" and cell["FLOPs ×"][3] == f"{flops_x:.2f}x"
    assert cell["realisation"][3] == f"{speedup / flops_x:.2f}"


def test_untrained_stages_are_drawn_apart_and_unchanged_models_once() -> None:
    ax = Figure().add_subplot()
    export = ROWS[3] | {"stage": "export", "onnx_latency_ms": 0.051}
    rows = [r | {"model_sha256": str(i)} for i, r in enumerate(ROWS)] + [export | {"model_sha256": "3"}]
    xs = _draw_stages(ax, rows, "onnx_latency_ms", "accuracy", "-o", "stages")
    assert sorted(xs) == sorted(r["onnx_latency_ms"] for r in ROWS)  # export: the prune stage's model
    curve, apart = ax.get_lines()
    assert list(curve.get_xdata()) == [0.1, 0.08, 0.05]  # trained stages, joined in stage order
    assert list(apart.get_xdata()) == [0.08] and apart.get_linestyle() == "None"
    labels = [t.get_text() for t in ax.texts]
    assert "1: lighten (untrained)" in labels and "3: prune (= 4)" in labels and len(labels) == 4


def test_merged_layer_order_puts_replacements_where_the_layer_was() -> None:
    before = ["conv1", "conv2", "fc"]
    after = ["conv1", "conv2.dw", "conv2.pw", "fc", "extra"]
    assert merged_order(before, after) == ["conv1", "conv2.dw", "conv2.pw", "conv2", "fc", "extra"]
    assert merged_order([], ["a", "b"]) == ["a", "b"] and merged_order(["a"], []) == ["a"]


def test_report_latency_section_from_rows(tmp_path: Path) -> None:
    paths = write_report(tmp_path, ROWS)
    text = paths["markdown"].read_text()
    assert "## Latency" in text and "predicted ms" in text and "measured ms (planner)" in text
    assert "1 thread, batch 1" in text and "median of 200 runs" in text
    assert "### Latency per layer before and after" in text
    for name in ("accuracy_vs_latency_and_size", "latency_per_layer_before_after"):
        assert paths[name].read_bytes().startswith(PNG_MAGIC)
        assert f"plots/{name}.png" in text


# ------------------------------------------------------------------ a run on tiny data
def _cost(module: nn.Module, shape: tuple) -> float:
    """0.05 ms per conv/linear + work: deterministic, so the latency target is always met."""
    if isinstance(module, nn.Conv2d):
        return 0.05 + 1e-5 * (module.in_channels // module.groups) * module.out_channels * math.prod(shape[2:])
    if isinstance(module, nn.Linear):
        return 0.05 + 1e-5 * module.in_features * module.out_features
    return 0.0


class ReportCostRuntime(CostRuntime):
    def __init__(self) -> None:
        super().__init__(_cost, overhead_ms=0.01, name="report_cost")


def test_run_report_has_latency_section_and_valid_plots(tiny_data: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(RUNTIMES._items, "report_cost", ReportCostRuntime)
    stages = [{"train": {"epochs": 1}}, {"lighten": {}},
              {"prune": {"target_speedup": 1.2, "runtime": "report_cost", "finetune": "plain",
                         "finetune_epochs": 1}}]
    state = run_recipe(parse_recipe(tiny_recipe(tiny_data, stages)), tmp_path / "run", progress=False)
    rows = state["completed"]
    assert [r["trained"] for r in rows] == [False, True, False, True]
    plan = rows[3]["metrics"]["latency_plan"]
    assert plan["runtime"] == "report_cost" and plan["predicted_ms"] > 0 and plan["measured_ms"] > 0
    assert all("latency_plan" not in r["metrics"] for r in rows[:3])  # recorded on its own stage only
    assert all(r["metrics"]["latency_setup"]["threads"] == 1 for r in rows)
    text = (tmp_path / "run" / "report.md").read_text()
    section = text[text.index("## Latency"):]
    assert "predicted ms" in section and "measured ms" in section
    assert re.search(r"onnxruntime [0-9.]+ \(CPU execution provider.*1 thread, batch 1", section)
    assert "report_cost 0, 1 thread, batch 1" in section  # the planner's runtime, threads, batch
    assert "no (untrained)" in section
    for image in ("accuracy_vs_latency_and_size", "latency_per_layer_before_after"):
        path = tmp_path / "run" / "plots" / f"{image}.png"
        assert f"plots/{image}.png" in text and path.read_bytes().startswith(PNG_MAGIC)
    html = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>Latency</h2>" in html and "predicted ms" in html


def test_report_of_an_older_state_without_flags_applies_the_rule(tmp_path: Path) -> None:
    from edgeslim.pipeline.runner import write_run_report

    recipe = parse_recipe({"name": "old", "model": {"name": "lenet5"}, "data": {"name": "mnist"},
                           "stages": [{"train": {}}, {"lighten": {}}, {"distill": {}}]})
    completed = [{"stage": s, "metrics": {"accuracy": a, "onnx_latency_ms": 0.1, "flops": 10}}
                 for s, a in (("input", 0.1), ("train", 0.99), ("lighten", 0.1), ("distill", 0.98))]
    paths = write_run_report(tmp_path, {"recipe": recipe.to_dict(), "completed": completed})
    rows = [ln for ln in paths["markdown"].read_text().splitlines() if ln.startswith("| 1 | lighten |")]
    assert len(rows) == 2 and "no (untrained)" in rows[1]  # the stage table, then the latency table
