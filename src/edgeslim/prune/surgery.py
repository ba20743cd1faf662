"""Channel surgery: cut every coupled tensor in place, and plans as plain data.

A *plan* is JSON-serialisable: ``{"groups": {group_id: [kept channel positions]}}``
plus, for inspection, ``"modules": {path: {"in": n, "out": m}}`` (channel counts
after the cut). ``apply_plan`` replays a stored plan on a fresh copy of the same
architecture.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, EdgeslimError
from ..graph import DependencyGraph, build_dependency_graph
from ..graph.slicers import slicer_for

Plan = dict[str, Any]


def removal_to_plan(graph: DependencyGraph, removed: np.ndarray) -> Plan:
    groups = {g.id: [i for i, c in enumerate(g.classes) if not removed[c]]
              for g in graph.groups if any(removed[c] for c in g.classes)}
    keep = graph.keep_positions(removed)
    touched = _touched(graph, removed)
    modules = {p: {"in": len(i), "out": len(o)} for p, (i, o) in keep.items() if p in touched}
    return {"groups": groups, "modules": modules, "replay": getattr(graph, "replay", {})}


def _touched(graph: DependencyGraph, removed: np.ndarray) -> set[str]:
    return {m for g in graph.groups if any(removed[c] for c in g.classes) for m in g.members}


def plan_to_removal(graph: DependencyGraph, plan: Plan) -> np.ndarray:
    removed = np.zeros(len(graph.class_locked), dtype=bool)
    for gid, kept in plan.get("groups", {}).items():
        group = graph.group_by_id.get(gid)
        if group is None:
            raise CheckpointError(
                f"pruning plan names channel group {gid!r}, which this model does not have; the plan "
                "was made for a different architecture"
            )
        if kept and (max(kept) >= group.size or min(kept) < 0):
            raise CheckpointError(f"pruning plan keeps channel {max(kept)} of group {gid!r}, "
                                  f"which has only {group.size}")
        keep = set(kept)
        for i, c in enumerate(group.classes):
            if i not in keep:
                if not group.prunable[i]:
                    raise CheckpointError(f"pruning plan removes locked channel {i} of group {gid!r}")
                removed[c] = True
    return removed


@torch.no_grad()
def prune_channels_(model: nn.Module, graph: DependencyGraph, removed: np.ndarray) -> Plan:
    """Remove the channels flagged in ``removed`` from ``model`` in place; return the plan."""
    plan = removal_to_plan(graph, removed)
    keep = graph.keep_positions(removed)
    for path in _touched(graph, removed):
        rec = graph.records[path]
        if rec.slicer is None or rec.ignored:
            continue
        in_keep, out_keep = keep[path]
        if rec.in_label is None:
            in_keep = None
        if rec.out_label is None:
            out_keep = None
        before = _own_shapes(rec.module) if rec.slicer.slices_extras else {}
        rec.slicer.slice_(rec.module, in_keep, out_keep)
        if rec.slicer.slices_extras:
            _slice_extras(rec.module, before, out_keep, rec.out_shape)
    _retie(model, graph.tied)
    return plan


MAX_REPLAY_ELEMENTS = 2 ** 28  # a stored plan may ask for example inputs of at most this size


def replay_inputs(replay: dict) -> tuple[torch.Tensor, ...]:
    """Zero example inputs of the shapes a plan recorded (bounded: the plan may come from a file)."""
    inputs = []
    for entry in replay.get("inputs", []) if isinstance(replay, dict) else []:
        shape, dtype = (entry + ["float32"])[:2] if isinstance(entry, list) else (None, None)
        kind = getattr(torch, str(dtype), None)
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(kind, torch.dtype) and int(np.prod(shape)) <= MAX_REPLAY_ELEMENTS):
            raise CheckpointError(f"pruning plan records an invalid example input {str(entry)[:80]}")
        inputs.append(torch.zeros(shape, dtype=kind))
    if not inputs:
        raise CheckpointError("pruning plan records no example inputs (it was made by an older "
                              "edgeslim); pass example_inputs= to replay it")
    return tuple(inputs)


def _own_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in (*module.named_parameters(), *module.named_buffers())}


def _slice_extras(module: nn.Module, before: dict[str, tuple[int, ...]], out_keep: list[int] | None,
                  out_shape: tuple[int, ...]) -> None:
    """Per-output-channel tensors the slicer does not know: a subclass's own (timm's
    ``ScaledStdConv2d.gain``, an activation's per-channel slope inside ``BatchNormAct2d``).
    A tensor the slicer left unchanged whose first dim is the layer's output channel count
    follows the kept output channels."""
    if out_keep is None or len(out_shape) < 2:
        return
    for child in list(module.modules())[1:]:  # channel-wise layers inside a leaf: their own slicer
        slicer = slicer_for(child)
        if slicer is not None and slicer.kind in ("norm", "activation", "elementwise"):
            slicer.slice_(child, out_keep, out_keep)
    n_out = out_shape[1] if not isinstance(module, nn.Linear) else out_shape[-1]
    after = _own_shapes(module)
    for name, shape in before.items():
        if after.get(name) == shape and shape and shape[0] == n_out and n_out != len(out_keep):
            owner_path, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            old = getattr(owner, attr)
            idx = torch.as_tensor(out_keep, dtype=torch.long, device=old.device)
            new = old.detach().index_select(0, idx).clone()
            setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad)
                    if isinstance(old, nn.Parameter) else new)


def _retie(model: nn.Module, ties: list[list[tuple[str, str]]]) -> None:
    """Slicing gives each holder of a tied parameter its own copy; make them one tensor again
    (the graph coupled their channels, so the copies are equal)."""
    for tie in ties:
        holders = [(model.get_submodule(path), name) for path, name in tie]
        shared = getattr(*holders[0])
        for module, name in holders[1:]:
            param = getattr(module, name)
            if param is not shared and param.shape != shared.shape:
                raise EdgeslimError(f"internal error: the tied parameter {tie} was cut to "
                                      f"{tuple(shared.shape)} and {tuple(param.shape)}; please report this")
            setattr(module, name, shared)


def apply_plan(model: nn.Module, example_inputs: Any, plan: Plan, **graph_options: Any) -> nn.Module:
    """Replay ``plan`` (from ``prune_channels_``) on ``model`` in place.

    ``example_inputs=None`` rebuilds zero inputs of the shapes the plan recorded, and the
    graph options default to the ones it was made with."""
    replay = plan.get("replay") or {}
    if example_inputs is None:
        example_inputs = replay_inputs(replay)
    for key in ("ignore", "on_unsupported"):
        if key in replay:
            graph_options.setdefault(key, replay[key])
    graph = build_dependency_graph(model, example_inputs, **graph_options)
    prune_channels_(model, graph, plan_to_removal(graph, plan))
    if plan.get("identity_blocks"):  # depth moves of the latency planner
        from .blocks import remove_blocks_

        remove_blocks_(model, plan["identity_blocks"])
    if plan.get("folded_bn"):  # exact merges of the latency planner
        _fold_(model, plan["folded_bn"])
    return model


def _fold_(model: nn.Module, pairs: Any) -> None:
    from ..transforms.fold import FoldedPair, fold_pairs_

    if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2
                                            and all(isinstance(x, str) for x in p) for p in pairs)):
        raise CheckpointError(f"pruning plan's folded_bn {str(pairs)[:80]} is malformed: need [[conv, bn], ...]")
    try:
        fold_pairs_(model, [FoldedPair(*p) for p in pairs])
    except (AttributeError, EdgeslimError) as exc:
        raise CheckpointError(f"pruning plan folds {str(pairs)[:80]}, which this model cannot: {exc}") from None
