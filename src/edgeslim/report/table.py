"""The per-stage table of a run: values, and compression ratios against the first stage."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from edgeslim.profile import format_value

Row = dict[str, Any]


def _pct(value: Any) -> str:
    return f"{100 * float(value):.2f}%"


def _ms(value: Any) -> str:
    return f"{float(value):.3f}"


def _seconds(value: Any) -> str:
    return f"{float(value):.1f}"


def _number(key: str) -> Callable[[Any], str]:
    return lambda value: format_value(key, value)


def _ratio(key: str) -> Callable[[Row, Row], str | None]:
    """``first[key] / row[key]``: how many times smaller (or faster) than the first stage."""

    def cell(row: Row, first: Row) -> str | None:
        base, value = first.get(key), row.get(key)
        if not isinstance(base, (int, float)) or not isinstance(value, (int, float)) or value <= 0:
            return None
        return f"{base / value:.2f}x"

    return cell


def _delta(key: str) -> Callable[[Row, Row], str | None]:
    """``row[key] - first[key]`` in percentage points."""

    def cell(row: Row, first: Row) -> str | None:
        base, value = first.get(key), row.get(key)
        if not isinstance(base, (int, float)) or not isinstance(value, (int, float)):
            return None
        return f"{100 * (value - base):+.2f}"

    return cell


@dataclass(frozen=True)
class Column:
    """One table column: ``key`` of the stage rows it shows (or derives from)."""

    key: str
    header: str
    value: Callable[[Any], str] | None = None  # formats row[key]
    derived: Callable[[Row, Row], str | None] | None = None  # (row, first row) -> cell

    def cell(self, row: Row, first: Row) -> str:
        if self.derived is not None:
            text = self.derived(row, first)
        else:
            raw = row.get(self.key)
            text = None if raw is None or self.value is None else self.value(raw)
        return "-" if text is None else text


# Shown in this order; a column appears when at least one stage has its key.
COLUMNS: tuple[Column, ...] = (
    Column("accuracy", "accuracy", _pct),
    Column("accuracy", "Δ acc (pts)", derived=_delta("accuracy")),
    Column("params", "params", _number("params")),
    Column("params", "params ×", derived=_ratio("params")),
    Column("nonzero_params", "nonzero", _number("nonzero_params")),
    Column("nonzero_params", "nonzero ×", derived=_ratio("nonzero_params")),
    Column("flops", "FLOPs", _number("flops")),
    Column("flops", "FLOPs ×", derived=_ratio("flops")),
    Column("bytes", "weights", _number("bytes")),
    Column("stored_bytes", "stored", _number("stored_bytes")),
    Column("stored_bytes", "stored ×", derived=_ratio("stored_bytes")),
    Column("latency_ms", "latency ms", _ms),
    Column("latency_ms", "latency ×", derived=_ratio("latency_ms")),
    Column("onnx_latency_ms", "onnxruntime ms", _ms),
    Column("onnx_latency_ms", "onnxruntime ×", derived=_ratio("onnx_latency_ms")),
    Column("int8_accuracy", "int8 accuracy", _pct),
    Column("int8_latency_ms", "int8 ms", _ms),
    Column("wall_s", "wall s", _seconds),
)

RATIO_NOTE = (
    "× = first stage ÷ this stage (how many times smaller or faster); Δ acc = accuracy − first "
    "stage's accuracy in percentage points. Latency: CPU, 1 thread, batch 1, median; "
    "\"latency\" is eager PyTorch, \"onnxruntime\" the exported ONNX model in onnxruntime "
    "(CPU execution provider, full graph optimisation)."
)


def stage_name(row: Row, index: int) -> str:
    return str(row.get("stage", f"stage {index}"))


def columns_for(stages: Sequence[Row]) -> list[Column]:
    """The columns that have at least one value among ``stages``."""
    return [c for c in COLUMNS if any(r.get(c.key) is not None for r in stages)]


def table_cells(stages: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows)`` of display strings: ``#``, ``stage``, then :data:`COLUMNS` present."""
    columns = columns_for(stages)
    headers = ["#", "stage"] + [c.header for c in columns]
    first = stages[0] if stages else {}
    rows = [[str(i), stage_name(r, i)] + [c.cell(r, first) for c in columns] for i, r in enumerate(stages)]
    return headers, rows


def accuracy_change_cells(stages: Sequence[Row]) -> tuple[str, list[str], list[list[str]]] | None:
    """``(note, headers, rows)`` of the stages' paired accuracy change against the run's baseline
    (``vs_baseline``, see :func:`edgeslim.train.paired_accuracy_change`); None when no stage has one."""
    found = [(i, r) for i, r in enumerate(stages) if isinstance(r.get("vs_baseline"), dict)]
    if not found:
        return None
    first = found[0][1]["vs_baseline"]
    level = f"{100 * first['confidence']:.0f}%"
    headers = ["#", "stage", "change (pts)", f"{level} interval", "lost", "gained", "McNemar p"]
    rows = [[str(i), stage_name(r, i), f"{v['change_pts']:+.2f}",
             f"[{v['ci_pts'][0]:+.2f}, {v['ci_pts'][1]:+.2f}]", str(v["lost"]), str(v["gained"]),
             f"{v['p_value']:.3g}"] for i, r in found for v in [r["vs_baseline"]]]
    note = (f"Each stage's model against the baseline ({first['stage']}) on the same {first['n']:,} test "
            "images: lost = right before and wrong now, gained = the reverse; the change in accuracy is "
            f"(gained − lost) / n. The {level} interval (exact, over the images where the two disagree) "
            "and McNemar's exact p say whether a change is larger than this test set can tell from noise: "
            f"an interval that contains 0 (then p ≥ {1 - first['confidence']:.2g}) shows neither a loss nor a gain.")
    return note, headers, rows


def markdown_grid(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A GitHub-flavoured markdown table of display strings (``|`` escaped); column
    ``left`` is left-aligned, the others right-aligned (numbers)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = [":---" if j == left else "---:" for j in range(len(headers))]
    return "\n".join([line(headers), "|" + "|".join(align) + "|"] + [line(r) for r in rows])


def markdown_table(stages: Sequence[Row]) -> str:
    """A GitHub-flavoured markdown table, one row per stage (``|`` in names escaped)."""
    return markdown_grid(*table_cells(stages))
