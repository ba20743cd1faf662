"""``profile``: every cost of a model in one JSON-friendly dict, and tables of them."""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim._checks import check_model_and_inputs, run_checked
from edgeslim._core import as_input_tuple
from edgeslim.profile.counters import count_flops, count_params, weight_bytes
from edgeslim.profile.latency import measure_latency, ort_latency
from edgeslim.profile.memory import peak_memory


def profile(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
            latency: bool = True, threads: int = 1, runs: int = 50, warmup: int = 10,
            onnx: bool = False, memory: bool = True) -> dict[str, Any]:
    """Measure a model's size and speed.

    Args:
        model: the network (train/eval flags are restored).
        example_inputs: a tensor or tuple of tensors (the batch size matters for
            FLOPs, memory and latency).
        latency: time the eager forward pass.
        threads: CPU threads for the latency measurements.
        runs: timed passes per latency measurement.
        warmup: untimed passes before timing.
        onnx: also export to a temporary ONNX file and time it in onnxruntime.
        memory: measure the forward pass's peak activation memory.

    Returns:
        A dict of plain ints/floats/None: ``params``, ``nonzero_params``,
        ``flops``, ``macs`` (``flops == 2 * macs``; see
        :mod:`edgeslim.profile.counters`), ``bytes`` (fp32 weights),
        ``latency_ms`` and ``latency_p90_ms`` (None when ``latency=False``),
        ``peak_memory_bytes`` when ``memory=True``, and ``onnx_latency_ms`` /
        ``onnx_latency_p90_ms`` when ``onnx=True``.

    Raises:
        ConfigError: the example inputs do not fit the model (wrong shape or number).
        UnsupportedModelError: the model's weights are on the meta device.
    """
    inputs = as_input_tuple(example_inputs)
    check_model_and_inputs(model, inputs, "profile")
    flops, macs = run_checked(lambda: count_flops(model, inputs), model, inputs, "profile")
    result: dict[str, Any] = {
        "params": count_params(model),
        "nonzero_params": count_params(model, nonzero=True),
        "flops": flops,
        "macs": macs,
        "bytes": weight_bytes(model),
        "latency_ms": None,
        "latency_p90_ms": None,
    }
    if memory:
        result["peak_memory_bytes"] = peak_memory(model, inputs)
    if latency:
        result["latency_ms"], result["latency_p90_ms"] = measure_latency(
            model, inputs, threads=threads, runs=runs, warmup=warmup
        )
    if onnx:
        result["onnx_latency_ms"], result["onnx_latency_p90_ms"] = _onnx_latency(
            model, inputs, threads, runs, warmup
        )
    return result


def _onnx_latency(model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int,
                  runs: int, warmup: int) -> tuple[float, float]:
    from edgeslim.export.onnx import export_onnx  # export is optional for the profiler

    with tempfile.TemporaryDirectory(prefix="edgeslim-profile-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, inputs, path)
        return ort_latency(path, inputs, threads=threads, runs=runs, warmup=warmup)


def _scaled(value: float, units: tuple[str, ...], base: float) -> str:
    for unit in units[:-1]:
        if abs(value) < base:
            return f"{value:.4g}{unit}"
        value /= base
    return f"{value:.4g}{units[-1]}"


def _count(value: Any) -> str:
    return _scaled(float(value), ("", "K", "M", "G", "T"), 1000.0)


def _bytes(value: Any) -> str:
    return _scaled(float(value), (" B", " KiB", " MiB", " GiB", " TiB"), 1024.0)


def _ms(value: Any) -> str:
    return f"{float(value):.3f}"


def _default(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# How each known column is shown; anything else falls back to ``_default``.
COLUMN_FORMATS: dict[str, Callable[[Any], str]] = {
    "params": _count,
    "nonzero_params": _count,
    "flops": _count,
    "macs": _count,
    "bytes": _bytes,
    "stored_bytes": _bytes,
    "peak_memory_bytes": _bytes,
    "latency_ms": _ms,
    "latency_p90_ms": _ms,
    "onnx_latency_ms": _ms,
    "onnx_latency_p90_ms": _ms,
}


def format_value(key: str, value: Any) -> str:
    """One cell: human units for counts (K/M/G), bytes (KiB/MiB) and milliseconds."""
    if value is None:
        return "-"
    return COLUMN_FORMATS.get(key, _default)(value)


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Keys in first-seen order; structured values (a stage's ``latency_setup``, per-layer
    timings, a latency plan) are not table cells, so a key holding only those is left out."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key, value in row.items()
                    if key not in columns and not isinstance(value, (dict, list, tuple))]
    return columns


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of profile dicts (columns: union of keys, first-seen order)."""
    columns = _columns(rows)
    cells = [[format_value(c, row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def rich_table(rows: Sequence[dict[str, Any]], title: str | None = None):  # -> rich.table.Table
    """The same table as :func:`format_table` as a ``rich.table.Table`` for the terminal."""
    from rich.table import Table

    columns = _columns(rows)
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(format_value(c, row.get(c)) for c in columns))
    return table
