"""Wall-clock latency of a forward pass, in PyTorch eager mode and in onnxruntime.

Both report the median and the 90th percentile over ``runs`` timed passes
after ``warmup`` untimed ones (the first passes pay for allocation, oneDNN
kernel selection and cache warm-up). Edge CPUs run one or few threads, so
``threads`` defaults to 1; the caller's torch thread count is restored.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim._core import as_input_tuple, eval_mode


def _check_counts(threads: int, runs: int, warmup: int) -> None:
    if threads < 1 or runs < 1 or warmup < 0:
        raise ConfigError(
            f"latency needs threads >= 1, runs >= 1, warmup >= 0; got threads={threads}, "
            f"runs={runs}, warmup={warmup}"
        )


def _no_sync() -> None:
    return None


_SYNC: dict[str, Callable[[], None]] = {"cuda": torch.cuda.synchronize}


#: ``EDGESLIM_LATENCY_CLOCK=thread``: time 1-thread CPU inference by the calling thread's CPU
#: time instead of the wall clock. On a machine shared with other processes the wall clock
#: counts the time the scheduler gives them (measured here: eager ResNet-20, batch 1, wall
#: median 3.4-6.0 ms under load, thread CPU time 2.1-2.2 ms, minimum 1.73 ms for both);
#: the thread clock does not. onnxruntime and PyTorch with one intra-op thread run the
#: inference on the calling thread (onnxruntime: thread time = wall time within 1% on an
#: idle core), so on an idle machine both clocks agree. Ignored with more than one thread.
CLOCK_ENV = "EDGESLIM_LATENCY_CLOCK"


def latency_clock(threads: int = 1) -> str:
    """``"thread"`` or ``"wall"``: the clock latency is measured with (see ``CLOCK_ENV``)."""
    clock = os.environ.get(CLOCK_ENV, "wall").strip().lower() or "wall"
    if clock not in ("wall", "thread"):
        raise ConfigError(f"{CLOCK_ENV}={clock!r}: expected 'wall' (the default) or 'thread'")
    return clock if threads == 1 else "wall"


def _timed(call: Callable[[], object], runs: int, warmup: int,
           sync: Callable[[], None] = _no_sync, threads: int = 1) -> tuple[float, float]:
    """(median, p90) in milliseconds of ``call`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    sync()
    clock = time.thread_time if latency_clock(threads) == "thread" and sync is _no_sync else time.perf_counter
    times = np.empty(runs)
    for i in range(runs):
        start = clock()
        call()
        sync()
        times[i] = (clock() - start) * 1e3
    return float(np.median(times)), float(np.percentile(times, 90))


def measure_latency(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                    threads: int = 1, runs: int = 50, warmup: int = 10) -> tuple[float, float]:
    """Eager PyTorch latency of one forward pass (eval mode, ``torch.inference_mode``).

    Args:
        model: the network; train/eval flags are restored afterwards.
        example_inputs: a tensor or tuple of tensors on the model's device.
        threads: intra-op threads for the measurement (``torch.set_num_threads``).
        runs: timed passes.
        warmup: untimed passes first.

    Returns:
        ``(median_ms, p90_ms)``.
    """
    _check_counts(threads, runs, warmup)
    inputs = as_input_tuple(example_inputs)
    sync = _SYNC.get(inputs[0].device.type, _no_sync)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with eval_mode(model), torch.inference_mode():
            return _timed(lambda: model(*inputs), runs, warmup, sync, threads)
    finally:
        torch.set_num_threads(previous)


def ort_session(onnx_path: str | os.PathLike[str], threads: int = 1):  # -> ort.InferenceSession
    """A CPU onnxruntime session with ``threads`` intra-op threads and full graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def ort_latency(onnx_path: str | os.PathLike[str],
                example_inputs: torch.Tensor | Sequence[torch.Tensor],
                threads: int = 1, runs: int = 50, warmup: int = 10) -> tuple[float, float]:
    """onnxruntime (CPU) latency of one inference of an exported model.

    Args:
        onnx_path: the ``.onnx`` file (e.g. from :func:`edgeslim.export.export_onnx`).
        example_inputs: tensors fed to the graph inputs in order.
        threads: ``SessionOptions.intra_op_num_threads``.
        runs: timed inferences.
        warmup: untimed inferences first.

    Returns:
        ``(median_ms, p90_ms)``.
    """
    _check_counts(threads, runs, warmup)
    inputs = as_input_tuple(example_inputs)
    session = ort_session(onnx_path, threads)
    metas = session.get_inputs()  # strict=False: exporters drop inputs the graph never reads
    feed = {m.name: t.detach().cpu().numpy() for m, t in zip(metas, inputs, strict=False)}
    return _timed(lambda: session.run(None, feed), runs, warmup, threads=threads)
