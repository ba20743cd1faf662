"""``edgeslim.prune``: global or layerwise, one-shot or iterative structured pruning.

The steps are those of Torch-Pruning's design (dependency graph -> groups ->
importance -> plan -> surgery), with the knowledge-transfer pipeline's schedule
(Chen et al. 2020: score filters, cut the least important globally, fine-tune,
repeat) and fine-tuning that is plain, by knowledge distillation from the
unpruned model (Liu, Zhang, Chen 2020), or any callable.
"""
from __future__ import annotations

import copy
import inspect
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._checks import check_finite, check_model_and_inputs
from ..errors import ConfigError, EdgeslimError
from ..modelinfo import info
from ..graph import DependencyGraph, build_dependency_graph
from .._core import did_you_mean, eval_mode, flatten_outputs, run_on_meta
from .importance import Importance, ImportanceContext, get_importance
from .planner import Budget, Constraints, explain_locks, plan_removal
from ..stage_args import structured_keywords, takes_stage_config
from .surgery import prune_channels_

log = logging.getLogger(__name__)
Finetune = Callable[[nn.Module, int], None]


class PruneWarning(UserWarning):
    """A pruning request that left the model unchanged (the message says why)."""


class PruneArgumentError(ConfigError, TypeError):
    """An unknown keyword argument to ``prune``/``prune_`` (also a TypeError, as Python's is)."""


_TARGET_NAMES = ("ratio", "target_flops", "target_params", "target_latency", "target_speedup")
_TARGET_RANGES = {"ratio": (lambda v: 0.0 <= v < 1.0, "[0, 1)"),
                  "target_flops": (lambda v: 0.0 < v <= 1.0, "(0, 1]"),
                  "target_params": (lambda v: 0.0 < v <= 1.0, "(0, 1]"),
                  "target_latency": (lambda v: v > 0.0, "(0, inf) milliseconds"),
                  "target_speedup": (lambda v: v >= 1.0, "[1, inf) (times faster)")}


@dataclass
class PruneConfig:
    """Everything ``prune`` needs; see ``prune`` for the meaning of each field."""

    criterion: Any = "l1"
    planner: str = "global"
    ratio: float | None = None
    target_flops: float | None = None
    target_params: float | None = None
    target_latency: float | None = None
    target_speedup: float | None = None
    runtime: str = "onnxruntime"
    threads: int = 1
    steps: int = 1
    ignore: Sequence[str] = ()
    round_to: int = 1
    min_channels: int = 1
    protect_first: bool = True
    on_unsupported: str = "error"
    # a latency target that even the fastest model measured misses: "error", or "fastest" (keep it)
    on_unreachable: str = "error"
    calib_batches: int = 8
    depth: bool = True
    # exact merges (BN folding) as free moves of the latency planner: "exact", "none", or "auto"
    # (prune_: "exact" unless it fine-tunes, since a folded model has no BN left to train)
    merge: str = "auto"
    latency_runs: int = 30
    # rank by importance per FLOP/parameter? Off by default for prune(): on LeNet-5 / MNIST and
    # CIFAR-10 the magnitude and Taylor baselines ranked by importance alone were as good or better
    # (benchmarks/results/easiedge_matched_*.json), and cost-aware L1 can keep dead filters.
    # EasiEdge's projection (admm_prune) is cost-aware by default.
    cost_aware: bool | None = False

    def _targets(self) -> dict:
        return {k: getattr(self, k) for k in _TARGET_NAMES if getattr(self, k) is not None}

    @property
    def latency_target(self) -> bool:
        return self.target_latency is not None or self.target_speedup is not None

    def __post_init__(self) -> None:
        targets = self._targets()
        if len(targets) != 1:
            raise ConfigError("give exactly one pruning target: ratio= (fraction of channels removed), "
                              "target_flops= or target_params= (fraction kept), target_latency= (ms) or "
                              f"target_speedup= (x faster); got {targets or 'none'}")
        (name, value), = targets.items()
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be a number")
        ok, rng = _TARGET_RANGES[name]
        if not ok(value):
            raise ConfigError(f"{name}={value} is impossible: it must lie in {rng}")
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1:
            raise ConfigError(f"threads={self.threads!r} must be an integer >= 1")
        counts = {"steps": self.steps, "round_to": self.round_to, "min_channels": self.min_channels}
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in counts.values()):
            raise ConfigError(f"steps, round_to and min_channels must be integers >= 1; got {counts}")
        if self.merge not in ("auto", "exact", "none"):
            raise ConfigError(f"merge={self.merge!r}: use 'exact' (fold BNs where that is faster), 'none' "
                              "or 'auto' ('exact' unless fine-tuning follows)")
        if self.on_unsupported not in ("error", "lock"):
            raise ConfigError(f"on_unsupported={self.on_unsupported!r}: use 'error' or 'lock'")
        if self.on_unreachable not in ("error", "fastest"):
            raise ConfigError(f"on_unreachable={self.on_unreachable!r}: use 'error' (fail when the "
                              "latency target is out of reach) or 'fastest' (keep the fastest model)")
        # a str is one path, not a sequence of one-letter paths
        self.ignore = (self.ignore,) if isinstance(self.ignore, str) else tuple(self.ignore)

    @property
    def target(self) -> str:
        """The target as given, e.g. ``"ratio=0.5"``."""
        return next(f"{k}={v}" for k, v in self._targets().items())

    @property
    def trivial(self) -> bool:
        """Whether the target asks to remove nothing (``ratio=0``, a 100% FLOPs/params budget)."""
        return self.ratio == 0 or self.target_flops == 1 or self.target_params == 1 or self.target_speedup == 1


def _budget(cfg: PruneConfig, step: int, n0: int, macs0: int, params0: int,
            fixed: tuple[float, float] = (0.0, 0.0)) -> Budget:
    """The target of step ``step``. ``fixed`` is the (MACs, params) that the graph's
    cost model does not see (inside ignored blocks, free parameters); they count
    towards the total the fraction refers to but can never be cut."""
    frac = step / cfg.steps
    if cfg.ratio is not None:
        return Budget(channels=round(cfg.ratio * frac * n0))
    if cfg.target_flops is not None:
        return Budget(macs=(macs0 + fixed[0]) * cfg.target_flops ** frac - fixed[0])
    return Budget(params=(params0 + fixed[1]) * cfg.target_params ** frac - fixed[1])


def _unmodelled(model: nn.Module, inputs: tuple, cfg: PruneConfig, graph: DependencyGraph) -> tuple[float, float]:
    """Measured cost (``edgeslim.profile``'s counters) minus the graph's estimate, per sample;
    no counting pass when every MAC is a slicer's (the graph's cost is then exact)."""
    from ..profile import count_flops, count_params

    macs0, params0 = graph.cost()
    macs = 0.0
    if cfg.target_flops is not None and not graph.fully_modelled:
        batch = next((t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 0), 1)
        macs = count_flops(model, inputs)[1] / max(batch, 1) - macs0
    return macs, float(count_params(model) - params0)


def _graph(model: nn.Module, inputs: tuple, cfg: PruneConfig) -> DependencyGraph:
    return build_dependency_graph(model, inputs, ignore=cfg.ignore, on_unsupported=cfg.on_unsupported,
                                  protect_first=cfg.protect_first)


def _example(model: nn.Module, example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        inputs: tuple = (example_inputs,)
    elif isinstance(example_inputs, (tuple, list)):
        inputs = tuple(example_inputs)
    else:
        raise ConfigError(f"prune: example_inputs must be a tensor or a tuple of tensors, got "
                          f"{type(example_inputs).__name__}; e.g. torch.randn(1, 3, 32, 32)")
    device = next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))
    return tuple(t.to(device) if isinstance(t, torch.Tensor) and not t.is_meta else t for t in inputs)


_OPTIONS = ("min_channels", "protect_first", "on_unsupported", "on_unreachable", "calib_batches", "depth",
            "merge", "latency_runs", "cost_aware")  # PruneConfig's


def _check_options(options: dict) -> None:
    """``**options`` are PruneConfig fields; anything else is a typo, refused like Python does."""
    for key in options:
        if key in _OPTIONS:
            continue
        valid = [n for n in inspect.signature(prune_).parameters
                 if n not in ("model", "example_inputs", "options")] + list(_OPTIONS)
        raise PruneArgumentError(f"prune() got an unexpected keyword argument {key!r}.{did_you_mean(key, valid)} "
                                 f"Valid keywords: {', '.join(sorted(valid))}")


def _check_request(model: nn.Module, inputs: tuple, cfg: PruneConfig, calib_data: Any) -> None:
    """What can be refused before any work: a model without data or with NaN weights, inputs
    that do not fit it, a data-driven criterion without data."""
    check_model_and_inputs(model, inputs, "prune")
    check_finite(model, "prune")
    importance = get_importance(cfg.criterion)
    if importance.needs_data:
        ImportanceContext(calib_data=calib_data, max_batches=cfg.calib_batches).check(importance.name)


def _check_scores(graph: DependencyGraph, scores: Any, importance: Importance) -> None:
    prunable = graph.prunable_classes()
    if prunable and not (scores[prunable] == scores[prunable]).any():  # all NaN
        raise ConfigError(
            f"criterion {importance.name} scored none of the {len(prunable)} prunable channels "
            "(every score is NaN). Fix: check calib_data for NaN/inf values, or use criterion='l1'"
        )


def prune_step_(model: nn.Module, inputs: tuple, cfg: PruneConfig, budget: Budget,
                already_removed: int, calib_data: Any = None,
                graph: DependencyGraph | None = None) -> dict:
    """One pruning step in place: graph (unless given, built on ``model`` as it is now),
    scores, plan, surgery. Returns the plan."""
    if graph is None:
        graph = _graph(model, inputs, cfg)
    ctx = ImportanceContext(calib_data=calib_data, max_batches=cfg.calib_batches)
    importance = get_importance(cfg.criterion)
    scores = importance(graph, model, ctx)
    _check_scores(graph, scores, importance)
    removed = plan_removal(graph, scores, budget, cfg.planner,
                           Constraints(cfg.min_channels, cfg.round_to), already_removed,
                           cost_aware=cfg.cost_aware)
    return prune_channels_(model, graph, removed) | {"removed": int(removed.sum())}


def _latency_step_(model: nn.Module, inputs: tuple, cfg: PruneConfig, calib_data: Any,
                   graph: DependencyGraph | None, step: int) -> dict:
    from .latency_prune import prune_to_latency_

    latency = info(model).latency
    origin = latency.origin_ms if step > 1 and latency is not None else None
    return prune_to_latency_(model, inputs, cfg, calib_data, graph or _graph(model, inputs, cfg),
                             step / cfg.steps, origin)


def _caller_level() -> int:
    """``warnings.warn``'s stacklevel for the first frame outside edgeslim (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("edgeslim."):
        frame, level = frame.f_back, level + 1
    return level


def _unchanged_reason(graph: DependencyGraph, cfg: PruneConfig, n0: int) -> str:
    """Why a non-trivial target removed nothing, and what to change."""
    head = f"prune({cfg.target}) left the model unchanged: "
    if n0 == 0:
        return head + explain_locks(graph)
    if cfg.ratio is not None:
        return head + (f"ratio={cfg.ratio} of the {n0} prunable channels rounds to 0 channels. "
                       f"Fix: ask for ratio >= {0.5 / n0:.3g}")
    return head + "the budget is already met"


@takes_stage_config(structured_keywords, positional=2)
def prune_(model: nn.Module, example_inputs: Any, *, criterion: Any = "l1", planner: str = "global",
           ratio: float | None = None, target_flops: float | None = None,
           target_params: float | None = None, target_latency: float | None = None,
           target_speedup: float | None = None, runtime: str = "onnxruntime", threads: int = 1,
           steps: int = 1, finetune: Finetune | str | None = None,
           ignore: Sequence[str] = (), round_to: int = 1, calib_data: Any = None,
           train_data: Any = None, finetune_epochs: int = 1, finetune_options: dict | None = None,
           **options: Any) -> nn.Module:
    """In-place version of :func:`prune` (the model object itself shrinks)."""
    _check_options(options)
    cfg = PruneConfig(criterion=criterion, planner=planner, ratio=ratio, target_flops=target_flops,
                      target_params=target_params, target_latency=target_latency,
                      target_speedup=target_speedup, runtime=runtime, threads=threads, steps=steps,
                      ignore=ignore, round_to=round_to, **options)
    inputs = _example(model, example_inputs)
    _check_request(model, inputs, cfg, calib_data)
    teacher = copy.deepcopy(model) if finetune == "kd" else None
    tune = _resolve_finetune(finetune, teacher, train_data or calib_data, finetune_epochs,
                             finetune_options or {})
    if cfg.merge == "auto":
        cfg.merge = "none" if tune is not None else "exact"
    graph0 = _graph(model, inputs, cfg)
    # recorded by the trace's forward pass (a single output tensor), else measured now
    out_shape = graph0.output_shape or _output_shape(model, inputs)
    n0 = len(graph0.prunable_classes())
    macs0, params0 = graph0.cost()
    fixed = _unmodelled(model, inputs, cfg, graph0) \
        if cfg.ratio is None and not cfg.latency_target else (0.0, 0.0)
    removed_total = 0
    plans = list(info(model).plans)
    for step in range(1, cfg.steps + 1):
        if cfg.latency_target:  # measured on the runtime: prune/latency_prune.py
            plan = _latency_step_(model, inputs, cfg, calib_data, graph0 if step == 1 else None, step)
        else:
            plan = prune_step_(model, inputs, cfg, _budget(cfg, step, n0, macs0, params0, fixed),
                               removed_total, calib_data, graph0 if step == 1 else None)
        removed_total += plan.pop("removed")
        plans.append(plan)
        log.info("pruning step %d/%d: %d of %d channels removed so far", step, cfg.steps,
                 removed_total, n0)
        if tune is not None:
            tune(model, step)
    if removed_total == 0 and not cfg.trivial:
        warnings.warn(PruneWarning(_unchanged_reason(graph0, cfg, n0)), stacklevel=_caller_level())
    info(model).plans = plans
    _check_forward(model, inputs, out_shape)
    return model


@takes_stage_config(structured_keywords, positional=2)
def prune(model: nn.Module, example_inputs: Any, *, criterion: Any = "l1", planner: str = "global",
          ratio: float | None = None, target_flops: float | None = None,
          target_params: float | None = None, target_latency: float | None = None,
          target_speedup: float | None = None, runtime: str = "onnxruntime", threads: int = 1,
          steps: int = 1, finetune: Finetune | str | None = None,
          ignore: Sequence[str] = (), round_to: int = 1, calib_data: Any = None,
          **options: Any) -> nn.Module:
    """Return a new, physically smaller copy of ``model`` (the original is untouched).

    Args:
        model: any torch.fx-traceable ``nn.Module`` (residual adds, concatenation,
            depthwise/grouped convs, split, squeeze-excitation, a module called twice and
            tied parameters are handled; a grouped conv keeps its group count and loses
            the same channels from every group).
        example_inputs: a tensor (or tuple, one per ``forward`` argument) for one forward pass.
        config: the options as one ``edgeslim.pipeline.configs.PruneStage`` (``method=
            "structured"``; the recipe's ``prune`` stage, the CLI's ``edgeslim prune`` flags),
            instead of the keywords below: its ``remove_channels`` is ``ratio``, ``finetune_lr``
            is ``finetune_options={"lr": ...}``, and its ``finetune`` default is ``"plain"``
            (needs ``train_data=``; ``"none"`` lets a callable ``finetune=`` in). Keywords may
            be given beside it where they agree with it or are Python-only (``calib_data``,
            ``train_data``, a callable ``finetune``); a contradicting keyword raises ConfigError.
        criterion: a registered importance name (``l1``, ``l2``, ``bn_scale``, ``taylor``,
            ``random``, ``information_gain``, ``information_gain_taylor``) or an
            ``Importance`` instance. The data-driven ones score a model that returns a
            tuple/list/dict (``(logits, features)``) on its first tensor.
        planner: ``"global"`` (one ranking over all layers) or ``"layerwise"``.
        ratio: fraction of the prunable channels to remove.
        target_flops: fraction of the FLOPs to keep (``0.5`` halves them).
        target_params: fraction of the parameters to keep.
        target_latency: milliseconds per inference at ``example_inputs``' batch size, measured
            in ``runtime`` with ``threads`` threads (see ``edgeslim.measure_latency``). The
            latency planner (``prune/latency_planner.py``) cuts channels to the sizes the
            runtime is fast at and removes residual branches (``depth=False`` to not), folds
            each BatchNorm into its conv where the runtime runs the folded conv faster
            (``merge="exact"``; ``"none"`` to not; the default ``"auto"`` is ``"exact"``
            unless ``finetune`` is given: a folded model has no BN to fine-tune), then
            measures the result and re-plans if it misses; ``edgeslim.info(model).latency``
            (a :class:`~edgeslim.modelinfo.LatencyResult`) holds the baseline, target, predicted and measured latency. Before planning it times
            up to three probe variants to calibrate the per-layer tables to whole-network
            latency (``profile/latency_table.py``, "Calibration"). On a machine shared with
            other processes, ``EDGESLIM_LATENCY_CLOCK=thread`` (one thread only) times by
            CPU time.
        target_speedup: the same, as a factor of the unpruned model's measured latency.
        runtime: ``"onnxruntime"`` (default), ``"torch"`` (eager) or ``"openvino"`` (optional
            extra: ``pip install openvino``); only read with a latency target.
        threads: CPU threads of the latency measurements.
        steps: reach the target in this many prune (+ fine-tune) steps.
        finetune: ``None``, ``"plain"``, ``"kd"`` (the unpruned model teaches) or a
            callable ``finetune(model, step)``; strings need ``train_data=``.
        ignore: module paths to leave alone (each must be a ``named_modules()`` path).
        round_to: keep channel counts multiples of this (fast kernels like 8 or 16).
        calib_data: batches for data-driven criteria.
        **options: ``train_data``, ``finetune_epochs``, ``finetune_options`` (TrainConfig
            fields), ``min_channels``, ``protect_first`` (default True: the first conv
            keeps its channels), ``on_unsupported`` (``"error"``/``"lock"``),
            ``on_unreachable`` (latency targets: ``"error"``, the default, fails when even the
            fastest model measured misses the target; ``"fastest"`` keeps that model, with a
            ``PruneWarning``, its latency in ``edgeslim.info(model).latency``),
            ``calib_batches``, ``cost_aware`` (default False: rank channels by importance
            alone; True, with ``target_flops``/``target_params``: by importance per
            FLOP/parameter they cost, see ``edgeslim.prune.planner``); any other keyword
            raises ``PruneArgumentError``.

    Returns:
        The pruned model; ``edgeslim.info(model).plans`` lists each step's plan.

    Raises:
        ConfigError: a bad request (target, keyword, ``ignore`` path, criterion without the
            data it needs, inputs that do not fit the model) or an unreachable target.
        UnsupportedModelError: an operation the tracer cannot prune through, a tied
            parameter in two roles, NaN/inf weights, a model on the meta device.

    Warns:
        PruneWarning: the target removed nothing (every channel locked, or a ratio that
            rounds to 0 channels); the message says why.
    """
    return prune_(copy.deepcopy(model), example_inputs, criterion=criterion, planner=planner,
                  ratio=ratio, target_flops=target_flops, target_params=target_params,
                  target_latency=target_latency, target_speedup=target_speedup, runtime=runtime,
                  threads=threads, steps=steps,
                  finetune=finetune, ignore=ignore, round_to=round_to, calib_data=calib_data,
                  **options)


# Fine-tuning a pruned network starts from trained weights: a small learning rate (the Trainer's
# 0.1 default is for training from scratch and wrecks a pruned model within one epoch).
FINETUNE_DEFAULTS = {"lr": 0.01, "progress": False}


def _resolve_finetune(finetune: Finetune | str | None, teacher: nn.Module | None, data: Any,
                      epochs: int, options: dict) -> Finetune | None:
    if finetune is None or callable(finetune) or finetune == "none":  # "none": YAML/CLI's spelling
        return None if finetune == "none" else finetune
    if finetune not in ("plain", "kd"):
        raise ConfigError(f"finetune={finetune!r}: use None (or 'none'), 'plain', 'kd' or a "
                          "callable(model, step)")
    if data is None:
        raise ConfigError(f"finetune={finetune!r} needs train_data= (batches of (x, y))")
    if finetune == "kd":
        from ..distill import kd_finetune

        return kd_finetune(teacher, epochs, data, **(FINETUNE_DEFAULTS | options))
    return plain_finetune(epochs, data, **options)


def plain_finetune(epochs: int, train_data: Any, **options: Any) -> Finetune:
    """A ``finetune(model, step)`` callback: cross-entropy training with the Trainer."""
    from ..data import as_loader
    from ..train import TrainConfig, Trainer

    opts = FINETUNE_DEFAULTS | options

    def run(model: nn.Module, step: int) -> None:
        Trainer(model, TrainConfig(epochs=epochs, **opts)).fit(as_loader(train_data))

    return run


def _output_shape(model: nn.Module, inputs: tuple) -> Any:
    """The output's shape; for a tuple/list/dict output, the shapes of its tensors (found on the
    meta device where the model allows it: no computation)."""
    with eval_mode(model), torch.no_grad():  # restores each submodule's own flag (frozen BN)
        try:
            out = run_on_meta(model, inputs, lambda m, xs: m(*xs))
        except Exception:  # data-dependent code: run it for real (and report its own error)
            out = model(*inputs)
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    try:
        return tuple(tuple(t.shape) for t in flatten_outputs(out))
    except TypeError:
        return None


def _check_forward(model: nn.Module, inputs: tuple, expected: Any) -> None:
    """A broken model must never be returned silently."""
    try:
        got = _output_shape(model, inputs)
    except Exception as exc:
        raise EdgeslimError(
            f"internal error: the pruned model no longer runs ({exc}). Please report this with the "
            "model definition; meanwhile exclude the failing layer with ignore=[...]"
        ) from exc
    if got != expected:
        raise EdgeslimError(f"internal error: pruning changed the output shape from {expected} to {got}")
