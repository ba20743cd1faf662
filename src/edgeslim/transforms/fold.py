"""Exact batch-norm folding: ``BN(conv(x))`` becomes one convolution.

In eval mode a batch norm is a per-channel affine map
``y = gamma * (z - mean) / sqrt(var + eps) + beta``; when ``z`` is the output of
a convolution or linear layer the map folds into that layer's weights and bias
(Ioffe & Szegedy 2015; the "non-tensor layer" absorption of DeepRebirth, Li,
Wang & Kong, AAAI 2018, Sec. 3.1). The folded network computes the same
function with one layer fewer per pair.

Pairs are found in the torch.fx graph: the batch norm's only input is the
layer's output, that output has no other user, and each module is called once
(a shared module can't be rewritten for one call site only). If the whole model
can't be traced, each traceable submodule is analysed on its own and call
counts are taken from a real forward pass; a batch norm that then can't be
proven to follow its layer raises :class:`UnsupportedModelError` (or is left
alone with a warning when ``strict=False``).
"""
from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgeslim.errors import UnsupportedModelError
from edgeslim._core import FeatureTaps
from edgeslim.modelinfo import info
from edgeslim.transforms._fx_utils import (
    ExampleInputs,
    as_input_tuple,
    called_module,
    eval_mode,
    module_call_counts,
    node_shape,
    only_input,
    propagate_shapes,
    tied_parameter_owners,
)

__all__ = ["fold_batchnorm", "fold_bn_into_", "fold_pairs_", "foldable_pairs", "FoldedPair"]


@dataclass(frozen=True)
class FoldedPair:
    """One batch norm folded into the layer before it (module paths)."""

    layer: str
    bn: str


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did: the folded pairs and ``(bn_path, reason)`` of those skipped."""

    folded: list[FoldedPair] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _conv_rule(layer: nn.Module, bn: _BatchNorm, bn_input: fx.Node | None) -> str | None:
    if layer.out_channels != bn.num_features:  # type: ignore[attr-defined]
        return f"{bn.num_features} BN features != {layer.out_channels} conv channels"  # type: ignore[attr-defined]
    return None


def _linear_rule(layer: nn.Module, bn: _BatchNorm, bn_input: fx.Node | None) -> str | None:
    # BatchNorm1d normalises dim 1; it matches Linear's out_features only on [N, F].
    shape = node_shape(bn_input)
    if shape is None or len(shape) != 2:
        return f"BN input rank is {None if shape is None else len(shape)}, need [N, features]"
    if layer.out_features != bn.num_features:  # type: ignore[attr-defined]
        return "feature count mismatch"
    return None


# Layers a batch norm can fold into, keyed by type; the rule returns why a pair
# can't be folded (or None). ConvTranspose is deliberately absent: its weight
# layout puts output channels in dim 1.
FOLD_RULES: dict[type, Callable[[nn.Module, _BatchNorm, fx.Node | None], str | None]] = {
    nn.Conv1d: _conv_rule,
    nn.Conv2d: _conv_rule,
    nn.Conv3d: _conv_rule,
    nn.Linear: _linear_rule,
}


def _rule_for(layer: nn.Module) -> Callable[..., str | None] | None:
    for cls in type(layer).__mro__:
        if cls in FOLD_RULES:
            return FOLD_RULES[cls]
    return None


@torch.no_grad()
def fold_bn_into_(layer: nn.Module, bn: _BatchNorm) -> None:
    """Fold eval-mode ``bn`` into the weights and bias of ``layer`` in place.

    ``W' = W * s`` and ``b' = (b - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)`` per output channel (computed in float64 so
    the folded layer matches to float32 rounding).
    """
    weight: Tensor = layer.weight  # type: ignore[assignment]
    var = bn.running_var.double()  # type: ignore[union-attr]
    mean = bn.running_mean.double()  # type: ignore[union-attr]
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    old_bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)  # type: ignore[union-attr]
    new_weight = weight.double() * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    new_bias = (old_bias - mean) * scale + beta
    weight.copy_(new_weight.to(weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.to(dtype=weight.dtype, device=weight.device))
    else:
        layer.bias.copy_(new_bias.to(weight.dtype))  # type: ignore[union-attr,operator]


def _why_not(
    gm: fx.GraphModule, node: fx.Node, counts: Counter[str], tied: set[str], prefix: str
) -> tuple[fx.Node, str | None] | None:
    """For a BN node: (its producer, reason it can't fold or None); None if no producer layer."""
    src = only_input(node)
    layer = called_module(gm, src, tuple(FOLD_RULES))
    if src is None or layer is None:
        return None
    bn = gm.get_submodule(str(node.target))
    assert isinstance(bn, _BatchNorm)
    if not bn.track_running_stats or bn.running_var is None:
        return src, "the batch norm has no running statistics (track_running_stats=False)"
    if len(src.users) != 1:
        return src, "the layer's output has other users besides the batch norm"
    if counts[str(src.target)] != 1 or counts[str(node.target)] != 1:
        return src, "the layer or the batch norm is called more than once"
    if _join(prefix, str(src.target)) in tied:
        return src, "the layer's weights are tied to another module"
    rule = _rule_for(layer)
    return src, rule(layer, bn, src) if rule else "unsupported layer type"


def _graph_pairs(
    gm: fx.GraphModule, counts: Counter[str], tied: set[str], prefix: str
) -> tuple[list[FoldedPair], list[tuple[str, str]]]:
    """Foldable (layer, bn) pairs of a traced graph, and skipped BNs with reasons."""
    pairs: list[FoldedPair] = []
    skipped: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        if called_module(gm, node, (_BatchNorm,)) is None:
            continue
        found = _why_not(gm, node, counts, tied, prefix)
        if found is None:
            continue
        src, reason = found
        if reason is None:
            pairs.append(FoldedPair(_join(prefix, str(src.target)), _join(prefix, str(node.target))))
        else:
            skipped.append((_join(prefix, str(node.target)), reason))
    return pairs, skipped


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _capture_calls(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[dict[str, tuple], Counter[str]]:
    """Run ``model`` once; record each submodule's first positional args and its call count."""
    paths = [path for path, _ in model.named_modules()]
    with FeatureTaps(model, paths, outputs=False, inputs=True, keep="first") as taps, eval_mode(model):
        model(*inputs)
    return taps.inputs, Counter(taps.calls)


def _is_fx_leaf(module: nn.Module) -> bool:
    return fx.Tracer().is_leaf_module(module, "")


def _fallback_pairs(
    model: nn.Module, inputs: tuple[Any, ...], tied: set[str]
) -> tuple[list[FoldedPair], list[tuple[str, str]], set[str]]:
    """Analyse each maximal traceable submodule; return pairs, skipped BNs, covered paths."""
    first_args, run_counts = _capture_calls(model, inputs)
    pairs: list[FoldedPair] = []
    skipped: list[tuple[str, str]] = []
    covered: set[str] = set()

    def visit(path: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            cpath = _join(path, name)
            if _is_fx_leaf(child):
                continue
            try:
                gm = fx.symbolic_trace(child)
            except Exception:
                visit(cpath, child)
                continue
            covered.add(cpath)
            if cpath not in first_args:
                continue  # never called on example_inputs: nothing provably adjacent
            propagate_shapes(gm, first_args[cpath])
            # A module also called from outside this submodule must not be folded:
            # take the larger of the in-graph count and the real run's count.
            local = module_call_counts(gm)
            counts = Counter({k: max(v, run_counts[_join(cpath, k)]) for k, v in local.items()})
            found, why = _graph_pairs(gm, counts, tied, cpath)
            pairs.extend(found)
            skipped.extend(why)

    visit("", model)
    return pairs, skipped, covered


def _unproven_bns(model: nn.Module, covered: set[str]) -> list[str]:
    """BNs outside every traced submodule whose module-order predecessor is a foldable layer."""
    unproven = []
    for path, module in model.named_modules():
        children = list(module.named_children())
        for (_, prev), (name, child) in zip(children, children[1:]):
            cpath = _join(path, name)
            inside = any(cpath == c or cpath.startswith(c + ".") for c in covered)
            if isinstance(child, _BatchNorm) and _rule_for(prev) is not None and not inside:
                unproven.append(cpath)
    return unproven


def _find_pairs(
    model: nn.Module, inputs: tuple[Any, ...], strict: bool
) -> tuple[list[FoldedPair], list[tuple[str, str]]]:
    tied = tied_parameter_owners(model)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:
        pairs, skipped, covered = _fallback_pairs(model, inputs, tied)
        unproven = _unproven_bns(model, covered)
        if unproven:
            msg = (
                f"fold_batchnorm: {type(model).__name__} is not torch.fx-traceable "
                f"({type(exc).__name__}: {exc}) and batch norm(s) {unproven} sit in untraceable "
                "code, so it can't be proven that they directly follow their conv/linear. Make "
                "that submodule traceable (or an nn.Sequential), or pass strict=False to leave them."
            )
            if strict:
                raise UnsupportedModelError(msg) from exc
            warnings.warn(msg, stacklevel=3)
        return pairs, skipped
    propagate_shapes(gm, inputs)
    return _graph_pairs(gm, module_call_counts(gm), tied, "")


def fold_batchnorm(
    model: nn.Module, example_inputs: ExampleInputs, *, strict: bool = True
) -> nn.Module:
    """Return a copy of ``model`` with every BN that follows a conv/linear folded into it.

    Exact in eval mode (the folded layers use the BN running statistics); the
    folded BN is replaced by ``nn.Identity`` so module paths and the model's
    class stay the same. Supports Conv1d/2d/3d (any groups, incl. depthwise)
    and Linear followed by BatchNorm1d on ``[N, features]``. The input model is
    not modified; the copy keeps its train/eval flags. ``edgeslim.info(result).fold``
    (a :class:`FoldReport`) lists the folded pairs and the BNs that follow a layer
    but can't be folded (with the reason).

    Args:
        model: the network (not modified).
        example_inputs: a tensor or tuple of tensors the model accepts; used for
            shapes (a Linear's output rank) and, for untraceable models, to
            observe which modules are called.
        strict: for a model torch.fx can't trace as a whole, raise
            :class:`UnsupportedModelError` when a BN in untraceable code may
            follow a conv/linear; with ``strict=False`` such BNs are left alone
            with a warning.

    Returns:
        The folded copy.
    """
    folded = copy.deepcopy(model)
    pairs, skipped = _find_pairs(folded, as_input_tuple(example_inputs), strict)
    fold_pairs_(folded, pairs)
    info(folded).fold = FoldReport(list(pairs), list(skipped))
    return folded


def foldable_pairs(model: nn.Module, example_inputs: ExampleInputs) -> list[FoldedPair]:
    """The (layer, bn) pairs :func:`fold_batchnorm` would fold, without folding them.

    Why: the latency planner offers each pair as a move of its own (``prune/latency_planner.py``)
    and folds only the ones that save time on the target runtime. Non-strict: a BN that
    cannot be proven to follow its layer is simply not offered."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _find_pairs(model, as_input_tuple(example_inputs), strict=False)[0]


def fold_pairs_(model: nn.Module, pairs: list[FoldedPair]) -> nn.Module:
    """Fold each pair's (eval-mode) BN into its layer in place; the BN becomes ``nn.Identity``."""
    for pair in pairs:
        bn = model.get_submodule(pair.bn)
        if not isinstance(bn, _BatchNorm):
            raise UnsupportedModelError(f"fold: {pair.bn!r} is a {type(bn).__name__}, not a batch norm "
                                        f"(already folded, or a plan made for another model)")
        fold_bn_into_(model.get_submodule(pair.layer), bn)
        model.set_submodule(pair.bn, nn.Identity())
    return model
