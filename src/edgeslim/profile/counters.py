"""Static cost of a model: parameters, FLOPs/MACs, weight bytes.

FLOP convention: ``count_flops`` uses ``torch.utils.flop_counter.FlopCounterMode``,
which counts the multiply-accumulates of matrix products and convolutions
(linear, conv of any groups/stride, bmm, attention) and counts each MAC as 2
FLOPs. Bias adds, BatchNorm, activations, pooling and residual additions are
not counted (they are a few percent of a CNN's cost). So ``flops == 2 * macs``
exactly. Most pruning papers (Li et al. 2017, HRank, DepGraph) report MACs
under the name "FLOPs" -- ResNet-56's "125M FLOPs" is our ``macs`` -- so
compare published numbers with ``macs``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgeslim._core import as_input_tuple, eval_mode

FP32_BYTES = 4


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (each shared tensor counted once).

    Args:
        model: the network.
        nonzero: count only entries that are not exactly zero (what unstructured
            pruning removes; a sparse format stores only these).
    """
    if nonzero:
        return int(sum(int(torch.count_nonzero(p.detach())) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


def weight_bytes(model: nn.Module, bytes_per_param: int = FP32_BYTES) -> int:
    """Size of the parameters stored densely at ``bytes_per_param`` (fp32 = 4) each.

    Buffers (BN running statistics) are not counted: they fold into the
    convolutions at deployment.
    """
    return count_params(model) * bytes_per_param


def count_flops(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]
                ) -> tuple[int, int]:
    """FLOPs and MACs of one forward pass in eval mode (see the module docstring).

    Args:
        model: the network (its train/eval flags are restored).
        example_inputs: a tensor or tuple of tensors; the batch size scales the count.

    Returns:
        ``(flops, macs)`` with ``flops == 2 * macs``.
    """
    inputs = as_input_tuple(example_inputs)
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(*inputs)
    flops = int(counter.get_total_flops())
    return flops, flops // 2


def flops_by_module(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                    depth: int = 2) -> dict[str, int]:
    """FLOPs per module, keyed by ``named_modules()`` path (``""`` is the whole model).

    Args:
        model: the network.
        example_inputs: a tensor or tuple of tensors.
        depth: how many levels of submodules to report.
    """
    inputs = as_input_tuple(example_inputs)
    counter = FlopCounterMode(display=False, depth=depth)
    with eval_mode(model), torch.no_grad(), counter:
        model(*inputs)
    root = type(model).__name__
    result: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            continue  # the same total as the root module
        path = "" if name == root else name.removeprefix(root + ".")
        result[path] = int(sum(ops.values()))
    return result
