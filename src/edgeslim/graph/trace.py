"""Trace a model with torch.fx and propagate channel labels through every node.

Module calls are handled by slicers (``slicers.py``); functions and tensor
methods by the small handlers below, dispatched by a table keyed by the
function object or method name. An operation that is not in the table raises
``UnsupportedModelError`` naming the node and its module path (or, with
``on_unsupported="lock"``, freezes the channels around it), so a model is never
pruned through something we do not understand.
"""
from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, NamedTuple, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .._checks import run_checked
from .._core import run_on_meta
from ..errors import ConfigError, UnsupportedModelError
from .._core import did_you_mean, eval_mode
from .channels import ElementTable
from .layouts import Moved, ParamLabel, ParamSlicer, SplitSizesSlicer, owner_of, param_label, permuted, single_axis
from .slicers import Label, Slicer, couple_groups, slicer_for

OnUnsupported = Literal["error", "lock"]


class _Unsupported(Exception):
    """Raised inside a handler; turned into a user-facing error or a lock."""


@dataclass
class ModuleRecord:
    """What tracing learned about one leaf module."""

    path: str
    module: nn.Module
    slicer: Slicer | None
    in_label: Label | None = None
    out_label: Label | None = None
    out_shape: tuple[int, ...] = ()  # of the last call
    ignored: bool = False
    call_shapes: list[tuple[int, ...]] = field(default_factory=list)  # output shape of every call
    in_shape: tuple[int, ...] = ()  # of the last call (the latency tables time a layer at it)


@dataclass
class TraceContext:
    """Mutable state of one trace; slicers call its methods."""

    table: ElementTable = field(default_factory=ElementTable)
    records: dict[str, ModuleRecord] = field(default_factory=dict)
    node: fx.Node | None = None
    root: nn.Module | None = None  # the model being traced (parameters read by get_attr)
    tied: list[list[tuple[str, str]]] = field(default_factory=list)  # see shared_parameters

    def produce(self, path: str, size: int, locked: bool = False, reason: str = "") -> Label:
        rec = self.records.get(path)
        if rec is not None and rec.out_label is not None and len(rec.out_label) == size:
            return rec.out_label  # a module called twice produces the same channels
        return self.table.new_space(size, path, locked, reason)

    def consume(self, path: str, label: Label | None) -> None:
        rec = self.records[path]
        if isinstance(label, (Moved, ChannelGroups)):
            label = list(label.label)
        elif isinstance(label, ParamLabel):
            label = None
        if label is None:
            return
        if rec.in_label is None:
            rec.in_label = list(label)
        elif len(rec.in_label) == len(label):
            self.table.union_labels(rec.in_label, label)
        else:
            raise _Unsupported(f"module {path!r} is called on inputs with different channel counts")

    def lock(self, label: Label | None, reason: str | None = None) -> None:
        """Freeze ``label``'s channels; ``reason`` (default: the node being traced) explains
        it when nothing is left to prune."""
        if isinstance(label, (ChannelGroups, Moved)):
            label = list(label.label)
        if isinstance(label, ParamLabel):
            return  # a parameter that never met a channel label: it stays whole anyway
        if label is not None:
            self.table.lock(label, self.where() if reason is None else reason)

    def where(self) -> str:
        """The node being traced, in words: ``"'split' in module 'block1'"``."""
        node = self.node
        if node is None:
            return ""
        if node.op == "call_module":
            return f"module {node.target!r}"
        name = getattr(node.target, "__name__", node.target)
        return f"{name!r} in module {_module_path(node)!r}"

    def unsupported(self, path: str, reason: str) -> None:
        raise _Unsupported(reason)

    def flatten_label(self, where: str, label: Label | None, start_dim: int,
                      out_shape: Sequence[int]) -> Label | None:
        if label is None:
            return None
        if start_dim >= 2 or start_dim <= -len(out_shape):
            return label
        if start_dim != 1 or len(out_shape) != 2 or out_shape[1] % len(label):
            raise _Unsupported("flatten must start at dim 1 (or later)")
        rep = out_shape[1] // len(label)
        return [e for e in label for _ in range(rep)]


# ----------------------------------------------------------------------------------------
# helpers on fx nodes

def _meta_shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    args = list(node.args) + list(node.kwargs.values())
    return [a for a in args if isinstance(a, fx.Node) and _meta_shape(a) is not None]


def _first_tensor(node: fx.Node) -> fx.Node:
    args = _tensor_args(node)
    if not args:
        raise _Unsupported("no tensor input")
    return args[0]


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


Labels = dict[fx.Node, Any]
Handler = Callable[[TraceContext, fx.Node, Labels], Any]


@dataclass(frozen=True)
class ChannelGroups:
    """The label of a tensor whose channel dim was split into ``(groups, per_group)`` dims
    (the first half of a channel shuffle, ``x.view(b, g, c // g, h, w)``); ``swapped`` after
    ``transpose(1, 2)``. Position k of every group is one unit (``couple_groups``), so a cut
    removes the same in-group positions everywhere and the reshapes stay valid."""

    label: tuple
    groups: int
    swapped: bool = False

    def merged(self) -> Label:
        """The channel label once the two dims are merged back by a view."""
        if not self.swapped:
            return list(self.label)
        per = len(self.label) // self.groups
        return [self.label[j * per + i] for i in range(per) for j in range(self.groups)]


def _pass(ctx: TraceContext, node: fx.Node, labels: Labels) -> Any:
    """Channel-wise op: output channel i is input channel i."""
    src = _first_tensor(node)
    label, out = labels.get(src), _meta_shape(node)
    if isinstance(label, ChannelGroups) and node.target in ("contiguous", "clone", "detach"):
        return label
    if isinstance(label, (Moved, ParamLabel)):
        if out is None or out != _meta_shape(src):
            raise _Unsupported("an elementwise op changed the shape of a channels-last tensor")
        return label
    if label is not None and (out is None or len(out) < 2 or out[1] != len(label)):
        raise _Unsupported("the channel dimension changed")
    return label


def _binary(ctx: TraceContext, node: fx.Node, labels: Labels) -> Any:
    """Elementwise add/sub/mul/div with broadcasting: equal channel dims are coupled."""
    out = _meta_shape(node)
    if out is None:
        return None
    if len(out) < 2:
        return None
    coupled: list[Label] = []
    params: list[ParamLabel] = []
    for arg in _tensor_args(node):
        shape, label = _meta_shape(arg), labels.get(arg)
        if isinstance(label, Moved):
            raise _Unsupported("an elementwise op on a channels-last tensor")
        offset = len(out) - len(shape)
        dim = 1 - offset  # which of the arg's dims lines up with the output's channel dim
        if dim < 0 or (shape[dim] == 1 and (out[1] != 1 or label is None)):
            continue  # broadcast over channels: no coupling (a pruned-down 1-channel tensor is not)
        if isinstance(label, ParamLabel) and label.dim == dim:
            params.append(label)  # a per-channel parameter (layer scale): cut with the channels
            continue
        if offset != 0 or label is None or isinstance(label, ParamLabel):
            raise _Unsupported("a per-channel constant without a channel label")
        coupled.append(label)
    for other in coupled[1:]:
        ctx.table.union_labels(coupled[0], other)
    if params and not coupled:
        raise _Unsupported("per-channel parameters combined without a channel-labelled tensor")
    for p in params:
        _follow(ctx, p, coupled[0])
    return coupled[0] if coupled else None


def _follow(ctx: TraceContext, param: ParamLabel, label: Label) -> None:
    """Make ``param`` a record that is cut along with ``label``'s channels."""
    rec = ctx.records.get(param.path)
    if rec is not None:
        ctx.table.union_labels(rec.out_label, label)
        return
    owner, name = owner_of(ctx.root, param.path)
    ctx.records[param.path] = ModuleRecord(param.path, owner, ParamSlicer(name, param.stored_dim),
                                           in_label=list(label), out_label=list(label),
                                           out_shape=(1, len(label)))


def _cat(ctx: TraceContext, node: fx.Node, labels: Labels) -> Any:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = _arg(node, 1, "dim", 0)
    out = _meta_shape(node)
    dim = dim % len(out)
    parts = [labels.get(t) for t in tensors]
    if any(p is None for p in parts):
        raise _Unsupported("concatenation of a tensor without channel labels")
    if dim == 1:
        return [e for p in parts for e in p]
    for p in parts[1:]:
        ctx.table.union_labels(parts[0], p)
    return parts[0]


def _view_like(ctx: TraceContext, node: fx.Node, labels: Labels) -> Any:
    """view/reshape/flatten/squeeze/unsqueeze: fine while dims 0-1 survive, or a flatten."""
    src = _first_tensor(node)
    label, ins, out = labels.get(src), _meta_shape(src), _meta_shape(node)
    if label is None or out is None:
        return None
    if isinstance(label, ParamLabel):
        axis = single_axis(out)
        if axis is None or out[axis] != label.size:
            raise _Unsupported("reshape of a per-channel parameter")
        return ParamLabel(label.path, label.stored_dim, axis, label.size)
    if isinstance(label, (Moved, list)):
        moved = _squeeze_move(ins, out, label.dim if isinstance(label, Moved) else 1)
        if moved is not None and (isinstance(label, Moved) or moved != 1):
            plain = list(label.label) if isinstance(label, Moved) else label
            return plain if moved == 1 else Moved(tuple(plain), moved)
    if isinstance(label, Moved):
        raise _Unsupported(f"reshape of a channels-last tensor from {list(ins)} to {list(out)}")
    if isinstance(label, ChannelGroups):
        if len(out) == len(ins) - 1 and out[0] == ins[0] and out[1] == ins[1] * ins[2] and out[2:] == ins[3:]:
            return label.merged()
        raise _Unsupported(f"reshape from {list(ins)} to {list(out)} of channel groups")
    if len(out) == len(ins) + 1 and len(ins) >= 2 and out[0] == ins[0] and out[1] * out[2] == ins[1] \
            and out[3:] == ins[2:] and out[1] > 1:
        couple_groups(ctx, label, out[1])  # the channel-shuffle view: (b, c) -> (b, g, c // g)
        return ChannelGroups(tuple(label), out[1])
    if len(out) >= 2 and len(ins) >= 2 and out[:2] == ins[:2]:
        return label
    if len(out) == 2 and out[0] == ins[0] and len(ins) > 2:
        return ctx.flatten_label(node.name, label, 1, out)
    raise _Unsupported(f"reshape from {list(ins)} to {list(out)} mixes channels")


def _squeeze_move(ins: Sequence[int], out: Sequence[int], dim: int) -> int | None:
    """Where dim ``dim`` of ``ins`` lands in ``out`` when the reshape only adds or drops
    size-1 dims (ECA's ``(b, c, 1, 1) -> (b, 1, c)``); None for any other reshape."""
    big_in = [(i, s) for i, s in enumerate(ins) if s != 1 or i == 0]
    big_out = [(i, s) for i, s in enumerate(out) if s != 1 or i == 0]
    if [s for _, s in big_in] != [s for _, s in big_out] or ins[dim] == 1:
        return None
    return big_out[[i for i, _ in big_in].index(dim)][0]


def _reduce(ctx: TraceContext, node: fx.Node, labels: Labels) -> Any:
    """mean/sum/amax: keep the label when the channel dim survives, drop it otherwise."""
    src = _first_tensor(node)
    label, ins, out = labels.get(src), _meta_shape(src), _meta_shape(node)
    if label is None or out is None or len(out) < 2:
        return None
    dims = _arg(node, 1, "dim", None)
    dims = [dims] if isinstance(dims, int) else list(dims or range(len(ins)))
    if 1 in [d % len(ins) for d in dims]:
        return None
    if out[1] != len(label):
        raise _Unsupported("reduction moved the channel dimension")
    return label


def _split(ctx: TraceContext, node: fx.Node, labels: Labels) -> Any:
    """split/chunk. Along channels the pieces' sizes are fixed by the forward code:
    ``chunk(n)`` (or a split size computed from the tensor's shape at run time, the
    ``x.shape[1] // 2`` idiom) divides whatever count it gets into equal pieces, so
    the pieces are coupled position by position and shrink together; constant split
    sizes cannot follow a cut, so those channels are locked."""
    src = _first_tensor(node)
    label, ins = labels.get(src), _meta_shape(src)
    dim = _arg(node, 2, "dim", 0) % len(ins)
    metas = node.meta.get("tensor_meta")
    if label is None:
        return tuple(None for _ in metas)
    if dim != 1:
        return tuple(label for _ in metas)
    out, start = [], 0
    for m in metas:
        n = int(m.shape[1])
        out.append(label[start:start + n])
        start += n
    size = _arg(node, 1, "split_size_or_sections", node.kwargs.get("split_size"))
    proportional = node.target in (torch.chunk, "chunk") or isinstance(size, fx.Node)
    if proportional and len({len(p) for p in out}) == 1:
        for piece in out[1:]:
            ctx.table.union_labels(out[0], piece)
    elif len(out) > 1 and not _sizes_follow_cut(ctx, node, label, [len(p) for p in out]):
        ctx.lock(label, f"constant split sizes ({ctx.where()})")
    return tuple(out)


def _sizes_follow_cut(ctx: TraceContext, node: fx.Node, label: Label, sizes: list[int]) -> bool:
    """Constant splits can be cut when their sizes come from an attribute of the module that
    runs the split; surgery rewrites the attribute (``SplitSizesSlicer``):
    - a list (timm's MixedConv2d: ``torch.split(x, self.splits, 1)``): piece by piece;
    - an int (Res2Net: ``torch.split(x, self.width, 1)``, equal pieces): the pieces are
      coupled position by position, as for ``chunk``, and the int becomes the new width."""
    path = _module_path(node)
    if path == "<top level>" or path in ctx.records:
        return False
    owner = ctx.root.get_submodule(path)
    equal = len(set(sizes)) == 1
    attr = next((k for k, v in vars(owner).items() if not k.startswith("_") and (
        (isinstance(v, (list, tuple)) and list(v) == sizes)
        or (equal and type(v) is int and v == sizes[0]))), None)
    if attr is None:
        return False
    if type(getattr(owner, attr)) is int:
        for j in range(1, len(sizes)):
            ctx.table.union_labels(label[:sizes[0]], label[j * sizes[0]:(j + 1) * sizes[0]])
    ctx.records[path] = ModuleRecord(path, owner, SplitSizesSlicer(attr, sizes), in_label=list(label),
                                     out_label=list(label), out_shape=(1, len(label)))
    return True


def _channel_slice(ctx: TraceContext, label: Label, index: Any) -> Label:
    """``x[:, a:b]`` with constant bounds: the bounds do not follow a cut, so the
    channels before ``b`` (or before ``a`` for an open end) are locked; the ones
    after the window may go. Steps and negative bounds lock the whole channel
    dimension; bounds computed at run time are not supported."""
    if not isinstance(index, slice):
        raise _Unsupported("indexing the channel dimension with a non-slice")
    if not all(isinstance(v, (int, type(None))) for v in (index.start, index.stop, index.step)):
        raise _Unsupported("channel slice with bounds computed at run time")
    start, stop, step = index.start or 0, index.stop, index.step or 1
    n = len(label)
    open_end = stop is None or stop >= n
    if start == 0 and open_end and step == 1:
        return label
    why = f"constant channel slice ({ctx.where()})"
    if step != 1 or start < 0 or (stop is not None and stop < 0):
        ctx.lock(label, why)
    else:
        ctx.lock(label[:start] if open_end else label[:stop], why)
    return label[index]


def _getitem(ctx: TraceContext, node: fx.Node, labels: Labels) -> Any:
    src, index = node.args
    label = labels.get(src)
    if isinstance(label, tuple):
        return label[index]
    if label is None or _meta_shape(src) is None:
        return None
    index = index if isinstance(index, tuple) else (index,)
    full = slice(None)
    if not index or index[0] != full:
        raise _Unsupported("indexing over the batch dimension")
    if len(index) == 1 or index[1] is Ellipsis:
        return label
    return _channel_slice(ctx, label, index[1])


def _permute(ctx: TraceContext, node: fx.Node, labels: Labels) -> Any:
    src = _first_tensor(node)
    ins, out = _meta_shape(src), _meta_shape(node)
    if labels.get(src) is None:
        return None
    label = labels[src]
    if isinstance(label, ChannelGroups):
        dims = sorted(a % len(ins) for a in node.args[1:3]) if node.target in ("transpose", torch.transpose) else []
        if dims == [1, 2]:
            return ChannelGroups(label.label, label.groups, not label.swapped)
        raise _Unsupported("permute of channel groups other than the shuffle's transpose(1, 2)")
    if isinstance(label, ParamLabel):
        raise _Unsupported("permute of a per-channel parameter")
    order = _permutation(node, len(ins))
    if order is not None:
        return permuted(label, order)  # the channel label follows its dim (channels-last)
    if out is not None and len(out) >= 2 and out[:2] == ins[:2] and node.target in ("transpose", torch.transpose):
        d0, d1 = (a % len(ins) for a in node.args[1:3])
        if min(d0, d1) >= 2:
            return labels[src]
    raise _Unsupported("permute/transpose moves the channel dimension")


def _permutation(node: fx.Node, ndim: int) -> list[int] | None:
    """The dim order a permute/transpose node produces (None if not literal)."""
    if node.target in ("transpose", torch.transpose):
        d0, d1 = node.args[1:3]
        if not (isinstance(d0, int) and isinstance(d1, int)):
            return None
        order = list(range(ndim))
        order[d0 % ndim], order[d1 % ndim] = order[d1 % ndim], order[d0 % ndim]
        return order
    dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else node.args[1:]
    dims = node.kwargs.get("dims", dims)
    if len(dims) != ndim or not all(isinstance(d, int) for d in dims):
        return None
    return [d % ndim for d in dims]


def _no_label(ctx: TraceContext, node: fx.Node, labels: Labels) -> Any:
    return None


def _softmax(ctx: TraceContext, node: fx.Node, labels: Labels) -> Any:
    return _pass(ctx, node, labels)


_UNARY = [
    torch.relu, torch.relu_, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu,
    F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.sigmoid, torch.sigmoid, torch.tanh,
    F.tanh, torch.exp, torch.abs, torch.neg, operator.neg, torch.sqrt, torch.clamp, torch.clip,
    F.dropout, F.dropout2d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d,
    F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool2d, F.interpolate, F.upsample, F.softmax,
    F.log_softmax, torch.softmax, torch.log_softmax, F.softplus, torch.square, operator.pos,
    F.pad,  # spatial padding ("same" padding in timm/TF ports); _pass refuses channel padding
]
_UNARY_METHODS = [
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip",
    "contiguous", "clone", "detach", "float", "half", "bfloat16", "to", "type_as", "exp",
    "abs", "neg", "sqrt", "softmax", "log_softmax", "square", "pow", "mul_scalar",
]
_BINARY = [operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
           operator.imul, operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul,
           torch.div, torch.maximum, torch.minimum, torch.true_divide, operator.floordiv,
           operator.mod, operator.pow, torch.pow, torch.floor_divide, torch.remainder]
_BINARY_METHODS = ["add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "expand_as"]

HANDLERS: dict[Any, Handler] = {}
HANDLERS.update({f: _pass for f in _UNARY})
HANDLERS.update({m: _pass for m in _UNARY_METHODS})
HANDLERS.update({f: _binary for f in _BINARY})
HANDLERS.update({m: _binary for m in _BINARY_METHODS})
HANDLERS.update({f: _cat for f in (torch.cat, torch.concat, torch.concatenate)})
HANDLERS.update({f: _view_like for f in (torch.flatten, torch.reshape, torch.squeeze,
                                         torch.unsqueeze, "view", "reshape", "flatten",
                                         "squeeze", "unsqueeze", "expand", "view_as")})
HANDLERS.update({f: _reduce for f in (torch.mean, torch.sum, torch.amax, torch.amin, "mean",
                                      "sum", "amax", "amin")})
HANDLERS.update({f: _split for f in (torch.split, torch.chunk, "split", "chunk")})
HANDLERS.update({f: _permute for f in (torch.transpose, "transpose", torch.permute, "permute")})
HANDLERS.update({f: _no_label for f in (getattr, "size", "dim", "numel", len)})
HANDLERS[operator.getitem] = _getitem
# Handlers that understand ChannelGroups (and Moved) labels; and ParamLabel/Moved ones.
# radix.py adds its own.
_GROUP_AWARE = {_pass, _view_like, _permute, _no_label}
_PARAM_AWARE = {_binary}
# Functions of libraries edgeslim does not import, known by where they live. Both are
# identity in eval mode (the traced mode) and per-sample scaling in training: channel-wise.
_BY_QUALNAME: dict[tuple[str, str], Handler] = {
    ("torchvision.ops.stochastic_depth", "stochastic_depth"): _pass,
    ("timm.layers.drop", "drop_path"): _pass,
}


def register_handler(target: Any) -> Callable[[Handler], Handler]:
    """Teach the tracer a new function or tensor method (``"name"``)."""

    def deco(fn: Handler) -> Handler:
        HANDLERS[target] = fn
        return fn

    return deco


# ----------------------------------------------------------------------------------------

def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else "<top level>"


def _all_labels(value: Any) -> list[Label]:
    if isinstance(value, (ChannelGroups, Moved)):
        return [list(value.label)]
    if isinstance(value, ParamLabel):
        return []
    if isinstance(value, (tuple, list)) and value and not isinstance(value[0], int):
        return [lab for v in value for lab in _all_labels(v)]
    return [value] if value else []


def _fresh_locked(ctx: TraceContext, node: fx.Node, reason: str) -> Any:
    shape = _meta_shape(node)
    if shape is not None and len(shape) >= 2:
        return ctx.table.new_space(shape[1], node.name, locked=True, reason=reason)
    return None


def _is_ignored(path: str, ignore: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in ignore)


def _visit_module(ctx: TraceContext, node: fx.Node, labels: Labels, root: nn.Module,
                  ignore: Sequence[str]) -> Any:
    path = str(node.target)
    module = root.get_submodule(path)
    src = _tensor_args(node)
    in_label = labels.get(src[0]) if src else None
    in_shape = _meta_shape(src[0]) if src else None
    if in_label is None and in_shape is not None and len(in_shape) >= 2:
        in_label = ctx.table.new_space(in_shape[1], f"{path}:input", locked=True,
                                       reason=f"the input of module {path!r}")
    if isinstance(in_label, ChannelGroups):
        raise _Unsupported("a layer applied to channel groups (a split channel dimension)")
    if isinstance(in_label, ParamLabel):
        in_label = None  # a layer applied to a parameter: its channels are its own
    out_shape = _meta_shape(node) or ()
    rec = ctx.records.setdefault(path, ModuleRecord(path, module, slicer_for(module)))
    rec.out_shape = out_shape
    rec.in_shape = tuple(in_shape or ())
    rec.call_shapes.append(out_shape)
    if _is_ignored(path, ignore) or rec.slicer is None:
        if rec.slicer is None and not _is_ignored(path, ignore):
            raise _Unsupported(f"no slicer for layer type {type(module).__name__}")
        rec.ignored = True
        why = f"module {path!r} is ignored"
        for s in src:
            ctx.lock(labels.get(s), why)
        ctx.consume(path, in_label)
        reuse = rec.out_label is not None and len(out_shape) >= 2 and len(rec.out_label) == out_shape[1]
        out = rec.out_label if reuse else _fresh_locked(ctx, node, why)
        ctx.lock(out, why)
        rec.out_label = out
        return out
    if isinstance(in_label, Moved):
        return _visit_channels_last(ctx, path, rec, in_label, in_shape, out_shape)
    _check_subclass_channels(module, in_label, out_shape)
    out = rec.slicer.trace(ctx, path, module, in_label, out_shape)
    # A module with per-channel state (it consumed its input) that is called twice
    # ties the channels of both calls together. A stateless one (torchvision's shared
    # ``self.relu``) must not: its calls act on unrelated tensors.
    if rec.in_label is not None and rec.out_label is not None and out is not None \
            and rec.out_label is not out:
        ctx.table.union_labels(rec.out_label, out)
    rec.out_label = out
    return out


def _visit_channels_last(ctx: TraceContext, path: str, rec: ModuleRecord, label: Moved,
                         in_shape: Sequence[int], out_shape: Sequence[int]) -> Any:
    """A layer on a channels-last tensor: channel-wise layers keep the label; Linear and
    LayerNorm acting on the last (channel) dim are traced as on a [N, C] input."""
    if rec.slicer.kind == "elementwise":
        return label
    last = len(in_shape) - 1
    m = rec.module
    if isinstance(m, nn.Conv1d) and m.in_channels == m.out_channels == 1 and label.dim == last \
            and out_shape[-1] == len(label.label):
        rec.ignored = True  # nothing of it to cut; its cost is fixed (counted, not modelled)
        return label  # ECA: a 1-channel conv along the channel axis, whatever its length
    if not rec.slicer.channels_last or label.dim != last or len(out_shape) != len(in_shape):
        raise _Unsupported(f"layer {path!r} on a channels-last tensor (channels on dim {label.dim})")
    out = rec.slicer.trace(ctx, path, rec.module, list(label.label), (out_shape[0], out_shape[-1]))
    if rec.in_label is not None and rec.out_label is not None and out is not None and rec.out_label is not out:
        ctx.table.union_labels(rec.out_label, out)
    rec.out_label = out
    return None if out is None else Moved(tuple(out), label.dim)


def _check_subclass_channels(module: nn.Module, in_label: Any, out_shape: Sequence[int]) -> None:
    """A subclass of a known layer (timm's BatchNormAct2d, Conv2dSame, StdConv2d) is pruned by
    its base class's slicer, so it must compute what the base computes, channel-wise: its output
    has the channels the base would give it."""
    if is_plain_torch_layer(module) or len(out_shape) < 2:
        return
    expected = next((getattr(module, a) for a in ("out_channels", "out_features", "num_features")
                     if isinstance(getattr(module, a, None), int)), None)
    if expected is None and isinstance(in_label, list):
        expected = len(in_label)
    dim = -1 if isinstance(module, nn.Linear) else 1
    if expected is not None and out_shape[dim] != expected:
        raise _Unsupported(f"{type(module).__name__} (a subclass of a known layer) outputs "
                           f"{out_shape[dim]} channels where its base class would give {expected}")


def is_plain_torch_layer(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.nn.")


def _visit(ctx: TraceContext, node: fx.Node, labels: Labels, root: nn.Module,
           ignore: Sequence[str]) -> Any:
    if node.op == "placeholder":
        return _fresh_locked(ctx, node, "the model input")
    if node.op == "get_attr":
        param = param_label(root, str(node.target))
        return param if param is not None else _fresh_locked(ctx, node, f"constant {node.target!r}")
    if node.op == "output":
        for lab in _all_labels([labels.get(a) for a in _flat_nodes(node.args)]):
            ctx.lock(lab, "the model output")
        return None
    if node.op == "call_module":
        return _visit_module(ctx, node, labels, root, ignore)
    handler = HANDLERS.get(node.target) or _BY_QUALNAME.get(_qualname(node.target))
    if handler is None:
        name = getattr(node.target, "__name__", str(node.target))
        raise _Unsupported(f"operation {name!r} is not known to edgeslim's tracer")
    if handler not in _GROUP_AWARE:
        kinds = {type(labels.get(a)) for a in _tensor_args(node)}
        if ChannelGroups in kinds:
            raise _Unsupported("an operation on channel groups other than a channel shuffle")
        if Moved in kinds and handler not in _PARAM_AWARE:
            raise _Unsupported("an operation on a channels-last tensor that edgeslim does not follow")
        if ParamLabel in kinds and handler not in _PARAM_AWARE:
            labels = _WithoutParams(labels)  # a parameter used any other way stays whole
    return handler(ctx, node, labels)


class _WithoutParams(dict):
    """A view of the labels in which parameters carry none."""

    def __init__(self, labels: Labels) -> None:
        super().__init__()
        self.labels = labels

    def get(self, key: Any, default: Any = None) -> Any:
        value = self.labels.get(key, default)
        return None if isinstance(value, ParamLabel) else value

    def __getitem__(self, key: Any) -> Any:
        return self.get(key)


def _qualname(target: Any) -> tuple[str, str]:
    return getattr(target, "__module__", "") or "", getattr(target, "__name__", "")


def _flat_nodes(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, out.append)
    return out


class _TensorShape(NamedTuple):
    shape: tuple[int, ...]


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once on the model itself and stores every tensor's shape in
    ``node.meta["tensor_meta"]``. (torch.fx's ShapeProp wants a GraphModule, whose code
    generation costs as much as the trace, and also records strides and quantisation
    parameters the tracer never reads.)"""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _TensorShape(tuple(result.shape))
        elif isinstance(result, (tuple, list)) and any(isinstance(r, torch.Tensor) for r in result):
            n.meta["tensor_meta"] = tuple(_TensorShape(tuple(r.shape)) if isinstance(r, torch.Tensor)
                                          else r for r in result)
        return result


# functions and tensor methods that edgeslim.profile.count_flops counts (matrix products,
# convolutions, attention) and that no slicer's cost covers
_COUNTED = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.linear, F.bilinear,
            torch.matmul, operator.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.einsum,
            F.scaled_dot_product_attention, "matmul", "mm", "bmm", "addmm", "baddbmm"}


def has_unmodelled_cost(graph: fx.Graph, records: dict[str, ModuleRecord]) -> bool:
    """Whether some MACs of the traced forward fall outside the slicers' cost model: a
    matrix product called as a function, or a layer without slicer / left alone (``ignore``).
    When not, the graph's cost *is* ``count_flops``'s, and no counting pass is needed."""
    for node in graph.nodes:
        if node.op in ("call_function", "call_method") and node.target in _COUNTED:
            return True
    return any(r.slicer is None or r.ignored for r in records.values())


def _record_shapes(model: nn.Module, graph: fx.Graph, inputs: tuple) -> None:
    """Every node's shape, from one pass on the meta device (no computation); where the model
    cannot run there (data-dependent code), from a real pass, whose errors are the user's."""
    try:
        run_on_meta(model, inputs, lambda m, xs: _ShapeRecorder(m, graph=graph).run(*xs))
        return
    except Exception:  # noqa: BLE001  (any failure: the real pass below decides)
        for node in graph.nodes:
            node.meta.pop("tensor_meta", None)
    run_checked(lambda: _ShapeRecorder(model, graph=graph).run(*inputs), model, inputs, "prune")


def output_shape(graph: fx.Graph) -> tuple[int, ...] | None:
    """Shape of the traced model's output (None unless it returns a single tensor)."""
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    return _meta_shape(out.args[0])


def trace_labels(model: nn.Module, example_inputs: tuple, ignore: Sequence[str] = (),
                 on_unsupported: OnUnsupported = "error") -> tuple[TraceContext, fx.Graph]:
    """Trace ``model`` and propagate labels; returns the context and the fx graph."""
    check_module_paths(model, ignore)
    # Traced in eval mode, the mode the pruned model is checked and deployed in: training-only
    # branches (stochastic depth, aux heads) drop out. eval_mode restores every module's flag.
    with eval_mode(model), torch.no_grad():
        graph, ignore = _trace_with_opaque(model, ignore, on_unsupported)
        _record_shapes(model, graph, example_inputs)
    ctx = TraceContext(root=model)
    labels: Labels = {}
    for node in graph.nodes:
        ctx.node = node
        try:
            labels[node] = _visit(ctx, node, labels, model, ignore)
        except _Unsupported as exc:
            if on_unsupported == "error" and not _is_ignored(_module_path(node), ignore):
                raise UnsupportedModelError(
                    f"cannot prune through node {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)}) "
                    f"in module {_module_path(node)!r}: {exc}. Fix: leave that part alone with "
                    f"ignore=[{_module_path(node)!r}] (a module path), or pass on_unsupported='lock' "
                    "to freeze every channel that touches it."
                ) from None
            why = f"{ctx.where()} is not supported ({exc}; on_unsupported='lock')"
            for s in _tensor_args(node):
                ctx.lock(labels.get(s), why)
            labels[node] = _fresh_locked(ctx, node, why)
    ctx.node = None
    ctx.tied = _couple_tied(ctx, model, on_unsupported)
    return ctx, graph


def check_module_paths(model: nn.Module, paths: Sequence[str], what: str = "ignore") -> None:
    """Every path must name a submodule (a typo would silently prune what it meant to keep)."""
    known = [name for name, _ in model.named_modules(remove_duplicate=False) if name]
    names = set(known)
    for path in paths:
        if path in names:
            continue
        hint = did_you_mean(path, known, n=3)
        raise ConfigError(
            f"{what}=[{path!r}]: {type(model).__name__} has no submodule {path!r}.{hint} Fix: give "
            f"module paths as model.named_modules() lists them (e.g. {', '.join(map(repr, known[:3]))})"
        )


def shared_parameters(model: nn.Module) -> list[list[tuple[str, str]]]:
    """Parameters held by several modules (tied weights, ``c3.weight = c2.weight``): for each,
    the ``(module path, parameter name)`` pairs holding it."""
    owners: dict[int, list[tuple[str, str]]] = {}
    for path, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append((path, name))
    return [pairs for pairs in owners.values() if len(pairs) > 1]


def _tie_label_sides(rec: ModuleRecord, name: str) -> list[Label | None]:
    """The labels a parameter's dimensions follow: a bias only the output's."""
    return [rec.out_label] if name == "bias" else [rec.out_label, rec.in_label]


def _same_role(a: ModuleRecord, name_a: str, b: ModuleRecord, name_b: str) -> bool:
    """Whether two holders of one tensor use it alike (so their channels can be coupled)."""
    sizes = [[None if lab is None else len(lab) for lab in _tie_label_sides(r, n)]
             for r, n in ((a, name_a), (b, name_b))]
    return type(a.module) is type(b.module) and name_a == name_b and sizes[0] == sizes[1]


def _lock_tie(ctx: TraceContext, holders: list[tuple[ModuleRecord, str]], reason: str) -> None:
    for rec, name in holders:
        for label in _tie_label_sides(rec, name):
            ctx.lock(label, reason)


def _couple_tied(ctx: TraceContext, model: nn.Module, on_unsupported: OnUnsupported) -> list:
    """A tied parameter is one tensor: its holders' channels are removed together (so the
    slices are equal and surgery re-ties them); a tie that cannot be coupled is locked (one
    holder ignored or never called; different roles with on_unsupported='lock') or refused."""
    ties = shared_parameters(model)
    for tie in ties:
        both = " and ".join(f"{p}.{n}" for p, n in tie)
        holders = [(ctx.records[p], n) for p, n in tie if p in ctx.records and not ctx.records[p].ignored]
        if holders and len(holders) < len(tie):
            _lock_tie(ctx, holders, f"{both} are one tied parameter, partly ignored or unused")
            continue
        for (a, na), (b, nb) in zip(holders, holders[1:]):
            if _same_role(a, na, b, nb):
                for la, lb in zip(_tie_label_sides(a, na), _tie_label_sides(b, nb)):
                    if la is not None and lb is not None:
                        ctx.table.union_labels(la, lb)
            elif on_unsupported == "error":
                raise UnsupportedModelError(
                    f"cannot prune the tied parameter {both}: modules {a.path!r} and {b.path!r} use "
                    "it in different roles. Fix: ignore=[...] one of them (its channels stay), or "
                    "on_unsupported='lock'"
                )
            else:
                _lock_tie(ctx, [(a, na), (b, nb)], f"tied parameter {both} (on_unsupported='lock')")
    return ties


class _Tracer(fx.Tracer):
    """fx tracer that keeps the modules named in ``leaves`` opaque (not traced into).

    With ``sliced_leaves`` (the pruning trace), every module a slicer knows is a leaf too,
    subclasses included: timm's ``BatchNormAct2d`` (a BatchNorm2d whose forward adds an
    activation), ``Conv2dSame``/``StdConv2d`` (Conv2d subclasses with their own forward),
    torchvision's ``FrozenBatchNorm2d`` (recognised by its per-channel tensors). Tracing into
    them would meet Python-level bookkeeping (``if self.num_batches_tracked is not None``,
    weight standardisation) that says nothing about channels; what they compute per channel
    is what their base computes, which ``_check_subclass_channels`` verifies on the shapes.
    Saving traces with ``sliced_leaves=False``, so stored graphs hold only torch.nn layers.
    """

    def __init__(self, leaves: Sequence[str], sliced_leaves: bool = False) -> None:
        super().__init__()
        self.leaves = tuple(leaves)
        self.sliced_leaves = sliced_leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.sliced_leaves and not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) \
                and slicer_for(m) is not None:
            return True
        return _is_ignored(qualname, self.leaves) or super().is_leaf_module(m, qualname)


PRUNE_FIX = ("Fix: move data-dependent branches into a leaf module and list its path in ignore=, "
             "or make the branch static.")


def symbolic_trace(model: nn.Module, leaves: Sequence[str] = (), *, what: str = "edgeslim",
                   fix: str = PRUNE_FIX) -> fx.GraphModule:
    """torch.fx trace with a clear error when the model has data-dependent control flow.

    Modules whose path is in ``leaves`` are not traced into, so a block with
    Python control flow can be excluded from pruning by naming it. ``what`` and
    ``fix`` phrase the error for the caller (every edgeslim transform traces here).
    """
    return fx.GraphModule(model, _trace_graph(model, leaves, what, fix), type(model).__name__)


def _trace_graph(model: nn.Module, leaves: Sequence[str] = (), what: str = "edgeslim",
                 fix: str = PRUNE_FIX, sliced_leaves: bool = False) -> fx.Graph:
    """The fx graph of ``model`` (see :func:`symbolic_trace`), without generating its code."""
    tracer = _Tracer(leaves, sliced_leaves)
    try:
        return tracer.trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        where = failing_module(tracer)
        at = f" in module {where!r}" if where else ""
        hint = f" (e.g. ignore=[{where!r}])" if where else ""
        raise UnsupportedModelError(
            f"{what} needs a torch.fx-traceable model, but tracing {type(model).__name__} failed{at} "
            f"({type(exc).__name__}: {exc}); no Python control flow on tensor values. {fix}{hint}",
            module=where) from exc


def failing_module(tracer: fx.Tracer) -> str:
    """The innermost module being traced when tracing failed ('' at the top level)."""
    stack = list(getattr(tracer, "module_stack", {}) or {})
    return next((p for p in reversed(stack) if p), "")


def _trace_with_opaque(model: nn.Module, ignore: Sequence[str], on_unsupported: OnUnsupported
                       ) -> tuple[fx.Graph, list[str]]:
    """The pruning trace. With ``on_unsupported="lock"``, a module whose forward fx cannot
    trace (Python control flow on tensor values) becomes an opaque, locked leaf, as if named
    in ``ignore`` (with a warning), and tracing goes on: the rest of the model is pruned."""
    ignore = list(ignore)
    for _ in range(64):
        try:
            return _trace_graph(model, ignore, sliced_leaves=True), ignore
        except UnsupportedModelError as exc:
            where = getattr(exc, "module", "")
            if on_unsupported != "lock" or not where or where in ignore:
                raise
            warnings.warn(f"module {where!r} has Python control flow fx cannot trace: left unpruned "
                          f"(as with ignore=[{where!r}])", stacklevel=4)
            ignore.append(where)
    raise UnsupportedModelError(f"{type(model).__name__}: too many untraceable modules; pass ignore=")
