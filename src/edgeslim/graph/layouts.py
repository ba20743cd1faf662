"""Channel labels that are not on dim 1: channels-last tensors and per-channel parameters.

ConvNeXt (torchvision and timm) runs half of each block channels-last:
``permute(0, 2, 3, 1) -> LayerNorm(C) -> Linear(C, 4C) -> GELU -> Linear(4C, C) ->
permute(0, 3, 1, 2)``, then scales by a learned per-channel ``layer_scale``/``gamma``
parameter read directly in ``forward``. Two label kinds cover that:

* :class:`Moved`: a tensor whose channels sit on dim ``dim`` (not 1). Permutes move it;
  channel-wise layers (activations, dropout) keep it; ``nn.Linear`` and ``nn.LayerNorm``
  on the last dim consume and produce it (see ``trace._visit_module``).
* :class:`ParamLabel`: a parameter or buffer with one non-trivial dim, read by
  ``get_attr``. Where it meets a channel-labelled tensor in an elementwise op, aligned on
  the channel dim, it becomes a record of its own (:class:`ParamSlicer`) that follows that
  label, so ``gamma`` is cut with the channels it scales. Used any other way, it stays whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .slicers import Label, Slicer, _take


@dataclass(frozen=True)
class Moved:
    """A channel label on dim ``dim`` of its tensor (channels-last: ``dim == ndim - 1``)."""

    label: tuple
    dim: int


@dataclass(frozen=True)
class ParamLabel:
    """A parameter (``path`` in the model) whose dim ``stored_dim`` may carry channels; in the
    current (reshaped) tensor that dim is ``dim``, of ``size`` entries."""

    path: str
    stored_dim: int
    dim: int
    size: int


def permuted(label: Any, dims: Sequence[int]) -> Any:
    """The label after ``permute(dims)`` (dims already non-negative): dim 1 is plain."""
    if isinstance(label, Moved):
        where, plain = dims.index(label.dim), list(label.label)
    elif isinstance(label, list):
        where, plain = dims.index(1), label
    else:
        return None
    return plain if where == 1 else Moved(tuple(plain), where)


def single_axis(shape: Sequence[int]) -> int | None:
    """The one dim of ``shape`` larger than 1, if there is exactly one."""
    big = [i for i, s in enumerate(shape) if s != 1]
    return big[0] if len(big) == 1 else None


def param_label(root: nn.Module, target: str) -> ParamLabel | None:
    """A :class:`ParamLabel` for ``get_attr`` of a tensor with one non-trivial dim."""
    owner_path, _, name = target.rpartition(".")
    owner = root.get_submodule(owner_path) if owner_path else root
    tensor = getattr(owner, name, None)
    if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0:
        return None
    axis = single_axis(tensor.shape)
    return None if axis is None else ParamLabel(target, axis, axis, int(tensor.shape[axis]))


class ParamSlicer(Slicer):
    """Cuts one parameter/buffer of ``module`` along ``dim`` to the kept channels."""

    kind = "parameter"
    slices_extras = False

    def __init__(self, name: str, dim: int) -> None:
        self.name, self.dim = name, dim

    def trace(self, ctx, path, module, in_label, out_shape):  # never traced: made by _binary
        return in_label

    def slice_(self, module: nn.Module, in_keep: list[int], out_keep: list[int]) -> None:
        old = getattr(module, self.name)
        new = _take(old, self.dim, out_keep)
        setattr(module, self.name, nn.Parameter(new, requires_grad=old.requires_grad)
                if isinstance(old, nn.Parameter) else new)

    def cost(self, module, n_in, n_out, out_shape):
        t = getattr(module, self.name)
        params = n_out * (t.numel() // max(int(t.shape[self.dim]), 1))
        return 0, params if isinstance(t, nn.Parameter) else 0


def owner_of(root: nn.Module, target: str) -> tuple[nn.Module, str]:
    owner_path, _, name = target.rpartition(".")
    return (root.get_submodule(owner_path) if owner_path else root), name



class SplitSizesSlicer(Slicer):
    """Rewrites a module's split sizes (a list ``self.splits``, or an int ``self.width`` for
    equal pieces) to the pieces' kept counts."""

    kind = "split"
    slices_extras = False

    def __init__(self, attr: str, sizes: list[int]) -> None:
        self.attr, self.sizes = attr, list(sizes)

    def trace(self, ctx, path, module, in_label, out_shape):  # never traced: made by _split
        return in_label

    def slice_(self, module: nn.Module, in_keep: list[int], out_keep: list[int]) -> None:
        if out_keep is None:
            return
        bounds, start = [], 0
        for n in self.sizes:
            bounds.append((start, start + n))
            start += n
        new = [sum(lo <= k < hi for k in out_keep) for lo, hi in bounds]
        old = getattr(module, self.attr)
        setattr(module, self.attr, new[0] if type(old) is int else type(old)(new))
        self.sizes = new
