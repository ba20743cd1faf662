"""Optimisers and learning-rate schedules, chosen by name from registries.

Schedules are *per iteration*: the learning rate changes after every
optimiser step, so linear warm-up is smooth even when it lasts one epoch, and
the cosine curve does not jump at epoch boundaries. A schedule factory returns
a multiplier ``f(step) -> float`` of the peak ``lr``; :func:`build_scheduler`
prepends the warm-up and wraps it in a ``LambdaLR`` whose ``state_dict``
(the step counter) is checkpointed.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from typing import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from edgeslim.registry import Registry
from edgeslim.train.config import TrainConfig

Multiplier = Callable[[int], float]
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter], TrainConfig], torch.optim.Optimizer]
ScheduleFactory = Callable[[TrainConfig, int], Multiplier]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
SCHEDULES: Registry[ScheduleFactory] = Registry("schedule")


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum (Sutskever et al., ICML 2013)."""
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )


@OPTIMIZERS.register("adamw")
def _adamw(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019)."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@SCHEDULES.register("constant")
def _constant(cfg: TrainConfig, steps_per_epoch: int) -> Multiplier:
    return lambda step: 1.0


@SCHEDULES.register("cosine")
def _cosine(cfg: TrainConfig, steps_per_epoch: int) -> Multiplier:
    """Cosine decay to 0 over the run (Loshchilov & Hutter, "SGDR", ICLR 2017)."""
    warmup = _warmup_steps(cfg, steps_per_epoch)
    span = max(1, cfg.epochs * steps_per_epoch - warmup)

    def multiplier(step: int) -> float:
        t = min(1.0, max(0.0, (step - warmup) / span))
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return multiplier


@SCHEDULES.register("step")
def _step(cfg: TrainConfig, steps_per_epoch: int) -> Multiplier:
    """Multiply by ``gamma`` at each milestone epoch (He et al., ResNet, CVPR 2016)."""
    bounds = [m * steps_per_epoch for m in cfg.step_milestones]
    return lambda step: cfg.gamma ** bisect_right(bounds, step)


def _warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: TrainConfig
) -> torch.optim.Optimizer:
    """Create the optimiser named by ``cfg.optimizer`` over ``params``."""
    return OPTIMIZERS.get(cfg.optimizer)(params, cfg)


def lr_multiplier(cfg: TrainConfig, steps_per_epoch: int) -> Multiplier:
    """Schedule ``cfg.schedule`` with linear warm-up: ``f(step)`` in ``(0, 1]``.

    Warm-up ramps from ``1/W`` to 1 over the first ``W`` steps (Goyal et al.,
    "Accurate, Large Minibatch SGD", 2017); the schedule takes over after.
    """
    base = SCHEDULES.get(cfg.schedule)(cfg, steps_per_epoch)
    warmup = _warmup_steps(cfg, steps_per_epoch)
    if warmup == 0:
        return base
    return lambda step: (step + 1) / warmup if step < warmup else base(step)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> LambdaLR:
    """A per-iteration ``LambdaLR``; call ``.step()`` after every optimiser step."""
    return LambdaLR(optimizer, lr_multiplier(cfg, steps_per_epoch))
