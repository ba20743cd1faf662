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

Plan = dict[str, Any]


def removal_to_plan(graph: DependencyGraph, removed: np.ndarray) -> Plan:
    groups = {g.id: [i for i, c in enumerate(g.classes) if not removed[c]]
              for g in graph.groups if any(removed[c] for c in g.classes)}
    keep = graph.keep_positions(removed)
    touched = _touched(graph, removed)
    modules = {p: {"in": len(i), "out": len(o)} for p, (i, o) in keep.items() if p in touched}
    return {"groups": groups, "modules": modules}


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
        rec.slicer.slice_(rec.module, in_keep, out_keep)
    _retie(model, graph.tied)
    return plan


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
    """Replay ``plan`` (from ``prune_channels_``) on ``model`` in place."""
    graph = build_dependency_graph(model, example_inputs, **graph_options)
    prune_channels_(model, graph, plan_to_removal(graph, plan))
    return model
