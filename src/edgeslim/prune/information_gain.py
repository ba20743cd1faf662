"""Information-gain channel importance (EasiEdge), exact and Taylor-approximated.

Yu, Cui, Wang, Han, Huang, Huang. *EasiEdge: A Novel Global Deep Neural
Networks Pruning Method for Efficient Edge Computing*, IEEE Internet of Things
Journal 8(3), 2021: the importance of a filter is its *information gain*, how
much removing it changes the network's output class distribution,

    IG(c) = E_x [ KL( p(.|x) || p_{-c}(.|x) ) ],

and a Taylor-based approximate algorithm (TBAA) estimates it for every filter
from one forward and one backward pass.

Where a channel is removed
--------------------------
Removing channel ``c`` physically deletes, in every layer of its dependency
class, the filter, the BN entry and the *input slice* of every layer that reads
it. The output of a pruned network equals that of the unpruned one with the
channel's values set to zero **at the input of every channel-mixing layer that
consumes it** (a conv with ``groups == 1``, a linear layer): there the input
slice multiplies weights that the surgery deletes, so zero input == deleted
slice, exactly. Zeroing earlier is *not* removal: after ``conv -> BN`` the BN
bias would re-add a constant, and a depthwise conv or a norm layer maps a zero
input to a non-zero output. Both criteria below therefore act at those
*consumer inputs* (after BN, activation, pooling and flatten; a flattened
channel's whole block of features), in all consumers of the class at once
(the several convs reading one residual stream). Channel-wise layers (norms,
depthwise convs, PReLU) only carry a channel; they are not consumers.

The output distribution ``p`` is the softmax of the model's output or, for a
model that returns a tuple/list/dict (``(logits, features)``), of its first
tensor.

Not modelled: a channel whose values leave the traced graph through an
operation that drops the channel label (e.g. ``x.mean(dim=1)``) changes that
value when removed; the zeroing here does not see it.

TBAA derivation
---------------
Give every consumer input a per-sample multiplicative gate ``m`` (all ones);
removing class ``c`` sets ``m_c = 0``, i.e. moves ``m`` by ``-e_c``. For one
sample, ``f(m) = KL(p || q(m))`` with ``p = q(1)`` fixed. Then

* ``f(1) = 0`` and ``grad f(1) = -sum_y p_y grad log q_y = -grad sum_y q_y = 0``:
  the first-order term vanishes because the KL is minimal at no perturbation;
* ``Hess f(1) = F = E_{y~p}[grad log p_y grad log p_y^T]``, the Fisher
  information of the output distribution in the gate (at the minimum the
  Hessian of the KL *is* the Fisher / Gauss-Newton matrix), so

    IG(c) ~= 1/2 e_c^T F e_c = 1/2 E_{y~p}[ (d log p_y / d m_c)^2 ],
    d log p_y / d m_c = sum over consumers and positions of a_c * d log p_y / d a_c.

This is the Fisher pruning signal of Theis, Korshunova, Tejani, Huszar
(*Faster gaze prediction with dense networks and Fisher pruning*, 2018) and
the squared-Taylor importance of Molchanov, Mallya, Tyree, Frosio, Kautz
(*Importance Estimation for Neural Network Pruning*, CVPR 2019), here with the
model's own output distribution in place of the labels. The expectation over
``y ~ p`` is taken exactly (``fisher="exact"``: one backward pass per output
class), by sampling one ``y ~ p`` per example (``"sample"``, the default: one
backward pass, unbiased), with the predicted class (``"argmax"``) or with the
true labels (``"true"``, the empirical Fisher). ``order=1`` gives the
loss-based first-order variant ``E|sum a_c dL/da_c|`` with ``L`` the
cross-entropy on the labels (Molchanov et al., ICLR 2017), which is non-zero
because the training loss is not at its minimum per sample.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._core import device_of
from .._checks import first_tensor
from ..errors import ConfigError
from ..graph import DependencyGraph
from .importance import IMPORTANCES, Importance, ImportanceContext, Normalize

FisherMode = Literal["sample", "exact", "argmax", "true"]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------
# consumers: where a channel is read by a layer that mixes channels

@dataclass
class Consumer:
    """A channel-mixing layer and the channel class of each of its input positions."""

    path: str
    module: nn.Module
    classes: torch.Tensor  # long [in_channels or in_features]


def _conv_mixes(module: nn.Module) -> bool:
    depthwise = module.groups > 1 and module.groups == module.in_channels  # any channel multiplier
    return not depthwise


# Type -> "does this layer mix its input channels?" (MRO lookup; unknown types fall back
# to the labels: a layer whose output channels share no class with its input mixes).
MIXES_CHANNELS: dict[type, Callable[[nn.Module], bool]] = {
    nn.modules.conv._ConvNd: _conv_mixes,
    nn.Linear: lambda m: True,
    nn.modules.batchnorm._NormBase: lambda m: False,
    nn.GroupNorm: lambda m: False,
    nn.PReLU: lambda m: False,
}


def _mixes(module: nn.Module, in_cls: np.ndarray, out_cls: np.ndarray | None) -> bool:
    for klass in type(module).__mro__:
        if klass in MIXES_CHANNELS:
            return MIXES_CHANNELS[klass](module)
    return out_cls is None or not set(in_cls.tolist()) & set(out_cls.tolist())


def channel_consumers(graph: DependencyGraph) -> list[Consumer]:
    """Every traced layer whose input slice is deleted when an input channel is removed."""
    out = []
    for path, rec in graph.records.items():
        if rec.ignored or rec.slicer is None or rec.in_label is None:
            continue
        in_cls = graph.class_of[np.asarray(rec.in_label, dtype=np.int64)]
        out_cls = None if rec.out_label is None else graph.class_of[np.asarray(rec.out_label, dtype=np.int64)]
        if _mixes(rec.module, in_cls, out_cls):
            out.append(Consumer(path, rec.module, torch.as_tensor(in_cls, dtype=torch.long)))
    return out


def _check_input(consumer: Consumer, x: torch.Tensor) -> None:
    if x.dim() < 2 or x.shape[1] != consumer.classes.numel():
        raise ConfigError(
            f"layer {consumer.path!r} received an input of shape {tuple(x.shape)} but the dependency "
            f"graph traced {consumer.classes.numel()} input channels; build the graph with inputs of "
            "the shape used for scoring (same channels and spatial size)"
        )


@contextlib.contextmanager
def _scoring_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BN running statistics, no dropout) and no parameter gradients."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p || q) from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(1)


# ----------------------------------------------------------------------------------------
# exact information gain: one forward pass per channel class

@torch.no_grad()
def exact_information_gain(model: nn.Module, graph: DependencyGraph, batches: Batches,
                           classes: Iterable[int] | None = None) -> np.ndarray:
    """Mean over samples of KL(p || p without channel c), for each class ``c``.

    Args:
        model: the network ``graph`` was built from.
        graph: its dependency graph.
        batches: ``(x, y)`` calibration batches on the model's device.
        classes: the classes to score (default: all prunable ones).

    Returns:
        Float64 array over all class ids; NaN for classes not scored.
    """
    consumers = channel_consumers(graph)
    todo = graph.prunable_classes() if classes is None else list(classes)
    device = device_of(model)
    where = _positions_by_class(consumers, set(todo), device)
    active: dict[int, torch.Tensor] = {}

    def zero_hook(i: int, args: tuple) -> tuple | None:
        pos = active.get(i)
        if pos is None:
            return None
        _check_input(consumers[i], args[0])
        return (args[0].index_fill(1, pos, 0.0),) + tuple(args[1:])

    handles = [c.module.register_forward_pre_hook(lambda m, a, i=i: zero_hook(i, a))
               for i, c in enumerate(consumers)]
    totals, n = None, 0
    try:
        with _scoring_mode(model):
            for x, _ in batches:
                logp = F.log_softmax(_logits(model, x), 1)
                if totals is None:
                    totals = torch.zeros(len(todo), dtype=torch.float64, device=logp.device)
                for j, c in enumerate(todo):
                    active.clear()
                    active.update(where.get(c, {}))
                    if active:  # a class nothing reads changes nothing: IG 0
                        totals[j] += _kl(logp, F.log_softmax(_logits(model, x), 1)).double().sum()
                active.clear()
                n += x.shape[0]
    finally:
        for h in handles:
            h.remove()
    return _scatter(graph, todo, None if totals is None else totals.cpu().numpy() / max(n, 1))


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's class scores: its output, or the first tensor of a tuple/list/dict output."""
    return first_tensor(model(x), "information gain").float()


def _positions_by_class(consumers: list[Consumer], wanted: set[int],
                        device: torch.device) -> dict[int, dict[int, torch.Tensor]]:
    """class -> {consumer index: input positions labelled with that class}."""
    where: dict[int, dict[int, torch.Tensor]] = {}
    for i, cons in enumerate(consumers):
        cls = cons.classes.numpy()
        order = np.argsort(cls, kind="stable")
        uniq, starts = np.unique(cls[order], return_index=True)
        for c, pos in zip(uniq.tolist(), np.split(order, starts[1:])):
            if c in wanted:
                where.setdefault(c, {})[i] = torch.as_tensor(pos, dtype=torch.long, device=device)
    return where


def _scatter(graph: DependencyGraph, classes: list[int], values: np.ndarray | None) -> np.ndarray:
    out = np.full(len(graph.class_locked), np.nan)
    if values is None:
        raise ConfigError("information gain needs at least one calibration batch; calib_data is empty")
    out[np.asarray(classes, dtype=np.int64)] = values
    return out


# ----------------------------------------------------------------------------------------
# TBAA: Taylor approximation from gate derivatives

def _gated(consumers: list[Consumer], store: dict[int, torch.Tensor]) -> list:
    """Pre-hooks multiplying each consumer input by a per-sample ones gate that needs grad."""

    def hook(i: int, args: tuple) -> tuple:
        x = args[0]
        _check_input(consumers[i], x)
        gate = torch.ones((x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2), dtype=x.dtype,
                          device=x.device, requires_grad=True)
        store[i] = gate
        return (x * gate,) + tuple(args[1:])

    return [c.module.register_forward_pre_hook(lambda m, a, i=i: hook(i, a))
            for i, c in enumerate(consumers)]


def _class_derivative(objective: torch.Tensor, retain: bool, *, consumers: list[Consumer],
                      gates: dict[int, torch.Tensor], n_classes: int) -> torch.Tensor:
    """Per-sample d objective / d m_c for every class: ``[N, n_classes]``.

    The gate gradient at position j is ``sum over spatial positions of a_j * dO/da_j``;
    summing it over every position (in every consumer) labelled ``c`` gives the
    derivative along "zero class c everywhere".
    """
    idx = [i for i in range(len(consumers)) if i in gates]
    first = gates[idx[0]]
    out = torch.zeros(first.shape[0], n_classes, dtype=torch.float32, device=first.device)
    if not objective.requires_grad:  # no gated channel reaches the output
        return out
    grads = torch.autograd.grad(objective, [gates[i] for i in idx], retain_graph=retain,
                                allow_unused=True)
    for i, g in zip(idx, grads):
        if g is not None:
            cls = consumers[i].classes.to(g.device).expand(g.shape[0], -1)
            out.scatter_add_(1, cls, g.flatten(1).float())
    return out


Derive = Callable[[torch.Tensor, bool], torch.Tensor]  # (objective, retain_graph) -> [N, classes]


def _exact_fisher(logp: torch.Tensor, y: torch.Tensor, derive: Derive,
                  generator: torch.Generator | None) -> torch.Tensor:
    """``sum_y p_y (d log p_y/d m)^2``: one backward pass per output class."""
    p = logp.detach().exp()
    total = torch.zeros(())
    for k in range(logp.shape[1]):
        total = total + p[:, k:k + 1] * derive(logp[:, k].sum(), True).square()
    return total


def _one_target(pick: Callable[[torch.Tensor, torch.Tensor, torch.Generator | None], torch.Tensor]) -> Callable:
    """``(d log p_t/d m)^2`` for one target class ``t`` per sample: one backward pass."""

    def estimate(logp: torch.Tensor, y: torch.Tensor, derive: Derive,
                 generator: torch.Generator | None) -> torch.Tensor:
        target = pick(logp.detach(), y, generator)
        return derive(logp.gather(1, target[:, None]).sum(), False).square()

    return estimate


# How E_{y~p}[(d log p_y / d m_c)^2] is estimated, per sample: [N, classes].
FISHER_ESTIMATORS: dict[str, Callable] = {
    "exact": _exact_fisher,
    "sample": _one_target(lambda logp, y, g: torch.multinomial(logp.exp(), 1, generator=g).flatten()),
    "argmax": _one_target(lambda logp, y, g: logp.argmax(1)),
    "true": _one_target(lambda logp, y, g: y.to(logp.device).long()),
}


def _batch_term(logits: torch.Tensor, y: torch.Tensor, derive: Derive, order: int, fisher: str,
                loss_fn: Callable | None, generator: torch.Generator | None) -> torch.Tensor:
    """One batch's per-sample TBAA terms, ``[N, classes]``."""
    if order == 1:
        loss = (loss_fn or F.cross_entropy)(logits, y) * logits.shape[0]  # per-sample terms of the sum
        return derive(loss, False).abs()
    return 0.5 * FISHER_ESTIMATORS[fisher](F.log_softmax(logits.float(), 1), y, derive, generator)


def taylor_information_gain(model: nn.Module, graph: DependencyGraph, batches: Batches, *,
                            order: int = 2, fisher: FisherMode = "sample",
                            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                            seed: int = 0) -> np.ndarray:
    """TBAA: every class's information gain from one forward/backward pass per batch.

    Args:
        model: the network ``graph`` was built from.
        graph: its dependency graph.
        batches: ``(x, y)`` calibration batches on the model's device.
        order: 2 = ``1/2 E[(d log p_y/d m_c)^2]`` (the KL's leading term, see the module
            docstring); 1 = ``E|d L/d m_c|`` with ``L`` the loss on the labels.
        fisher: how the expectation over ``y ~ p`` is taken (order 2): ``"sample"``,
            ``"exact"`` (one backward pass per output class), ``"argmax"`` or ``"true"``.
        loss_fn: ``loss_fn(logits, y)``, batch mean (order 1; default cross-entropy).
        seed: for ``fisher="sample"``.

    Returns:
        Float64 array over all class ids; NaN except for prunable classes.
    """
    if order not in (1, 2):
        raise ConfigError(f"information_gain_taylor order={order}: use 1 (loss Taylor) or 2 (Fisher)")
    if fisher not in FISHER_ESTIMATORS:
        raise ConfigError(f"information_gain_taylor fisher={fisher!r}: use one of {sorted(FISHER_ESTIMATORS)}")
    consumers = channel_consumers(graph)
    todo, n_classes = graph.prunable_classes(), len(graph.class_locked)
    gates: dict[int, torch.Tensor] = {}
    handles = _gated(consumers, gates)
    totals, n, generator = torch.zeros(n_classes, dtype=torch.float64), 0, None
    try:
        with _scoring_mode(model), torch.enable_grad():
            for x, y in batches:
                gates.clear()
                logits = first_tensor(model(x), "information_gain_taylor")
                n += x.shape[0]
                if not gates:
                    continue  # nothing reads any channel: every score stays 0
                if generator is None:
                    generator = torch.Generator(device=logits.device).manual_seed(seed)
                derive = functools.partial(_class_derivative, consumers=consumers, gates=gates,
                                           n_classes=n_classes)
                term = _batch_term(logits, y, derive, order, fisher, loss_fn, generator)
                totals += term.sum(0).double().cpu()
    finally:
        for h in handles:
            h.remove()
    return _scatter(graph, todo, totals.numpy()[todo] / n if n else None)


# ----------------------------------------------------------------------------------------
# registered criteria

class _ClassImportance(Importance):
    """An importance computed per channel class (not per layer): already comparable
    across layers, so ``__call__`` returns the class scores unnormalised."""

    normalize: Normalize = "none"

    def class_scores(self, graph: DependencyGraph, model: nn.Module, batches: Batches,
                     ctx: ImportanceContext) -> np.ndarray:
        raise NotImplementedError

    needs_data = True

    def __call__(self, graph: DependencyGraph, model: nn.Module,
                 ctx: ImportanceContext | None = None) -> np.ndarray:
        ctx = ctx or ImportanceContext()
        return self.class_scores(graph, model, ctx.batches(model, self.name), ctx)

    def scores(self, graph: DependencyGraph, model: nn.Module,
               ctx: ImportanceContext) -> dict[str, torch.Tensor]:
        """Per-layer view (each producer's output channels get their class's score)."""
        cls = self(graph, model, ctx)
        return {r.path: torch.as_tensor(cls[graph.class_of[np.asarray(r.out_label, dtype=np.int64)]])
                for r in graph.producers() if r.out_label is not None}


@IMPORTANCES.register("information_gain")
class InformationGainImportance(_ClassImportance):
    """Exact information gain (EasiEdge, Yu et al., IEEE IoT J. 2021): the mean
    KL(p || p without the channel) over the calibration samples, with the channel
    zeroed at every consuming layer's input (the exact equivalent of removing it).
    One forward pass per channel and batch: the reference that TBAA approximates."""

    def class_scores(self, graph, model, batches, ctx):
        return exact_information_gain(model, graph, batches)


@IMPORTANCES.register("information_gain_taylor")
class TaylorInformationGainImportance(_ClassImportance):
    """EasiEdge's Taylor-based approximate algorithm (TBAA): the second-order Taylor
    term of the information gain, ``1/2 E_{y~p}[(sum a_c d log p_y/d a_c)^2]`` (Fisher
    pruning: Theis et al. 2018; Molchanov et al., CVPR 2019), one forward and one
    backward pass per batch. See :func:`taylor_information_gain` for the options.

    Args:
        order: 2 (default, the KL's leading term) or 1 (``E|a_c dL/da_c|`` on the loss).
        fisher: ``"sample"`` (default), ``"exact"``, ``"argmax"`` or ``"true"``.
    """

    def __init__(self, order: int = 2, fisher: FisherMode = "sample") -> None:
        self.order = order
        self.fisher = fisher

    def class_scores(self, graph, model, batches, ctx):
        return taylor_information_gain(model, graph, batches, order=self.order, fisher=self.fisher,
                                       loss_fn=ctx.loss_fn, seed=ctx.seed)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors over the entries finite in both
    (ties get their average rank)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        raise ValueError("spearman needs at least two entries that are finite in both vectors")
    ra, rb = _ranks(a[ok]), _ranks(b[ok])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]
