"""The training engine: one lean, resumable loop with AMP, channels_last and DDP.

``Trainer(model, cfg, loss=None, callbacks=()).fit(train_loader, val_loader)``
trains; ``evaluate(model, loader)`` measures top-1 accuracy and loss; ``correct_mask`` and
``paired_accuracy_change`` compare two models on the same test samples (interval, McNemar p).
Optimisers and schedules are looked up by name in ``OPTIMIZERS``/``SCHEDULES``.
"""
from __future__ import annotations

from edgeslim.train.config import TrainConfig
from edgeslim.train.engine import CrossEntropyHook, Trainer
from edgeslim.train.metrics import correct_mask, evaluate, paired_accuracy_change
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
    "correct_mask",
    "paired_accuracy_change",
    "CrossEntropyHook",
    "OPTIMIZERS",
    "SCHEDULES",
    "build_optimizer",
    "build_scheduler",
    "lr_multiplier",
]
