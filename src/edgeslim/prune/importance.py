"""Importance criteria: one small class each, registered by name.

A criterion scores the output channels of every producer layer (conv/linear)
or normalisation layer; ``DependencyGraph.class_scores`` then averages the
scores of the layers a channel couples. Lower score = pruned first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import first_tensor
from ..errors import ConfigError
from ..graph import DependencyGraph
from .._core import FeatureTaps, device_of, eval_mode, take_batches
from ..registry import Registry

Normalize = Literal["mean", "max", "none"]


@dataclass
class ImportanceContext:
    """What data-driven criteria need.

    Attributes:
        calib_data: an iterable of ``(x, y)`` batches (anything ``edgeslim.data.as_loader``
            accepts); required by ``taylor`` and the information-gain criteria.
        max_batches: how many calibration batches to use.
        loss_fn: ``loss_fn(logits, y)``; cross-entropy by default.
        seed: for the ``random`` baseline.
    """

    calib_data: Any = None
    max_batches: int = 8
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    seed: int = 0

    def batches(self, model: nn.Module, who: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        self.check(who)
        return self._batches(model)

    def check(self, who: str) -> None:
        """Refuse to run a data-driven criterion ``who`` without calibration data."""
        if self.calib_data is None:
            raise ConfigError(
                f"criterion {who!r} is data-driven: pass calib_data= (a DataLoader, an edgeslim "
                "TensorLoader, or a tuple (X, Y) of tensors)"
            )
        if self.max_batches < 1:
            raise ConfigError(f"criterion {who} needs calibration data: calib_batches must be >= 1 "
                              f"(got {self.max_batches})")

    def _batches(self, model: nn.Module) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        from ..data import as_loader

        device = device_of(model)
        for x, y in take_batches(as_loader(self.calib_data), self.max_batches):
            yield x.to(device), y.to(device)


class Importance:
    """Base class. Subclasses implement ``scores``; ``normalize`` makes layers comparable
    in a global ranking (``"mean"``: divide each layer's scores by their mean)."""

    normalize: Normalize = "mean"
    needs_data = False  # True: scores come from calibration batches (``ImportanceContext``)

    @property
    def name(self) -> str:
        """The registered name (``"taylor"``), or the class name for an unregistered one."""
        return next((n for n in IMPORTANCES.names() if IMPORTANCES.get(n) is type(self)),
                    type(self).__name__)

    def scores(self, graph: DependencyGraph, model: nn.Module,
               ctx: ImportanceContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, graph: DependencyGraph, model: nn.Module,
                 ctx: ImportanceContext | None = None) -> np.ndarray:
        """One score per channel class (NaN where nothing scored it)."""
        raw = self.scores(graph, model, ctx or ImportanceContext())
        return graph.class_scores({p: _normalise(s, self.normalize) for p, s in raw.items()})


def _normalise(s: torch.Tensor, how: Normalize) -> torch.Tensor:
    s = s.detach().float()
    if how == "none":
        return s
    ref = s.mean() if how == "mean" else s.max()
    return s / ref if ref > 0 else s


IMPORTANCES: Registry[type] = Registry("importance criterion")


def _filter_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight reshaped to [out_channels, -1]."""
    w = getattr(module, "weight", None)
    if w is None:
        return None
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        w = w.transpose(0, 1)
    return w.detach().flatten(1)


class _NormImportance(Importance):
    p: float = 1.0

    def scores(self, graph, model, ctx):
        out = {}
        for rec in graph.producers():
            w = _filter_weight(rec.module)
            if w is not None and rec.out_label is not None and w.shape[0] == len(rec.out_label):
                out[rec.path] = w.abs().pow(self.p).mean(1).pow(1.0 / self.p)
        return out


@IMPORTANCES.register("l1")
class L1Importance(_NormImportance):
    """Mean absolute weight of each filter: the L1 norm divided by the fan-in
    (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017), so filters of
    layers with different fan-in compare fairly in a global ranking. Data-independent:
    the default of the knowledge-transfer pipeline (Chen et al. 2020)."""

    p = 1.0


@IMPORTANCES.register("l2")
class L2Importance(_NormImportance):
    """Root-mean-square weight of each filter (the L2 norm divided by sqrt(fan-in))."""

    p = 2.0


@IMPORTANCES.register("bn_scale")
class BNScaleImportance(Importance):
    """|gamma| of the BatchNorm after each conv (Liu et al., "Learning Efficient
    Convolutional Networks through Network Slimming", ICCV 2017). Channels with no
    BatchNorm get no score and are kept."""

    normalize: Normalize = "none"

    def scores(self, graph, model, ctx):
        return {r.path: r.module.weight.detach().abs() for r in graph.records.values()
                if isinstance(r.module, nn.modules.batchnorm._BatchNorm) and r.module.affine
                and not r.ignored}

    def __call__(self, graph, model, ctx=None):
        out = super().__call__(graph, model, ctx)
        prunable = graph.prunable_classes()
        if prunable and np.isnan(out[prunable]).all():
            has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
                         for m in model.modules())
            where = "the BatchNorm layers it has only follow locked channels" if has_bn else "model has none"
            raise ConfigError("criterion bn_scale needs BatchNorm layers after the pruned convs; "
                              f"{where}: use l1")
        return out


@IMPORTANCES.register("random")
class RandomImportance(Importance):
    """Uniform random scores: the baseline every criterion must beat."""

    normalize: Normalize = "none"

    def scores(self, graph, model, ctx):
        g = torch.Generator().manual_seed(ctx.seed)
        return {r.path: torch.rand(len(r.out_label), generator=g) for r in graph.producers()
                if r.out_label is not None}


@IMPORTANCES.register("taylor")
class TaylorImportance(Importance):
    """First-order Taylor estimate of the loss change when a channel is removed:
    |sum over positions of a * dL/da|, averaged over calibration batches
    (Molchanov et al., "Pruning Convolutional Neural Networks for Resource Efficient
    Inference", ICLR 2017).

    The loss is ``loss_fn(logits, y)``; a model returning a tuple/list/dict (``(logits,
    features)``) has it computed on the first tensor. An activation the loss does not
    depend on (an unused branch) has no gradient and scores 0.
    """

    needs_data = True

    def scores(self, graph, model, ctx):
        paths = [r.path for r in graph.producers() if r.out_label is not None]
        totals: dict[str, torch.Tensor] = {}
        taps = FeatureTaps(model, paths, retain_grad=True)  # outputs keep their gradient
        try:
            with eval_mode(model), torch.enable_grad():  # eval_mode keeps frozen BN frozen
                for x, y in ctx.batches(model, self.name):
                    model.zero_grad(set_to_none=True)
                    taps.clear()
                    loss = _loss(ctx, first_tensor(model(x), "criterion taylor"), y)
                    if loss.requires_grad:
                        loss.backward()
                    for p in paths:
                        totals[p] = totals.get(p, 0) + _taylor_term(taps.outputs.get(p))
        finally:
            taps.remove()
            model.zero_grad(set_to_none=True)
        if paths and not totals:
            raise ConfigError("criterion taylor got no calibration batch: calib_data is empty")
        return {p: t for p, t in totals.items() if isinstance(t, torch.Tensor)}


def _loss(ctx: ImportanceContext, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    try:
        return (ctx.loss_fn or F.cross_entropy)(logits, y)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise ConfigError(
            f"criterion taylor: the loss failed on the model output of shape {tuple(logits.shape)} "
            f"and labels of shape {tuple(y.shape)} ({exc}). Fix: calib_data batches must be (x, y) "
            "with class labels y for these logits, or pass an ImportanceContext with a loss_fn"
        ) from exc


def _taylor_term(a: torch.Tensor | None) -> torch.Tensor | int:
    """|sum over positions of a * dL/da| per channel, batch mean; 0 where a has no gradient."""
    if a is None:
        return 0
    if a.grad is None:
        return torch.zeros(a.shape[1] if a.dim() > 1 else a.shape[0])
    contrib = (a * a.grad).flatten(2).sum(2) if a.dim() > 2 else a * a.grad
    return contrib.abs().mean(0).detach()


@IMPORTANCES.register("fpgm")
class FPGMImportance(Importance):
    """Filter pruning via geometric median (He, Liu, Wang, Hu, Yang, CVPR 2019): a filter's
    summed Euclidean distance to the other filters of its layer. Filters near the layer's
    geometric median are the most replaceable by the others and go first."""

    def scores(self, graph, model, ctx):
        out = {}
        for rec in graph.producers():
            w = _filter_weight(rec.module)
            if w is not None and rec.out_label is not None and w.shape[0] == len(rec.out_label):
                out[rec.path] = torch.cdist(w[None].float(), w[None].float())[0].sum(1)
        return out


def get_importance(criterion: "str | Importance") -> Importance:
    """A registered criterion by name, or an ``Importance`` instance as is."""
    if isinstance(criterion, Importance):
        return criterion
    return IMPORTANCES.get(criterion)()
