"""Cost-aware planning: ranking by importance per unit of the targeted cost.

Invariants: the marginal costs are the graph's exact cost differences; at the same
FLOPs/parameter budget the cost-aware plan keeps more importance than the importance-only
one on a case built so that the two disagree; the budget is met and nothing that still fits
is left out; a filter-count budget is planned exactly as before.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edgeslim
from edgeslim.graph import build_dependency_graph
from edgeslim.profile import count_flops
from edgeslim.prune import Budget, Constraints, plan_removal
from edgeslim.prune.planner import fill_budget, importance_per_cost


def _net() -> nn.Sequential:
    """A protected stem, a conv whose filters are expensive (16x16 maps) and two cheap
    linear layers."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3),
    ).eval()


X = torch.randn(1, 3, 16, 16)


def _graph(model: nn.Module):
    return build_dependency_graph(model, X, protect_first=True)


def _classes(graph, path: str) -> np.ndarray:
    return np.unique(graph.class_of[np.asarray(graph.records[path].out_label, dtype=np.int64)])


def _scores(graph) -> np.ndarray:
    """Deterministic importance: every conv filter is worth 2 to 3, every neuron 0.5 to 1."""
    scores = np.full(len(graph.class_locked), np.nan)
    for path, (lo, hi) in {"2": (2.0, 3.0), "6": (0.5, 1.0), "8": (0.5, 1.0)}.items():
        cls = _classes(graph, path)
        scores[cls] = np.linspace(lo, hi, len(cls))
    return scores


def test_marginal_cost_is_the_exact_cost_difference():
    graph = _graph(_net())
    rng = np.random.default_rng(0)
    for _ in range(5):
        removed = np.zeros(len(graph.class_locked), dtype=bool)
        prunable = np.asarray(graph.prunable_classes())
        removed[rng.choice(prunable, 6, replace=False)] = True
        macs, params = graph.marginal_cost(removed)
        m0, p0 = graph.cost(removed)
        for c in prunable[~removed[prunable]]:
            one = removed.copy()
            one[c] = True
            m1, p1 = graph.cost(one)
            assert (macs[c], params[c]) == (m0 - m1, p0 - p1)


@pytest.mark.parametrize("unit", ["macs", "params"])
def test_cost_aware_keeps_more_importance_at_the_same_budget(unit: str):
    graph = _graph(_net())
    scores = _scores(graph)
    total = graph.cost()[0 if unit == "macs" else 1]
    budget = Budget(**{unit: 0.6 * total})
    kept = {}
    for aware in (False, True):
        removed = plan_removal(graph, scores, budget, cost_aware=aware)
        spent = graph.cost(removed)[0 if unit == "macs" else 1]
        assert spent <= 0.6 * total
        prunable = np.asarray(graph.prunable_classes())
        kept[aware] = scores[prunable[~removed[prunable]]].sum()
    # importance alone cuts the cheap neurons first and must then cut filters as well
    assert kept[True] > kept[False]


def test_fill_leaves_nothing_out_that_still_fits():
    graph = _graph(_net())
    scores = _scores(graph)
    limit = 0.5 * graph.cost()[0]
    removed = plan_removal(graph, scores, Budget(macs=limit))
    assert graph.cost(removed)[0] <= limit
    for c in np.flatnonzero(removed):
        back = removed.copy()
        back[c] = False
        assert graph.cost(back)[0] > limit, f"class {c} fits in the budget but was cut"
    assert np.array_equal(fill_budget(graph, removed, scores, Budget(macs=limit), Constraints()), removed)


def test_filter_count_budget_is_the_plain_ranking():
    graph = _graph(_net())
    scores = _scores(graph)
    n = len(graph.prunable_classes())
    for aware in (None, True, False):
        removed = plan_removal(graph, scores, Budget(channels=n // 2), cost_aware=aware)
        assert removed.sum() == n // 2
        cut = scores[removed]
        assert cut.max() <= np.sort(scores[graph.prunable_classes()])[n // 2 - 1]
    assert np.array_equal(importance_per_cost(graph, scores, "channels"),
                          np.where(np.isnan(scores), np.inf, scores))


@pytest.mark.parametrize("planner", ["global", "layerwise"])
def test_prune_target_flops_cost_aware_by_default(planner: str):
    model = _net()
    f0 = count_flops(model, X)[0]
    for aware in (None, False):
        pruned = edgeslim.prune(model, X, target_flops=0.5, planner=planner, cost_aware=aware)
        assert count_flops(pruned, X)[0] <= 0.5 * f0
        assert pruned(X).shape == (1, 3)


def test_fpgm_cuts_the_filters_nearest_the_geometric_median():
    """Three copies of one filter sit at the layer's median; the two far-out filters stay."""
    conv = nn.Conv2d(2, 5, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [9.0, 0.0], [0.0, 9.0]])[..., None, None])
    model = nn.Sequential(nn.Conv2d(2, 2, 1), conv, nn.ReLU(), nn.Conv2d(5, 3, 1)).eval()
    x = torch.randn(1, 2, 4, 4)
    graph = build_dependency_graph(model, x, protect_first=True)
    removed = plan_removal(graph, edgeslim.prune.get_importance("fpgm")(graph, model),
                           Budget(channels=3))
    assert removed[_classes(graph, "1")].tolist() == [True, True, True, False, False]


def test_exchange_never_loses_importance_and_fills_lumpy_budgets(monkeypatch):
    """A conv filter here costs as much as 78 neurons of the wide linear layer after it: the
    greedy plan can stop a filter short of the budget. The exchange step keeps every plan
    within budget, never keeps less importance, and on some budgets swaps a filter back in
    for neurons (more importance kept, budget better used)."""
    import edgeslim.prune.planner as planner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 64), nn.ReLU(),
                          nn.Linear(64, 3)).eval()
    graph = build_dependency_graph(model, torch.randn(1, 3, 16, 16), protect_first=True)
    scores = np.full(len(graph.class_locked), np.nan)
    scores[_classes(graph, "2")] = np.linspace(2.0, 3.0, 8)
    scores[_classes(graph, "6")] = np.linspace(0.05, 0.1, 64)
    total = graph.cost()[0]
    kept = lambda m: np.nansum(np.where(m, 0.0, scores))  # noqa: E731
    gained = 0
    for frac in np.linspace(0.35, 0.95, 25):
        budget = Budget(macs=frac * total)
        with_exchange = plan_removal(graph, scores, budget)
        monkeypatch.setattr(planner, "EXCHANGE_TRIES", 0)
        greedy = plan_removal(graph, scores, budget)
        monkeypatch.undo()
        assert graph.cost(with_exchange)[0] <= frac * total
        assert kept(with_exchange) >= kept(greedy)
        if kept(with_exchange) > kept(greedy):
            gained += 1
            assert graph.cost(with_exchange)[0] > graph.cost(greedy)[0]
    assert gained >= 3
