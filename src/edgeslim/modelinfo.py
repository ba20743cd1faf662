"""What edgeslim knows about a model: one typed :class:`ModelInfo` per model, read with :func:`info`.

Every transform records its result here (how the model was built, the pruning plans, the latency
reached, what lighten/fold/merge changed, training histories) instead of in loose ``edgeslim_*``
attributes. The record is a plain dataclass kept in the module's ``__dict__``: it is not an
``nn.Module``, holds no tensors, and so never reaches ``state_dict``, a torch.fx trace or an ONNX
graph; ``copy.deepcopy(model)`` copies it with the model. Transforms that build a new module
(a ``GraphModule``) carry it over with :func:`copy_info`.

This module imports no torch at import time (``create_model`` and recipe parsing use it).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import EdgeslimError

if TYPE_CHECKING:
    from torch import nn

    from .transforms.fold import FoldReport
    from .transforms.merge import MergeRecord, MergeReport

_ATTR = "_edgeslim_info"


@dataclass
class Arch:
    """How ``create_model`` built a model: the registered name and *all* its keyword arguments
    (JSON values, defaults included), so ``create_model(arch.name, **arch.kwargs)`` rebuilds it."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "kwargs": {...}}`` (JSON-serialisable)."""
        return {"name": self.name, "kwargs": copy.deepcopy(self.kwargs)}


@dataclass
class LatencyResult:
    """What a latency-targeted ``prune`` measured (milliseconds per inference at ``batch``).

    ``origin_ms`` is the unpruned model's latency, ``baseline_ms`` the latency before this step,
    ``target_ms`` this step's goal, ``predicted_ms`` the latency table's estimate of the plan and
    ``measured_ms`` the runtime's measurement of the result. The remaining fields are set when a
    plan was made (the target was below the baseline): ``attempts`` (predicted/measured per
    plan), ``probes`` (the calibration variants measured before planning) and ``scale`` (the
    latency model's fitted channel and depth scales, ``profile/latency_table.py``). ``merges``
    lists the exact merges the planner took (``"fold_bn <bn> -> <conv>"``; ``merge="exact"``).
    """

    runtime: str
    runtime_version: str
    threads: int
    batch: int
    origin_ms: float
    baseline_ms: float
    target_ms: float
    predicted_ms: float
    measured_ms: float
    attempts: list[dict[str, Any]] = field(default_factory=list)
    met: bool | None = None
    removed_blocks: list[str] = field(default_factory=list)
    merges: list[str] = field(default_factory=list)
    measured_entries: int = 0
    probes: list[dict[str, Any]] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    per_layer_before_ms: dict[str, float] = field(default_factory=dict)
    per_layer_after_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LatencyResult":
        """Build from the measurement dict; an unknown key is a programming error, named."""
        return _from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the run directory's ``latency`` artifact)."""
        return dataclasses.asdict(self)


@dataclass
class LightenReport:
    """What ``lighten`` changed: converted convs, skipped ones with reasons, the head, and costs.

    ``options`` are the lighten options to replay on ``create_model(arch.name, **arch.kwargs)``
    (the architecture record already holds any width change, so ``width_mult`` is 1.0 there).
    ``trace_error`` says why torch.fx could not trace the model (then the head is kept).
    """

    converted: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    head: dict[str, Any] | None
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    options: dict[str, Any] = field(default_factory=dict)
    trace_error: str | None = None


@dataclass
class SparsityResult:
    """What ``prune_weights`` zeroed: the fraction, the scope and the pruned layers' paths."""

    sparsity: float
    scope: str
    layers: list[str] = field(default_factory=list)


@dataclass
class ModelInfo:
    """Everything edgeslim recorded about one model; read it with ``edgeslim.info(model)``.

    Attributes:
        arch: how ``create_model`` built it (None for a model built elsewhere).
        plans: one pruning plan per structured pruning step (``{"groups": {id: [kept]}}``),
            in order; ``edgeslim.save`` stores them and ``edgeslim.load`` restores them.
        latency: the last latency-targeted pruning step's measurements.
        lighten: the report of ``lighten`` (the student's).
        fold: BNs ``fold_batchnorm`` folded and those it skipped.
        removed_identities: module paths ``remove_identities`` deleted.
        linear_merges: the merges of ``merge_linear_chains``.
        branch_merges: the merges of ``merge_branches_``.
        merge: the full report of ``streamline_merge``.
        admm_history: ``admm_prune``'s record per iteration and final stage.
        distill_history: ``distill``'s per-epoch metrics.
        sparsity: what ``prune_weights`` zeroed.
    """

    arch: Arch | None = None
    plans: list[dict[str, Any]] = field(default_factory=list)
    latency: LatencyResult | None = None
    lighten: LightenReport | None = None
    fold: "FoldReport | None" = None
    removed_identities: list[str] = field(default_factory=list)
    linear_merges: "list[MergeRecord]" = field(default_factory=list)
    branch_merges: "list[MergeRecord]" = field(default_factory=list)
    merge: "MergeReport | None" = None
    admm_history: list[dict[str, Any]] = field(default_factory=list)
    distill_history: list[dict[str, Any]] = field(default_factory=list)
    sparsity: SparsityResult | None = None


def info(model: "nn.Module") -> ModelInfo:
    """The :class:`ModelInfo` of ``model``, attached (empty) on first use so writes persist.

    Args:
        model: any ``nn.Module``.

    Returns:
        The model's own record (not a copy): transforms fill it in, users read it.
    """
    record = model.__dict__.get(_ATTR)
    if record is None:
        record = ModelInfo()
        object.__setattr__(model, _ATTR, record)  # plain attribute: never a submodule or buffer
    return record


def copy_info(src: "nn.Module", dst: "nn.Module") -> ModelInfo:
    """Give ``dst`` (a module built from ``src``, e.g. a GraphModule) a deep copy of ``src``'s info."""
    record = copy.deepcopy(info(src))
    object.__setattr__(dst, _ATTR, record)
    return record


def _from_dict(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise EdgeslimError(f"internal error: {cls.__name__} has no field(s) {unknown}; "
                            f"add them to edgeslim.modelinfo.{cls.__name__}")
    return cls(**values)
