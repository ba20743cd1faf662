"""The training engine: one lean, resumable loop with AMP, channels_last and DDP.

``Trainer(model, cfg, loss=None, callbacks=()).fit(train_loader, val_loader)``
trains; ``evaluate(model, loader)`` measures top-1 accuracy and loss.
Optimisers and schedules are looked up by name in ``OPTIMIZERS``/``SCHEDULES``.
"""
from __future__ import annotations

from edgeslim.train.config import TrainConfig
from edgeslim.train.engine import CrossEntropyHook, Trainer
from edgeslim.train.metrics import evaluate
from edgeslim.train.optim import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    build_scheduler,
    lr_multiplier,
)

__all__ = [
    "TrainConfig",
    "Trainer",
    "evaluate",
    "CrossEntropyHook",
    "OPTIMIZERS",
    "SCHEDULES",
    "build_optimizer",
    "build_scheduler",
    "lr_multiplier",
]
