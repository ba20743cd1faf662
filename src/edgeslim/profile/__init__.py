"""Profiling: parameters, FLOPs/MACs, weight bytes, peak memory, latency (PyTorch and onnxruntime).

``profile(model, example_inputs)`` returns all of them in one JSON-friendly
dict; ``format_table`` / ``rich_table`` print a list of such dicts.
"""
from __future__ import annotations

from edgeslim.profile.counters import (
    count_flops,
    count_params,
    flops_by_module,
    weight_bytes,
)
from edgeslim.profile.latency import measure_latency, ort_latency, ort_session
from edgeslim.profile.runtimes import RUNTIMES, CostRuntime, Runtime, RuntimeUnavailableError, get_runtime
from edgeslim.profile.memory import LiveTensorTracker, peak_memory
from edgeslim.profile.summary import format_table, format_value, profile, rich_table

__all__ = [
    "RUNTIMES",
    "CostRuntime",
    "Runtime",
    "RuntimeUnavailableError",
    "get_runtime",
    "LiveTensorTracker",
    "count_flops",
    "count_params",
    "flops_by_module",
    "format_table",
    "format_value",
    "measure_latency",
    "ort_latency",
    "ort_session",
    "peak_memory",
    "profile",
    "rich_table",
    "weight_bytes",
]

from .._callable import make_callable  # noqa: E402

make_callable(__name__, "profile")  # edgeslim.profile is this package *and* the function
