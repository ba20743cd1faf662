"""Distillation losses: one small class per paper, registered in ``LOSSES``.

Every loss reads only a :class:`LossContext` (logits, labels and the feature
dicts that :class:`~edgeslim.distill.taps.FeatureTaps` filled), never a model,
so any loss works with any architecture (the torchdistill design). A training
objective is a weighted sum of registered losses, written as a spec string
``"kd:0.9,ce:0.1"`` or a dict ``{"kd": 0.9, "ce": 0.1}`` (:func:`parse_loss_spec`).

Registered: ``ce`` (cross-entropy on hard labels), ``kd`` (Hinton et al. 2015),
``noisy_kd`` (Sau & Balasubramanian 2016), ``hint`` (FitNets, Romero et al.
2015) and ``attention`` (Zagoruyko & Komodakis 2017). A new loss is a
subclass of :class:`DistillLoss` plus ``@LOSSES.register("name")``.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeslim.distill.pairing import LayerPair
from edgeslim.errors import ConfigError
from edgeslim.registry import Registry, RegistryError

__all__ = [
    "LOSSES",
    "AttentionTransferLoss",
    "CrossEntropyLoss",
    "DistillLoss",
    "HintLoss",
    "KDLoss",
    "LossContext",
    "LossSetup",
    "LossSpec",
    "NoisyKDLoss",
    "UnknownLossError",
    "attention_map",
    "build_loss",
    "parse_loss_spec",
]

LossSpec = Union[str, Mapping[str, float]]


class UnknownLossError(ConfigError, RegistryError):
    """A loss name that is not registered (both a config error and a registry lookup error)."""


@dataclass
class LossContext:
    """Everything a loss may read for one batch.

    Attributes:
        student_logits: ``[N, num_classes]``.
        targets: hard labels ``[N]`` (int64), or None.
        teacher_logits: ``[N, num_classes]`` computed without grad, or None.
        student_features: ``{module path: tensor}`` from the student's taps.
        teacher_features: ``{module path: tensor}`` from the teacher's taps.
        training: whether the student is in training mode (noise is train-only).
    """

    student_logits: Tensor
    targets: Tensor | None = None
    teacher_logits: Tensor | None = None
    student_features: Mapping[str, Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, Tensor] = field(default_factory=dict)
    training: bool = True


@dataclass(frozen=True)
class LossSetup:
    """What a loss may need at construction: the temperature and the feature pairs."""

    T: float = 4.0
    pairs: tuple[LayerPair, ...] = ()


class DistillLoss(nn.Module):
    """Base class: one term of a distillation objective.

    Subclasses set ``needs_teacher`` / ``needs_features`` so the Distiller only
    runs the teacher and registers feature taps when some term reads them.
    """

    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False

    @classmethod
    def build(cls, setup: LossSetup, **options: Any) -> "DistillLoss":
        """Construct from the shared setup plus per-loss ``options``."""
        return cls(**options)

    def forward(self, ctx: LossContext) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _require(value: Tensor | None, what: str, loss: str) -> Tensor:
        if value is None:
            raise ConfigError(f"loss {loss!r} needs {what}, but the LossContext has none")
        return value


LOSSES: Registry[type[DistillLoss]] = Registry("loss")


@LOSSES.register("ce")
class CrossEntropyLoss(DistillLoss):
    """Cross-entropy on the hard labels (optionally label-smoothed).

    Args:
        label_smoothing: Szegedy et al., "Rethinking the Inception Architecture", 2016.
    """

    needs_teacher = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"ce: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, ctx: LossContext) -> Tensor:
        targets = self._require(ctx.targets, "hard labels (targets)", "ce")
        return F.cross_entropy(ctx.student_logits.float(), targets, label_smoothing=self.label_smoothing)


def _soft_kl(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T^2``, mean over the batch.

    Computed from log-probabilities on both sides, so it is exactly 0 when the
    logits are equal (no ``0 * log 0`` terms, no rounding of probabilities).
    """
    log_p_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def _check_temperature(T: float, name: str) -> None:
    if not (math.isfinite(T) and T > 0):
        raise ConfigError(f"{name}: temperature T must be a positive number, got {T!r}")


@LOSSES.register("kd")
class KDLoss(DistillLoss):
    """Soft-target knowledge distillation.

    Hinton, Vinyals, Dean. *Distilling the Knowledge in a Neural Network*,
    NIPS Deep Learning Workshop 2015: ``KL(softmax(t/T) || softmax(s/T)) * T^2``;
    the ``T^2`` keeps the gradient scale independent of the temperature.

    Args:
        T: temperature (> 0).
    """

    def __init__(self, T: float = 4.0) -> None:
        super().__init__()
        _check_temperature(T, "kd")
        self.T = float(T)

    @classmethod
    def build(cls, setup: LossSetup, **options: Any) -> "DistillLoss":
        return cls(**{"T": setup.T, **options})

    def forward(self, ctx: LossContext) -> Tensor:
        teacher = self._require(ctx.teacher_logits, "teacher logits", "kd")
        return _soft_kl(ctx.student_logits, teacher, self.T)


@LOSSES.register("noisy_kd")
class NoisyKDLoss(KDLoss):
    """KD from a noisy teacher.

    Sau & Balasubramanian, *Deep Model Compression: Distilling Knowledge from
    Noisy Teachers*, arXiv:1610.09650, 2016: during training the teacher's
    logits are perturbed as ``z * (1 + noise_std * eps)``, ``eps ~ N(0, 1)``
    per logit, so the noise is relative to the logit scale; each sample of a
    batch is perturbed with probability ``noise_prob`` (the paper's fraction
    alpha of perturbed samples). The perturbed logits then serve as soft
    targets (Hinton KD at temperature ``T``). It acts as a regulariser and is
    the "random factor" of the logits-level transfer in Chen et al. 2020. No
    noise in eval mode. The defaults (0.1, 0.5) are our choice: the paper
    sweeps both.

    Args:
        T: temperature (> 0).
        noise_std: relative standard deviation of the noise (>= 0; 0 = plain KD).
        noise_prob: probability that a sample's teacher logits are perturbed.
    """

    def __init__(self, T: float = 4.0, noise_std: float = 0.1, noise_prob: float = 0.5) -> None:
        super().__init__(T)
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ConfigError(f"noisy_kd: noise_std must be >= 0, got {noise_std!r}")
        if not 0.0 <= noise_prob <= 1.0:
            raise ConfigError(f"noisy_kd: noise_prob must be in [0, 1], got {noise_prob!r}")
        self.noise_std = float(noise_std)
        self.noise_prob = float(noise_prob)

    def perturb(self, teacher_logits: Tensor) -> Tensor:
        """The teacher logits with the multiplicative noise applied to a random subset of samples."""
        z = teacher_logits.float()
        eps = torch.randn_like(z) * self.noise_std
        chosen = torch.rand(z.shape[0], 1, device=z.device) < self.noise_prob
        return z * (1.0 + eps * chosen)

    def forward(self, ctx: LossContext) -> Tensor:
        teacher = self._require(ctx.teacher_logits, "teacher logits", "noisy_kd")
        if ctx.training:
            teacher = self.perturb(teacher)
        return _soft_kl(ctx.student_logits, teacher, self.T)


def _match_spatial(s: Tensor, t: Tensor, resize: str) -> tuple[Tensor, Tensor]:
    """Bring two 4-D maps to one spatial size: pool both to the smaller one, or interpolate ``s``."""
    if s.shape[2:] == t.shape[2:]:
        return s, t
    if resize == "interpolate":
        return F.interpolate(s, size=t.shape[2:], mode="bilinear", align_corners=False), t
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    return F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)


def _feature_pairs(setup: LossSetup, name: str) -> tuple[LayerPair, ...]:
    if not setup.pairs:
        raise ConfigError(
            f"loss {name!r} needs feature layer pairs; pass hint_pairs=[(student_path, teacher_path)] "
            "or example_inputs so they can be paired automatically"
        )
    return setup.pairs


def _features(ctx: LossContext, pair: LayerPair, name: str) -> tuple[Tensor, Tensor]:
    try:
        return ctx.student_features[pair.student], ctx.teacher_features[pair.teacher]
    except KeyError as exc:
        raise ConfigError(
            f"loss {name!r}: feature {exc.args[0]!r} was not recorded in the last forward pass; "
            "the model trained must be the student the Distiller was built with"
        ) from None


def _adapter(s_ch: int, t_ch: int, bn: bool, always: bool) -> nn.Module:
    """A 1x1 conv (+ BN) from ``s_ch`` to ``t_ch`` channels, or the identity when they agree."""
    if s_ch == t_ch and not always:
        return nn.Identity()
    layers: list[nn.Module] = [nn.Conv2d(s_ch, t_ch, 1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(t_ch))
    return nn.Sequential(*layers)


@LOSSES.register("hint")
class HintLoss(DistillLoss):
    """FitNets hint loss between paired intermediate feature maps.

    Romero, Ballas, Kahou, Chassang, Gatta, Bengio. *FitNets: Hints for Thin
    Deep Nets*, ICLR 2015: a regressor maps the student's "guided" layer to
    the teacher's "hint" layer and the two are matched by an L2 loss; the
    regressor is trained jointly with the student. Here the regressor is a 1x1
    conv (+ optional BN) from student to teacher channels, used only when the
    channel counts differ (``adapter="auto"``, as in Chen et al. 2020) or
    always (``adapter="always"``); spatial sizes are matched by adaptive
    average pooling to the smaller map (``resize="pool"``) or by bilinear
    interpolation of the student map (``resize="interpolate"``). The loss is
    the mean squared error, averaged over the pairs.

    Args:
        pairs: the (student, teacher) layers with their shapes.
        bn: add a BatchNorm after each 1x1 adapter conv.
        adapter: ``"auto"`` (only where channels differ) or ``"always"``.
        resize: ``"pool"`` or ``"interpolate"``.
    """

    needs_features = True

    def __init__(self, pairs: Sequence[LayerPair], bn: bool = False,
                 adapter: Literal["auto", "always"] = "auto",
                 resize: Literal["pool", "interpolate"] = "pool") -> None:
        super().__init__()
        _check_choice("hint", "adapter", adapter, ("auto", "always"))
        _check_choice("hint", "resize", resize, ("pool", "interpolate"))
        self.pairs = tuple(pairs)
        self.resize = resize
        self.adapters = nn.ModuleList(
            _adapter(p.student_shape[1], p.teacher_shape[1], bn, adapter == "always")
            for p in self.pairs
        )

    @classmethod
    def build(cls, setup: LossSetup, **options: Any) -> "DistillLoss":
        return cls(_feature_pairs(setup, "hint"), **options)

    def adapt(self, index: int, student_feature: Tensor) -> Tensor:
        """The student's feature map of pair ``index`` mapped to the teacher's channels."""
        return self.adapters[index](student_feature)

    def forward(self, ctx: LossContext) -> Tensor:
        total = ctx.student_logits.new_zeros((), dtype=torch.float32)
        for i, pair in enumerate(self.pairs):
            s, t = _features(ctx, pair, "hint")
            s, t = _match_spatial(self.adapt(i, s), t.detach(), self.resize)
            total = total + F.mse_loss(s.float(), t.float())
        return total / len(self.pairs)


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention map ``sum_c |A_c|^p`` of a ``[N, C, H, W]`` feature map, shape ``[N, 1, H, W]``.

    Zagoruyko & Komodakis 2017, eq. (1) with ``F_sum^p``.
    """
    return feature.float().abs().pow(p).sum(dim=1, keepdim=True)


@LOSSES.register("attention")
class AttentionTransferLoss(DistillLoss):
    """Activation-based attention transfer.

    Zagoruyko & Komodakis. *Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer*,
    ICLR 2017, eq. (2): ``|| Q_s / ||Q_s||_2 - Q_t / ||Q_t||_2 ||_2`` where
    ``Q = vec(sum_c |A_c|^p)`` (p = 2), per sample, averaged over the batch and
    over the layer pairs. Attention maps of different spatial sizes are
    average-pooled to the smaller size before normalising. (The authors' code
    uses the mean squared difference instead of the L2 norm and a weight of
    1000; the paper's form keeps the loss in [0, 2] so weights near 1 work.)

    Args:
        pairs: the (student, teacher) layers (channel counts may differ).
        p: exponent of the activations.
    """

    needs_features = True

    def __init__(self, pairs: Sequence[LayerPair], p: float = 2.0) -> None:
        super().__init__()
        if not p > 0:
            raise ConfigError(f"attention: p must be > 0, got {p!r}")
        self.pairs = tuple(pairs)
        self.p = float(p)

    @classmethod
    def build(cls, setup: LossSetup, **options: Any) -> "DistillLoss":
        return cls(_feature_pairs(setup, "attention"), **options)

    def pair_loss(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        """The attention-transfer distance for one pair of feature maps, mean over the batch."""
        q_s, q_t = _match_spatial(
            attention_map(student_feature, self.p), attention_map(teacher_feature.detach(), self.p), "pool"
        )
        q_s = F.normalize(q_s.flatten(1), dim=1)
        q_t = F.normalize(q_t.flatten(1), dim=1)
        return (q_s - q_t).norm(p=2, dim=1).mean()

    def forward(self, ctx: LossContext) -> Tensor:
        total = ctx.student_logits.new_zeros((), dtype=torch.float32)
        for pair in self.pairs:
            total = total + self.pair_loss(*_features(ctx, pair, "attention"))
        return total / len(self.pairs)


def _check_choice(loss: str, key: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ConfigError(f"{loss}: {key}={value!r} is invalid; valid: {', '.join(valid)}")


def _loss_class(name: str) -> type[DistillLoss]:
    try:
        return LOSSES.get(name)
    except RegistryError as exc:
        raise UnknownLossError(f"loss spec: {exc}") from None


def _weight(name: str, raw: Any) -> float:
    try:
        weight = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"loss spec: weight of {name!r} must be a number, got {raw!r} (write e.g. '{name}:0.5')"
        ) from None
    if not (math.isfinite(weight) and weight >= 0):
        raise ConfigError(f"loss spec: weight of {name!r} must be a finite number >= 0, got {raw!r}")
    return weight


def _spec_items(spec: LossSpec) -> list[tuple[str, Any]]:
    if isinstance(spec, Mapping):
        return [(str(k), v) for k, v in spec.items()]
    if not isinstance(spec, str):
        raise ConfigError(
            f"loss spec must be a string like 'kd:0.9,ce:0.1' or a dict, got {type(spec).__name__}"
        )
    items = []
    for part in (p.strip() for p in spec.split(",")):
        if part:
            name, sep, weight = part.partition(":")
            items.append((name.strip(), weight.strip() if sep else 1.0))
    return items


def parse_loss_spec(spec: LossSpec) -> dict[str, float]:
    """Parse a weighted sum of registered losses.

    Args:
        spec: ``"kd:0.9,hint:1.0,ce"`` (a missing weight means 1.0) or a dict
            ``{"kd": 0.9, "hint": 1.0}``. Names are case-insensitive.

    Returns:
        ``{name: weight}`` in the given order (names lower-cased).

    Raises:
        UnknownLossError: an unregistered name (a ConfigError and a KeyError);
            the message suggests the closest name and lists the valid ones.
        ConfigError: empty spec, duplicate name, or a weight that is not a
            finite number >= 0.
    """
    result: dict[str, float] = {}
    for name, raw in _spec_items(spec):
        key = name.lower()
        _loss_class(key)
        if key in result:
            raise ConfigError(f"loss spec {spec!r} names {key!r} twice; give each loss once")
        result[key] = _weight(key, raw)
    if not result:
        raise ConfigError(
            f"loss spec {spec!r} is empty; write e.g. 'kd:0.9,ce:0.1' (valid losses: {', '.join(LOSSES.names())})"
        )
    return result


def build_loss(name: str, setup: LossSetup, options: Mapping[str, Any] | None = None) -> DistillLoss:
    """Instantiate the registered loss ``name`` with the shared ``setup`` and its ``options``.

    Raises:
        UnknownLossError: unregistered name.
        ConfigError: an option the loss does not take (the message lists the valid ones).
    """
    cls = _loss_class(name)
    options = dict(options or {})
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "pairs")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"loss {name!r} has no option(s) {', '.join(unknown)}; valid options: {', '.join(valid) or 'none'}"
        )
    return cls.build(setup, **options)
