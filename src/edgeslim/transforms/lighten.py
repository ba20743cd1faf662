"""Build a lightweight student from a teacher (stage 1 of knowledge-transfer compression).

Chen, Li, Gong, Wen, Zhang, Shi. *A deep neural network compression algorithm
based on knowledge transfer for edge devices*, Computer Communications 163
(2020): the student keeps the teacher's layout but

* every standard KxK convolution (K > 1, ``groups == 1``) becomes a
  depthwise-separable one -- KxK depthwise conv, BN, activation, 1x1
  pointwise conv, BN (Howard et al., *MobileNets*, 2017; Chollet,
  *Xception*, CVPR 2017) -- with the same stride / padding / dilation and the
  same input and output channel counts, so every other layer still fits;
* the fully-connected classifier (flatten followed by a stack of Linear
  layers) becomes global average pooling + one Linear, or a 1x1 conv to
  ``num_classes`` channels + global average pooling (Lin, Chen, Yan, *Network
  in Network*, ICLR 2014).

The analysis uses torch.fx (convs and the ``flatten -> linear ...`` pattern,
with shapes); convs are replaced in place so the student keeps the teacher's
class and module paths, and only a rewritten head turns the student into a
``torch.fx.GraphModule``. Unconverted layers keep the teacher's weights (a
warm start); new layers are freshly initialised -- the student is meant to be
trained by distillation next (:func:`edgeslim.distill.distill`).
"""
from __future__ import annotations

import copy
import inspect
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from edgeslim.errors import ConfigError, UnsupportedModelError
from edgeslim._core import did_you_mean, eval_mode
from edgeslim.modelinfo import LightenReport, copy_info, info
from edgeslim.registry import Registry
from edgeslim.stage_args import lighten_keywords, takes_stage_config
from edgeslim.transforms._fx_utils import (
    ExampleInputs,
    as_input_tuple,
    called_module,
    node_shape,
    propagate_shapes,
    trace,
)

__all__ = ["ACTIVATIONS", "DepthwiseSeparableConv2d", "LightenOptions", "lighten"]

HeadKind = Literal["gap_linear", "conv", "keep"]
HEAD_KINDS: tuple[str, ...] = ("gap_linear", "conv", "keep")
MATCH = "match"

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
for _name, _factory in {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU,
    "gelu": nn.GELU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU,
}.items():
    ACTIVATIONS.register(_name)(_factory)

# What counts as an activation / dropout in the teacher's graph ("match" and head detection).
_ACT_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.Tanh, nn.LeakyReLU, nn.ELU,
    nn.Sigmoid, nn.Hardtanh, nn.Mish,
)
_ACT_FUNCTIONS: dict[Any, Callable[[], nn.Module]] = {
    F.relu: nn.ReLU, torch.relu: nn.ReLU, F.relu6: nn.ReLU6, F.hardswish: nn.Hardswish,
    F.silu: nn.SiLU, F.gelu: nn.GELU, torch.tanh: nn.Tanh, F.leaky_relu: nn.LeakyReLU,
    F.elu: nn.ELU, torch.sigmoid: nn.Sigmoid,
}
_ACT_METHODS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
}
_DROPOUT_MODULES: tuple[type[nn.Module], ...] = (nn.Dropout, nn.AlphaDropout)
_DROPOUT_FUNCTIONS = {F.dropout, F.alpha_dropout}
_GLOBAL_POOL_MODULES: tuple[type[nn.Module], ...] = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_GLOBAL_POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_SPATIAL_DIMS = ((2, 3), (-2, -1), (3, 2), (-1, -2))


@dataclass(frozen=True)
class LightenOptions:
    """Validated options of :func:`lighten` (see there)."""

    width_mult: float = 1.0
    keep_first_conv: bool = True
    exclude: tuple[str, ...] = ()
    activation: str = "relu"
    head: str = "gap_linear"
    student: str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.width_mult, (int, float)) and math.isfinite(self.width_mult)
                and self.width_mult > 0):
            raise ConfigError(f"lighten: width_mult must be a positive number, got {self.width_mult!r}")
        if self.head not in HEAD_KINDS:
            raise ConfigError(f"lighten: head={self.head!r} is invalid; valid: {', '.join(HEAD_KINDS)}")
        if self.activation != MATCH and self.activation not in ACTIVATIONS:
            valid = ", ".join([MATCH, *ACTIVATIONS.names()])
            raise ConfigError(f"lighten: activation={self.activation!r} is invalid; valid: {valid}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``exclude`` as a list)."""
        data = asdict(self)
        data["exclude"] = list(self.exclude)
        return data


class DepthwiseSeparableConv2d(nn.Sequential):
    """KxK depthwise conv -> BN -> activation -> 1x1 pointwise conv (-> BN).

    Howard et al., *MobileNets: Efficient Convolutional Neural Networks for
    Mobile Vision Applications*, 2017, fig. 3. Replaces a standard conv with
    the same input/output channels, kernel, stride, padding and dilation.
    ``pointwise_bn=False`` when the replaced conv was already followed by a BN
    (that BN then normalises the pointwise output). Children: ``dw``,
    ``dw_bn``, ``act``, ``pw`` and optionally ``pw_bn``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: Any = 0,
                 dilation: int | tuple[int, int] = 1, padding_mode: str = "zeros",
                 activation: nn.Module | None = None, pointwise_bn: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            dw=nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, dilation,
                         groups=in_channels, bias=False, padding_mode=padding_mode, **factory),
            dw_bn=nn.BatchNorm2d(in_channels, **factory),
            act=activation if activation is not None else nn.ReLU(),
            pw=nn.Conv2d(in_channels, out_channels, 1, bias=False, **factory),
        )
        if pointwise_bn:
            layers["pw_bn"] = nn.BatchNorm2d(out_channels, **factory)
        super().__init__(layers)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: nn.Module | None = None,
                  pointwise_bn: bool = True) -> "DepthwiseSeparableConv2d":
        """The separable replacement of ``conv`` (same device and dtype, fresh weights)."""
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                   conv.padding, conv.dilation, conv.padding_mode, activation, pointwise_bn,
                   device=conv.weight.device, dtype=conv.weight.dtype)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv_macs_per_pixel(conv: nn.Conv2d) -> int:
    kh, kw = conv.kernel_size
    return kh * kw * (conv.in_channels // conv.groups) * conv.out_channels


def _separable_cost_per_pixel(new: DepthwiseSeparableConv2d) -> int:
    """FLOPs per output pixel including BN (2/element) and activation (1/element).

    Deliberately generous to the separable block: the conversion is kept only
    if it is cheaper even counting the elementwise work a plain conv lacks.
    """
    dw, pw = new.dw, new.pw
    cin, cout = dw.in_channels, pw.out_channels
    cost = 2 * _conv_macs_per_pixel(dw) + 2 * cin + cin + 2 * _conv_macs_per_pixel(pw)
    return cost + (2 * cout if "pw_bn" in new._modules else 0)


@dataclass
class _Report:
    converted: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    head: dict[str, Any] = field(default_factory=dict)

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append({"path": path, "reason": reason})


def _excluded(path: str, exclude: Sequence[str]) -> bool:
    return any(path == ex or path.startswith(ex + ".") or ex == "" for ex in exclude)


def _check_exclude(model: nn.Module, exclude: Sequence[str]) -> None:
    paths = [p for p, _ in model.named_modules()]
    for ex in exclude:
        if ex not in paths:
            hint = did_you_mean(ex, paths, n=3)
            raise ConfigError(f"lighten: exclude names {ex!r}, which is not a module path of "
                              f"{type(model).__name__}.{hint}")


def _base_copy(model: nn.Module, width_mult: float) -> nn.Module:
    """A deep copy of the teacher, or (``width_mult != 1``) a freshly built narrower zoo model.

    Scaling widths of an arbitrary model would have to keep every group of
    channels that are added together (residuals) or concatenated consistent;
    a zoo model's factory already does exactly that, so width scaling goes
    through ``create_model`` with the recorded architecture.
    """
    if width_mult == 1.0:
        return copy.deepcopy(model)
    from edgeslim.models import create_model
    from edgeslim.models.factory import MODELS

    arch = info(model).arch
    kwargs = dict(arch.kwargs) if arch is not None else {}
    if "width_mult" not in kwargs and arch is not None and arch.name in MODELS \
            and "width_mult" in inspect.signature(MODELS.get(arch.name)).parameters:
        kwargs["width_mult"] = 1.0  # a model saved before its factory took width_mult
    if "width_mult" not in kwargs or arch is None:
        name = arch.name if arch is not None else type(model).__name__
        raise ConfigError(
            f"lighten: width_mult={width_mult} needs a zoo model built by create_model whose "
            f"factory takes width_mult; {name!r} does not. Use width_mult=1.0 and shrink the "
            "student afterwards with edgeslim.prune, or build the teacher with create_model."
        )
    kwargs["width_mult"] = float(kwargs["width_mult"]) * width_mult
    student = create_model(arch.name, **kwargs)
    ref = next(model.parameters(), None)
    if ref is not None:
        student.to(device=ref.device, dtype=ref.dtype)
    return student.train(model.training)


def _conv_skip_reason(conv: nn.Conv2d, path: str, opts: LightenOptions, first: bool) -> str | None:
    checks: list[tuple[bool, str]] = [
        (_excluded(path, opts.exclude), "excluded (exclude=...)"),
        (type(conv) is not nn.Conv2d, f"{type(conv).__name__} is not a plain nn.Conv2d"),
        (conv.groups != 1, f"already grouped/depthwise (groups={conv.groups})"),
        (max(conv.kernel_size) == 1, "1x1 (pointwise) convolution"),
        (first and opts.keep_first_conv, "first convolution kept (keep_first_conv=True)"),
    ]
    return next((reason for failed, reason in checks if failed), None)


def _follows(gm: fx.GraphModule | None, node: fx.Node | None, types: tuple[type, ...]) -> tuple[fx.Node, nn.Module] | None:
    """The single user of ``node`` if it calls a module of ``types``."""
    if gm is None or node is None or len(node.users) != 1:
        return None
    user = next(iter(node.users))
    module = called_module(gm, user, types)
    return (user, module) if module is not None else None


def _teacher_activation(gm: fx.GraphModule | None, node: fx.Node | None) -> nn.Module:
    """A copy of the activation applied after ``node`` (skipping one BN), else ReLU."""
    bn = _follows(gm, node, (nn.BatchNorm2d,))
    after = bn[0] if bn is not None else node
    act = _follows(gm, after, _ACT_MODULES)
    if act is not None:
        return copy.deepcopy(act[1])
    user = next(iter(after.users)) if after is not None and len(after.users) == 1 else None
    if user is not None and user.op == "call_function" and user.target in _ACT_FUNCTIONS:
        return _ACT_FUNCTIONS[user.target]()
    if user is not None and user.op == "call_method" and user.target in _ACT_METHODS:
        return _ACT_METHODS[str(user.target)]()
    return nn.ReLU()


def _convert_one(conv: nn.Conv2d, gm: fx.GraphModule | None, node: fx.Node | None,
                 opts: LightenOptions) -> DepthwiseSeparableConv2d:
    bn = _follows(gm, node, (nn.BatchNorm2d,))
    bn_follows = bn is not None and bn[1].num_features == conv.out_channels
    act = (_teacher_activation(gm, node) if opts.activation == MATCH
           else ACTIVATIONS.get(opts.activation)())
    return DepthwiseSeparableConv2d.from_conv(conv, act, pointwise_bn=not bn_follows)


def _conv_sites(student: nn.Module, gm: fx.GraphModule | None) -> list[tuple[str, fx.Node | None]]:
    """(path, first call node) of every Conv2d in execution order (registration order without fx)."""
    if gm is None:
        return [(p, None) for p, m in student.named_modules() if isinstance(m, nn.Conv2d)]
    sites: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if called_module(gm, node, (nn.Conv2d,)) is not None:
            sites.setdefault(str(node.target), node)
    return list(sites.items())


def _conversion_entry(path: str, conv: nn.Conv2d, new: DepthwiseSeparableConv2d,
                      node: fx.Node | None) -> dict[str, Any]:
    shape = node_shape(node) if node is not None else None
    pixels = shape[2] * shape[3] if shape is not None and len(shape) == 4 else None
    per_pixel_after = _conv_macs_per_pixel(new.dw) + _conv_macs_per_pixel(new.pw)
    return {
        "path": path, "kernel_size": list(conv.kernel_size), "stride": list(conv.stride),
        "in_channels": conv.in_channels, "out_channels": conv.out_channels,
        "params_before": _params(conv), "params_after": _params(new),
        "macs_before": _conv_macs_per_pixel(conv) * pixels if pixels else None,
        "macs_after": per_pixel_after * pixels if pixels else None,
        "pointwise_bn": "pw_bn" in new._modules,
    }


def _plan_convs(student: nn.Module, gm: fx.GraphModule | None, opts: LightenOptions,
                report: _Report) -> list[tuple[str, nn.Module]]:
    """Decide, conv by conv, whether to convert; returns the replacements."""
    sites = _conv_sites(student, gm)
    plans: list[tuple[str, nn.Module]] = []
    for index, (path, node) in enumerate(sites):
        conv = student.get_submodule(path)
        reason = _conv_skip_reason(conv, path, opts, first=index == 0)
        if reason is not None:
            report.skip(path, reason)
            continue
        new = _convert_one(conv, gm, node, opts)
        plain_flops = 2 * _conv_macs_per_pixel(conv) + (conv.out_channels if conv.bias is not None else 0)
        if _params(new) >= _params(conv) or _separable_cost_per_pixel(new) >= plain_flops:
            report.skip(path, f"depthwise-separable form would not be smaller "
                              f"(params {_params(conv)} -> {_params(new)})")
            continue
        plans.append((path, new))
        report.converted.append(_conversion_entry(path, conv, new, node))
    return plans


# --------------------------------------------------------------------------- head
@dataclass
class _HeadPlan:
    entry: fx.Node            # the flatten-like node turning the 4-D map into vectors
    chain: list[fx.Node]      # Linear / activation / dropout nodes up to the model output
    spatial: fx.Node          # the 4-D feature map before any global pooling
    already_global: bool      # the head already pools globally before its Linear layers
    channels: int
    num_classes: int
    linear_paths: list[str]


def _is_global_pool(gm: fx.GraphModule, node: Any) -> bool:
    module = called_module(gm, node, _GLOBAL_POOL_MODULES)
    if module is not None:
        return module.output_size in (1, (1, 1), [1, 1])
    return (isinstance(node, fx.Node) and node.op == "call_function"
            and node.target in _GLOBAL_POOL_FUNCTIONS and len(node.args) > 1
            and node.args[1] in (1, (1, 1), [1, 1]))


def _is_spatial_mean(node: fx.Node) -> bool:
    """``x.mean((2, 3))`` / ``torch.mean(x, dim=(2, 3))``: global average pooling to a vector."""
    if node.target not in ("mean", torch.mean) or node.op not in ("call_method", "call_function"):
        return False
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    return isinstance(dims, (tuple, list)) and tuple(dims) in _SPATIAL_DIMS


def _is_head_op(gm: fx.GraphModule, node: fx.Node) -> bool:
    if called_module(gm, node, (nn.Linear, *_ACT_MODULES, *_DROPOUT_MODULES)) is not None:
        return True
    if node.op == "call_function":
        return node.target in _ACT_FUNCTIONS or node.target in _DROPOUT_FUNCTIONS
    return node.op == "call_method" and node.target in _ACT_METHODS


def _chain_to_output(gm: fx.GraphModule, entry: fx.Node) -> list[fx.Node] | None:
    """The Linear/activation/dropout nodes from ``entry`` to the model output, if that is all there is."""
    chain: list[fx.Node] = []
    current = entry
    while len(current.users) == 1:
        user = next(iter(current.users))
        if user.op == "output":
            last_is_linear = bool(chain) and called_module(gm, chain[-1], (nn.Linear,)) is not None
            return chain if last_is_linear else None
        if not _is_head_op(gm, user) or not user.args or user.args[0] is not current:
            return None
        chain.append(user)
        current = user
    return None


def _find_head(gm: fx.GraphModule) -> _HeadPlan | None:
    """The first ``4-D map -> vector -> Linear stack -> output`` pattern in the graph."""
    for node in gm.graph.nodes:
        shape, src = node_shape(node), node.args[0] if node.args else None
        src_shape = node_shape(src)
        if shape is None or len(shape) != 2 or src_shape is None or len(src_shape) != 4:
            continue
        chain = _chain_to_output(gm, node)
        if chain is None:
            continue
        pooled_before = _is_global_pool(gm, src)
        spatial = src.args[0] if pooled_before else src
        spatial_shape = node_shape(spatial)
        if not isinstance(spatial, fx.Node) or spatial_shape is None or len(spatial_shape) != 4:
            continue
        linears = [n for n in chain if called_module(gm, n, (nn.Linear,)) is not None]
        pooled = pooled_before or _is_spatial_mean(node)
        return _HeadPlan(node, chain, spatial, pooled, spatial_shape[1],
                         gm.get_submodule(str(linears[-1].target)).out_features,
                         [str(n.target) for n in linears])
    return None


def _plan_head(gm: fx.GraphModule | None, opts: LightenOptions, report: _Report) -> _HeadPlan | None:
    """Decide whether and how the classifier is rewritten; records the decision in the report."""
    reason, plan = None, None
    if opts.head == "keep":
        reason = "head='keep'"
    elif gm is None:
        reason = "model could not be traced by torch.fx (see 'trace_error')"
    else:
        plan = _find_head(gm)
        if plan is None:
            reason = "no 'flatten -> Linear ... -> output' classifier found"
        elif any(_excluded(p, opts.exclude) for p in plan.linear_paths):
            reason = "classifier excluded (exclude=...)"
        elif opts.head == "gap_linear" and plan.already_global and len(plan.linear_paths) == 1:
            reason = "already global average pooling + one Linear"
    if reason is not None:
        report.head = {"converted": False, "reason": reason}
        return None
    report.head = {"converted": True, "kind": opts.head, "replaced": plan.linear_paths,
                   "in_channels": plan.channels, "num_classes": plan.num_classes}
    return plan


def _free_name(gm: nn.Module, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _new_head_modules(plan: _HeadPlan, kind: str, like: torch.Tensor) -> list[tuple[str, nn.Module | None]]:
    """(name, module) in call order; ``None`` marks ``torch.flatten(x, 1)``."""
    factory = {"device": like.device, "dtype": like.dtype}
    pool = ("head_pool", nn.AdaptiveAvgPool2d(1))
    if kind == "conv":
        return [("head", nn.Conv2d(plan.channels, plan.num_classes, 1, **factory)), pool, ("", None)]
    return [pool, ("", None), ("head", nn.Linear(plan.channels, plan.num_classes, **factory))]


def _rewrite_head(student: nn.Module, gm: fx.GraphModule, plan: _HeadPlan, kind: str) -> fx.GraphModule:
    """A GraphModule of ``student`` whose classifier is GAP + Linear, or conv1x1 + GAP."""
    new_gm = fx.GraphModule(student, gm.graph, class_name=f"Lightened{type(student).__name__}")
    graph = new_gm.graph
    like = next(student.parameters())
    output = next(n for n in graph.nodes if n.op == "output")
    value = plan.spatial
    with graph.inserting_before(output):
        for name, module in _new_head_modules(plan, kind, like):
            if module is None:
                value = graph.call_function(torch.flatten, (value, 1))
                continue
            target = _free_name(new_gm, name)
            new_gm.add_submodule(target, module)
            value = graph.call_module(target, (value,))
    plan.chain[-1].replace_all_uses_with(value)
    for node in reversed([plan.entry, *plan.chain]):
        graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    new_gm.recompile()
    new_gm.delete_all_unused_submodules()
    return new_gm


# ----------------------------------------------------------------------- driver
def _traced(student: nn.Module, inputs: tuple[Any, ...], report: dict[str, Any]) -> fx.GraphModule | None:
    """A shape-annotated trace, or None (recorded in the report) when fx cannot trace the model."""
    try:
        gm = trace(student, "lighten")
    except UnsupportedModelError as exc:
        report["trace_error"] = str(exc)
        return None
    propagate_shapes(gm, inputs)
    return gm


def _costs(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[int, int]:
    from edgeslim.profile import count_flops, count_params

    return count_params(model), count_flops(model, inputs)[0]


@takes_stage_config(lighten_keywords, positional=2, config_type="LightenStage")
def lighten(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    width_mult: float = 1.0,
    keep_first_conv: bool = True,
    exclude: Sequence[str] = (),
    activation: str = "relu",
    head: HeadKind = "gap_linear",
    student: str | None = None,
) -> nn.Module:
    """A new, lightweight student built from ``model`` (the teacher is not modified).

    Chen et al. 2020, stage 1 (see the module docstring). Convolutions that
    would not get smaller (tiny channel counts) and layers fx cannot see are
    left as they are and listed in the report.

    Args:
        model: the teacher.
        example_inputs: a batch the model accepts (used in eval mode, no grad).
        width_mult: scale the hidden widths of the student. Supported for zoo
            models whose factory takes ``width_mult`` (VGG, ResNet,
            MobileNetV2): the student is rebuilt by ``create_model`` with the
            scaled width (so residual sums stay consistent) and starts from
            fresh weights; input channels and ``num_classes`` are kept. Other
            models raise ConfigError (shrink them with ``edgeslim.prune``).
        keep_first_conv: leave the first convolution standard (a depthwise
            conv over 1-3 image channels learns little and saves almost nothing).
        exclude: module paths (and everything under them) left unchanged.
        activation: activation between depthwise and pointwise conv, a name
            from ``ACTIVATIONS`` (default ``"relu"``) or ``"match"`` (copy the
            activation the teacher applies after that conv).
        head: ``"gap_linear"`` (global average pooling + one Linear),
            ``"conv"`` (1x1 conv to ``num_classes`` + global average pooling)
            or ``"keep"``.
        student: instead of converting the teacher, build this zoo model (a
            name from ``edgeslim.models.list_models()``, e.g. ``"dsnet"``) as
            the student, with the teacher's input channels and number of
            classes (read from ``example_inputs`` and the teacher's output)
            and ``width_mult`` if its factory takes one; fresh weights.
            ``keep_first_conv``, ``exclude``, ``activation`` and ``head`` do
            not apply to it (ConfigError if one is set).

    Returns:
        The student: the teacher's class with converted convs, or a
        ``torch.fx.GraphModule`` when the head was rewritten.
        ``edgeslim.info(student).lighten`` is a
        :class:`~edgeslim.modelinfo.LightenReport` (``converted``, ``skipped``
        with reasons, ``head``, ``params_before/after``, ``flops_before/after``,
        and ``options``: replaying them with ``lighten`` on
        ``create_model(arch.name, **arch.kwargs)`` rebuilds the architecture;
        ``info(student).arch`` already holds any width change).

    Raises:
        ConfigError: an invalid option, an unknown ``exclude`` path, or
            ``width_mult != 1`` on a model that cannot be rebuilt narrower.
    """
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    opts = LightenOptions(float(width_mult), bool(keep_first_conv), exclude, activation, head, student)
    inputs = as_input_tuple(example_inputs)
    if opts.student is not None:
        return _designed_student(model, inputs, opts)
    _check_exclude(model, opts.exclude)
    student = _base_copy(model, opts.width_mult)
    extra: dict[str, Any] = {}
    gm = _traced(student, inputs, extra)
    report = _Report()
    replacements = _plan_convs(student, gm, opts, report)
    head_plan = _plan_head(gm, opts, report)
    for path, new in replacements:
        student.set_submodule(path, new)
    if head_plan is not None and gm is not None:
        rewritten = _rewrite_head(student, gm, head_plan, opts.head)
        copy_info(student, rewritten)
        if hasattr(student, "default_input_size"):
            rewritten.default_input_size = student.default_input_size
        student = rewritten.train(model.training)
    _attach_report(model, student, inputs, opts, report, extra)
    return student


def _designed_student(model: nn.Module, inputs: tuple[Any, ...], opts: LightenOptions) -> nn.Module:
    """The zoo model ``opts.student`` sized for the teacher's inputs and classes (see ``lighten``)."""
    from edgeslim.models import create_model
    from edgeslim.models.factory import MODELS

    factory = MODELS.get(opts.student)  # RegistryError naming the valid models
    conversion = {k: v for k, v in opts.to_dict().items() if k in ("keep_first_conv", "exclude", "activation", "head")}
    given = sorted(k for k, v in conversion.items() if v != getattr(LightenOptions, k, None)
                   and not (k == "exclude" and not v))
    if given:
        raise ConfigError(f"lighten: {', '.join(given)} convert the teacher's layers and do not apply to "
                          f"a designed student (student={opts.student!r}); leave them at their defaults")
    takes = inspect.signature(factory).parameters
    if opts.width_mult != 1.0 and "width_mult" not in takes:
        raise ConfigError(f"lighten: student {opts.student!r} takes no width_mult; use width_mult=1.0 "
                          "or a zoo model whose factory takes one (dsnet, vgg, resnet*, mobilenetv2)")
    with eval_mode(model), torch.no_grad():
        out = model(*inputs)
    if not (isinstance(out, torch.Tensor) and out.dim() == 2):
        raise ConfigError(f"lighten: student= needs a teacher that returns (batch, classes) logits; "
                          f"{type(model).__name__} returned {_shape_text(out)}")
    x = inputs[0]
    kwargs: dict[str, Any] = {}
    if "in_channels" in takes:
        kwargs["in_channels"] = int(x.shape[1])
    if "input_size" in takes and x.dim() == 4 and x.shape[-1] == x.shape[-2]:
        kwargs["input_size"] = int(x.shape[-1])
    if "width_mult" in takes:
        kwargs["width_mult"] = opts.width_mult
    student = create_model(opts.student, num_classes=int(out.shape[1]), **kwargs)
    student.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    student.train(model.training)
    report = _Report()
    report.head = {"student": opts.student, "kwargs": dict(info(student).arch.kwargs)}
    # the architecture record rebuilds the student; replaying lighten on it would build it again
    _attach_report(model, student, inputs, opts, report, {})
    return student


def _shape_text(out: Any) -> str:
    return f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__


def _attach_report(model: nn.Module, student: nn.Module, inputs: tuple[Any, ...],
                   opts: LightenOptions, report: _Report, extra: dict[str, Any]) -> None:
    params_before, flops_before = _costs(model, inputs)
    params_after, flops_after = _costs(student, inputs)
    # The architecture record already includes any width change: replaying
    # these options on create_model(arch.name, **arch.kwargs) rebuilds the student.
    info(student).lighten = LightenReport(
        converted=report.converted, skipped=report.skipped, head=report.head,
        params_before=params_before, params_after=params_after,
        flops_before=flops_before, flops_after=flops_after,
        options={**opts.to_dict(), "width_mult": 1.0}, trace_error=extra.get("trace_error"))
