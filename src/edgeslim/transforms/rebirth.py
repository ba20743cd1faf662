"""DeepRebirth layer rebirth: ``conv -> (BN) -> act -> pool`` becomes one strided conv.

DeepRebirth (Li, Wang & Kong, *DeepRebirth: Accelerating Deep Neural Network
Execution on Mobile Devices*, AAAI 2018) removes "non-tensor" layers by merging
them into the neighbouring tensor layer. A pooling layer after a convolution
can't be folded algebraically (max pooling is not linear, and an activation
usually sits in between), so the block is replaced by a new convolution whose
stride absorbs the pooling and whose weights are trained to reproduce the
block's output (the "rebirth"), block by block, with an MSE loss.

Receptive-field-preserving geometry (our choice; the paper gives none). For a
conv with kernel ``k``, dilation ``d``, stride ``s``, padding ``p`` followed by
a pool with kernel ``K`` and stride ``S`` (padding 0), one pooled output sees
the conv outputs ``S*j .. S*j+K-1``, i.e. the inputs ``s*S*j - p`` to
``s*S*j - p + (K-1)*s + d*(k-1)``. The reborn conv therefore has

* kernel ``k' = d*(k-1) + 1 + (K-1)*s`` (dilation 1),
* stride ``s' = s*S`` and the same padding ``p`` (and padding mode),

and its output size equals the pooled size exactly (floor arithmetic, proven
in the tests for ``ceil_mode=False``; ``ceil_mode=True`` blocks whose sizes
differ are skipped). It is initialised from the original kernel: the mean of
the ``K`` shifted copies (exact for average pooling without an activation) or
the copy at the window's first position, whichever reproduces the block better
on the calibration data; training then starts from it with Adam.

The new conv costs ``(k'/k)^2 / (S^2)`` of the old conv's MACs (for 5x5 conv +
2x2 pool: 36/100), and the pooling pass disappears.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Literal
from collections.abc import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgeslim.transforms._fx_utils import called_module, eval_mode, node_shape
from edgeslim.transforms.fold import fold_bn_into_

__all__ = [
    "PoolSpec",
    "PoolBlock",
    "RebirthResult",
    "parse_pool",
    "find_pool_blocks",
    "reborn_conv",
    "train_rebirth",
    "merge_pool_blocks_",
]

PoolKind = Literal["max", "avg"]
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class PoolSpec:
    """A pooling layer the reborn conv can absorb (padding 0, dilation 1)."""

    kind: PoolKind
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    divisor: float | None = None  # AvgPool divisor_override


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    values = tuple(int(v) for v in value)
    return values * n if len(values) == 1 else values


def _spec(kind: PoolKind, nd: int, kernel: Any, stride: Any, padding: Any = 0, dilation: Any = 1,
          return_indices: bool = False, divisor: Any = None) -> PoolSpec | None:
    if any(_tuple(padding, nd)) or set(_tuple(dilation, nd)) != {1} or return_indices:
        return None
    k = _tuple(kernel, nd)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _tuple(stride, nd)
    return PoolSpec(kind, k, s, float(divisor) if divisor else None)


# Pooling modules and functions, keyed by type / callable: (kind, spatial dims).
POOL_MODULES: dict[type, tuple[PoolKind, int]] = {
    nn.MaxPool1d: ("max", 1), nn.MaxPool2d: ("max", 2), nn.MaxPool3d: ("max", 3),
    nn.AvgPool1d: ("avg", 1), nn.AvgPool2d: ("avg", 2), nn.AvgPool3d: ("avg", 3),
}
_MAX_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
POOL_FUNCTIONS: dict[Callable[..., Any], tuple[PoolKind, int, tuple[str, ...]]] = {
    F.max_pool1d: ("max", 1, _MAX_ARGS), F.max_pool2d: ("max", 2, _MAX_ARGS),
    F.max_pool3d: ("max", 3, _MAX_ARGS), torch.max_pool1d: ("max", 1, _MAX_ARGS),
    torch.max_pool2d: ("max", 2, _MAX_ARGS), torch.max_pool3d: ("max", 3, _MAX_ARGS),
    F.avg_pool1d: ("avg", 1, _AVG_ARGS), F.avg_pool2d: ("avg", 2, _AVG_ARGS),
    F.avg_pool3d: ("avg", 3, _AVG_ARGS), torch.avg_pool1d: ("avg", 1, _AVG_ARGS),
}

# Element-wise activations that may sit between the conv and the pool.
ACTIVATION_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.PReLU,
)
ACTIVATION_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus,
})
ACTIVATION_METHODS: frozenset[str] = frozenset({"relu", "sigmoid", "tanh"})


def parse_pool(gm: fx.GraphModule, node: fx.Node) -> PoolSpec | None:
    """The :class:`PoolSpec` of a pooling node, or None if it isn't one we can absorb."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        kind_nd = POOL_MODULES.get(type(module))
        if kind_nd is None:
            return None
        kind, nd = kind_nd
        return _spec(kind, nd, module.kernel_size, module.stride, module.padding,
                     getattr(module, "dilation", 1), getattr(module, "return_indices", False),
                     getattr(module, "divisor_override", None))
    entry = POOL_FUNCTIONS.get(node.target) if node.op == "call_function" else None  # type: ignore[arg-type]
    if entry is None:
        return None
    kind, nd, names = entry
    bound = dict(zip(names, node.args))
    bound.update(node.kwargs)
    if "kernel_size" not in bound or any(isinstance(v, fx.Node) for k, v in bound.items() if k != "input"):
        return None
    return _spec(kind, nd, bound["kernel_size"], bound.get("stride"), bound.get("padding", 0),
                 bound.get("dilation", 1), bool(bound.get("return_indices", False)),
                 bound.get("divisor_override"))


def is_activation(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` applies an element-wise activation to a single tensor."""
    if len(node.all_input_nodes) != 1 or not node.args or node.args[0] is not node.all_input_nodes[0]:
        return False
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


@dataclass(frozen=True)
class PoolBlock:
    """Node names of one ``conv -> (bn) -> (act) -> pool`` block."""

    conv: str
    bn: str | None
    act: str | None
    pool: str
    spec: PoolSpec
    conv_target: str
    labels: tuple[str, ...] = ()  # module paths (or node names for functions), for reports


def _single(node: Any) -> bool:
    return isinstance(node, fx.Node) and len(node.users) == 1


def _walk_back(gm: fx.GraphModule, pool: fx.Node) -> tuple[fx.Node | None, fx.Node | None, fx.Node | None]:
    """(conv, bn, act) nodes feeding ``pool`` through single-user edges, or Nones."""
    prev = pool.args[0] if pool.args else None
    act = bn = None
    if _single(prev) and is_activation(gm, prev):  # type: ignore[arg-type]
        act, prev = prev, prev.args[0]  # type: ignore[union-attr]
    if _single(prev) and called_module(gm, prev, (_BatchNorm,)) is not None:
        bn, prev = prev, prev.args[0]  # type: ignore[union-attr]
    if not _single(prev) or called_module(gm, prev, _CONVS) is None:
        return None, None, None
    return prev, bn, act  # type: ignore[return-value]


def _geometry_ok(conv: nn.Module, spec: PoolSpec, conv_in: tuple[int, ...] | None,
                 pool_out: tuple[int, ...] | None) -> bool:
    """Numeric padding, matching spatial dims and a reborn output the pool's size."""
    if isinstance(conv.padding, str) or len(spec.kernel) != len(conv.kernel_size):  # type: ignore[arg-type]
        return False
    if conv_in is None or pool_out is None:
        return False
    k, s = reborn_geometry(conv, spec)
    out = [(h + 2 * p - kk) // ss + 1 for h, p, kk, ss in zip(conv_in[2:], conv.padding, k, s)]  # type: ignore[arg-type]
    return tuple(out) == tuple(pool_out[2:])


def find_pool_blocks(gm: fx.GraphModule, calls: dict[str, int], tied: set[str]) -> list[PoolBlock]:
    """All ``conv -> (BN) -> (activation) -> pool`` chains the rebirth can replace.

    Every edge must have a single user, the conv and BN modules must be called
    once (``calls``) and the conv's weights must not be tied (``tied``). Needs
    ``node.meta['tensor_meta']`` (run shape propagation first).
    """
    blocks = []
    for node in gm.graph.nodes:
        spec = parse_pool(gm, node) if node.op in ("call_module", "call_function") else None
        if spec is None:
            continue
        conv, bn, act = _walk_back(gm, node)
        if conv is None:
            continue
        module = gm.get_submodule(str(conv.target))
        if calls[str(conv.target)] != 1 or str(conv.target) in tied:
            continue
        if bn is not None and calls[str(bn.target)] != 1:
            continue
        if not _geometry_ok(module, spec, node_shape(conv.args[0]), node_shape(node)):
            continue
        labels = tuple(str(n.target) if n.op == "call_module" else n.name for n in (conv, bn, act, node) if n)
        blocks.append(PoolBlock(conv.name, bn.name if bn else None, act.name if act else None,
                                node.name, spec, str(conv.target), labels))
    return blocks


def reborn_geometry(conv: nn.Module, spec: PoolSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kernel, stride) of the conv that absorbs ``spec`` (see the module docstring)."""
    kernel = tuple(
        d * (k - 1) + 1 + (pk - 1) * s
        for k, d, s, pk in zip(conv.kernel_size, conv.dilation, conv.stride, spec.kernel)  # type: ignore[arg-type]
    )
    stride = tuple(s * ps for s, ps in zip(conv.stride, spec.stride))  # type: ignore[arg-type]
    return kernel, stride


@torch.no_grad()
def reborn_conv(conv: nn.Module, bn: _BatchNorm | None, spec: PoolSpec, init: Literal["mean", "first"]) -> nn.Module:
    """A new conv with the reborn geometry, initialised from ``conv`` (+ folded ``bn``).

    ``init="mean"`` averages the kernel over every pooling-window offset, which
    makes ``conv -> avgpool`` exact (sum / divisor); ``"first"`` places the
    kernel at the window's first offset (the conv sampled with the pool's stride).
    """
    src = copy.deepcopy(conv)
    if bn is not None:
        fold_bn_into_(src, bn)
    kernel, stride = reborn_geometry(src, spec)
    new = type(src)(src.in_channels, src.out_channels, kernel, stride=stride, padding=src.padding,  # type: ignore[arg-type]
                    groups=src.groups, bias=True, padding_mode=src.padding_mode,
                    device=src.weight.device, dtype=src.weight.dtype)
    new.weight.zero_()
    offsets = list(itertools.product(*[range(k) for k in spec.kernel])) if init == "mean" else [(0,) * len(spec.kernel)]
    window = math.prod(spec.kernel)
    divisor = (spec.divisor or window) if init == "mean" else 1.0
    for offset in offsets:
        index = [slice(None), slice(None)]
        for o, s, d, k in zip(offset, src.stride, src.dilation, src.kernel_size):
            index.append(slice(o * s, o * s + d * (k - 1) + 1, d))
        new.weight[tuple(index)] += src.weight / divisor
    bias = src.bias if src.bias is not None else torch.zeros_like(new.bias)
    new.bias.copy_(bias * (len(offsets) / divisor))
    return new


@dataclass
class RebirthResult:
    """A reborn conv and how well its block reproduces the original output."""

    module: nn.Module
    init: str
    mse_init: float
    mse_final: float
    history: list[float] = field(default_factory=list)


def _block_mse(conv: nn.Module, act: Callable[[Tensor], Tensor], xs: list[Tensor], ys: list[Tensor]) -> float:
    with torch.no_grad():
        return sum(F.mse_loss(act(conv(x)), y).item() for x, y in zip(xs, ys)) / len(xs)


def train_rebirth(
    conv: nn.Module, bn: _BatchNorm | None, act: Callable[[Tensor], Tensor], spec: PoolSpec,
    xs: list[Tensor], ys: list[Tensor], *, steps: int, lr: float,
) -> RebirthResult:
    """Train a reborn conv so that ``act(new(x))`` matches the block output ``y`` (MSE).

    Picks the better of the two initialisations, runs ``steps`` Adam steps
    cycling over the calibration batches, and keeps the initial weights if
    training did not improve the calibration MSE.
    """
    candidates = {name: reborn_conv(conv, bn, spec, name) for name in ("mean", "first")}  # type: ignore[arg-type]
    scores = {name: _block_mse(c, act, xs, ys) for name, c in candidates.items()}
    init = min(scores, key=scores.__getitem__)
    new = candidates[init]
    start = copy.deepcopy(new.state_dict())
    opt = torch.optim.Adam(new.parameters(), lr=lr)
    history = []
    new.train()
    for step in range(steps):
        x, y = xs[step % len(xs)], ys[step % len(xs)]
        loss = F.mse_loss(act(new(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
    final = _block_mse(new, act, xs, ys)
    if final > scores[init]:
        new.load_state_dict(start)
        final = scores[init]
    return RebirthResult(new, init, scores[init], final, history)


def _activation_fn(gm: fx.GraphModule, act_name: str | None) -> Callable[[Tensor], Tensor]:
    """The block's activation as a standalone callable (copied out of the graph)."""
    if act_name is None:
        return lambda t: t
    node = next(n for n in gm.graph.nodes if n.name == act_name)
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.node_copy(node, lambda _: x))
    return fx.GraphModule(gm, graph)


def _capture(gm: fx.GraphModule, name: str, batches: Iterable[tuple[Any, ...]]) -> list[Tensor]:
    """The value of node ``name`` for each calibration batch (eval mode, no grad)."""
    node = next(n for n in gm.graph.nodes if n.name == name)
    values = []
    with eval_mode(gm):
        for inputs in batches:
            interp = fx.Interpreter(gm, garbage_collect_values=False)
            interp.run(*inputs)
            values.append(interp.env[node].detach().clone())
    return values


def _erase_passthrough(gm: fx.GraphModule, name: str | None) -> None:
    """Remove node ``name`` (its users read its input instead) and its module if unused."""
    if name is None:
        return
    node = next(n for n in gm.graph.nodes if n.name == name)
    node.replace_all_uses_with(node.args[0])  # type: ignore[arg-type]
    gm.graph.erase_node(node)
    if node.op == "call_module" and not any(n.op == "call_module" and n.target == node.target for n in gm.graph.nodes):
        gm.delete_submodule(str(node.target))


def merge_pool_blocks_(
    gm: fx.GraphModule, blocks: list[PoolBlock], batches: list[tuple[Any, ...]], *,
    steps: int, lr: float, exact: bool = True, rebirth: bool = True,
) -> list[tuple[PoolBlock, RebirthResult | None]]:
    """Replace each block of ``gm`` (in graph order) by one conv, in place.

    ``conv -> (BN) -> avgpool`` without an activation is merged exactly (when
    ``exact``); every other block is reborn (when ``rebirth``) and trained on
    the block's input *in the partially merged network* so later blocks
    compensate earlier approximation errors, against the target output of the
    *original* network. Returns each merged block with its training result
    (None for exact merges).
    """
    teacher = copy.deepcopy(gm)
    done: list[tuple[PoolBlock, RebirthResult | None]] = []
    for block in blocks:
        conv = gm.get_submodule(block.conv_target)
        bn = gm.get_submodule(str(_node(gm, block.bn).target)) if block.bn else None
        is_exact = block.act is None and block.spec.kind == "avg"
        if is_exact and exact:
            new, result = reborn_conv(conv, bn, block.spec, "mean"), None  # type: ignore[arg-type]
        elif not is_exact and rebirth:
            conv_input = _node(gm, block.conv).args[0]
            xs = _capture(gm, conv_input.name, batches)  # type: ignore[union-attr]
            ys = _capture(teacher, block.pool, batches)
            result = train_rebirth(conv, bn, _activation_fn(gm, block.act), block.spec, xs, ys,  # type: ignore[arg-type]
                                   steps=steps, lr=lr)
            new = result.module
        else:
            continue
        new.train(conv.training)
        gm.set_submodule(block.conv_target, new)
        _erase_passthrough(gm, block.bn)
        _erase_passthrough(gm, block.pool)
        gm.graph.lint()
        gm.recompile()
        done.append((block, result))
    return done


def _node(gm: fx.GraphModule, name: str | None) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.name == name)
