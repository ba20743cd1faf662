"""``TrainConfig``: every knob of the training engine in one typed dataclass."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

from edgeslim.config import check_literals
from edgeslim.errors import ConfigError
from edgeslim.options import LR, MAX_LR, FieldError, check_value  # noqa: F401  (MAX_LR re-exported)

#: Names come from the registries (``edgeslim.train.optim.OPTIMIZERS`` / ``SCHEDULES``), so a
#: registered optimizer or schedule is accepted; these aliases only document the type.
OptimizerName = str
ScheduleName = str
DeviceName = Literal["auto", "cpu", "cuda"]


TYPICAL_LR = "typical peaks: 0.01-0.1 for SGD, 1e-4-1e-3 for AdamW"


def _require(ok: bool, field: str, value: object, valid: str) -> None:
    if not ok:
        raise ConfigError(f"TrainConfig.{field}={value!r} is invalid; valid range: {valid}")


def _is_real(value: object) -> bool:
    """A finite int/float (``bool`` excluded: ``lr: true`` is a typo)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_lr(lr: object) -> None:
    """The one learning-rate rule of the recipe stages (``edgeslim.options.LR``, ``(0, MAX_LR]``)."""
    try:
        check_value("lr", lr, LR)
    except FieldError as exc:  # worded as TrainConfig's other fields: "TrainConfig.lr=..."
        raise ConfigError(f"TrainConfig.{exc}") from None


def _check_registered(cfg: "TrainConfig") -> None:
    from edgeslim._core import did_you_mean
    from edgeslim.train.optim import OPTIMIZERS, SCHEDULES

    for field, registry in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
        value = getattr(cfg, field)
        if value not in registry:
            raise ConfigError(f"{field}: invalid value {value!r}.{did_you_mean(value, registry.names())} "
                              f"Valid values: {', '.join(repr(n) for n in registry.names())}")


@dataclass
class TrainConfig:
    """Settings of one :class:`~edgeslim.train.Trainer` run.

    Attributes:
        epochs: passes over the training loader (0 = no training).
        batch_size: used by callers that build the loaders (CLI, recipes);
            the Trainer itself iterates whatever loader it is given.
        optimizer: ``"sgd"`` (momentum, optional Nesterov) or ``"adamw"``
            (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019).
        lr: peak learning rate (reached at the end of warm-up); finite, in
            ``(0, edgeslim.options.MAX_LR]`` (10), the limit of the recipe stages' lr too.
        momentum: SGD momentum (ignored by AdamW).
        weight_decay: L2 penalty (SGD) / decoupled decay (AdamW).
        nesterov: Nesterov momentum for SGD (only when ``momentum > 0``).
        schedule: ``"cosine"`` (Loshchilov & Hutter, "SGDR", 2017, without
            restarts), ``"step"`` (multiply by ``gamma`` at each milestone) or
            ``"constant"``. Applied per iteration, not per epoch.
        milestones: epochs at which the step schedule decays; empty means
            50% and 75% of ``epochs``.
        gamma: step-schedule decay factor.
        warmup_epochs: linear warm-up length in epochs (may be fractional;
            Goyal et al., "Accurate, Large Minibatch SGD", 2017).
        label_smoothing: for the default cross-entropy loss (Szegedy et al.,
            "Rethinking the Inception Architecture", 2016).
        grad_clip: max global gradient L2 norm, or ``None`` for no clipping.
        amp: bf16 autocast (CUDA; on CPU bf16 autocast is used too because it
            was asked for explicitly, but it is only fast on CPUs with AMX).
        channels_last: NHWC memory format for model and inputs while training.
            ``"auto"`` (default): NHWC when the model has 4-D (conv) weights, the
            batches are 4-D and one eval-mode, no-grad forward of the first batch
            runs in NHWC (a model that reshapes with ``.view`` keeps NCHW; one whose
            first training step fails in NHWC takes that step again in NCHW, from the
            BN statistics and random state it began with); not under DDP. On 2-core
            CPUs, NHWC made training steps 1.07x (VGG-16 x0.25, AVX2) to 1.80x (the
            dsnet student, AVX-512) faster (``benchmarks/channels_last.py``). ``True`` forces
            NHWC, ``False`` keeps the model's format. A model the Trainer converted
            is handed back in NCHW (contiguous) format when ``fit`` returns.
        compile: wrap the model in ``torch.compile``.
        device: ``"auto"`` = CUDA when available, else CPU.
        seed: seeds torch/numpy/random at the start of a fresh run and the
            per-epoch shuffling of plain ``DataLoader`` s.
        out_dir: where ``last.pt`` and ``metrics.jsonl`` go; ``None`` = no files.
        resume: continue from ``out_dir/last.pt`` if it exists.
        progress: show a progress bar (only on a TTY, never on CI).
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: OptimizerName = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: ScheduleName = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: Optional[float] = None
    amp: bool = False
    channels_last: Union[bool, Literal["auto"]] = "auto"
    compile: bool = False
    device: DeviceName = "auto"
    seed: int = 0
    out_dir: Optional[str] = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_literals(self)
        _check_registered(self)
        if isinstance(self.out_dir, Path):
            self.out_dir = str(self.out_dir)
        self.milestones = tuple(self.milestones)
        _require(self.epochs >= 0, "epochs", self.epochs, "an integer >= 0")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check_lr(self.lr)
        _require(0 <= self.momentum < 1, "momentum", self.momentum, "0 <= momentum < 1")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _require(0 < self.gamma <= 1, "gamma", self.gamma, "0 < gamma <= 1")
        _require(
            0 <= self.warmup_epochs <= max(self.epochs, 0),
            "warmup_epochs", self.warmup_epochs, f"0 <= warmup_epochs <= epochs ({self.epochs})",
        )
        _require(
            0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "0 <= x < 1"
        )
        _require(
            self.grad_clip is None or self.grad_clip > 0,
            "grad_clip", self.grad_clip, "None or a float > 0",
        )
        _require(
            all(m > 0 for m in self.milestones) and list(self.milestones) == sorted(self.milestones),
            "milestones", self.milestones, "increasing positive epoch numbers",
        )
        _require(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _require(isinstance(self.channels_last, bool) or self.channels_last == "auto",
                 "channels_last", self.channels_last, "True, False or 'auto'")

    @property
    def step_milestones(self) -> tuple[int, ...]:
        """Milestones of the step schedule (defaults to 50% and 75% of the epochs)."""
        if self.milestones:
            return self.milestones
        return (max(1, self.epochs // 2), max(1, (3 * self.epochs) // 4))
