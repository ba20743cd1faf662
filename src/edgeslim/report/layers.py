"""Per-layer views of a model for the report: output channels and latency."""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim._core import as_input_tuple, eval_mode

# Module type -> its number of output channels; looked up along the MRO, so
# subclasses (e.g. a pruned or quantization-aware Conv2d) are covered.
OUT_CHANNELS: dict[type, Callable[[nn.Module], int]] = {
    nn.modules.conv._ConvNd: lambda m: int(m.out_channels),
    nn.Linear: lambda m: int(m.out_features),
}


def _out_channels(module: nn.Module) -> int | None:
    for cls in type(module).__mro__:
        if cls in OUT_CHANNELS:
            return OUT_CHANNELS[cls](module)
    return None


def channels_per_layer(model: nn.Module) -> dict[str, int]:
    """Output channels (conv) or features (linear) of every such layer, in module order.

    Comparing the dicts of a model before and after structured pruning shows
    how many filters each layer kept.
    """
    out: dict[str, int] = {}
    for name, module in model.named_modules():
        channels = _out_channels(module)
        if channels is not None:
            out[name or type(module).__name__] = channels
    return out


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    return leaves or [(type(model).__name__, model)]


class _HookTimer:
    """Forward pre-/post-hooks that add each leaf module's wall-clock time of one pass."""

    def __init__(self, leaves: Sequence[tuple[str, nn.Module]]) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._start: dict[str, list[float]] = defaultdict(list)
        self._handles = []
        for name, module in leaves:
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str):
        def hook(module, args):  # a module called twice (a shared ReLU) nests correctly
            self._start[name].append(time.perf_counter())
        return hook

    def _post(self, name: str):
        def hook(module, args, output):
            self.totals[name] += time.perf_counter() - self._start[name].pop()
        return hook

    def take(self) -> dict[str, float]:
        totals, self.totals = dict(self.totals), defaultdict(float)
        return totals

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def per_layer_latency(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                      threads: int = 1, runs: int = 20, warmup: int = 3) -> dict[str, float]:
    """Milliseconds spent in each leaf module of one eager forward pass (median over ``runs``).

    Timed with a forward pre-hook and a forward hook on every leaf module
    (``time.perf_counter`` around the module's ``forward``), not with
    ``torch.profiler``: hooks attribute time to the module paths a user knows
    (``features.3``), need no trace parsing, and cost ~1 µs per call. Work done
    outside leaf modules (``torch.flatten``, residual additions written in a
    parent's ``forward``) is not attributed, so the values sum to a little
    less than :func:`edgeslim.profile.measure_latency`. On CPU the clocks are
    exact; on CUDA they would time kernel launches only, so use the CPU.

    Args:
        model: the network (eval mode during timing; modes restored).
        example_inputs: a tensor or tuple of tensors (batch 1 for edge latency).
        threads: intra-op threads during the measurement.
        runs: timed passes; each layer's median is reported.
        warmup: untimed passes first.

    Returns:
        ``{module path: ms}`` for every leaf module, in execution order.
    """
    if threads < 1 or runs < 1 or warmup < 0:
        raise ConfigError(f"per_layer_latency needs threads >= 1, runs >= 1, warmup >= 0; got "
                          f"threads={threads}, runs={runs}, warmup={warmup}")
    inputs = as_input_tuple(example_inputs)
    timer = _HookTimer(_leaves(model))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    samples: list[dict[str, float]] = []
    try:
        with eval_mode(model), torch.inference_mode():
            for i in range(warmup + runs):
                model(*inputs)
                totals = timer.take()
                if i >= warmup:
                    samples.append(totals)
    finally:
        timer.remove()
        torch.set_num_threads(previous)
    order = list(samples[0])  # execution order of the first timed pass
    return {name: 1e3 * float(np.median([s.get(name, 0.0) for s in samples])) for name in order}
