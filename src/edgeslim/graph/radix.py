"""Radix axes: selective-kernel (SKNet, timm ``SelectiveKernel``) and split-attention
(ResNeSt, timm ``SplitAttn``) blocks.

Both put the channels of K paths on a new axis, ``(b, K, c, h, w)``: by ``torch.stack``
(SK) or by ``reshape`` (ResNeSt). They compute an attention vector of K*c entries,
softmax it over the K axis and sum the weighted paths back to ``(b, c, h, w)``. The
label of such a tensor is a :class:`~edgeslim.graph.trace.ChannelGroups`: position k of
every path is one unit, so a cut removes the same channels from every path, and the
attention's ``view(b, K, c)`` stays valid.
- Elementwise ops between two such tensors couple them position by position.
- A sum over the K axis gives back the plain channel label.

Attention vectors of shape ``(b, n, 1, 1)`` are reshaped freely in between (ResNeSt's
``RadixSoftmax``: ``view(b, card, radix, -1).transpose(1, 2)``). A :class:`Flat` label
follows them while their row-major order is unchanged.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from . import trace as T
from .slicers import couple_groups
from .layouts import Moved
from .trace import ChannelGroups, _Unsupported, _arg, _first_tensor, _meta_shape, _tensor_args


@dataclass(frozen=True)
class Flat:
    """A per-sample vector (every dim but the batch's multiplies to ``len(label)``) whose
    row-major order is ``label``; its current shape may split the channels over dims."""

    label: tuple


def _non_unit(shape) -> list[int]:
    return [int(s) for s in shape[1:] if s != 1]


def _stack(ctx, node, labels) -> Any:
    """``torch.stack(paths, dim=1)`` of K equally labelled paths: one radix axis."""
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = _arg(node, 1, "dim", 0)
    parts = [labels.get(t) for t in tensors]
    if dim != 1 or not parts or any(not isinstance(p, list) for p in parts) or len({len(p) for p in parts}) != 1:
        raise _Unsupported("stack other than of equally sized channel tensors along dim 1")
    label = [e for p in parts for e in p]
    couple_groups(ctx, label, len(parts))
    return ChannelGroups(tuple(label), len(parts))


def _reduce(ctx, node, labels) -> Any:
    src = _first_tensor(node)
    label = labels.get(src)
    if not isinstance(label, (ChannelGroups, Flat)):
        return T._reduce(ctx, node, labels)
    dims = _arg(node, 1, "dim", None)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    keep = _arg(node, 2, "keepdim", False)
    if isinstance(label, ChannelGroups) and not label.swapped and [d % len(_meta_shape(src)) for d in dims] == [1] \
            and not keep:
        per = len(label.label) // label.groups
        return list(label.label[:per])  # the paths' channels are coupled: any path's ids will do
    raise _Unsupported("a reduction over a radix axis other than the sum/mean of its paths")


def _binary(ctx, node, labels) -> Any:
    """Elementwise ops between radix tensors couple them position by position."""
    groups = [labels.get(a) for a in _tensor_args(node) if isinstance(labels.get(a), (ChannelGroups, Flat))]
    if not groups:
        return T._binary(ctx, node, labels)
    shapes = [_meta_shape(a) for a in _tensor_args(node)]
    if len(groups) != len(shapes) or any(not isinstance(g, ChannelGroups) or g.swapped for g in groups) \
            or len({(g.groups, len(g.label)) for g in groups}) != 1 or len({len(s) for s in shapes}) != 1:
        raise _Unsupported("an elementwise op mixing a radix tensor with another layout")
    for other in groups[1:]:
        ctx.table.union_labels(list(groups[0].label), list(other.label))
    return groups[0]


def _pass(ctx, node, labels) -> Any:
    src = _first_tensor(node)
    label = labels.get(src)
    if isinstance(label, (ChannelGroups, Flat)) and _meta_shape(node) == _meta_shape(src):
        return label  # softmax over the radix axis, sigmoid, contiguous: same layout
    return T._pass(ctx, node, labels)


def _view(ctx, node, labels) -> Any:
    """Reshapes of attention vectors ``(b, n, 1, 1)``: any view keeps their row-major order."""
    src = _first_tensor(node)
    label, ins, out = labels.get(src), _meta_shape(src), _meta_shape(node)
    vector = isinstance(label, Flat) or (isinstance(label, list) and math.prod(ins[1:]) == len(label))
    if not vector or out is None or out[0] != ins[0]:
        return T._view_like(ctx, node, labels)
    flat = list(label.label) if isinstance(label, Flat) else label
    dims = _non_unit(out)
    if len(dims) <= 1 and not isinstance(label, Flat):
        return T._view_like(ctx, node, labels)
    if len(dims) <= 1:  # back to one channel axis
        where = next((i for i, s in enumerate(out) if i > 0 and s != 1), 1)
        return flat if where == 1 else Moved(tuple(flat), where)
    if len(out) >= 3 and out[1] * out[2] == len(flat) and math.prod(out[3:]) == 1:
        couple_groups(ctx, flat, int(out[1]))
        return ChannelGroups(tuple(flat), int(out[1]))
    couple_groups(ctx, flat, len(flat) // dims[-1])  # every block of the last axis is a unit
    return Flat(tuple(flat))


def _permute(ctx, node, labels) -> Any:
    src = _first_tensor(node)
    label = labels.get(src)
    if isinstance(label, Flat):
        order = T._permutation(node, len(_meta_shape(src)))
        ins = _meta_shape(src)
        moved = [ins[d] for d in order if ins[d] != 1] if order else None
        if moved is not None and moved == [s for s in ins if s != 1] and _order_kept(ins, order):
            return label
        raise _Unsupported("a permute that reorders an attention vector")
    return T._permute(ctx, node, labels)


def _order_kept(shape, order) -> bool:
    """Whether permuting ``shape`` by ``order`` only moves size-1 dims (row-major order kept)."""
    big = [d for d in order if shape[d] != 1]
    return big == sorted(big)


_STACK = [torch.stack]
_REDUCE = [torch.mean, torch.sum, "mean", "sum"]
_BINARY = [operator.mul, operator.add, torch.mul, torch.add, "mul", "add"]
_PASS = [torch.softmax, F.softmax, "softmax", torch.sigmoid, F.sigmoid, "sigmoid", "contiguous"]
_VIEW = ["view", "reshape", torch.reshape]
_PERMUTE = ["transpose", torch.transpose]

for targets, handler in ((_STACK, _stack), (_REDUCE, _reduce), (_BINARY, _binary), (_PASS, _pass),
                         (_VIEW, _view), (_PERMUTE, _permute)):
    for target in targets:
        T.HANDLERS[target] = handler
T._GROUP_AWARE.update({_stack, _reduce, _binary, _pass, _view, _permute})
T._PARAM_AWARE.update({_binary})
for target in (operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge):
    T.HANDLERS.setdefault(target, T._binary)  # comparisons: elementwise, or plain Python values
T.HANDLERS.setdefault(torch._assert, T._no_label)
