"""Magnitude pruning of individual weights (unstructured sparsity).

Han, Pool, Tran & Dally, *Learning both Weights and Connections for Efficient
Neural Networks*, NeurIPS 2015: remove the weights with the smallest
magnitude, retrain the rest with the pruned ones held at zero, and repeat with
a higher sparsity. This is the "parameter redundancy" half of the hybrid
pruning + streamline-merging method of Xie, Zhong, Pan & Zhang.

Masks are kept as non-persistent buffers ``weight_mask`` on each pruned module
(they follow ``.to(device)`` but don't change the state dict, so a pruned model
still loads into its unpruned architecture); :class:`MaskEnforcer` re-applies
them after every optimiser step. Sparsity is *exact*: exactly
``round(sparsity * n)`` weights are zero afterwards (ties in magnitude are
broken by position), either over all included weights (``scope="global"``, one
threshold for the whole network) or per layer (``scope="layer"``).

Inference stays dense: zeros in a dense tensor cost the same time; see
:mod:`edgeslim.prune.sparse_storage` for the compact file format.
"""
from __future__ import annotations

import copy
from typing import Literal
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from edgeslim.errors import ConfigError
from edgeslim.modelinfo import SparsityResult, info

__all__ = [
    "prune_weights",
    "iterative_prune_weights",
    "MaskEnforcer",
    "apply_masks_",
    "weight_sparsity",
    "sparsity_schedule",
]

Scope = Literal["global", "layer"]
MASK = "weight_mask"
DEFAULT_INCLUDE: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def _check_sparsity(sparsity: float, where: str) -> None:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(
            f"{where}: sparsity must be a fraction in [0, 1), got {sparsity!r} "
            "(0.9 prunes 90% of the weights)"
        )


def _sparsity_for_count(model: nn.Module, target_nonzero: object, include: Sequence[type[nn.Module]],
                        where: str) -> float:
    """The sparsity that leaves ``target_nonzero`` of the included weights (a count) non-zero."""
    total = sum(m.weight.numel() for _, m in _targets(model, include))
    if isinstance(target_nonzero, bool) or not isinstance(target_nonzero, int) or not 1 <= target_nonzero <= total:
        raise ConfigError(f"{where}: target_nonzero must be a whole number of weights in [1, {total}] (the "
                          f"model's prunable weights), got {target_nonzero!r}; give a count, e.g. "
                          f"{max(1, total // 70)} keeps 1/70 of them, or a fraction as sparsity")
    return (total - target_nonzero) / total


def _layers(model: nn.Module, include: Sequence[type[nn.Module]]) -> list[tuple[str, nn.Module]]:
    return [(p, m) for p, m in model.named_modules()
            if isinstance(m, tuple(include)) and isinstance(getattr(m, "weight", None), Tensor)]


def _targets(model: nn.Module, include: Sequence[type[nn.Module]]) -> list[tuple[str, nn.Module]]:
    found = _layers(model, include)
    if not found:
        names = ", ".join(t.__name__ for t in include)
        raise ConfigError(f"prune_weights: the model has no layers of type {names} with a weight; "
                          "pass include=(...) with the layer types to prune")
    return found


def _keep_mask(scores: Tensor, n_prune: int) -> Tensor:
    """Boolean mask keeping all but the ``n_prune`` lowest scores (exact count)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune > 0:
        keep[torch.topk(scores.flatten(), n_prune, largest=False, sorted=False).indices] = False
    return keep.view_as(scores)


def _scores(module: nn.Module) -> Tensor:
    """|w|, with weights already masked out scored -1 so they stay pruned."""
    score = module.weight.detach().abs().float()
    old = getattr(module, MASK, None)
    return score.masked_fill(~old, -1.0) if isinstance(old, Tensor) else score


def _global_masks(modules: list[nn.Module], sparsity: float) -> list[Tensor]:
    scores = [_scores(m) for m in modules]
    flat = torch.cat([s.flatten() for s in scores])
    keep = _keep_mask(flat, round(sparsity * flat.numel()))
    return [k.view_as(s) for k, s in zip(keep.split([s.numel() for s in scores]), scores)]


def _layer_masks(modules: list[nn.Module], sparsity: float) -> list[Tensor]:
    return [_keep_mask(s, round(sparsity * s.numel())) for s in map(_scores, modules)]


# How a target sparsity is distributed over layers, keyed by scope name.
SCOPES: dict[str, Callable[[list[nn.Module], float], list[Tensor]]] = {
    "global": _global_masks,
    "layer": _layer_masks,
}


@torch.no_grad()
def apply_masks_(model: nn.Module) -> int:
    """Zero every weight whose ``weight_mask`` entry is False; returns how many modules had a mask."""
    n = 0
    for module in model.modules():
        mask = getattr(module, MASK, None)
        if isinstance(mask, Tensor) and isinstance(getattr(module, "weight", None), Tensor):
            # masked_fill writes +0.0 (a multiply would leave -0.0 for negative weights).
            module.weight.masked_fill_(~mask, 0.0)
            n += 1
    return n


def prune_weights(
    model: nn.Module,
    sparsity: float = 0.9,
    scope: Scope = "global",
    *,
    include: Sequence[type[nn.Module]] = DEFAULT_INCLUDE,
    target_nonzero: int | None = None,
) -> nn.Module:
    """Return a copy of ``model`` with the smallest-magnitude weights set to zero.

    Magnitude pruning (Han et al. 2015). Only the ``weight`` of modules of the
    ``include`` types is pruned (biases and norm layers stay dense). Weights
    already masked by an earlier call stay pruned, so repeated calls with
    rising sparsity form an iterative schedule.

    Args:
        model: the network (not modified).
        sparsity: fraction of the included weights to zero, in ``[0, 1)``.
        scope: ``"global"`` ranks all included weights together (layers end up
            with different sparsities); ``"layer"`` prunes each layer to ``sparsity``.
        include: layer types whose weights are pruned.
        target_nonzero: instead of ``sparsity``, how many of the included weights stay
            non-zero (a count: the same size whatever the layers' widths); exact with
            ``scope="global"``, within one weight per layer with ``"layer"``.

    Returns:
        The pruned copy; each pruned module has a boolean ``weight_mask`` buffer
        (non-persistent) and ``edgeslim.info(result).sparsity`` records the settings.

    Raises:
        ConfigError: sparsity outside ``[0, 1)``, target_nonzero not a count in
            ``[1, prunable weights]``, an unknown scope, or no layer of the included types.
    """
    if target_nonzero is not None:
        sparsity = _sparsity_for_count(model, target_nonzero, include, "prune_weights")
    _check_sparsity(sparsity, "prune_weights")
    if scope not in SCOPES:
        raise ConfigError(f"prune_weights: unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    pruned = copy.deepcopy(model)
    targets = _targets(pruned, include)
    masks = SCOPES[scope]([m for _, m in targets], float(sparsity))
    for (_, module), mask in zip(targets, masks):
        _set_mask(module, mask)
    apply_masks_(pruned)
    info(pruned).sparsity = SparsityResult(float(sparsity), scope, [p for p, _ in targets])
    return pruned


@torch.no_grad()
def restore_masks_(model: nn.Module, include: Sequence[type[nn.Module]] = DEFAULT_INCLUDE) -> int:
    """Give a weight-pruned model back the masks that keep it sparse while it trains.

    ``weight_mask`` buffers are not saved (:func:`prune_weights`), so a pruned model loaded
    from disk has none, and one whose layers were sliced since has stale ones. A mask of
    another shape than its weight becomes ``weight != 0``; when more than half of the
    included weights are zero, so does each missing one (a dense model gets none).
    Returns how many modules got a new mask.
    """
    layers = _layers(model, include)
    sparse = bool(layers) and weight_sparsity(model, include) > 0.5
    n = 0
    for _, module in layers:
        mask = module._buffers.get(MASK)
        if (isinstance(mask, Tensor) and mask.shape == module.weight.shape) or (mask is None and not sparse):
            continue
        _set_mask(module, module.weight != 0)
        n += 1
    return n


def _set_mask(module: nn.Module, mask: Tensor) -> None:
    """``module.weight_mask = mask``, a non-persistent buffer (not saved with the weights)."""
    if MASK in module._buffers:
        module._buffers[MASK] = mask
    else:
        module.register_buffer(MASK, mask, persistent=False)


def weight_sparsity(model: nn.Module, include: Sequence[type[nn.Module]] = DEFAULT_INCLUDE) -> float:
    """Fraction of exactly-zero weights over the included layers."""
    weights = [m.weight for _, m in _targets(model, include)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


class MaskEnforcer:
    """Trainer callback that keeps pruned weights at zero during retraining.

    ``on_step_end`` runs after every ``optimizer.step()`` and multiplies each
    weight by its ``weight_mask`` (momentum or weight decay would otherwise
    revive pruned weights). ``on_train_start`` applies them once up front.
    """

    def on_train_start(self, trainer: object) -> None:
        apply_masks_(trainer.model)  # type: ignore[attr-defined]

    def on_step_end(self, trainer: object) -> None:
        apply_masks_(trainer.model)  # type: ignore[attr-defined]


def _cubic(t: float) -> float:
    return 1.0 - (1.0 - t) ** 3


# Fraction of the final sparsity reached at progress t in (0, 1], keyed by name.
SCHEDULES: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "cubic": _cubic,  # Zhu & Gupta 2017: prune fast while many weights are redundant
}


def sparsity_schedule(sparsity: float, steps: int, schedule: str = "cubic") -> list[float]:
    """Increasing sparsities for ``steps`` prune/retrain rounds, ending at ``sparsity``."""
    _check_sparsity(sparsity, "sparsity_schedule")
    if steps < 1:
        raise ConfigError(f"sparsity_schedule: steps must be >= 1, got {steps}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"sparsity_schedule: unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    fn = SCHEDULES[schedule]
    return [sparsity if i == steps else sparsity * fn(i / steps) for i in range(1, steps + 1)]


def iterative_prune_weights(
    model: nn.Module,
    sparsity: float | None,
    steps: int,
    retrain: Callable[[nn.Module, int], None] | None,
    *,
    scope: Scope = "global",
    include: Sequence[type[nn.Module]] = DEFAULT_INCLUDE,
    schedule: str = "cubic",
    target_nonzero: int | None = None,
) -> nn.Module:
    """Prune and retrain in ``steps`` rounds with gradually increasing sparsity.

    Iterative pruning (Han et al. 2015) with the gradual schedule of Zhu &
    Gupta 2017 (``"cubic"``) or a ``"linear"`` one. After round ``i`` the model
    has sparsity ``schedule[i]`` and ``retrain(model, i)`` is called to train
    it in place (add :class:`MaskEnforcer` to its Trainer callbacks); masks are
    re-applied afterwards, so the returned model has exactly ``sparsity``.

    Args:
        model: the network (not modified).
        sparsity: final fraction of zero weights, in ``[0, 1)``; None with ``target_nonzero``.
        steps: number of prune/retrain rounds (>= 1).
        retrain: ``retrain(model, step) -> None`` or None for one-shot rounds.
        scope: ``"global"`` or ``"layer"`` (see :func:`prune_weights`).
        include: layer types whose weights are pruned.
        schedule: ``"cubic"`` or ``"linear"``.
        target_nonzero: instead of ``sparsity``, how many included weights stay non-zero
            at the end (see :func:`prune_weights`); the rounds' sparsities follow from it.

    Returns:
        The pruned (and retrained) copy.
    """
    if (sparsity is None) == (target_nonzero is None):
        raise ConfigError("iterative_prune_weights: give exactly one of sparsity (a fraction zeroed) "
                          "and target_nonzero (a count of weights kept)")
    if target_nonzero is not None:
        sparsity = _sparsity_for_count(model, target_nonzero, include, "iterative_prune_weights")
    current = model
    for step, target in enumerate(sparsity_schedule(sparsity, steps, schedule)):
        current = prune_weights(current, target, scope, include=include)
        if retrain is not None:
            retrain(current, step)
            apply_masks_(current)
    return current

