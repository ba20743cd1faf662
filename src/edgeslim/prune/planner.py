"""Planners decide which channels to cut.

``global`` ranks every prunable channel of the network in one list (the
knowledge-transfer pipeline's and EasiEdge's method: no per-layer sensitivity
analysis); ``layerwise`` cuts the same fraction from every group. Both reduce to
"remove the first k channels of an ordering", and k is found by bisection so
that the target (fraction of channels, FLOPs budget, parameter budget) is met
after the per-group constraints (``min_channels``, ``round_to``) are applied.

Cost-aware planning (the default for FLOPs and parameter budgets): a channel is
ranked by the importance it carries *per unit of the cost being targeted*,
``score / marginal cost``, with the marginal cost taken from the graph's exact
cost model (``DependencyGraph.marginal_cost``). This is the greedy rule for the
knapsack "keep the most importance within the budget" (Dantzig 1957): a
filter that costs 30x the FLOPs of another must be 30x as important to stay.
The ``global`` order is a backward elimination: the marginal costs are
re-measured as channels go (after a conv loses filters, the next layer's
neurons get cheaper). After the bisection, removed channels that still fit in
the remaining budget are put back, most valuable first, so the plan spends the
budget instead of undershooting it by up to one expensive filter. With a
``channels`` budget every channel costs 1 and the ranking is the plain one
(the EasiEdge paper's filter-count protocol).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np

from ..errors import ConfigError
from ..graph import DependencyGraph
from ..registry import Registry

PlannerName = Literal["global", "layerwise"]
CostUnit = Literal["channels", "macs", "params"]


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


def budget_unit(budget: Budget) -> CostUnit:
    """What ``budget`` counts: ``"channels"``, ``"macs"`` or ``"params"``."""
    if budget.channels is not None:
        return "channels"
    return "macs" if budget.macs is not None else "params"


def importance_per_cost(graph: DependencyGraph, scores: np.ndarray, unit: CostUnit,
                        removed: np.ndarray | None = None) -> np.ndarray:
    """``score / marginal cost`` per class (NaN scores: inf, never cut for cost). A class that
    saves nothing (cost 0) ranks last: removing it buys no budget."""
    if unit == "channels":
        return np.where(np.isnan(scores), np.inf, scores)
    macs, params = graph.marginal_cost(removed)
    cost = macs if unit == "macs" else params
    s = np.where(np.isnan(scores), np.inf, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        key = np.where(cost > 0, s / np.where(cost > 0, cost, 1.0), np.inf)
    return key


# The global cost-aware order re-measures the marginal costs this many times over the ranking
# (after every channel on nets with up to this many channels); nets with more than
# LARGE_GRAPH prunable channels (ImageNet CNNs: ~10^4) re-measure LARGE_UPDATES times, each
# step then cuts ~3% of the channels: each re-measure costs a pass over every layer.
ELIMINATION_UPDATES = 256
LARGE_GRAPH, LARGE_UPDATES = 4096, 32


def cost_aware_order(graph: DependencyGraph, scores: np.ndarray, unit: CostUnit,
                     planner: str = "global") -> list[int]:
    """The planner's ordering of ``importance_per_cost``. For ``global``, a backward
    elimination: cut the channel with the least importance per marginal cost, re-measure
    the costs, repeat (in ``ELIMINATION_UPDATES`` chunks). ``layerwise`` fixes each group's
    fraction anyway, so its key is measured once on the unpruned net."""
    if planner != "global":
        return ORDERINGS.get(planner)(graph, importance_per_cost(graph, scores, unit))
    remaining = np.asarray(global_order(graph, scores), dtype=np.int64)
    removed = np.zeros(len(graph.class_locked), dtype=bool)
    updates = ELIMINATION_UPDATES if len(remaining) <= LARGE_GRAPH else LARGE_UPDATES
    chunk = max(1, -(-len(remaining) // updates))
    order: list[int] = []
    while len(remaining):
        key = importance_per_cost(graph, scores, unit, removed)[remaining]
        pick = np.argsort(key, kind="stable")[:chunk]
        order += remaining[pick].tolist()
        removed[remaining[pick]] = True
        remaining = np.delete(remaining, pick)
    return order


def _spent(graph: DependencyGraph, mask: np.ndarray, unit: CostUnit) -> float:
    macs, params = graph.cost(mask)
    return macs if unit == "macs" else params


def fill_budget(graph: DependencyGraph, removed: np.ndarray, scores: np.ndarray, budget: Budget,
                constraints: Constraints) -> np.ndarray:
    """Put removed channels back, most importance per cost first, while the budget stays met
    (the fill-in step of the greedy knapsack)."""
    unit = budget_unit(budget)
    limit = budget.macs if unit == "macs" else budget.params
    key = importance_per_cost(graph, scores, unit, removed)
    add_back = graph.marginal_cost(removed)[0 if unit == "macs" else 1]
    slack = limit - _spent(graph, removed, unit)
    for c in np.flatnonzero(removed)[np.argsort(-key[removed], kind="stable")]:
        if add_back[c] > slack:  # exact for linear costs; a cheap filter before the exact check
            continue
        trial = removed.copy()
        trial[c] = False
        trial = apply_constraints(graph, trial, scores, constraints)
        spent = _spent(graph, trial, unit)
        if spent <= limit:
            removed, slack = trial, limit - spent
    return removed


def meets_budget(graph: DependencyGraph, removed: np.ndarray, budget: Budget, already_removed: int = 0) -> bool:
    """Whether the removal mask reaches the budget."""
    unit = budget_unit(budget)
    if unit == "channels":
        return already_removed + int(removed.sum()) >= budget.channels
    return _spent(graph, removed, unit) <= (budget.macs if unit == "macs" else budget.params)


def _shortest_prefix(graph: DependencyGraph, order: Sequence[int], base: np.ndarray, scores: np.ndarray,
                     budget: Budget, constraints: Constraints, already_removed: int = 0) -> np.ndarray | None:
    """``base`` plus the shortest prefix of ``order`` that meets the budget after the
    constraints (bisection), or None when even all of ``order`` does not."""
    def removal(k: int) -> np.ndarray:
        mask = base.copy()
        mask[list(order[:k])] = True
        return apply_constraints(graph, mask, scores, constraints)

    if not meets_budget(graph, removal(len(order)), budget, already_removed):
        return None
    lo, hi = -1, len(order)
    while hi - lo > 1:  # smallest k that meets the budget
        mid = (lo + hi) // 2
        if meets_budget(graph, removal(mid), budget, already_removed):
            hi = mid
        else:
            lo = mid
    return removal(hi)


# How many of the cut channels too expensive to fill back in ``exchange`` tries to swap in.
EXCHANGE_TRIES = 8


def exchange(graph: DependencyGraph, removed: np.ndarray, scores: np.ndarray, budget: Budget,
             constraints: Constraints) -> np.ndarray:
    """Single-item exchanges, the usual improvement of the greedy knapsack: put back one cut
    channel that no longer fits (most important first), cut the least important per cost
    among the cheaper kept ones until the budget is met again, fill, and keep the swap if the
    plan then keeps more importance. Without it a plan can undershoot the budget by one large
    filter (a conv with a few filters left) where narrower fully connected layers would do."""
    unit = budget_unit(budget)
    worth = np.nan_to_num(np.where(np.isnan(scores), 0.0, scores), posinf=0.0)
    limit = budget.macs if unit == "macs" else budget.params
    slack = limit - _spent(graph, removed, unit)
    add_back = graph.marginal_cost(removed)[0 if unit == "macs" else 1]
    prunable = np.zeros(len(removed), dtype=bool)
    prunable[global_order(graph, scores)] = True
    lumps = np.flatnonzero(removed & prunable & (add_back > slack))
    for c in lumps[np.argsort(-worth[lumps], kind="stable")][:EXCHANGE_TRIES]:
        trial = removed.copy()
        trial[c] = False
        key = importance_per_cost(graph, scores, unit, trial)
        cost = graph.marginal_cost(trial)[0 if unit == "macs" else 1]
        kept = np.flatnonzero(~trial & prunable & (cost < add_back[c]))  # paid for with cheaper ones
        kept = kept[kept != c]
        swapped = _shortest_prefix(graph, kept[np.argsort(key[kept], kind="stable")], trial, scores, budget,
                                   constraints)
        if swapped is None or swapped[c]:
            continue
        swapped = fill_budget(graph, swapped, scores, budget, constraints)
        if worth[~swapped].sum() > worth[~removed].sum():
            removed = swapped
    return removed


def plan_removal(graph: DependencyGraph, scores: np.ndarray, budget: Budget,
                 planner: str = "global", constraints: Constraints = Constraints(),
                 already_removed: int = 0, cost_aware: bool | None = None) -> np.ndarray:
    """Boolean mask over channel classes: True = remove.

    ``already_removed`` counts channels removed by earlier iterative steps, so a
    ``channels`` budget stays relative to the original model. ``cost_aware`` (default:
    True for ``macs``/``params`` budgets) ranks by importance per unit of that cost and, for
    the ``global`` planner, fills the budget left over (``fill_budget``, ``exchange``);
    False ranks by importance alone.
    """
    unit = budget_unit(budget)
    aware = unit != "channels" and cost_aware is not False
    order = cost_aware_order(graph, scores, unit, planner) if aware else ORDERINGS.get(planner)(graph, scores)
    none = np.zeros(len(graph.class_locked), dtype=bool)
    if not order and not meets_budget(graph, none, budget, already_removed):
        raise ConfigError(f"the pruning target is not reachable: {explain_locks(graph)}")
    removed = _shortest_prefix(graph, order, none, scores, budget, constraints, already_removed)
    if removed is None:
        most = apply_constraints(graph, none | np.isin(np.arange(len(none)), order), scores, constraints)
        raise _unreachable(graph, most, constraints, already_removed)
    if not (aware and planner == "global"):
        return removed
    removed = fill_budget(graph, removed, scores, budget, constraints)
    if len(order) > LARGE_GRAPH:  # one filter more or less is noise there; exchange costs ~8 plans
        return removed
    return exchange(graph, removed, scores, budget, constraints)


def _unreachable(graph: DependencyGraph, most: np.ndarray, constraints: Constraints,
                 already_removed: int) -> ConfigError:
    macs, params = graph.cost(most)
    return ConfigError(
        f"the pruning target is not reachable: the most that can be cut (keeping "
        f"min_channels={constraints.min_channels}, round_to={constraints.round_to}, locked and "
        f"ignored layers) removes {already_removed + int(most.sum())} channels and leaves "
        f"{macs:,} MACs and {params:,} parameters. Fix: ask for a smaller cut, lower "
        "min_channels/round_to, un-ignore layers, or protect_first=False."
    )
