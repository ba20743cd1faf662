"""Loss/accuracy bookkeeping: ``evaluate`` and the Trainer's running statistics."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

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

    Runs in eval mode under ``torch.inference_mode`` and restores the model's
    previous train/eval mode afterwards.

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
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            loss_sum, correct, n = eval_sums(model, loader, dev).tolist()
    finally:
        model.train(was_training)
    if n == 0:
        raise DataError("evaluate(): the loader yielded no samples; check the dataset/subset size")
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": int(n)}


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
