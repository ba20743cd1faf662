"""EasiEdge: global filter pruning by ADMM with information-gain importance.

Yu, Cui, Wang, Han, Huang, Huang. *EasiEdge: A Novel Global Deep Neural
Networks Pruning Method for Efficient Edge Computing*, IEEE Internet of Things
Journal 8(3), 2021, solved with the alternating direction method of
multipliers (Boyd, Parikh, Chu, Peleato, Eckstein, *Distributed Optimization
and Statistical Learning via ADMM*, 2011) as in ADMM weight pruning (Zhang, Ye,
Zhang, Tang, Wen, Fardad, Wang, *A Systematic DNN Weight Pruning Framework
using ADMM*, ECCV 2018).

Problem: minimise the loss f(W) subject to W in S_k, the networks in which at
most k filters (channel classes) are non-zero. With Z a copy of W constrained
to S_k and U the scaled dual variable, each iteration does

1. W-step (performance-improving subproblem): SGD on f(W) + rho/2 ||W - Z + U||^2;
2. Z-step (global pruning subproblem): Z = Pi(W + U), which keeps the k most
   important classes of W + U and zeroes the rest. With the group norm as the
   importance this is the exact Euclidean projection onto S_k; EasiEdge ranks by
   information gain instead (any registered criterion works here). With a FLOPs
   or parameter target, S is "at most that cost" and Pi keeps the classes that
   carry the most importance per unit of it (``edgeslim.prune.planner``);
3. dual update U = U + W - Z; then rho is updated and U is rescaled by
   rho_old / rho_new so that the unscaled dual rho*U is unchanged (Boyd 3.4.1).

The importance is computed once per iteration *on the network with weights
W + U* (loaded temporarily): the projection acts on W + U, so its ranking must
too; ranking W would make Z's support lag one dual step behind.

Choices that keep the W-step from collapsing (measured with
``benchmarks/easiedge.py`` and ``benchmarks/easiedge_admm_ablation.py``; numbers
in the README):

* Warm start: Z0 = Pi(W0), U0 = 0 on the trained model.
* ``rho="auto"``: ``lr * rho * steps / (1 - momentum) = 1``, i.e. the penalty alone
  closes the cut filters' distance to Z by a factor e over one W-step, whatever the
  learning rate and W-step length. The earlier fixed rho 0.3 growing 1.5x per
  iteration reached 17x that pull by the last iteration whatever the network did
  (the W-step accuracy was reported to fall to 55-67% on a second 28x28 dataset).
* ``accuracy_guard``: rho grows (``rho_schedule``) only after W-steps whose training
  accuracy stayed within the guard of the unpruned model's accuracy on the same
  batches; otherwise it is held.
* ``progressive``: the first Z-steps may approach the target geometrically instead
  of jumping to it (off by default: on LeNet-5 it did not help).
* A Z-step keeps the previous support unless the planner's (greedy) solution cuts
  less importance: the greedy knapsack can jump between supports of about equal
  worth, and every jump cuts filters the network is using.
* The last support is chosen on W alone (as ADMM weight pruning hard-prunes Pi(W)):
  a last Z-step on W + U can swap in a filter that W has not grown yet, and the
  physical pruning then cuts a filter the network was using.

A filter's variables are every parameter slice that follows its output channel:
the conv/linear filter and bias, the BN scale and shift, a depthwise filter.
When all of them are zero the channel outputs exactly zero (after BN and ReLU),
so driving W to Z makes the final physical removal (``prune_channels_`` on the
classes outside Z) nearly function-preserving; the network is then fine-tuned
(plainly or by distillation from the unpruned model). The kept weights are
those of W (for them Z = W + U differs from W only by the residual).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import nn

from .._core import closest
from ..errors import CheckpointError, ConfigError
from ..modelinfo import info
from ..graph import DependencyGraph, build_dependency_graph
from ..io import atomic_torch_save, safe_torch_load
from . import information_gain  # noqa: F401  (registers the information-gain criteria)
from .api import _check_forward, _example, _output_shape, _resolve_finetune, _unmodelled
from .importance import ImportanceContext, get_importance
from .planner import Budget, Constraints, meets_budget, plan_removal
from ..stage_args import easiedge_keywords, takes_stage_config
from .surgery import prune_channels_

log = logging.getLogger(__name__)
STATE_NAME = "admm_state.pt"
STATE_FORMAT = "edgeslim.prune.admm/1"


@dataclass
class ADMMConfig:
    """The ADMM pruning settings (see :func:`admm_prune` for each field)."""

    target_filters: float | None = None
    target_flops: float | None = None
    target_params: float | None = None
    target_latency: float | None = None  # ms, measured in ``runtime`` (prune's semantics)
    target_speedup: float | None = None
    runtime: str = "onnxruntime"
    threads: int = 1
    latency_runs: int = 30
    cost_aware: bool | None = None
    criterion: Any = "information_gain_taylor"
    rho: float | Literal["auto"] = "auto"
    rho_schedule: float | Sequence[float] = 1.5
    accuracy_guard: float | None = 0.02
    progressive: int = 1
    admm_iterations: int = 10
    admm_epochs: float = 5.0
    finetune_epochs: int = 5
    finetune: Any = "plain"
    calib_batches: int = 4
    ignore: Sequence[str] = ()
    round_to: int = 1
    min_channels: int = 1
    protect_first: bool = True

    def __post_init__(self) -> None:
        self._check_targets()
        if self.rho != "auto" and not (isinstance(self.rho, (int, float)) and self.rho > 0):
            raise ConfigError(f"admm_prune: rho={self.rho!r} must be a number > 0 or 'auto'")
        if self.admm_iterations < 1 or self.admm_epochs <= 0 or self.finetune_epochs < 0:
            raise ConfigError("admm_prune: admm_epochs must be > 0, admm_iterations >= 1, "
                              f"finetune_epochs >= 0 (got admm_epochs={self.admm_epochs}, "
                              f"admm_iterations={self.admm_iterations}, finetune_epochs={self.finetune_epochs})")
        if not isinstance(self.rho_schedule, (int, float)) and len(self.rho_schedule) < self.admm_iterations:
            raise ConfigError(f"admm_prune: rho_schedule lists {len(self.rho_schedule)} values but "
                              f"admm_iterations={self.admm_iterations}; give one rho per iteration or a "
                              "growth factor (e.g. 1.5)")
        if not 1 <= self.progressive <= self.admm_iterations + 1:
            raise ConfigError(f"admm_prune: progressive={self.progressive} must lie in [1, admm_iterations + 1 = "
                              f"{self.admm_iterations + 1}] (projections that reach the target; 1 = from the start)")
        if self.accuracy_guard is not None and not 0 <= self.accuracy_guard <= 1:
            raise ConfigError(f"admm_prune: accuracy_guard={self.accuracy_guard} is a drop in accuracy "
                              "(0-1, e.g. 0.02 for two points) or None")

    @property
    def latency_target(self) -> bool:
        return self.target_latency is not None or self.target_speedup is not None

    def _check_targets(self) -> None:
        names = ("target_filters", "target_flops", "target_params", "target_latency", "target_speedup")
        given = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        if len(given) > 1:
            raise ConfigError(f"admm_prune: give one target, target_filters= (fraction of filters removed), "
                              f"target_flops= or target_params= (fraction kept), target_latency= (ms) or "
                              f"target_speedup= (x faster); got {given}")
        if self.latency_target:
            from .api import _TARGET_RANGES

            (name, value), = given.items()
            ok, rng = _TARGET_RANGES[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ConfigError(f"admm_prune: {name}={value!r} is impossible: it must lie in {rng}")
            if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
                raise ConfigError(f"admm_prune: threads={self.threads!r} must be an integer >= 1")
            return
        if not given:
            self.target_filters = 0.8  # the EasiEdge paper's setting
        elif self.target_filters is not None and not 0.0 <= self.target_filters < 1.0:
            raise ConfigError(f"admm_prune: target_filters={self.target_filters} must lie in [0, 1) "
                              "(the fraction of prunable filters removed)")
        for name in ("target_flops", "target_params"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ConfigError(f"admm_prune: {name}={value} must lie in (0, 1] (the fraction kept)")

    def next_rho(self, iteration: int, rho: float, accuracy_ok: bool = True) -> float:
        """rho for the W-step after ``iteration`` (0-based): the listed value, or ``rho`` times the
        growth factor -- held where ``accuracy_guard`` saw the W-step's accuracy fall too far."""
        if not isinstance(self.rho_schedule, (int, float)):
            return float(self.rho_schedule[iteration + 1])
        return rho * float(self.rho_schedule) if accuracy_ok else rho

    def first_rho(self) -> float:
        return float(self.rho) if isinstance(self.rho_schedule, (int, float)) else float(self.rho_schedule[0])

    def resolve_rho(self, steps: int, options: dict) -> None:
        """``rho="auto"``: the rho at which the penalty alone contracts the cut filters' distance
        to Z by e^-1 over one W-step of ``steps`` SGD steps, ``lr * rho * steps / (1 - momentum) = 1``
        (for the slow mode of heavy-ball SGD on rho/2 ||W - Z||^2). Scale-free: the same pull per
        iteration whatever the learning rate and the W-step length."""
        if self.rho == "auto":
            from ..train import TrainConfig

            train = TrainConfig(**options)
            momentum = train.momentum if train.optimizer == "sgd" else 0.9  # AdamW: its beta1, a heuristic
            self.rho = (1.0 - momentum) / (train.lr * steps)

    def progress(self, projection: int) -> float:
        """How far the ``projection``-th Z-step (0 = the initial one) goes towards the target."""
        return min(1.0, (projection + 1) / self.progressive)

    def target(self) -> dict:
        """What a saved state must agree with to be resumed."""
        crit = self.criterion if isinstance(self.criterion, str) else type(self.criterion).__name__
        return {"target_filters": self.target_filters, "target_flops": self.target_flops,
                "target_params": self.target_params, "cost_aware": self.cost_aware,
                **({"target_latency": self.target_latency, "target_speedup": self.target_speedup,
                    "runtime": str(getattr(self.runtime, "name", self.runtime)), "threads": self.threads}
                   if self.latency_target else {}),
                "progressive": self.progressive, "criterion": crit}


# ----------------------------------------------------------------------------------------
# the ADMM variables

@dataclass
class Slab:
    """One parameter whose slices along ``dim`` follow a layer's output channels."""

    module: nn.Module
    name: str
    dim: int
    classes: torch.Tensor  # class id of each slice (long, on the parameter's device)
    prunable: torch.Tensor  # bool per slice: the class may be removed

    @property
    def param(self) -> torch.Tensor:
        return getattr(self.module, self.name)

    def rows(self, flags: torch.Tensor) -> torch.Tensor:
        """Per-slice flags shaped to broadcast against the parameter."""
        shape = [1] * self.param.dim()
        shape[self.dim] = -1
        return flags.view(shape)


# Layer type -> its parameters that carry the output channels, and along which dim.
OUTPUT_PARAMS: dict[type, tuple[tuple[str, int], ...]] = {
    nn.modules.conv._ConvTransposeNd: (("weight", 1), ("bias", 0)),
    nn.modules.conv._ConvNd: (("weight", 0), ("bias", 0)),
    nn.Linear: (("weight", 0), ("bias", 0)),
    nn.modules.batchnorm._NormBase: (("weight", 0), ("bias", 0)),
    nn.GroupNorm: (("weight", 0), ("bias", 0)),
    nn.PReLU: (("weight", 0),),
}


def _output_params(module: nn.Module) -> tuple[tuple[str, int], ...]:
    for klass in type(module).__mro__:
        if klass in OUTPUT_PARAMS:
            return OUTPUT_PARAMS[klass]
    return ()


def collect_slabs(graph: DependencyGraph) -> list[Slab]:
    """The parameters that hold each prunable channel class's filter variables."""
    prunable = np.zeros(len(graph.class_locked), dtype=bool)
    prunable[graph.prunable_classes()] = True
    slabs = []
    for rec in graph.records.values():
        if rec.ignored or rec.slicer is None or rec.out_label is None:
            continue
        cls = graph.class_of[np.asarray(rec.out_label, dtype=np.int64)]
        if not prunable[cls].any():
            continue
        for name, dim in _output_params(rec.module):
            p = getattr(rec.module, name, None)
            if isinstance(p, nn.Parameter) and p.dim() > dim and p.shape[dim] == len(cls):
                slabs.append(Slab(rec.module, name, dim, torch.as_tensor(cls, device=p.device),
                                  torch.as_tensor(prunable[cls], device=p.device)))
    return slabs


class ADMMState:
    """Z, U and rho over the filter variables of ``slabs``; the projection and updates."""

    def __init__(self, slabs: list[Slab], rho: float) -> None:
        self.slabs = slabs
        self.rho = rho
        self.Z = [s.param.detach().clone() for s in slabs]
        self.U = [torch.zeros_like(s.param) for s in slabs]
        self.removed = torch.zeros(0, dtype=torch.bool)

    def masked(self, i: int, t: torch.Tensor) -> torch.Tensor:
        """``t`` (shaped like slab ``i``) restricted to the prunable classes' slices."""
        return t * self.slabs[i].rows(self.slabs[i].prunable).to(t.dtype)

    def penalty(self) -> torch.Tensor:
        """rho/2 ||W - Z + U||^2 over the prunable filters (differentiable in W)."""
        total = sum(self.masked(i, s.param - self.Z[i] + self.U[i]).square().sum()
                    for i, s in enumerate(self.slabs))
        return 0.5 * self.rho * total

    @contextlib.contextmanager
    def weights(self, values: list[torch.Tensor]) -> Iterator[None]:
        """Temporarily load ``values`` into the slab parameters."""
        saved = [s.param.detach().clone() for s in self.slabs]
        with torch.no_grad():
            for s, v in zip(self.slabs, values):
                s.param.copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for s, v in zip(self.slabs, saved):
                    s.param.copy_(v)

    def project(self, values: list[torch.Tensor], removed: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        """Pi: ``values`` with every slice of a removed class set to zero."""
        removed = torch.as_tensor(removed, dtype=torch.bool)
        out = []
        for s, v in zip(self.slabs, values):
            keep = ~removed.to(s.classes.device)[s.classes]
            out.append(v * s.rows(keep).to(v.dtype))
        return out

    def norm(self, tensors: Iterable[torch.Tensor]) -> float:
        return math.sqrt(sum(float(self.masked(i, t).double().square().sum()) for i, t in enumerate(tensors)))

    def masked_weights(self) -> list[torch.Tensor]:
        """W with the currently removed classes zeroed: the hard-pruned network's weights."""
        return self.project([s.param.detach() for s in self.slabs], self.removed)

    def state_dict(self) -> dict:
        return {"rho": self.rho, "Z": [z.cpu() for z in self.Z], "U": [u.cpu() for u in self.U],
                "removed": self.removed.cpu()}

    def load_state_dict(self, state: dict, where: Path) -> None:
        shapes = [tuple(s.param.shape) for s in self.slabs]
        if [tuple(z.shape) for z in state["Z"]] != shapes or [tuple(u.shape) for u in state["U"]] != shapes:
            raise CheckpointError(f"{where} holds ADMM variables of other shapes than this model's "
                                  "filters; it was written for a different model. Delete it or set "
                                  "resume=False")
        self.rho = float(state["rho"])
        self.Z = [z.to(s.param.device) for z, s in zip(state["Z"], self.slabs)]
        self.U = [u.to(s.param.device) for u, s in zip(state["U"], self.slabs)]
        self.removed = state["removed"].bool().cpu()


class ADMMLoss:
    """Loss hook for the Trainer: cross-entropy + rho/2 ||W - Z + U||^2."""

    def __init__(self, state: ADMMState, label_smoothing: float = 0.0) -> None:
        from ..train import CrossEntropyHook

        self.state = state
        self.base = CrossEntropyHook(label_smoothing)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = self.base(model, x, y)
        return loss + self.state.penalty(), logits


# ----------------------------------------------------------------------------------------
# the loop

class BatchWindow:
    """Batches ``start .. start+count-1`` of an endless, epoch-seeded pass over ``base``.

    Lets an ADMM iteration last a fraction of an epoch (or several): the Trainer
    sees one "epoch" per iteration, and a resumed run sees the same batches.
    """

    def __init__(self, base: Any, start: int, count: int, seed: int = 0) -> None:
        self.base, self.start, self.count, self.seed = base, start, count, seed

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the window picks the base loader's epochs itself."""

    def __iter__(self) -> Iterator[Any]:
        from ..train.engine import set_loader_epoch

        per_epoch, index, end = len(self.base), self.start, self.start + self.count
        while index < end:
            epoch, skip = divmod(index, per_epoch)
            set_loader_epoch(self.base, epoch, self.seed)
            for j, batch in enumerate(self.base):
                if j < skip:
                    continue
                yield batch
                index += 1
                if index >= end:
                    return


def _train_options(options: dict, **defaults: Any) -> dict:
    from ..train import TrainConfig

    valid = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("epochs", "out_dir", "resume")]
    unknown = [k for k in options if k not in valid]
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := closest(k, valid)) else "")
                 for k in unknown]
        raise ConfigError(f"admm_prune: unknown trainer option(s) {', '.join(hints)}; valid: {', '.join(valid)} "
                          "(epochs, out_dir and resume are admm_prune's own arguments)")
    return defaults | options


def _budget(cfg: ADMMConfig, graph: DependencyGraph, fixed: tuple[float, float], frac: float = 1.0) -> Budget:
    """The projection's target, ``frac`` of the way (geometrically, as ``prune``'s steps) from
    the unpruned model to the final target. ``fixed``: the (MACs, params) that the graph's cost
    model does not see; they count in the total the fractions refer to (``edgeslim.profile``'s)."""
    macs0, params0 = graph.cost()
    if cfg.target_flops is not None:
        return Budget(macs=(macs0 + fixed[0]) * cfg.target_flops ** frac - fixed[0])
    if cfg.target_params is not None:
        return Budget(params=(params0 + fixed[1]) * cfg.target_params ** frac - fixed[1])
    return Budget(channels=round(cfg.target_filters * frac * len(graph.prunable_classes())))


@dataclass
class _Run:
    """Everything one ADMM run shares between its steps."""

    cfg: ADMMConfig
    net: nn.Module
    graph: DependencyGraph
    state: ADMMState
    fixed: tuple[float, float]
    ctx: ImportanceContext
    train: Any
    val: Any
    options: dict
    out_dir: Path | None
    history: list[dict]
    inputs: tuple = ()
    reference_accuracy: float | None = None  # training accuracy before ADMM (accuracy_guard)
    latency: Any = None  # latency_prune.LatencyBudget with a latency target
    last_scores: Any = None  # the last Z-step's importance (the final re-plans reuse it)

    def project(self, scores: np.ndarray, projection: int) -> np.ndarray:
        """The projection's support: the planner's solution, or the previous support when
        it still meets the budget and cuts no more importance (``_better_support``)."""
        frac = self.cfg.progress(projection)
        previous = self.state.removed.numpy() if projection > 0 else None
        if self.latency is not None:  # S = the networks predicted within the latency budget
            removed = self.latency.plan(scores, frac)
            if previous is not None and self.latency.meets(previous, frac):
                removed = _more_worth(scores, removed, previous)
            return removed
        cons = Constraints(self.cfg.min_channels, self.cfg.round_to)
        budget = _budget(self.cfg, self.graph, self.fixed, frac)
        removed = plan_removal(self.graph, scores, budget, "global", cons, cost_aware=self.cfg.cost_aware)
        if previous is not None:
            removed = _better_support(self.graph, scores, budget, removed, previous)
        return removed

    def z_step(self, projection: int, dual: bool = True) -> np.ndarray:
        """Score W + U (``dual=False``: W alone), choose the classes to remove (cost-aware for
        FLOPs/parameter targets: the projection keeps the most importance the budget buys),
        set Z to the projection and return the removal mask."""
        values = [s.param.detach() + (u if dual else 0) for s, u in zip(self.state.slabs, self.state.U)]
        with self.state.weights(values):
            scores = get_importance(self.cfg.criterion)(self.graph, self.net, self.ctx)
        self.last_scores = scores
        removed = self.project(scores, projection)
        self.state.Z = self.state.project(values, removed)
        self.state.removed = torch.as_tensor(removed, dtype=torch.bool)
        return removed


def _better_support(graph: DependencyGraph, scores: np.ndarray, budget: Budget, candidate: np.ndarray,
                    previous: np.ndarray) -> np.ndarray:
    """The Z-step's projection returns the better of the planner's (greedy) solution and the
    previous support, by the importance each cuts, when the previous one still meets the budget.

    The greedy knapsack is not exact: with filters that are large against the budget it can
    jump between very different supports of about equal worth (two conv filters and wide
    linear layers, or three and narrow ones), and every jump costs the network the filters
    it was using. Keeping the previous support when it is no worse makes that impossible and
    never lowers the projection's objective.
    """
    if not meets_budget(graph, previous, budget):
        return candidate
    return _more_worth(scores, candidate, previous)


def _more_worth(scores: np.ndarray, candidate: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``previous`` unless ``candidate`` cuts less importance."""
    worth = np.nan_to_num(scores, nan=0.0, posinf=0.0)
    return previous if worth[previous].sum() <= worth[candidate].sum() else candidate


def _w_step(run: _Run, iteration: int, steps: int) -> dict:
    from ..train import TrainConfig, Trainer

    opts = dict(run.options)
    smoothing = opts.get("label_smoothing", 0.0)
    cfg = TrainConfig(epochs=1, **(opts | {"seed": opts.get("seed", 0) + iteration}))
    window = BatchWindow(run.train, iteration * steps, steps, cfg.seed)
    metrics = Trainer(run.net, cfg, loss=ADMMLoss(run.state, smoothing)).fit(window)[-1]
    return {"train_loss": metrics["train_loss"], "train_accuracy": metrics["train_accuracy"]}


def _iteration(run: _Run, k: int, steps: int) -> dict:
    """One W-step, Z-step and dual update, then the next rho; returns the iteration's record."""
    state = run.state
    record = {"stage": "admm", "iteration": k + 1, "rho": state.rho} | _w_step(run, k, steps)
    z_prev, removed_prev = state.Z, state.removed.clone()
    run.z_step(k + 1)
    record["support_changes"] = int((state.removed != removed_prev).sum())
    with torch.no_grad():
        W = [s.param.detach() for s in state.slabs]
        for i, (w, z) in enumerate(zip(W, state.Z)):
            state.U[i] = state.U[i] + state.masked(i, w - z)
        record["penalty"] = float(state.penalty())
        record["primal_residual"] = state.norm(w - z for w, z in zip(W, state.Z))
        record["dual_residual"] = state.rho * state.norm(z - zp for z, zp in zip(state.Z, z_prev))
        record["relative_primal"] = record["primal_residual"] / max(state.norm(W), 1e-12)
        if k + 1 < run.cfg.admm_iterations:  # keep the unscaled dual rho*U fixed
            ok = _accuracy_ok(run, record)
            if run.reference_accuracy is not None:
                record |= {"reference_accuracy": run.reference_accuracy, "rho_held": not ok}
            rho = run.cfg.next_rho(k, state.rho, ok)
            state.U = [u * (state.rho / rho) for u in state.U]
            state.rho = rho
    record["kept_filters"] = int(len(run.graph.prunable_classes()) - int(state.removed.sum()))
    record["kept_macs"], record["kept_params"] = run.graph.cost(state.removed.numpy())
    record |= _validate(run)
    return record


def _accuracy_ok(run: _Run, record: dict) -> bool:
    """``accuracy_guard``: rho may grow only while the W-step's training accuracy stays within
    the guard of the accuracy before ADMM (a faster pull would cut filters before the rest of
    the network has taken over their work)."""
    guard, ref = run.cfg.accuracy_guard, run.reference_accuracy
    return guard is None or ref is None or record["train_accuracy"] >= ref - guard


def _validate(run: _Run) -> dict:
    from ..data import as_loader
    from ..train import evaluate

    if run.val is None:
        return {}
    out = {"val_accuracy": evaluate(run.net, as_loader(run.val))["accuracy"]}
    with run.state.weights(run.state.masked_weights()):
        out["val_accuracy_hard"] = evaluate(run.net, as_loader(run.val))["accuracy"]
    return out


def _save(run: _Run, iteration: int) -> None:
    if run.out_dir is None:
        return
    atomic_torch_save({"format": STATE_FORMAT, "iteration": iteration, "target": run.cfg.target(),
                       "model": {k: v.cpu() for k, v in run.net.state_dict().items()},
                       "history": run.history, "reference_accuracy": run.reference_accuracy,
                       **run.state.state_dict()}, run.out_dir / STATE_NAME)


def _restore(run: _Run) -> int:
    """Continue a saved run: the number of ADMM iterations already done (-1: nothing saved)."""
    path = None if run.out_dir is None else run.out_dir / STATE_NAME
    if path is None or not path.exists():
        if path is not None:
            log.info("resume=True but no ADMM state at %s; starting from scratch", path)
        return -1
    saved = safe_torch_load(path)
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not an edgeslim ADMM state file; delete it or set resume=False")
    if saved["target"] != run.cfg.target():
        raise CheckpointError(f"{path} was written for {saved['target']}, but this run asks for "
                              f"{run.cfg.target()}; use another out_dir or the same targets")
    try:
        run.net.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit this model ({str(exc).splitlines()[0]}); it was "
                              "written for a different model. Delete it or set resume=False") from None
    run.state.load_state_dict(saved, path)
    run.history[:] = list(saved["history"])
    run.reference_accuracy = saved.get("reference_accuracy")
    log.info("resumed ADMM from %s after iteration %d", path, saved["iteration"])
    return int(saved["iteration"])


def _device(options: dict) -> torch.device:
    from ..train import TrainConfig
    from ..train.distributed import env_info
    from ..train.engine import resolve_device

    return resolve_device(TrainConfig(**options).device, env_info())


def _w_steps(cfg: ADMMConfig, train: Any) -> int:
    """SGD steps per W-step: the ADMM epochs shared by the iterations."""
    return max(1, round(cfg.admm_epochs * len(train) / cfg.admm_iterations))


def _admm_phase(run: _Run, resume: bool) -> None:
    """Initialise (or restore) Z and U, then run the remaining iterations."""
    done = _restore(run) if resume else -1
    if done < 0:
        run.reference_accuracy = _reference_accuracy(run) if run.cfg.accuracy_guard is not None else None
        run.state.rho = run.cfg.first_rho()
        run.z_step(0)  # Z0 = Pi(W0), U0 = 0: ADMM starts from the trained model
        done = 0
    steps = _w_steps(run.cfg, run.train)
    for k in range(done, run.cfg.admm_iterations):
        record = _iteration(run, k, steps)
        run.history.append(record)
        log.info("ADMM %d/%d: loss %.4f acc %.4f | primal %.4g dual %.4g | rho %.3g | %d filters kept%s",
                 k + 1, run.cfg.admm_iterations, record["train_loss"], record["train_accuracy"],
                 record["primal_residual"], record["dual_residual"], record["rho"],
                 record["kept_filters"],
                 f" | val {record['val_accuracy']:.4f} (hard-pruned {record['val_accuracy_hard']:.4f})"
                 if "val_accuracy" in record else "")
        _save(run, k + 1)


@takes_stage_config(easiedge_keywords, positional=3)
def admm_prune(model: nn.Module, example_inputs: Any, train_data: Any, *, target_filters: float | None = None,
               criterion: Any = "information_gain_taylor", rho: float | Literal["auto"] = "auto",
               admm_epochs: float = 5.0, finetune_epochs: int = 5, finetune: Any = "plain",
               target_flops: float | None = None, target_params: float | None = None,
               target_latency: float | None = None, target_speedup: float | None = None,
               runtime: str = "onnxruntime", threads: int = 1,
               cost_aware: bool | None = None, rho_schedule: float | Sequence[float] = 1.5,
               accuracy_guard: float | None = 0.02, progressive: int = 1,
               admm_iterations: int = 10, val_data: Any = None, calib_data: Any = None,
               out_dir: str | Path | None = None, resume: bool = False,
               finetune_options: dict | None = None, **options: Any) -> nn.Module:
    """EasiEdge: ADMM global filter pruning with information-gain importance.

    Args:
        model: a trained, torch.fx-traceable network (left untouched).
        example_inputs: a tensor (or tuple) for one forward pass.
        train_data: ``(x, y)`` batches (anything ``edgeslim.data.as_loader`` takes, with ``len``).
        config: the options as one ``edgeslim.pipeline.configs.PruneStage`` (``method=
            "easiedge"``, as a recipe runs it: ``remove_filters`` is ``target_filters``,
            ``finetune_lr`` the ``lr`` of both phases, ``finetune="none"`` zero fine-tuning
            epochs). Data, ``out_dir``/``resume`` and the options the stage has no field for
            stay keywords; a keyword that contradicts the config raises ConfigError.
        target_filters: fraction of the prunable filters (channel classes) removed globally
            (default 0.8 when no target is given: the paper's filter-count protocol).
        criterion: importance used by the Z-step projection (a registered name, e.g.
            ``information_gain_taylor`` (default), ``information_gain``, ``l1``, ``taylor``,
            or an ``Importance`` instance).
        rho: initial penalty weight, or ``"auto"`` (default): ``(1 - momentum) / (lr * steps)``
            with ``steps`` the optimiser steps of one iteration, so that one W-step closes the
            cut filters' distance to Z by a factor e (too small: the primal residual and the
            penalty grow; too large: the filters outside Z are cut almost at once, like
            one-shot pruning).
        admm_epochs: total epochs of W-steps, shared by the ``admm_iterations`` iterations
            (an iteration may last a fraction of an epoch).
        finetune_epochs: epochs of fine-tuning after the physical pruning (0 = none).
        finetune: ``"plain"`` (cross-entropy), ``"kd"`` (distillation from ``model``), a
            callable ``finetune(model, step)``, or ``None``.
        target_flops: instead of ``target_filters``, the fraction of FLOPs to keep, counted
            as ``edgeslim.profile`` counts them (layers the graph cannot cut included).
        target_params: instead, the fraction of parameters to keep.
        target_latency: instead, milliseconds per inference at ``example_inputs``' batch size,
            measured in ``runtime`` with ``threads`` threads (as ``prune``'s): the projection
            keeps the most importance whose *predicted* latency (the calibrated per-layer
            tables of ``prune/latency_prune.py``) meets the budget, and the hard-pruned model
            is measured and re-planned if it misses (``edgeslim.info(result).latency``).
            Channels only (no residual-branch removal). An unreachable target raises
            ``LatencyTargetError`` stating the best reachable, before any training.
        target_speedup: the same, as a factor of the unpruned model's measured latency.
        runtime: ``"onnxruntime"`` (default), ``"torch"`` or ``"openvino"``; latency targets only.
        threads: CPU threads of the latency measurements.
        cost_aware: with ``target_flops``/``target_params`` (default True there), the
            projection ranks filters by importance per FLOP/parameter they cost; False: by
            importance alone.
        rho_schedule: a growth factor per iteration (rho_{k+1} = rho_k * factor) or one rho
            per iteration.
        accuracy_guard: hold rho (no growth) after a W-step whose training accuracy fell
            more than this (0-1) below the unpruned model's on the same batches; ``None``:
            always grow.
        progressive: the Z-steps reach the target over this many projections (the j-th, from
            0, keeps ``target ** ((j + 1) / progressive)`` of the cost, or that share of the
            filter cut); 1 = the target from the start.
        admm_iterations: number of Z/U updates.
        val_data: if given, every iteration records ``val_accuracy`` (of W) and
            ``val_accuracy_hard`` (of W with the filters outside Z removed).
            Every iteration records anyway its W-step's ``train_accuracy``, ``rho``, the
            residuals, the kept filters/MACs/params and ``support_changes`` (classes whose
            cut/kept status the Z-step changed).
        calib_data: batches for the importance (default: ``train_data``).
        out_dir: if given, ``out_dir/admm_state.pt`` (W, U, Z, rho, iteration, history) is
            written atomically after every iteration, and fine-tuning checkpoints go to
            ``out_dir/finetune``.
        resume: continue from ``out_dir`` (ADMM state and fine-tuning checkpoint).
        finetune_options: options for the fine-tuning only (TrainConfig fields; for ``"kd"``
            also ``losses``, ``T``...).
        **options: ``calib_batches`` (4), ``ignore``, ``round_to``, ``min_channels``,
            ``protect_first`` (True) and TrainConfig fields (``lr`` (0.01), ``device``,
            ``optimizer``, ``weight_decay``...) for both training phases; the ADMM phase
            uses ``schedule="constant"`` unless told otherwise.

    Returns:
        The pruned, fine-tuned copy; ``edgeslim.info(result).admm_history`` holds one record
        per iteration (loss, accuracy, rho, primal and dual residuals, kept filters, ...) and
        the final stages, and ``info(result).plans`` the pruning plan.
    """
    own = {k: options.pop(k) for k in [f.name for f in dataclasses.fields(ADMMConfig)] if k in options}
    cfg = ADMMConfig(target_filters=target_filters, target_flops=target_flops, target_params=target_params,
                     target_latency=target_latency, target_speedup=target_speedup, runtime=runtime,
                     threads=threads, cost_aware=cost_aware, criterion=criterion, rho=rho, rho_schedule=rho_schedule,
                     accuracy_guard=accuracy_guard, progressive=progressive, admm_iterations=admm_iterations,
                     admm_epochs=admm_epochs, finetune_epochs=finetune_epochs, finetune=finetune, **own)
    admm_opts = _train_options(options, lr=0.01, schedule="constant", progress=False)
    tune_opts = _train_options(options, lr=0.01, progress=False) | (finetune_options or {})
    net = copy.deepcopy(model).to(_device(admm_opts))
    run = _prepare(cfg, net, example_inputs, train_data, val_data, calib_data, admm_opts, out_dir)
    out_shape = _output_shape(net, run.inputs)
    _admm_phase(run, resume)
    _hard_prune(run, out_shape)
    if cfg.finetune is not None and cfg.finetune_epochs > 0:
        _finetune(cfg, net, model, train_data, tune_opts, out_dir, resume)
        run.history.append({"stage": "finetuned"} | _validate_net(net, val_data))
    info(net).admm_history = run.history
    return net


def _hard_prune(run: _Run, out_shape: Any) -> None:
    """Remove the filters outside Pi(W) physically (the surgery keeps W's other weights).

    The last support is chosen on W, not on W + U as in the iterations (ADMM weight pruning,
    Zhang et al. 2018, also hard-prunes Pi(W)): W + U adds the dual's pull, which may swap a
    filter in that W has not grown yet; W itself has converged to the support it works with.
    """
    net = run.net
    last = run.state.removed.clone()
    removed = run.z_step(run.cfg.admm_iterations + 1, dual=False)
    if run.latency is not None:  # measured, and re-planned with the measurement if it misses
        removed, info(net).latency = run.latency.finish(
            lambda budget: run.latency.plan(run.last_scores, budget_ms=budget), removed)
    plan = prune_channels_(net, run.graph, removed)
    info(net).plans = list(info(net).plans) + [plan]
    _check_forward(net, run.inputs, out_shape)
    kept = len(run.graph.prunable_classes()) - int(removed.sum())
    changed = int((torch.as_tensor(removed) != last).sum())
    run.history.append({"stage": "hard_pruned", "kept_filters": kept, "changed_from_last_z": changed}
                       | _validate_net(net, run.val))


def _validate_net(net: nn.Module, val_data: Any) -> dict:
    from ..data import as_loader
    from ..train import evaluate

    return {} if val_data is None else {"val_accuracy": evaluate(net, as_loader(val_data))["accuracy"]}


def _prepare(cfg: ADMMConfig, net: nn.Module, example_inputs: Any, train_data: Any, val_data: Any,
             calib_data: Any, options: dict, out_dir: str | Path | None) -> _Run:
    from ..data import as_loader

    inputs = _example(net, example_inputs)
    graph = build_dependency_graph(net, inputs, ignore=tuple(cfg.ignore), protect_first=cfg.protect_first)
    train = as_loader(train_data)
    if not hasattr(train, "__len__") or len(train) == 0:
        raise ConfigError("admm_prune: train_data must be a non-empty loader with len() (a TensorLoader, "
                          "a DataLoader, a list of (x, y) batches or an (X, Y) tensor pair)")
    ctx = ImportanceContext(calib_data=calib_data if calib_data is not None else train_data,
                            max_batches=cfg.calib_batches)
    fixed = _unmodelled(net, inputs, cfg, graph)
    cfg.resolve_rho(_w_steps(cfg, train), options)
    latency = None
    if cfg.latency_target:  # measured before training: an unreachable target fails now
        from .latency_prune import LatencyBudget

        latency = LatencyBudget(net, inputs, graph, cfg)
    return _Run(cfg, net, graph, ADMMState(collect_slabs(graph), cfg.first_rho()), fixed, ctx,
                train, val_data, options, None if out_dir is None else Path(out_dir), [], inputs,
                latency=latency)


def _reference_accuracy(run: _Run) -> float:
    """The guard's reference: the unpruned model's accuracy on the batches of the first W-step,
    augmented as the W-step sees them (so that augmentation does not count as a drop)."""
    from ..train import evaluate

    seed = run.options.get("seed", 0)
    return evaluate(run.net, BatchWindow(run.train, 0, _w_steps(run.cfg, run.train), seed))["accuracy"]


def _finetune(cfg: ADMMConfig, net: nn.Module, teacher: nn.Module, train_data: Any, options: dict,
              out_dir: str | Path | None, resume: bool) -> None:
    """Plain or KD fine-tuning (the unpruned input model teaches), as ``prune`` does it."""
    if out_dir is not None and isinstance(cfg.finetune, str):
        options = options | {"out_dir": str(Path(out_dir) / "finetune"), "resume": resume}
    tune = _resolve_finetune(cfg.finetune, teacher, train_data, cfg.finetune_epochs, options)
    tune(net, 1)
