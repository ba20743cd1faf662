"""Loss/accuracy bookkeeping: ``evaluate``, paired comparisons of two models on one test set
(``correct_mask``, ``paired_accuracy_change``) and the Trainer's running statistics."""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim._core import eval_mode
from edgeslim.errors import DataError

SYNC_EVERY = 25  # steps between device->host reads in the Trainer (NaN check, progress bar)


def eval_sums(model: nn.Module, loader: Iterable[Any], device: torch.device) -> torch.Tensor:
    """``[sum of CE loss, correct, n]`` (float64, on ``device``) over ``loader``."""
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in loader:
        if y.numel() == 0:  # a rank's empty share of a tiny batch under DDP
            continue
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        logits = model(x).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += y.numel()
    return sums


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def evaluate(
    model: nn.Module, loader: Iterable[Any], device: str | torch.device | None = None
) -> dict[str, Any]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``loader``.

    Runs in eval mode under ``torch.inference_mode`` and restores every
    submodule's previous train/eval mode afterwards.

    Args:
        model: a classifier returning logits ``[B, classes]``.
        loader: any iterable of ``(x, y)`` batches (TensorLoader, DataLoader, list).
        device: where to run; default the device of the model's parameters.

    Returns:
        ``{"accuracy": float in [0, 1], "loss": float, "n": int}``.

    Raises:
        DataError: the loader yielded no samples.
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    with eval_mode(model), torch.inference_mode():  # each submodule's own flag comes back (frozen BN)
        loss_sum, correct, n = eval_sums(model, loader, dev).tolist()
    if n == 0:
        raise DataError("evaluate(): the loader yielded no samples; check the dataset/subset size")
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": int(n)}


def correct_mask(model: nn.Module, loader: Iterable[Any], device: str | torch.device | None = None) -> torch.Tensor:
    """Whether ``model``'s top-1 prediction is right, per sample, in the order ``loader`` yields them.

    Two masks from the same unshuffled loader (a test loader) pair up sample by sample, for
    :func:`paired_accuracy_change`. Eval mode under ``torch.inference_mode``, as :func:`evaluate`.

    Returns:
        a 1-D bool tensor on the CPU; its mean is the accuracy :func:`evaluate` reports.

    Raises:
        DataError: the loader yielded no samples.
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    masks = []
    with eval_mode(model), torch.inference_mode():  # every submodule's own train flag comes back
        for x, y in loader:
            logits = model(x.to(dev, non_blocking=True))
            masks.append((logits.argmax(1) == y.to(dev, non_blocking=True)).cpu())
    mask = torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)
    if mask.numel() == 0:
        raise DataError("correct_mask(): the loader yielded no samples; check the dataset/subset size")
    return mask


def _log_comb(m: int) -> np.ndarray:
    """``log C(m, i)`` for ``i = 0..m``."""
    return np.array([math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) for i in range(m + 1)])


def _binomial_cdf(k: int, m: int, p: float, log_comb: np.ndarray) -> float:
    """P(X <= k), X ~ binomial(m, p), summed in log space (no underflow for large m)."""
    if k < 0 or p >= 1:
        return 0.0 if k < m else 1.0
    if k >= m or p <= 0:
        return 1.0
    i = np.arange(k + 1)
    terms = log_comb[: k + 1] + i * math.log(p) + (m - i) * math.log1p(-p)
    top = terms.max()
    return float(min(1.0, math.exp(top) * np.exp(terms - top).sum()))


def _mcnemar_p(lost: int, gained: int, log_comb: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: twice the binomial(lost + gained, 1/2) tail at min(lost, gained)."""
    m = lost + gained
    return 1.0 if m == 0 else min(1.0, 2 * _binomial_cdf(min(lost, gained), m, 0.5, log_comb))


def _clopper_pearson(x: int, m: int, alpha: float, log_comb: np.ndarray) -> tuple[float, float]:
    """The exact (Clopper-Pearson) ``1 - alpha`` interval of a binomial proportion, ``x`` of ``m``."""

    def solve(f: Any) -> float:  # the root of f on [0, 1], f decreasing in p
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if x == 0 else solve(lambda p: _binomial_cdf(x - 1, m, p, log_comb) - (1 - alpha / 2))
    high = 1.0 if x == m else solve(lambda p: _binomial_cdf(x, m, p, log_comb) - alpha / 2)
    return low, high


def paired_accuracy_change(reference: torch.Tensor, new: torch.Tensor, confidence: float = 0.95) -> dict[str, Any]:
    """How the accuracy of a new model differs from a reference's on the same samples, with its uncertainty.

    On one test set the two models' errors are paired: only the samples one model gets right and
    the other wrong carry information about the difference, so a change of 0.1 points on 10,000
    images is 10 images net and may be noise. Of the ``m = lost + gained`` samples where the two
    disagree, the new model wins ``gained``; the interval is the exact (Clopper-Pearson) interval of
    that share, as a change in accuracy (``m (2 share - 1) / n``), and the p-value the exact two-sided
    McNemar test. The two agree: the interval contains 0 exactly when ``p_value >= 1 - confidence``.
    With no disagreements the change is exactly 0 on these samples and the interval is ``[0, 0]``.

    Args:
        reference: per-sample correctness of the reference model (:func:`correct_mask`).
        new: the same for the new model, same samples in the same order.
        confidence: of the interval, in (0, 1).

    Returns:
        ``{"n", "lost" (right before, wrong now), "gained" (wrong before, right now),
        "change_pts" (new minus reference accuracy, in points; negative: a loss),
        "ci_pts": [low, high], "confidence", "p_value"}``.

    Raises:
        ValueError: the masks differ in length or are empty, or ``confidence`` is outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}; e.g. 0.95")
    ref, now = reference.reshape(-1).bool(), new.reshape(-1).bool()
    if ref.numel() != now.numel() or ref.numel() == 0:
        raise ValueError(f"the masks must cover the same, non-empty samples: {ref.numel()} vs {now.numel()}; "
                         "compute both with correct_mask on the same unshuffled loader")
    n = ref.numel()
    lost, gained = int((ref & ~now).sum()), int((~ref & now).sum())
    m = lost + gained
    log_comb = _log_comb(m)
    low, high = _clopper_pearson(gained, m, 1 - confidence, log_comb) if m else (0.5, 0.5)
    return {"n": n, "lost": lost, "gained": gained, "change_pts": 100 * (gained - lost) / n,
            "ci_pts": [100 * m * (2 * low - 1) / n, 100 * m * (2 * high - 1) / n], "confidence": confidence,
            "p_value": _mcnemar_p(lost, gained, log_comb)}


class RunningStats:
    """Training loss/accuracy sums at almost no per-step cost.

    A step only keeps references to its (detached) loss, logits and labels;
    :meth:`fold` reduces the pending steps with a handful of batched ops every
    ``SYNC_EVERY`` steps. Per-step ``+=``/``argmax`` would cost ~60 us a step
    on CPU -- a measurable share of a small CNN's step -- and extra kernel
    launches on CUDA. Pending logits are at most ``SYNC_EVERY`` batches.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.n = 0
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self._pending.append((loss.detach(), logits.detach(), y))
        self.n += y.shape[0]

    def fold(self) -> None:
        if not self._pending:
            return
        losses, logits, ys = zip(*self._pending)
        sizes = torch.tensor([y.shape[0] for y in ys], dtype=torch.float64, device=self.device)
        self.loss_sum += (torch.stack(losses).double() * sizes).sum()
        self.correct += (torch.cat(logits).argmax(1) == torch.cat(ys)).sum()
        self._pending.clear()

    def as_tensor(self) -> torch.Tensor:
        """``[loss_sum, correct, n]`` as one float64 tensor (for one all-reduce)."""
        n = torch.tensor(float(self.n), dtype=torch.float64, device=self.device)
        return torch.stack([self.loss_sum, self.correct.double(), n])
