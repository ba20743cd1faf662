"""``edgeslim.prune``: global or layerwise, one-shot or iterative structured pruning.

The steps are those of Torch-Pruning's design (dependency graph -> groups ->
importance -> plan -> surgery), with the knowledge-transfer pipeline's schedule
(Chen et al. 2020: score filters, cut the least important globally, fine-tune,
repeat) and fine-tuning that is plain, by knowledge distillation from the
unpruned model (Liu, Zhang, Chen 2020), or any callable.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, EdgeslimError
from ..graph import DependencyGraph, build_dependency_graph
from ..models.utils import eval_mode
from .importance import ImportanceContext, get_importance
from .planner import Budget, Constraints, plan_removal
from .surgery import prune_channels_

log = logging.getLogger(__name__)
Finetune = Callable[[nn.Module, int], None]


@dataclass
class PruneConfig:
    """Everything ``prune`` needs; see ``prune`` for the meaning of each field."""

    criterion: Any = "l1"
    planner: str = "global"
    ratio: float | None = None
    target_flops: float | None = None
    target_params: float | None = None
    steps: int = 1
    ignore: Sequence[str] = ()
    round_to: int = 1
    min_channels: int = 1
    protect_first: bool = True
    on_unsupported: str = "error"
    calib_batches: int = 8
    cost_aware: bool | None = None  # rank by importance per FLOP/parameter (None: for those targets)

    def __post_init__(self) -> None:
        targets = {k: v for k, v in (("ratio", self.ratio), ("target_flops", self.target_flops),
                                     ("target_params", self.target_params)) if v is not None}
        if len(targets) != 1:
            raise ConfigError("give exactly one pruning target: ratio= (fraction of channels removed), "
                              f"target_flops= or target_params= (fraction kept); got {targets or 'none'}")
        (name, value), = targets.items()
        ok = 0.0 <= value < 1.0 if name == "ratio" else 0.0 < value <= 1.0
        if not ok:
            rng = "[0, 1)" if name == "ratio" else "(0, 1]"
            raise ConfigError(f"{name}={value} is impossible: it must lie in {rng}")
        if self.steps < 1 or self.round_to < 1 or self.min_channels < 1:
            raise ConfigError("steps, round_to and min_channels must be >= 1")


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


def _unmodelled(model: nn.Module, inputs: tuple, cfg: PruneConfig, macs0: int,
                params0: int) -> tuple[float, float]:
    """Measured cost (``edgeslim.profile``'s counters) minus the graph's estimate, per sample."""
    from ..profile import count_flops, count_params

    macs = 0.0
    if cfg.target_flops is not None:
        batch = next((t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 0), 1)
        macs = count_flops(model, inputs)[1] / max(batch, 1) - macs0
    return macs, float(count_params(model) - params0)


def _graph(model: nn.Module, inputs: tuple, cfg: PruneConfig) -> DependencyGraph:
    return build_dependency_graph(model, inputs, ignore=cfg.ignore, on_unsupported=cfg.on_unsupported,
                                  protect_first=cfg.protect_first)


def _example(model: nn.Module, example_inputs: Any) -> tuple:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs)


def prune_step_(model: nn.Module, inputs: tuple, cfg: PruneConfig, budget: Budget,
                already_removed: int, calib_data: Any = None,
                graph: DependencyGraph | None = None) -> dict:
    """One pruning step in place: graph (unless given, built on ``model`` as it is now),
    scores, plan, surgery. Returns the plan."""
    if graph is None:
        graph = _graph(model, inputs, cfg)
    ctx = ImportanceContext(calib_data=calib_data, max_batches=cfg.calib_batches)
    scores = get_importance(cfg.criterion)(graph, model, ctx)
    removed = plan_removal(graph, scores, budget, cfg.planner,
                           Constraints(cfg.min_channels, cfg.round_to), already_removed,
                           cost_aware=cfg.cost_aware)
    return prune_channels_(model, graph, removed) | {"removed": int(removed.sum())}


def prune_(model: nn.Module, example_inputs: Any, *, criterion: Any = "l1", planner: str = "global",
           ratio: float | None = None, target_flops: float | None = None,
           target_params: float | None = None, steps: int = 1, finetune: Finetune | str | None = None,
           ignore: Sequence[str] = (), round_to: int = 1, calib_data: Any = None,
           train_data: Any = None, finetune_epochs: int = 1, finetune_options: dict | None = None,
           **options: Any) -> nn.Module:
    """In-place version of :func:`prune` (the model object itself shrinks)."""
    cfg = PruneConfig(criterion=criterion, planner=planner, ratio=ratio, target_flops=target_flops,
                      target_params=target_params, steps=steps, ignore=tuple(ignore),
                      round_to=round_to, **options)
    inputs = _example(model, example_inputs)
    teacher = copy.deepcopy(model) if finetune == "kd" else None
    tune = _resolve_finetune(finetune, teacher, train_data or calib_data, finetune_epochs,
                             finetune_options or {})
    graph0 = _graph(model, inputs, cfg)
    out_shape = graph0.output_shape  # recorded by the trace's forward pass
    n0 = len(graph0.prunable_classes())
    macs0, params0 = graph0.cost()
    fixed = _unmodelled(model, inputs, cfg, macs0, params0) if cfg.ratio is None else (0.0, 0.0)
    removed_total = 0
    plans = list(getattr(model, "edgeslim_plans", []))
    for step in range(1, cfg.steps + 1):
        plan = prune_step_(model, inputs, cfg, _budget(cfg, step, n0, macs0, params0, fixed),
                           removed_total, calib_data, graph0 if step == 1 else None)
        removed_total += plan.pop("removed")
        plans.append(plan)
        log.info("pruning step %d/%d: %d of %d channels removed so far", step, cfg.steps,
                 removed_total, n0)
        if tune is not None:
            tune(model, step)
    model.edgeslim_plans = plans
    _check_forward(model, inputs, out_shape)
    return model


def prune(model: nn.Module, example_inputs: Any, *, criterion: Any = "l1", planner: str = "global",
          ratio: float | None = None, target_flops: float | None = None,
          target_params: float | None = None, steps: int = 1, finetune: Finetune | str | None = None,
          ignore: Sequence[str] = (), round_to: int = 1, calib_data: Any = None,
          **options: Any) -> nn.Module:
    """Return a new, physically smaller copy of ``model`` (the original is untouched).

    Args:
        model: any torch.fx-traceable ``nn.Module`` (residual adds, concatenation,
            depthwise/grouped convs, split, squeeze-excitation are handled).
        example_inputs: a tensor (or tuple) for one forward pass.
        criterion: a registered importance name (``l1``, ``l2``, ``bn_scale``, ``taylor``,
            ``random``, ``information_gain``, ``information_gain_taylor``) or an
            ``Importance`` instance.
        planner: ``"global"`` (one ranking over all layers) or ``"layerwise"``.
        ratio: fraction of the prunable channels to remove.
        target_flops: fraction of the FLOPs to keep (``0.5`` halves them).
        target_params: fraction of the parameters to keep.
        steps: reach the target in this many prune (+ fine-tune) steps.
        finetune: ``None``, ``"plain"``, ``"kd"`` (the unpruned model teaches) or a
            callable ``finetune(model, step)``; strings need ``train_data=``.
        ignore: module paths to leave alone.
        round_to: keep channel counts multiples of this (fast kernels like 8 or 16).
        calib_data: batches for data-driven criteria.
        **options: ``train_data``, ``finetune_epochs``, ``finetune_options`` (TrainConfig
            fields), ``min_channels``, ``protect_first`` (default True: the first conv
            keeps its channels), ``on_unsupported`` (``"error"``/``"lock"``),
            ``calib_batches``, ``cost_aware`` (default: True for ``target_flops`` and
            ``target_params``: rank channels by importance per FLOP/parameter they cost;
            False: by importance alone; see ``edgeslim.prune.planner``).

    Returns:
        The pruned model; ``model.edgeslim_plans`` lists each step's plan.
    """
    return prune_(copy.deepcopy(model), example_inputs, criterion=criterion, planner=planner,
                  ratio=ratio, target_flops=target_flops, target_params=target_params, steps=steps,
                  finetune=finetune, ignore=ignore, round_to=round_to, calib_data=calib_data,
                  **options)


# Fine-tuning a pruned network starts from trained weights: a small learning rate (the Trainer's
# 0.1 default is for training from scratch and wrecks a pruned model within one epoch).
FINETUNE_DEFAULTS = {"lr": 0.01, "progress": False}


def _resolve_finetune(finetune: Finetune | str | None, teacher: nn.Module | None, data: Any,
                      epochs: int, options: dict) -> Finetune | None:
    if finetune is None or callable(finetune):
        return finetune
    if finetune not in ("plain", "kd"):
        raise ConfigError(f"finetune={finetune!r}: use None, 'plain', 'kd' or a callable(model, step)")
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
    with eval_mode(model), torch.no_grad():  # restores each submodule's own flag (frozen BN)
        out = model(*inputs)
    return tuple(out.shape) if isinstance(out, torch.Tensor) else None


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
