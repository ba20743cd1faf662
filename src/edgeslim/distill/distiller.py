"""The Distiller (a Trainer loss hook), ``distill`` and KD fine-tuning for pruning.

Multi-level knowledge transfer (Chen et al. 2020, stage 2): the student learns
the teacher's intermediate feature maps (hints, attention) and its soft,
optionally noisy, logits, plus the hard labels -- all as one weighted sum of
registered losses. The same machinery recovers a pruned model by distilling
from the unpruned one (Liu, Zhang, Chen, *Knowledge Distillation Based on
Pruned Model*, BlockSys 2020).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from edgeslim._core import closest, device_of
from edgeslim.distill.losses import LOSSES, LossContext, LossSetup, LossSpec, build_loss, parse_loss_spec
from edgeslim.distill.pairing import ExampleInputs, LayerPair, pair_layers
from edgeslim.distill.taps import FeatureTaps
from edgeslim.errors import ConfigError
from edgeslim.modelinfo import info
from edgeslim.stage_args import distill_keywords, takes_stage_config

__all__ = ["DEFAULT_LOSSES", "PIPELINE_LOSSES", "Distiller", "distill", "kd_finetune"]

# Hinton et al. 2015 weight most of the objective on the soft targets; 0.9/0.1
# at T = 4 is the common CIFAR setting (e.g. Cho & Hariharan, ICCV 2019).
DEFAULT_LOSSES = "kd:0.9,ce:0.1"
# Chen et al. 2020's multi-level transfer: noisy soft targets + hints + labels.
PIPELINE_LOSSES = "noisy_kd:0.9,hint:1.0,ce:0.1"

HintPairs = Union[str, Sequence[Union[LayerPair, tuple[str, str]]], None]


@dataclasses.dataclass
class _Models:
    """Holds student and teacher *outside* the module tree: their parameters must not
    join the Distiller's (the Trainer trains the hook's parameters and checkpoints its state)."""

    student: nn.Module
    teacher: nn.Module


def _device_of(module: nn.Module) -> torch.device | None:
    return device_of(module, default=None)


class Distiller(nn.Module):
    """Loss hook ``distiller(model, x, y) -> (loss, student_logits)`` for the Trainer.

    The teacher runs in eval mode under ``torch.no_grad`` on the student's
    device; feature taps (forward hooks) record the paired layers of both
    models; each registered loss reads only those records and the logits. The
    hint adapters are this module's parameters, so ``Trainer(student, cfg,
    loss=distiller)`` trains and checkpoints them with the student; the
    student and teacher are deliberately *not* submodules.

    Args:
        student: the model being trained.
        teacher: the frozen teacher (its weights are never changed).
        losses: a loss spec (``"kd:0.9,ce:0.1"``) or ``{name: weight}``.
        T: temperature of ``kd`` / ``noisy_kd``.
        hint_pairs: layers for the feature losses (``hint``, ``attention``):
            ``None``/``"auto"`` pairs the stage ends automatically
            (:func:`~edgeslim.distill.pairing.pair_layers`, needs
            ``example_inputs``), or a list of ``(student_path, teacher_path)``
            tuples or :class:`LayerPair` s.
        example_inputs: a batch both models accept, to pair layers and size adapters.
        loss_options: per-loss options, e.g. ``{"noisy_kd": {"noise_std": 0.2}}``.

    Attributes:
        weights: ``{loss name: weight}``.
        terms: ``nn.ModuleDict`` of the loss modules.
        pairs: the feature layer pairs (empty without feature losses).
        last_components: ``{loss name: unweighted value, "total": weighted sum}``
            of the latest batch, as floats.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        losses: LossSpec = DEFAULT_LOSSES,
        *,
        T: float = 4.0,
        hint_pairs: HintPairs = None,
        example_inputs: ExampleInputs | None = None,
        loss_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if student is teacher:
            warnings.warn("Distiller: student and teacher are the same object, so the teacher "
                          "changes as the student trains; pass copy.deepcopy(teacher) instead",
                          stacklevel=2)
        self.weights = parse_loss_spec(losses)
        options = _check_loss_options(loss_options, self.weights)
        needs_features = any(LOSSES.get(n).needs_features for n in self.weights)
        self.pairs: tuple[LayerPair, ...] = (
            tuple(_resolve_pairs(student, teacher, hint_pairs, example_inputs)) if needs_features else ()
        )
        setup = LossSetup(T=T, pairs=self.pairs)
        self.terms = nn.ModuleDict({n: build_loss(n, setup, options.get(n)) for n in self.weights})
        self.needs_teacher = any(term.needs_teacher for term in self.terms.values())
        self._models = _Models(student, teacher)
        self._teacher_nhwc = False  # converted to channels_last by set_memory_format, to hand back
        self._taps: tuple[FeatureTaps, FeatureTaps] | None = None
        self._components: dict[str, Tensor] = {}
        device = _device_of(student)
        if device is not None:
            self.to(device)

    @property
    def student(self) -> nn.Module:
        return self._models.student

    @property
    def teacher(self) -> nn.Module:
        return self._models.teacher

    @property
    def last_components(self) -> dict[str, float]:
        return {name: float(value) for name, value in self._components.items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}:{weight:g}" for name, weight in self.weights.items())

    def set_memory_format(self, channels_last: bool) -> None:
        """Follow the student's memory format (the Trainer calls this when it trains in NHWC and
        when it hands the student back): a conv teacher left in NCHW under NHWC batches runs at
        NCHW speed (``lenet5_caffe``, batch 128, 2 CPU threads: 10.7 ms a forward against 4.9 ms
        in NHWC). The teacher goes back to NCHW only if this converted it."""
        if channels_last == self._teacher_nhwc:
            return
        weights = [p for p in self.teacher.parameters() if p.dim() == 4]
        if not weights or (channels_last and all(p.is_contiguous(memory_format=torch.channels_last)
                                                 for p in weights)):
            return  # nothing to convert, or NHWC already (the caller's, or the student itself)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.teacher.to(memory_format=fmt)
        self._teacher_nhwc = channels_last

    # ---------------------------------------------------------------- taps
    def _open_taps(self) -> tuple[FeatureTaps, FeatureTaps] | None:
        """Hooks stay registered between steps (so a compiled model is not re-traced each
        step) and are removed by :meth:`close`."""
        if not self.pairs:
            return None
        if self._taps is None:
            self._taps = (
                FeatureTaps(self.student, [p.student for p in self.pairs]),
                FeatureTaps(self.teacher, [p.teacher for p in self.pairs], detach=True),
            )
        return self._taps

    def close(self) -> None:
        """Remove the feature hooks from both models (call when training is over)."""
        if self._taps is not None:
            for taps in self._taps:
                taps.remove()
                taps.clear()
            self._taps = None

    def __enter__(self) -> "Distiller":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- forward
    def _follow_device(self, device: torch.device) -> None:
        """Keep the teacher and the adapters on the batch's device."""
        if _device_of(self.teacher) not in (None, device):
            self.teacher.to(device)
        if _device_of(self) not in (None, device):
            self.to(device)

    def _teacher_logits(self, x: Tensor) -> Tensor | None:
        if not self.needs_teacher:
            return None
        # Eval mode for this call only: the caller's flags come back afterwards, so
        # a teacher that is also used elsewhere (or is the student) is not altered.
        flags = [(m, m.training) for m in self.teacher.modules()]
        self.teacher.eval()
        try:
            with torch.no_grad():
                return self.teacher(x)
        finally:
            for module, flag in flags:
                module.training = flag

    def forward(self, model: nn.Module, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        """Weighted sum of the losses on batch ``(x, y)``; returns ``(loss, student logits)``.

        ``model`` is the student as the Trainer calls it (possibly wrapped by DDP
        or ``torch.compile``); the feature hooks sit on the student's modules.
        """
        self._follow_device(x.device)
        taps = self._open_taps()
        if taps is not None:
            taps[0].clear()
            taps[1].clear()
        teacher_logits = self._teacher_logits(x)
        student_logits = model(x)
        ctx = LossContext(
            student_logits=student_logits, targets=y, teacher_logits=teacher_logits,
            student_features=dict(taps[0].outputs) if taps else {},
            teacher_features=dict(taps[1].outputs) if taps else {},
            training=model.training,
        )
        if taps is not None:  # the context holds what the losses need; drop the hooks' references
            taps[0].clear()
            taps[1].clear()
        values = {name: term(ctx) for name, term in self.terms.items()}
        total = sum((self.weights[name] * value for name, value in values.items()),
                    student_logits.new_zeros((), dtype=torch.float32))
        self._components = {**{n: v.detach() for n, v in values.items()}, "total": total.detach()}
        return total, student_logits


def _check_loss_options(
    loss_options: Mapping[str, Mapping[str, Any]] | None, weights: Mapping[str, float]
) -> dict[str, dict[str, Any]]:
    options = {str(k).lower(): dict(v) for k, v in (loss_options or {}).items()}
    stray = sorted(set(options) - set(weights))
    if stray:
        raise ConfigError(
            f"loss_options given for {', '.join(stray)}, which the loss spec does not use "
            f"(losses: {', '.join(weights)}); add them to the spec or drop the options"
        )
    return options


def _resolve_pairs(student: nn.Module, teacher: nn.Module, hint_pairs: HintPairs,
                   example_inputs: ExampleInputs | None) -> list[LayerPair]:
    if hint_pairs is not None and not isinstance(hint_pairs, str):
        pairs = list(hint_pairs)
        if all(isinstance(p, LayerPair) for p in pairs):
            return pairs  # shapes already known
    elif hint_pairs not in (None, "auto"):
        raise ConfigError(f"hint_pairs={hint_pairs!r} is invalid; use 'auto', None or a list of "
                          "(student_path, teacher_path) tuples")
    if example_inputs is None:
        raise ConfigError(
            "feature losses (hint, attention) need example_inputs (a batch both models accept) "
            "to pair layers and size the adapters; pass example_inputs=x"
        )
    if hint_pairs is None or isinstance(hint_pairs, str):
        return pair_layers(student, teacher, example_inputs)
    s_paths, t_paths = zip(*[(str(s), str(t)) for s, t in hint_pairs]) if hint_pairs else ((), ())
    return pair_layers(student, teacher, example_inputs,
                       student_paths=list(s_paths), teacher_paths=list(t_paths))


# --------------------------------------------------------------- distill()
def _train_config(epochs: int, trainer_options: Mapping[str, Any]) -> Any:
    """``TrainConfig(epochs=..., **trainer_options)``; unknown keys -> ConfigError naming them."""
    from edgeslim.train import TrainConfig

    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in trainer_options if k not in valid]
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := closest(k, valid))
                 else repr(k) for k in unknown]
        raise ConfigError(
            f"distill: unknown trainer option(s) {', '.join(hints)}; valid TrainConfig fields: "
            f"{', '.join(valid)}"
        )
    return TrainConfig(epochs=epochs, **trainer_options)


def _example_batch(loader: Iterable[Any], student: nn.Module) -> Tensor:
    """The first two images of the first batch, on the student's device."""
    try:
        x = next(iter(loader))[0]
    except StopIteration:
        raise ConfigError("distill: the training data is empty") from None
    device = _device_of(student) or torch.device("cpu")
    return x[:2].to(device)


@takes_stage_config(distill_keywords, positional=3, config_type="DistillStage")
def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_data: Any,
    *,
    losses: LossSpec = DEFAULT_LOSSES,
    epochs: int = 10,
    T: float = 4.0,
    val_data: Any = None,
    augment: bool | str | None = None,
    hint_pairs: HintPairs = None,
    loss_options: Mapping[str, Mapping[str, Any]] | None = None,
    callbacks: Sequence[Any] = (),
    **trainer_options: Any,
) -> nn.Module:
    """Train ``student`` to imitate ``teacher`` (Hinton KD by default).

    Builds a :class:`Distiller` and runs ``Trainer(student, TrainConfig(epochs,
    **trainer_options), loss=distiller, callbacks=callbacks).fit(...)``.

    Args:
        student: trained in place and returned.
        teacher: never modified (eval mode, no grad; moved to the student's device).
        train_data: anything ``edgeslim.data.as_loader`` accepts.
        losses: loss spec; the default ``"kd:0.9,ce:0.1"`` is Hinton et al.'s
            soft/hard weighting. ``PIPELINE_LOSSES`` (``"noisy_kd:0.9,hint:1.0,ce:0.1"``)
            is Chen et al. 2020's multi-level transfer.
        epochs: training epochs.
        T: temperature of the soft targets.
        val_data: optional validation data, evaluated every epoch.
        augment: the student's augmentation policy instead of the training data's own (a
            :class:`~edgeslim.data.TensorLoader`'s): True, False or a policy name
            (``edgeslim.data.AUGMENTATIONS``); None keeps the data's.
        hint_pairs: see :class:`Distiller` (automatic by default).
        loss_options: per-loss options, e.g. ``{"hint": {"bn": True}}``.
        callbacks: Trainer callbacks.
        **trainer_options: any other ``TrainConfig`` field (``lr``, ``device``, ``out_dir``, ...).

    Returns:
        The same ``student`` object, trained. Its per-epoch metrics are in
        ``edgeslim.info(student).distill_history``.

    Raises:
        ConfigError: an unknown trainer option, loss name or loss option.
    """
    from edgeslim.data import as_loader, with_augment
    from edgeslim.train import Trainer

    cfg = _train_config(epochs, trainer_options)
    train_loader = with_augment(as_loader(train_data, batch_size=cfg.batch_size), augment)
    val_loader = as_loader(val_data, batch_size=cfg.batch_size) if val_data is not None else None
    needs_features = any(LOSSES.get(n).needs_features for n in parse_loss_spec(losses))
    example = _example_batch(train_loader, student) if needs_features else None
    distiller = Distiller(student, teacher, losses, T=T, hint_pairs=hint_pairs,
                          example_inputs=example, loss_options=loss_options)
    with distiller:
        history = Trainer(student, cfg, loss=distiller, callbacks=callbacks).fit(train_loader, val_loader)
    info(student).distill_history = history
    return student


_DISTILL_KEYS = ("losses", "T", "val_data", "augment", "hint_pairs", "loss_options", "callbacks")


def kd_finetune(teacher: nn.Module, epochs: int, train_data: Any, **opts: Any) -> Callable[[nn.Module, int], None]:
    """A pruning fine-tune callback that distils from the unpruned model.

    Liu, Zhang, Chen. *Knowledge Distillation Based on Pruned Model*,
    BlockSys 2020: after each pruning step the pruned network keeps its
    surviving weights (no re-initialisation) and is trained against the
    unpruned network's soft targets instead of the hard labels alone.

    Args:
        teacher: the unpruned model; a private copy is taken now, so pruning
            the same object in place later does not change the teacher.
        epochs: distillation epochs after each pruning step.
        train_data: anything ``edgeslim.data.as_loader`` accepts.
        **opts: :func:`distill` options (``losses``, ``T``, ``val_data``, ``augment``,
            ``hint_pairs``, ``loss_options``, ``callbacks``) and ``TrainConfig``
            fields. With ``out_dir``, step ``k`` writes to ``out_dir/finetune_step{k}``.

    Returns:
        ``finetune(model, step) -> None`` for ``edgeslim.prune(..., finetune=...)``.

    Raises:
        ConfigError: unknown options (checked now, not after the first pruning step).
    """
    distill_opts = {k: v for k, v in opts.items() if k in _DISTILL_KEYS}
    trainer_opts = {k: v for k, v in opts.items() if k not in _DISTILL_KEYS}
    _train_config(epochs, trainer_opts)
    parse_loss_spec(distill_opts.get("losses", DEFAULT_LOSSES))
    frozen = copy.deepcopy(teacher).eval()

    def finetune(model: nn.Module, step: int) -> None:
        step_opts = dict(trainer_opts)
        if step_opts.get("out_dir"):
            step_opts["out_dir"] = str(Path(step_opts["out_dir"]) / f"finetune_step{step}")
        distill(model, frozen, train_data, epochs=epochs, **distill_opts, **step_opts)

    return finetune
