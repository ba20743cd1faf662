"""Paired comparison of two models on one test set: per-sample masks, interval, McNemar's p."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgeslim.train import correct_mask, evaluate, paired_accuracy_change


def _masks(both: int, lost: int, gained: int, neither: int) -> tuple[torch.Tensor, torch.Tensor]:
    ref = torch.tensor([True] * both + [True] * lost + [False] * gained + [False] * neither)
    new = torch.tensor([True] * both + [False] * lost + [True] * gained + [False] * neither)
    perm = torch.randperm(ref.numel(), generator=torch.Generator().manual_seed(0))
    return ref[perm], new[perm]  # the order of samples does not matter, only the pairing


def test_correct_mask_mean_is_evaluate_accuracy_and_mode_is_restored() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(70, 6, generator=g), torch.randint(0, 3, (70,), generator=g)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 3)).train()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 70, 32)]
    mask = correct_mask(model, batches)
    assert model.training
    assert mask.dtype == torch.bool and mask.shape == (70,)
    with torch.no_grad():
        assert torch.equal(mask, model.eval()(x).argmax(1) == y)  # in the loader's order
    assert int(mask.sum()) / 70 == evaluate(model, batches)["accuracy"]


def test_counts_and_change() -> None:
    ref, new = _masks(both=950, lost=30, gained=10, neither=10)
    res = paired_accuracy_change(ref, new)
    assert (res["n"], res["lost"], res["gained"]) == (1000, 30, 10)
    assert res["change_pts"] == pytest.approx(-2.0)
    assert res["change_pts"] == pytest.approx(100 * (new.double().mean() - ref.double().mean()).item())
    wider = paired_accuracy_change(ref, new, confidence=0.99)["ci_pts"]
    assert wider[0] < res["ci_pts"][0] < res["change_pts"] < res["ci_pts"][1] < wider[1]


def _tail_ge(x: int, m: int, p: float) -> float:
    return sum(math.comb(m, i) * p**i * (1 - p) ** (m - i) for i in range(x, m + 1))


def test_interval_is_the_exact_interval_of_the_share_of_disagreements_won() -> None:
    """Of m disagreements the new model wins x; the bounds on that share solve the binomial tail
    equations (Clopper-Pearson), and map to a change of m (2 share - 1) / n."""
    n, m, x = 1000, 10, 3
    res = paired_accuracy_change(*_masks(both=980, lost=m - x, gained=x, neither=n - 980 - m))
    low, high = (((c * n / 100 / m) + 1) / 2 for c in res["ci_pts"])
    assert _tail_ge(x, m, low) == pytest.approx(0.025, abs=1e-9)        # P(X >= 3 | low) = alpha / 2
    assert 1 - _tail_ge(x + 1, m, high) == pytest.approx(0.025, abs=1e-9)  # P(X <= 3 | high) = alpha / 2
    none_won = paired_accuracy_change(*_masks(both=980, lost=10, gained=0, neither=10))["ci_pts"]
    assert none_won[0] == pytest.approx(-1.0)  # share 0: every disagreement lost, 10 of 1,000
    assert none_won[1] == pytest.approx(100 * 10 * (2 * (1 - 0.025 ** (1 / 10)) - 1) / 1000)  # closed form
    assert paired_accuracy_change(*_masks(both=990, lost=0, gained=0, neither=10))["ci_pts"] == [0.0, 0.0]


def test_interval_and_mcnemar_agree_on_every_count() -> None:
    """The interval holds 0 exactly when McNemar's p is at least 1 - confidence."""
    for lost in range(0, 26):
        for gained in range(0, 26):
            res = paired_accuracy_change(*_masks(both=50, lost=lost, gained=gained, neither=5))
            low, high = res["ci_pts"]
            assert low <= res["change_pts"] <= high
            assert (low <= 0 <= high) == (res["p_value"] >= 0.05), (lost, gained, res)


@pytest.mark.parametrize("lost, gained, p", [
    (0, 0, 1.0),
    (3, 1, 2 * 5 / 16),          # binomial(4, 1/2): P(X <= 1) = 5/16, two-sided
    (10, 0, 2 / 1024),
    (0, 10, 2 / 1024),
    (7, 7, 1.0),
    (20, 10, 2 * sum(math.comb(30, i) for i in range(11)) / 2**30),
])
def test_mcnemar_exact_p(lost: int, gained: int, p: float) -> None:
    ref, new = _masks(both=100, lost=lost, gained=gained, neither=5)
    assert paired_accuracy_change(ref, new)["p_value"] == pytest.approx(p, rel=1e-12)


def test_the_same_net_change_is_resolved_only_with_few_disagreements() -> None:
    """-0.1 points on 10,000 images: 10 images net. Clear when the models disagree on 10 images,
    noise when they disagree on 200."""
    clear = paired_accuracy_change(*_masks(both=9900, lost=10, gained=0, neither=90))
    noisy = paired_accuracy_change(*_masks(both=9710, lost=105, gained=95, neither=90))
    assert clear["change_pts"] == pytest.approx(-0.1) and noisy["change_pts"] == pytest.approx(-0.1)
    assert clear["ci_pts"][1] < 0 and clear["p_value"] < 0.01
    assert noisy["ci_pts"][0] < 0 < noisy["ci_pts"][1] and noisy["p_value"] > 0.4


def test_large_test_sets_do_not_underflow() -> None:
    res = paired_accuracy_change(*_masks(both=40_000, lost=3000, gained=2000, neither=5000))
    assert 0 <= res["p_value"] < 1e-40  # z ~ 14: summed in log space, no underflow to NaN
    assert all(math.isfinite(v) for v in res["ci_pts"])


@pytest.mark.parametrize("ref, new, confidence, message", [
    (torch.ones(5, dtype=torch.bool), torch.ones(4, dtype=torch.bool), 0.95, "same, non-empty samples"),
    (torch.ones(0, dtype=torch.bool), torch.ones(0, dtype=torch.bool), 0.95, "same, non-empty samples"),
    (torch.ones(5, dtype=torch.bool), torch.ones(5, dtype=torch.bool), 1.0, "confidence"),
])
def test_bad_input_is_named(ref: torch.Tensor, new: torch.Tensor, confidence: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_accuracy_change(ref, new, confidence)
