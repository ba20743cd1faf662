"""Peak memory of a forward pass.

On CUDA we use the caching allocator's statistics: ``max_memory_allocated``
during the pass minus what was allocated before it (weights, inputs).

On CPU torch has no allocator statistics and ``tracemalloc`` only sees
Python's own allocator, not tensor storage, so we count tensors directly: a
``TorchDispatchMode`` sees every ATen op the model runs, adds the storage of
each new output tensor to a live total, and subtracts it when the last Python
reference to that storage dies. The peak of that total is the activation
memory of the pass (outputs included; weights and inputs excluded). Scratch
buffers that a kernel allocates and frees internally (e.g. oneDNN
workspaces) are invisible to it, so it is a lower bound on the process's
resident growth, and it is exact and deterministic for what it counts.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from edgeslim._core import as_input_tuple, eval_mode


class LiveTensorTracker(TorchDispatchMode):
    """Tracks the bytes of live tensor storages created by ops run under the mode.

    Args:
        exclude: tensors whose storage must not be counted (weights, inputs).
    """

    def __init__(self, exclude: Sequence[torch.Tensor] = ()) -> None:
        super().__init__()
        self._excluded = {_storage_key(t) for t in exclude}
        self._refs: dict[int, int] = {}  # storage key -> live tensors viewing it
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        key = _storage_key(tensor)
        if key == 0 or key in self._excluded:
            return
        nbytes = tensor.untyped_storage().nbytes()
        if key not in self._refs:
            self._refs[key] = 0
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1
        weakref.finalize(tensor, self._release, key, nbytes)

    def _release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= nbytes


def _storage_key(tensor: torch.Tensor) -> int:
    """The storage's address; 0 (untracked) for tensors without one (sparse, meta)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


def _cpu_peak(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    exclude = [*model.parameters(), *model.buffers(), *inputs]
    tracker = LiveTensorTracker(exclude)
    with tracker:
        output = model(*inputs)
    del output
    return tracker.peak


def _cuda_peak(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    device = inputs[0].device
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    output = model(*inputs)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del output
    return int(peak)


_PEAK_BY_DEVICE: dict[str, Callable[[nn.Module, tuple[torch.Tensor, ...]], int]] = {
    "cpu": _cpu_peak,
    "cuda": _cuda_peak,
}


def peak_memory(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """Peak bytes of tensors allocated by one eval-mode, inference-mode forward pass.

    Weights and inputs are not counted; the output is. See the module
    docstring for how CPU and CUDA are measured.
    """
    inputs = as_input_tuple(example_inputs)
    measure = _PEAK_BY_DEVICE.get(inputs[0].device.type, _cpu_peak)
    with eval_mode(model), torch.inference_mode():
        return measure(model, inputs)
