"""Streamline merging (DeepRebirth) and the exact layer merges it starts with.

DeepRebirth (Li, Wang & Kong, *DeepRebirth: Accelerating Deep Neural Network
Execution on Mobile Devices*, AAAI 2018) speeds a network up by removing
layers: "non-tensor" layers (batch norm, pooling, dropout, ...) are merged into
the neighbouring tensor layer (*streamline merging*), parallel branches over the
same input are merged into one wider layer (*branch merging*), and a block that
can't be merged algebraically is replaced by one new layer trained to
reproduce it (*rebirth*, see :mod:`edgeslim.transforms.rebirth`). The hybrid
method of Xie, Zhong, Pan & Zhang (pruning + streamline merging) applies this
after magnitude pruning and retrains.

Exact merges here (each leaves eval outputs equal up to float rounding):

* :func:`remove_identities` - Dropout (identity in eval) and Identity layers;
* :func:`merge_linear_chains` - ``Linear -> Linear``, ``Conv -> 1x1 Conv`` and
  ``1x1 Conv -> Conv`` with nothing non-linear in between;
* :func:`merge_branches` - convs (or linears) over the same input whose outputs
  are concatenated (one wider conv) or summed (one conv with summed weights);
* BN folding (:func:`edgeslim.transforms.fold.fold_batchnorm`) and
  ``conv -> avg-pool`` without an activation.

:func:`streamline_merge` runs all of them and then the rebirth. Merged models
are returned as :class:`torch.fx.GraphModule` (their forward is the merged
graph); the input's ``edgeslim.info`` record (e.g. its ``arch``) is carried
over for provenance, but the architecture no longer matches it.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from collections.abc import Callable, Iterable

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

from edgeslim._core import device_of, take_batches
from edgeslim.errors import ConfigError
from edgeslim.modelinfo import copy_info, info
from edgeslim.stage_args import streamline_keywords, takes_stage_config
from edgeslim.transforms._fx_utils import (
    ExampleInputs,
    as_input_tuple,
    called_module,
    module_call_counts,
    node_shape,
    only_input,
    propagate_shapes,
    tied_parameter_owners,
    trace,
)
from edgeslim.transforms.fold import fold_batchnorm
from edgeslim.transforms.rebirth import find_pool_blocks, merge_pool_blocks_

__all__ = [
    "MergeRecord",
    "MergeReport",
    "remove_identities",
    "merge_linear_chains",
    "merge_branches",
    "merge_branches_",
    "streamline_merge",
]

MergeKind = Literal["fold_bn", "identity", "linear_chain", "branch_concat", "branch_sum", "pool_exact", "rebirth"]
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYERS = _CONVS + (nn.Linear,)
_PASSTHROUGH = (nn.Identity, _DropoutNd)  # identity in eval mode
_CATS = (torch.cat, torch.concat, torch.concatenate)


@dataclass
class MergeRecord:
    """One merge: which layers went in, which module computes them now, how exact."""

    kind: MergeKind
    inputs: tuple[str, ...]
    result: str
    exact: bool
    mse_init: float | None = None
    mse_final: float | None = None
    history: list[float] = field(default_factory=list, repr=False)


@dataclass
class MergeReport:
    """All merges :func:`streamline_merge` made, in order."""

    records: list[MergeRecord] = field(default_factory=list)

    def count(self, kind: MergeKind) -> int:
        """How many merges of ``kind`` were made."""
        return sum(r.kind == kind for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (training histories left out)."""
        return {"records": [{k: v for k, v in asdict(r).items() if k != "history"} for r in self.records]}

    def summary(self) -> str:
        """One line per merge, for logs and reports."""
        lines = []
        for r in self.records:
            mse = f" mse {r.mse_init:.3g} -> {r.mse_final:.3g}" if r.mse_final is not None else ""
            lines.append(f"{r.kind:13s} {' + '.join(r.inputs)} -> {r.result or '(removed)'}{mse}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- identities


def remove_identities(model: nn.Module) -> nn.Module:
    """Return a copy without Dropout (an identity in eval) and Identity layers.

    Dropout becomes ``nn.Identity``; identities inside a plain ``nn.Sequential``
    are deleted (the other children keep their names, so state-dict keys stay
    stable); identities elsewhere stay as cheap no-ops because the parent's
    forward refers to them. The copy therefore has no dropout when trained.
    Removed paths are listed in ``edgeslim.info(result).removed_identities``.
    """
    new = copy.deepcopy(model)
    removed: list[str] = []
    for path, module in list(new.named_modules()):
        for name, child in list(module.named_children()):
            cpath = f"{path}.{name}" if path else name
            if isinstance(child, _DropoutNd):
                setattr(module, name, nn.Identity())
                child = getattr(module, name)
            if isinstance(child, nn.Identity) and type(module) is nn.Sequential:
                delattr(module, name)
                removed.append(cpath)
    info(new).removed_identities = removed
    return new


def _drop_passthrough_nodes_(gm: fx.GraphModule) -> list[str]:
    """Erase Identity/Dropout call nodes from a graph (eval semantics); return their paths."""
    removed = []
    for node in list(gm.graph.nodes):
        if called_module(gm, node, _PASSTHROUGH) is None or only_input(node) is None:
            continue
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        removed.append(str(node.target))
    for target in set(removed) - set(module_call_counts(gm)):
        gm.delete_submodule(target)
    gm.graph.lint()
    gm.recompile()
    return removed


# --------------------------------------------------------------------------- linear chains


def _dense_weight(conv: nn.Module) -> Tensor:
    """A grouped conv's weight expanded to ``[out, in, *k]`` (float64, block diagonal)."""
    w = conv.weight.double()
    g = conv.groups
    if g == 1:
        return w
    out, in_g = w.shape[:2]
    dense = w.new_zeros((out, in_g * g) + tuple(w.shape[2:]))
    for j in range(g):
        rows, cols = slice(j * out // g, (j + 1) * out // g), slice(j * in_g, (j + 1) * in_g)
        dense[rows, cols] = w[rows]
    return dense


def _bias(layer: nn.Module, n: int) -> Tensor:
    return layer.bias.double() if layer.bias is not None else layer.weight.new_zeros(n, dtype=torch.float64)


def _pads(conv: nn.Module) -> bool:
    """Whether the conv pads its input (``padding="same"`` pads unless the kernel is 1)."""
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(conv.padding)


def _pointwise(conv: nn.Module) -> bool:
    return set(conv.kernel_size) == {1} and set(conv.stride) == {1} and not _pads(conv)


def _new_conv(like: nn.Module, in_ch: int, out_ch: int, weight: Tensor, bias: Tensor) -> nn.Module:
    new = type(like)(in_ch, out_ch, like.kernel_size, stride=like.stride, padding=like.padding,
                     dilation=like.dilation, groups=1, bias=True, padding_mode=like.padding_mode,
                     device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new


@torch.no_grad()
def _compose_linear(a: nn.Module, b: nn.Module) -> nn.Module | str:
    wa, wb = a.weight.double(), b.weight.double()
    new = nn.Linear(a.in_features, b.out_features, device=a.weight.device, dtype=a.weight.dtype)
    new.weight.copy_(wb @ wa)
    new.bias.copy_(wb @ _bias(a, a.out_features) + _bias(b, b.out_features))
    return new


@torch.no_grad()
def _compose_conv(a: nn.Module, b: nn.Module) -> nn.Module | str:
    if b.groups == 1 and _pointwise(b):
        wb = b.weight.double().flatten(1)  # [o, m]
        weight = torch.einsum("om,mi...->oi...", wb, _dense_weight(a))
        bias = wb @ _bias(a, a.out_channels) + _bias(b, b.out_channels)
        return _new_conv(a, a.in_channels, b.out_channels, weight, bias)
    if a.groups == 1 and b.groups == 1 and _pointwise(a):
        ba = _bias(a, a.out_channels)
        # Zero padding of a's output is not a's output on a zero-padded input unless a has no bias.
        if _pads(b) and b.padding_mode == "zeros" and bool(ba.abs().max() > 0):
            return "the 1x1 conv has a bias and the next conv zero-pads its output"
        wa = a.weight.double().flatten(1)  # [m, i]
        wb = b.weight.double()
        weight = torch.einsum("om...,mi->oi...", wb, wa)
        bias = wb.flatten(2).sum(2) @ ba + _bias(b, b.out_channels)
        return _new_conv(b, a.in_channels, b.out_channels, weight, bias)
    return "neither conv is an ungrouped, stride-1, unpadded 1x1 conv"


# How two consecutive linear maps of these types compose into one (or why not).
CHAIN_RULES: dict[tuple[type, type], Callable[[nn.Module, nn.Module], nn.Module | str]] = {
    (nn.Linear, nn.Linear): _compose_linear,
    (nn.Conv1d, nn.Conv1d): _compose_conv,
    (nn.Conv2d, nn.Conv2d): _compose_conv,
    (nn.Conv3d, nn.Conv3d): _compose_conv,
}


def _macs(layer: nn.Module, out_shape: tuple[int, ...] | None) -> float:
    """Multiply-accumulates per sample: output elements x fan-in."""
    if out_shape is None:
        return float("nan")
    per_out = layer.weight.numel() / layer.weight.shape[0]
    return float(torch.tensor(out_shape[1:]).prod()) * per_out


def _chain_pairs(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """(a, b) layer nodes with only single-user Identity/Dropout nodes between them."""
    pairs = []
    for node in gm.graph.nodes:
        if called_module(gm, node, _LAYERS) is None:
            continue
        prev = only_input(node)
        while prev is not None and len(prev.users) == 1 and called_module(gm, prev, _PASSTHROUGH) is not None:
            prev = only_input(prev)
        if prev is not None and len(prev.users) == 1 and called_module(gm, prev, _LAYERS) is not None:
            pairs.append((prev, node))
    return pairs


def _merge_chain_round(model: nn.Module, gm: fx.GraphModule, only_if_cheaper: bool) -> list[MergeRecord]:
    counts, tied = module_call_counts(gm), tied_parameter_owners(model)
    used: set[str] = set()
    records = []
    for a_node, b_node in _chain_pairs(gm):
        ta, tb = str(a_node.target), str(b_node.target)
        if {ta, tb} & (used | tied) or counts[ta] != 1 or counts[tb] != 1:
            continue
        a, b = gm.get_submodule(ta), gm.get_submodule(tb)
        rule = CHAIN_RULES.get((type(a), type(b)))
        merged = rule(a, b) if rule else "unsupported layer types"
        if isinstance(merged, str):
            continue
        cost = _macs(merged, node_shape(b_node))
        if only_if_cheaper and not cost <= _macs(a, node_shape(a_node)) + _macs(b, node_shape(b_node)):
            continue
        merged.train(a.training)
        model.set_submodule(ta, merged)
        model.set_submodule(tb, nn.Identity())
        used |= {ta, tb}
        records.append(MergeRecord("linear_chain", (ta, tb), ta, exact=True))
    return records


def merge_linear_chains(
    model: nn.Module, example_inputs: ExampleInputs, *, only_if_cheaper: bool = True
) -> nn.Module:
    """Return a copy where consecutive linear maps are merged into one layer (exact).

    ``Linear -> Linear`` becomes one Linear (``W = W2 W1``, ``b = W2 b1 + b2``);
    ``Conv -> 1x1 Conv`` becomes one conv with the first conv's geometry (a
    grouped/depthwise first conv is expanded to a dense one); ``1x1 Conv ->
    Conv`` one conv with the second's geometry (not when the second zero-pads
    and the first has a bias: the padding ring would differ). Single-user
    Identity/Dropout layers in between are skipped over (eval semantics).
    Chains of more than two merge pairwise until nothing changes. The merged
    layer takes the first layer's place; the second becomes ``nn.Identity``.

    Args:
        model: the network (not modified).
        example_inputs: inputs the model accepts (for tensor shapes / MACs).
        only_if_cheaper: merge only when the merged layer needs no more
            multiply-accumulates than the pair (a low-rank bottleneck such as
            ``Linear(512, 16) -> Linear(16, 512)`` is kept).

    Returns:
        The merged copy (same class); ``edgeslim.info(result).linear_merges``
        lists the merges as :class:`MergeRecord`.
    """
    merged = copy.deepcopy(model)
    inputs = as_input_tuple(example_inputs)
    records: list[MergeRecord] = []
    while True:
        gm = trace(merged, "merge_linear_chains")
        propagate_shapes(gm, inputs)
        found = _merge_chain_round(merged, gm, only_if_cheaper)
        if not found:
            break
        records.extend(found)
    info(merged).linear_merges = records
    return merged


# --------------------------------------------------------------------------- branches


def _signature(layer: nn.Module, with_out: bool) -> tuple[Any, ...]:
    """Everything that must match for two parallel layers to merge."""
    if isinstance(layer, nn.Linear):
        sig: tuple[Any, ...] = (nn.Linear, layer.in_features)
    else:
        sig = (type(layer), layer.in_channels, layer.kernel_size, layer.stride, layer.padding,
               layer.dilation, layer.groups, layer.padding_mode)
    return sig + ((layer.weight.shape[0],) if with_out else ())


def _branch_ok(gm: fx.GraphModule, node: Any, counts: dict[str, int], tied: set[str]) -> bool:
    return (called_module(gm, node, _LAYERS) is not None and len(node.users) == 1
            and only_input(node) is not None and counts[str(node.target)] == 1
            and str(node.target) not in tied)


def _remove_layer_node(gm: fx.GraphModule, node: fx.Node) -> None:
    gm.graph.erase_node(node)
    gm.delete_submodule(str(node.target))


@torch.no_grad()
def _merge_concat(gm: fx.GraphModule, run: list[fx.Node]) -> None:
    """Replace the layers of ``run`` (concatenated outputs) by one wider layer at run[0]."""
    layers = [gm.get_submodule(str(n.target)) for n in run]
    first = layers[0]
    new = copy.deepcopy(first)
    new.weight = nn.Parameter(torch.cat([layer.weight for layer in layers]))
    if any(layer.bias is not None for layer in layers):
        biases = [_bias(layer, layer.weight.shape[0]).to(first.weight.dtype) for layer in layers]
        new.bias = nn.Parameter(torch.cat(biases))
    attr = "out_features" if isinstance(new, nn.Linear) else "out_channels"
    setattr(new, attr, new.weight.shape[0])
    gm.set_submodule(str(run[0].target), new)


def _concat_key(gm: fx.GraphModule, item: Any, dim: int, rank: int, counts: dict[str, int],
                tied: set[str]) -> tuple[Any, ...] | None:
    """What must match for ``item`` to merge with its neighbours in a concat, or None.

    The concat must be along the layer's output-feature dim: 1 for a conv, the
    last dim for a Linear; grouped convs don't stack (their channel order differs).
    """
    if not _branch_ok(gm, item, counts, tied):
        return None
    layer = gm.get_submodule(str(item.target))
    feature_dim = rank - 1 if isinstance(layer, nn.Linear) else 1
    if dim != feature_dim or getattr(layer, "groups", 1) != 1:
        return None
    return (only_input(item), _signature(layer, False))


def _concat_runs(gm: fx.GraphModule, node: fx.Node, counts: dict[str, int], tied: set[str]) -> list[list[fx.Node]]:
    """Maximal runs of >= 2 mergeable layer nodes inside a channel-concatenation."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    shape = node_shape(node)
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int) or shape is None:
        return []
    dim %= len(shape)
    runs: list[list[fx.Node]] = []
    current: list[fx.Node] = []
    current_key: tuple[Any, ...] | None = None
    for item in tensors:
        key = _concat_key(gm, item, dim, len(shape), counts, tied)
        if key is not None and key == current_key and item not in current:
            current.append(item)
            continue
        runs.append(current)
        current, current_key = ([item], key) if key is not None else ([], None)
    runs.append(current)
    return [r for r in runs if len(r) >= 2]


def _merge_concats_(gm: fx.GraphModule) -> list[MergeRecord]:
    counts, tied = module_call_counts(gm), tied_parameter_owners(gm)
    records = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _CATS:
            continue
        for run in _concat_runs(gm, node, counts, tied):
            _merge_concat(gm, run)
            tensors = list(node.args[0] if node.args else node.kwargs["tensors"])
            start = tensors.index(run[0])
            tensors[start:start + len(run)] = [run[0]]
            if node.args:
                node.args = (tensors,) + tuple(node.args[1:])
            else:
                node.kwargs = {**node.kwargs, "tensors": tensors}
            for other in run[1:]:
                _remove_layer_node(gm, other)
            names = tuple(str(n.target) for n in run)
            records.append(MergeRecord("branch_concat", names, names[0], exact=True))
    return records


_ADDS = (operator.add, operator.iadd, torch.add)


def _is_add(node: Any) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_function" and node.target in _ADDS
            and not node.kwargs and len(node.args) == 2)


def _sum_leaves(node: fx.Node) -> list[tuple[fx.Node, fx.Node]]:
    """(leaf, parent add) pairs of the tree of single-user additions rooted at ``node``."""
    leaves = []
    for arg in node.args:
        if _is_add(arg) and len(arg.users) == 1:  # type: ignore[union-attr]
            leaves.extend(_sum_leaves(arg))  # type: ignore[arg-type]
        elif isinstance(arg, fx.Node):
            leaves.append((arg, node))
    return leaves


def _merge_pair_in_sum(gm: fx.GraphModule, a: fx.Node, b: fx.Node, b_parent: fx.Node) -> None:
    """Fold layer ``b`` into layer ``a`` (same input, same geometry) and drop b's addition."""
    la, lb = gm.get_submodule(str(a.target)), gm.get_submodule(str(b.target))
    with torch.no_grad():
        la.weight.add_(lb.weight)
        if lb.bias is not None and la.bias is None:
            la.bias = nn.Parameter(lb.bias.detach().clone())
        elif lb.bias is not None:
            la.bias.add_(lb.bias)
    sibling = b_parent.args[1] if b_parent.args[0] is b else b_parent.args[0]
    b_parent.replace_all_uses_with(sibling)  # type: ignore[arg-type]
    gm.graph.erase_node(b_parent)
    _remove_layer_node(gm, b)


def _merge_sums_(gm: fx.GraphModule) -> list[MergeRecord]:
    """Merge two same-input, same-geometry layers anywhere in one tree of additions."""
    counts, tied = module_call_counts(gm), tied_parameter_owners(gm)
    for node in gm.graph.nodes:
        if not _is_add(node) or (len(node.users) == 1 and _is_add(next(iter(node.users)))):
            continue  # only start at the root of an addition tree
        leaves = [(leaf, p) for leaf, p in _sum_leaves(node) if _branch_ok(gm, leaf, counts, tied)]
        seen: dict[tuple[Any, ...], fx.Node] = {}
        for leaf, parent in leaves:
            key = (only_input(leaf), _signature(gm.get_submodule(str(leaf.target)), True))
            if key not in seen:
                seen[key] = leaf
                continue
            a = seen[key]
            if a is leaf:  # x + x: the same call twice, nothing to merge
                continue
            _merge_pair_in_sum(gm, a, leaf, parent)
            # One merge per call: the tree changed, so the caller re-scans.
            return [MergeRecord("branch_sum", (str(a.target), str(leaf.target)), str(a.target), exact=True)]
    return []


def _drop_single_concats_(gm: fx.GraphModule) -> None:
    """``torch.cat([t])`` is ``t``: remove concatenations left with one input."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _CATS:
            continue
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        if isinstance(tensors, (list, tuple)) and len(tensors) == 1 and isinstance(tensors[0], fx.Node):
            node.replace_all_uses_with(tensors[0])
            gm.graph.erase_node(node)


def merge_branches_(gm: fx.GraphModule) -> list[MergeRecord]:
    """Merge parallel layers over the same input in a shape-propagated GraphModule, in place.

    DeepRebirth's *branch merging*: convs (or linears) reading the same tensor
    with the same kernel, stride, padding and dilation whose outputs are
    concatenated along the channel dim become one conv with the stacked
    filters (groups must be 1); two whose outputs are summed become one conv
    with the summed weights and biases (``conv_a(x) + conv_b(x) = (W_a + W_b) * x
    + b_a + b_b``). Repeats until nothing changes (so ``a + b + c`` merges fully).
    """
    records: list[MergeRecord] = []
    while True:
        found = _merge_concats_(gm) + _merge_sums_(gm)
        _drop_single_concats_(gm)
        gm.graph.lint()
        gm.recompile()
        if not found:
            return records
        records.extend(found)


def merge_branches(model: nn.Module, example_inputs: ExampleInputs) -> fx.GraphModule:
    """Return a GraphModule copy of ``model`` with parallel branches merged (exact).

    See :func:`merge_branches_`; merges are listed in ``edgeslim.info(result).branch_merges``.
    """
    gm = trace(copy.deepcopy(model), "merge_branches")
    propagate_shapes(gm, as_input_tuple(example_inputs))
    records = merge_branches_(gm)
    copy_info(model, gm).branch_merges = records
    return gm


# --------------------------------------------------------------------------- streamline merge


def _calib_batches(calib_data: Any, device: torch.device, max_batches: int | None,
                   batch_size: int) -> list[tuple[Tensor, ...]]:
    """Input batches from a tensor, an ``(X, Y)`` tuple, a loader or batches of ``(x, y)``."""
    source: Iterable[Any]
    if isinstance(calib_data, Tensor):
        source = calib_data.split(batch_size)
    elif isinstance(calib_data, tuple) and len(calib_data) == 2 and all(isinstance(t, Tensor) for t in calib_data):
        source = calib_data[0].split(batch_size)
    else:
        try:
            from edgeslim.data import as_loader  # the data package may not be importable in isolation
        except ImportError:
            source = calib_data
        else:
            source = as_loader(calib_data, batch_size=batch_size)
    batches = [((item[0] if isinstance(item, (tuple, list)) else item).to(device),)
               for item in take_batches(source, max_batches)]
    if not batches:
        raise ConfigError("streamline_merge: calib_data yielded no batches; pass a tensor of inputs or a loader")
    return batches


def _exact_stage(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[nn.Module, list[MergeRecord]]:
    """BN folding, identity removal and linear-chain merging (all exact)."""
    folded = fold_batchnorm(model, inputs)
    pairs = info(folded).fold.folded  # type: ignore[union-attr]
    records = [MergeRecord("fold_bn", (p.layer, p.bn), p.layer, exact=True) for p in pairs]
    lean = remove_identities(folded)
    bns = {p.bn for p in pairs}  # a folded BN's Identity is not news
    records += [MergeRecord("identity", (p,), "", exact=True) for p in info(lean).removed_identities if p not in bns]
    chained = merge_linear_chains(lean, inputs)
    return chained, records + list(info(chained).linear_merges)


def _pool_records(done: list) -> list[MergeRecord]:
    records = []
    for block, result in done:
        inputs = block.labels
        if result is None:
            records.append(MergeRecord("pool_exact", inputs, block.conv_target, exact=True))
        else:
            records.append(MergeRecord("rebirth", inputs, block.conv_target, exact=False,
                                       mse_init=result.mse_init, mse_final=result.mse_final,
                                       history=result.history))
    return records


@takes_stage_config(streamline_keywords, positional=3, config_type="MergeStage")
def streamline_merge(
    model: nn.Module,
    example_inputs: ExampleInputs,
    calib_data: Any,
    *,
    steps: int = 300,
    lr: float = 1e-3,
    include_exact: bool = True,
    branches: bool = True,
    rebirth: bool = True,
    max_calib_batches: int | None = 8,
    batch_size: int = 128,
    seed: int = 0,
    return_report: bool = False,
) -> fx.GraphModule | tuple[fx.GraphModule, MergeReport]:
    """DeepRebirth streamline merging: remove non-tensor layers by merging them into convs.

    Steps (Li, Wang & Kong, AAAI 2018; the merging half of Xie et al.'s hybrid
    pruning + streamline-merging method):

    1. exact merges (``include_exact``): BN folding, Dropout/Identity removal,
       linear chains, and (``branches``) parallel-branch merging;
    2. ``conv -> (BN) -> (activation) -> pool`` blocks become one conv whose
       stride absorbs the pooling (geometry in :mod:`edgeslim.transforms.rebirth`):
       exactly for average pooling without an activation, otherwise (``rebirth``)
       trained block by block for ``steps`` Adam steps at ``lr`` to minimise the
       MSE to the original block's output on ``calib_data``.

    Retrain the result afterwards to recover accuracy (step 3 of the method).
    The input model is not modified. Inference stays dense.

    Args:
        model: the network (torch.fx-traceable).
        example_inputs: a tensor or tuple of tensors the model accepts.
        calib_data: calibration inputs: a tensor of inputs, an ``(X, Y)`` tuple,
            an iterable of ``(x, y)`` batches, or anything ``edgeslim.data.as_loader`` accepts.
        steps: training steps per reborn block (0 keeps the initialisation).
        lr: Adam learning rate for the reborn blocks.
        include_exact: run the exact merges first.
        branches: merge parallel branches (part of the exact stage).
        rebirth: replace non-exact pool blocks by trained convs.
        max_calib_batches: use at most this many calibration batches (None: all).
        batch_size: batch size when ``calib_data`` is a tensor or ``(X, Y)`` tuple.
        seed: seeds the rebirth training (global RNG state is restored afterwards).
        return_report: also return the :class:`MergeReport`.

    Returns:
        The merged :class:`torch.fx.GraphModule` (``edgeslim.info(result).merge`` is the report),
        and the report when ``return_report`` is true.
    """
    if steps < 0 or lr <= 0:
        raise ConfigError(f"streamline_merge: need steps >= 0 and lr > 0, got steps={steps}, lr={lr}")
    inputs = as_input_tuple(example_inputs)
    work, records = _exact_stage(model, inputs) if include_exact else (copy.deepcopy(model), [])
    gm = trace(work, "streamline_merge")
    if include_exact:
        records += [MergeRecord("identity", (p,), "", exact=True) for p in _drop_passthrough_nodes_(gm)]
    propagate_shapes(gm, inputs)
    if include_exact and branches:
        records += merge_branches_(gm)
        propagate_shapes(gm, inputs)
    blocks = find_pool_blocks(gm, module_call_counts(gm), tied_parameter_owners(gm))
    if blocks and (rebirth or include_exact):
        device = device_of(gm)
        batches = _calib_batches(calib_data, device, max_calib_batches, batch_size) if rebirth else []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            done = merge_pool_blocks_(gm, blocks, batches, steps=steps, lr=lr, exact=include_exact, rebirth=rebirth)
        records += _pool_records(done)
    gm.train(model.training)
    report = MergeReport(records)
    copy_info(model, gm).merge = report
    return (gm, report) if return_report else gm
