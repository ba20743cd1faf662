"""Slicers: one small class per layer type that knows two things about it.

``trace`` says how the layer moves channel labels (see ``channels.py``) and
which of its tensor dimensions follow which labels; ``slice_`` cuts its tensors
in place given the positions to keep. Adding a layer type is one class here
plus ``SLICERS.register`` (Torch-Pruning's "pruner per layer" idea, smaller).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from ..registry import Registry

if TYPE_CHECKING:
    from .trace import TraceContext

Label = list[int]


def _take(param: torch.Tensor | None, dim: int, keep: Sequence[int] | None) -> torch.Tensor | None:
    """``param`` restricted to positions ``keep`` along ``dim`` (None keeps everything)."""
    if param is None or keep is None:
        return None if param is None else param.detach().clone()
    idx = torch.as_tensor(list(keep), dtype=torch.long, device=param.device)
    return param.detach().index_select(dim, idx)  # a new tensor already: no clone


def _n(keep: Sequence[int] | None, current: int) -> int:
    return current if keep is None else len(keep)


def _set_param(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    old = getattr(module, name, None)
    if value is None or old is None:
        return
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, name, value)


class Slicer:
    """Base class. ``kind`` names the role for reports; ``cost`` feeds the planner."""

    kind = "module"
    channels_last = False  # also traced on [..., C] tensors (channels on the last dim)
    slices_extras = True  # surgery also cuts per-channel tensors of the layer it does not know

    def trace(self, ctx: "TraceContext", path: str, module: nn.Module, in_label: Label | None,
              out_shape: Sequence[int]) -> Label | None:
        raise NotImplementedError

    def slice_(self, module: nn.Module, in_keep: list[int], out_keep: list[int]) -> None:
        raise NotImplementedError

    def cost(self, module: nn.Module, n_in: int, n_out: int, out_shape: Sequence[int]) -> tuple[int, int]:
        """(MACs, params) of the layer with ``n_in`` input and ``n_out`` output channels.

        MACs follow ``edgeslim.profile.count_flops``: only convolutions and matrix
        products count (normalisation and activations cost none), so a
        ``target_flops`` budget is met in the units the profiler reports.
        """
        return 0, 0


SLICERS: Registry[type] = Registry("slicer")
_BY_TYPE: dict[type, Slicer] = {}


def register_slicer(*types: type) -> "callable":
    """Register a Slicer class for the given nn.Module types."""

    def deco(cls: type) -> type:
        SLICERS.register(cls.__name__)(cls)
        for t in types:
            _BY_TYPE[t] = cls()
        return cls

    return deco


def slicer_for(module: nn.Module) -> Slicer | None:
    """The slicer of ``module``'s class or nearest registered base class; else, for a layer
    recognised by what it holds (``_BY_CONTENT``), that slicer; else None."""
    for klass in type(module).__mro__:
        if klass in _BY_TYPE:
            return _BY_TYPE[klass]
    return next((slicer for matches, slicer in _BY_CONTENT if matches(module)), None)


_NORM_TENSORS = {"weight", "bias", "running_mean", "running_var"}


def _is_frozen_norm(module: nn.Module) -> bool:
    """torchvision's / timm's FrozenBatchNorm2d (not a BatchNorm subclass): no children, and
    exactly a per-channel weight, bias, running mean and variance (buffers or parameters)."""
    if next(module.children(), None) is not None:
        return False
    own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    return set(own) == _NORM_TENSORS and len({t.shape for t in own.values()}) == 1 \
        and next(iter(own.values())).dim() == 1


def _spatial(shape: Sequence[int]) -> int:
    n = 1
    for s in shape[2:]:
        n *= int(s)
    return n


def couple_groups(ctx: "TraceContext", label: Label | None, groups: int) -> None:
    """Tie position k of every one of ``groups`` equal blocks of ``label`` together, so a cut
    removes the same in-group positions from each block and the groups stay equal."""
    if label is None or groups <= 1:
        return
    per = len(label) // groups
    for j in range(1, groups):
        ctx.table.union_labels(label[:per], label[j * per:(j + 1) * per])


def _in_group_positions(keep: Sequence[int] | None, size: int, groups: int) -> list[int] | None:
    """The kept positions inside one group, the same in every group (checked)."""
    if keep is None:
        return None
    per = size // groups
    local = [i for i in keep if i < per]
    if list(keep) != [j * per + i for j in range(groups) for i in local]:
        raise ValueError(f"internal error: channels {list(keep)} of {size} in {groups} groups "
                         "are not cut group-consistently; please report this")
    return local


@register_slicer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvSlicer(Slicer):
    """Standard, depthwise and grouped convolutions.

    groups == 1: input channels follow the input label, output channels are a
    new prunable space. Depthwise (groups == in_channels, with a channel
    multiplier m = out/in): output channel i is made from input channel i // m
    only, so it carries that input's label (m times) and cutting a channel
    removes a whole group. Other grouped convs (ResNeXt): a cut must remove the
    same number of channels from every group, on both sides, so position k of
    each input group is one unit, and likewise for the output groups (the rule
    ``chunk`` follows, see ``couple_groups``); the group count stays.
    """

    kind = "conv"

    def trace(self, ctx, path, module, in_label, out_shape):
        conv: nn.Conv2d = module
        ctx.consume(path, in_label)
        if conv.groups == 1:
            return ctx.produce(path, conv.out_channels)
        if conv.groups == conv.in_channels:
            m = conv.out_channels // conv.groups
            return in_label if m == 1 or in_label is None else [e for e in in_label for _ in range(m)]
        couple_groups(ctx, in_label, conv.groups)
        out = ctx.produce(path, conv.out_channels)
        couple_groups(ctx, out, conv.groups)
        return out

    def slice_(self, module, in_keep, out_keep):
        conv: nn.Conv2d = module
        g = conv.groups
        if g == 1:
            w = _take(_take(conv.weight, 0, out_keep), 1, in_keep)
        elif g == conv.in_channels:  # depthwise: whole groups go
            w = _take(conv.weight, 0, out_keep)
            conv.groups = _n(out_keep, conv.out_channels) // (conv.out_channels // g)
            if in_keep is not None and len(in_keep) != conv.groups:
                raise ValueError(f"internal error: depthwise conv keeps {conv.groups} groups but "
                                 f"{len(in_keep)} inputs; please report this")
        else:  # grouped: the same in-group positions go from every group
            _in_group_positions(out_keep, conv.out_channels, g)
            w = _take(_take(conv.weight, 0, out_keep), 1, _in_group_positions(in_keep, conv.in_channels, g))
        conv.in_channels = conv.groups if g == conv.in_channels else _n(in_keep, conv.in_channels)
        conv.out_channels = _n(out_keep, conv.out_channels)
        _set_param(conv, "weight", w)
        _set_param(conv, "bias", _take(conv.bias, 0, out_keep))

    def cost(self, module, n_in, n_out, out_shape):
        conv: nn.Conv2d = module
        k = math.prod(conv.kernel_size)
        groups = n_in if conv.groups == conv.in_channels else conv.groups  # depthwise: one per input
        per_out = (n_in // max(groups, 1)) * k
        params = n_out * per_out + (n_out if conv.bias is not None else 0)
        return n_out * per_out * _spatial(out_shape), params


@register_slicer(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposeSlicer(Slicer):
    """Transposed convolutions (weight layout [in, out/groups, k...]); groups == 1 only."""

    kind = "conv_transpose"

    def trace(self, ctx, path, module, in_label, out_shape):
        ctx.consume(path, in_label)
        if module.groups != 1:
            why = f"grouped ConvTranspose {path!r} (groups={module.groups}) is not pruned"
            ctx.lock(in_label, why)
            return ctx.produce(path, module.out_channels, locked=True, reason=why)
        return ctx.produce(path, module.out_channels)

    def slice_(self, module, in_keep, out_keep):
        if module.groups != 1:
            return
        _set_param(module, "weight", _take(_take(module.weight, 0, in_keep), 1, out_keep))
        _set_param(module, "bias", _take(module.bias, 0, out_keep))
        module.in_channels, module.out_channels = _n(in_keep, module.in_channels), _n(out_keep, module.out_channels)

    def cost(self, module, n_in, n_out, out_shape):
        k = math.prod(module.kernel_size)
        params = n_in * n_out * k + (n_out if module.bias is not None else 0)
        return n_in * n_out * k * _spatial(out_shape), params


@register_slicer(nn.Linear)
class LinearSlicer(Slicer):
    """Fully-connected layers on [N, features] inputs (after flatten the label
    repeats each channel H*W times, so a channel's whole block of columns goes)."""

    kind = "linear"
    channels_last = True

    def trace(self, ctx, path, module, in_label, out_shape):
        if len(out_shape) != 2:
            ctx.unsupported(path, "nn.Linear on a tensor with more than 2 dims")
        ctx.consume(path, in_label)
        return ctx.produce(path, module.out_features)

    def slice_(self, module, in_keep, out_keep):
        _set_param(module, "weight", _take(_take(module.weight, 0, out_keep), 1, in_keep))
        _set_param(module, "bias", _take(module.bias, 0, out_keep))
        module.in_features, module.out_features = _n(in_keep, module.in_features), _n(out_keep, module.out_features)

    def cost(self, module, n_in, n_out, out_shape):
        positions = math.prod(int(s) for s in out_shape[1:-1])  # channels-last: once per pixel
        return n_in * n_out * positions, n_in * n_out + (n_out if module.bias is not None else 0)


@register_slicer(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d,
                 nn.InstanceNorm2d, nn.InstanceNorm3d)
class NormSlicer(Slicer):
    """Per-channel normalisation: affine terms and running statistics follow the input."""

    kind = "norm"

    def trace(self, ctx, path, module, in_label, out_shape):
        ctx.consume(path, in_label)
        return in_label

    def slice_(self, module, in_keep, out_keep):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _set_param(module, name, _take(getattr(module, name, None), 0, out_keep))
        module.num_features = _n(out_keep, module.num_features)

    def cost(self, module, n_in, n_out, out_shape):
        return 0, (2 * n_out if module.affine else 0)  # no MACs: see Slicer.cost


@register_slicer(nn.LayerNorm)
class LayerNormSlicer(Slicer):
    """LayerNorm over the channel dim: ``LayerNorm(C)`` on channels-last tensors (ConvNeXt
    blocks) or on [N, C]; a subclass on [N, C, H, W] with ``normalized_shape == (C,)`` is a
    LayerNorm2d (it permutes inside, timm/torchvision). Weight and bias follow the channels.
    Normalising other dims passes the channels through; normalising over channels and more
    locks them."""

    kind = "norm"
    channels_last = True

    def trace(self, ctx, path, module, in_label, out_shape):
        if in_label is None:
            return None
        shape = tuple(module.normalized_shape)
        over_channels = shape == (len(in_label),) and (len(out_shape) == 2 or type(module) is not nn.LayerNorm)
        if over_channels:
            ctx.consume(path, in_label)
            return in_label
        if len(out_shape) - len(shape) <= 1:
            ctx.lock(in_label, f"LayerNorm {path!r} normalises over the channels and more dims")
        return in_label

    def slice_(self, module, in_keep, out_keep):
        keep = in_keep if in_keep else out_keep
        if keep is None or len(module.normalized_shape) != 1:
            return
        for name in ("weight", "bias"):
            _set_param(module, name, _take(getattr(module, name, None), 0, keep))
        module.normalized_shape = (len(keep),)

    def cost(self, module, n_in, n_out, out_shape):
        return 0, (2 * n_out if module.weight is not None else 0)


class FrozenNormSlicer(NormSlicer):
    """A frozen BatchNorm: four per-channel tensors (buffers), traced and cut like BatchNorm's."""

    def slice_(self, module, in_keep, out_keep):
        for name in sorted(_NORM_TENSORS):
            _set_param(module, name, _take(getattr(module, name), 0, out_keep))
        if isinstance(getattr(module, "num_features", None), int):
            module.num_features = _n(out_keep, module.num_features)

    def cost(self, module, n_in, n_out, out_shape):
        return 0, (2 * n_out if isinstance(module.weight, nn.Parameter) else 0)


_BY_CONTENT: list[tuple["callable", Slicer]] = [(_is_frozen_norm, FrozenNormSlicer())]


@register_slicer(nn.GroupNorm)
class GroupNormSlicer(Slicer):
    """GroupNorm with g groups: position k of every group is one unit (``couple_groups``), so a
    cut removes the same number of channels from each group and the group count stays (1 group:
    LayerNorm-like; one per channel: InstanceNorm-like, whole groups go)."""

    kind = "norm"

    def trace(self, ctx, path, module, in_label, out_shape):
        ctx.consume(path, in_label)
        if module.num_groups not in (1, module.num_channels):
            couple_groups(ctx, in_label, module.num_groups)
        return in_label

    def slice_(self, module, in_keep, out_keep):
        per_channel = module.num_groups == module.num_channels
        for name in ("weight", "bias"):
            _set_param(module, name, _take(getattr(module, name), 0, out_keep))
        module.num_channels = _n(out_keep, module.num_channels)
        if per_channel:
            module.num_groups = module.num_channels

    def cost(self, module, n_in, n_out, out_shape):
        return 0, (2 * n_out if module.affine else 0)  # no MACs: see Slicer.cost


@register_slicer(nn.PReLU)
class PReLUSlicer(Slicer):
    """PReLU: one slope per channel (sliced) or one shared slope (untouched)."""

    kind = "activation"

    def trace(self, ctx, path, module, in_label, out_shape):
        if module.num_parameters > 1:
            ctx.consume(path, in_label)
        return in_label

    def slice_(self, module, in_keep, out_keep):
        if module.num_parameters > 1:
            _set_param(module, "weight", _take(module.weight, 0, out_keep))
            module.num_parameters = _n(out_keep, module.num_parameters)

    def cost(self, module, n_in, n_out, out_shape):
        return 0, (n_out if module.num_parameters > 1 else 1)


_PASS_THROUGH = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.LogSoftmax, nn.Identity, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.Hardtanh,
    nn.Softplus, nn.LocalResponseNorm, nn.CELU, nn.Tanhshrink,
)


@register_slicer(*_PASS_THROUGH)
class PassThroughSlicer(Slicer):
    """Parameter-free channel-wise layers: the output keeps the input's channels."""

    kind = "elementwise"

    def trace(self, ctx, path, module, in_label, out_shape):
        if in_label is not None and len(out_shape) >= 2 and out_shape[1] != len(in_label):
            ctx.unsupported(path, f"{type(module).__name__} changed the channel count")
        return in_label

    def slice_(self, module, in_keep, out_keep):
        return None


@register_slicer(nn.Flatten)
class FlattenSlicer(Slicer):
    """nn.Flatten: handled like torch.flatten (labels repeat per spatial position)."""

    kind = "reshape"

    def trace(self, ctx, path, module, in_label, out_shape):
        return ctx.flatten_label(path, in_label, module.start_dim, out_shape)

    def slice_(self, module, in_keep, out_keep):
        return None
