"""Planners decide which channels to cut.

``global`` ranks every prunable channel of the network in one list (the
knowledge-transfer pipeline's and EasiEdge's method: no per-layer sensitivity
analysis); ``layerwise`` cuts the same fraction from every group. Both reduce to
"remove the first k channels of an ordering", and k is found by bisection so
that the target (fraction of channels, FLOPs budget, parameter budget) is met
after the per-group constraints (``min_channels``, ``round_to``) are applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from ..errors import ConfigError
from ..graph import DependencyGraph
from ..registry import Registry

PlannerName = Literal["global", "layerwise"]


@dataclass(frozen=True)
class Budget:
    """What the plan must reach, in absolute units of the *original* model.

    Exactly one of the three is set. ``channels``: at least this many of the
    original prunable channels removed in total; ``macs``/``params``: at most
    this many left.
    """

    channels: int | None = None
    macs: float | None = None
    params: float | None = None


@dataclass(frozen=True)
class Constraints:
    min_channels: int = 1
    round_to: int = 1


ORDERINGS: Registry[Callable] = Registry("planner")


def _scores_or_inf(scores: np.ndarray, classes: list[int]) -> np.ndarray:
    s = scores[classes]
    return np.where(np.isnan(s), np.inf, s)


@ORDERINGS.register("global")
def global_order(graph: DependencyGraph, scores: np.ndarray) -> list[int]:
    """All prunable channels, least important first, across the whole network."""
    classes = np.asarray(graph.prunable_classes(), dtype=np.int64)
    s = _scores_or_inf(scores, classes)
    order = np.argsort(s, kind="stable")
    return classes[order[np.isfinite(s[order])]].tolist()


@ORDERINGS.register("layerwise")
def layerwise_order(graph: DependencyGraph, scores: np.ndarray) -> list[int]:
    """Interleave groups by relative rank, so any prefix cuts every group by the same fraction."""
    keyed = []
    for g in graph.groups:
        classes = [c for c, ok in zip(g.classes, g.prunable) if ok]
        if not classes:
            continue
        s = _scores_or_inf(scores, classes)
        for rank, i in enumerate(np.argsort(s, kind="stable")):
            if np.isfinite(s[i]):
                keyed.append(((rank + 1) / g.size, s[i], classes[i]))
    return [c for _, _, c in sorted(keyed)]


def apply_constraints(graph: DependencyGraph, removed: np.ndarray, scores: np.ndarray,
                      cons: Constraints) -> np.ndarray:
    """Give channels back to layers that would lose all their channels, then to groups that
    would fall below ``min_channels`` or off a multiple of ``round_to`` (the most important
    removed ones come back first)."""
    removed = removed.copy()
    ranked = np.where(np.isnan(scores), np.inf, scores)
    for out in graph.emptied_layers(removed):
        removed[out[np.argmax(ranked[out])]] = False
    for g, classes in zip(graph.groups, graph.group_classes):
        cut = classes[removed[classes]]
        if not len(cut):
            continue
        kept = g.size - len(cut)
        need = max(cons.min_channels, 1, kept)
        if cons.round_to > 1:
            need = min(g.size, -(-need // cons.round_to) * cons.round_to)
        if need > kept:
            back = cut[np.argsort(-ranked[cut], kind="stable")[: need - kept]]
            removed[back] = False
    return removed


# What to change for each kind of lock reason (see DependencyGraph.lock_reasons).
_UNLOCK_HINTS = (
    ("protect_first=True", "protect_first=False"),
    ("is ignored", "fewer ignore= paths"),
    ("is not supported", "make that operation traceable (edgeslim.graph.register_handler)"),
    ("tied parameter", "untie the parameter"),
)


def explain_locks(graph: DependencyGraph) -> str:
    """'no channel can be removed ... (by: reasons). Fix: ...' for a graph with nothing prunable."""
    reasons = graph.lock_reasons()
    fixes = [fix for key, fix in _UNLOCK_HINTS if any(key in r for r in reasons)]
    fixes.append("see build_dependency_graph(model, x).summary() for the groups")
    return (f"no channel can be removed, every channel group is locked (by: "
            f"{'; '.join(reasons) or 'no layer has channels to cut'}). Fix: {', or '.join(fixes)}")


def plan_removal(graph: DependencyGraph, scores: np.ndarray, budget: Budget,
                 planner: str = "global", constraints: Constraints = Constraints(),
                 already_removed: int = 0) -> np.ndarray:
    """Boolean mask over channel classes: True = remove.

    ``already_removed`` counts channels removed by earlier iterative steps, so a
    ``channels`` budget stays relative to the original model.
    """
    order = ORDERINGS.get(planner)(graph, scores)

    def removal(k: int) -> np.ndarray:
        mask = np.zeros(len(graph.class_locked), dtype=bool)
        mask[order[:k]] = True
        return apply_constraints(graph, mask, scores, constraints)

    def met(mask: np.ndarray) -> bool:
        if budget.channels is not None:
            return already_removed + int(mask.sum()) >= budget.channels
        macs, params = graph.cost(mask)
        return macs <= budget.macs if budget.macs is not None else params <= budget.params

    lo, hi = 0, len(order)
    if met(removal(0)):
        return removal(0)
    if not order:
        raise ConfigError(f"the pruning target is not reachable: {explain_locks(graph)}")
    if not met(removal(hi)):
        most = removal(hi)
        macs, params = graph.cost(most)
        raise ConfigError(
            f"the pruning target is not reachable: the most that can be cut (keeping "
            f"min_channels={constraints.min_channels}, round_to={constraints.round_to}, locked and "
            f"ignored layers) removes {already_removed + int(most.sum())} channels and leaves "
            f"{macs:,} MACs and {params:,} parameters. Fix: ask for a smaller cut, lower "
            "min_channels/round_to, un-ignore layers, or protect_first=False."
        )
    while hi - lo > 1:  # smallest k that meets the budget
        mid = (lo + hi) // 2
        if met(removal(mid)):
            hi = mid
        else:
            lo = mid
    return removal(hi)
