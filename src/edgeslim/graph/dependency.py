"""The dependency graph: groups of coupled channels and what removing them costs.

A *channel* (pruning unit) is one union-find class of elements: removing it
removes, in every layer that touches it, the matching filter, BN entry and
input slice. A *group* is a connected set of producer spaces (a conv and its
BN; all convs feeding one residual sum); its channels are ranked and cut
together. See ``channels.py`` for the labelling scheme.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .trace import ModuleRecord, OnUnsupported, trace_labels


@dataclass
class Group:
    """Channels that are pruned together.

    Attributes:
        id: the module path of the group's first producer (stable across runs).
        classes: the channel (class) ids, in the producer's channel order.
        prunable: per class, False where some member is locked.
        members: the module paths whose tensors this group slices.
    """

    id: str
    classes: list[int]
    prunable: list[bool]
    members: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.classes)


class DependencyGraph:
    """Channel dependency analysis of a model (built by ``build_dependency_graph``)."""

    def __init__(self, model: nn.Module, records: dict[str, ModuleRecord], class_of: np.ndarray,
                 locked: np.ndarray, spaces: list, groups: list[Group]) -> None:
        self.model = model
        self.records = records
        self.class_of = class_of  # element id -> class id
        self.class_locked = locked  # class id -> bool
        self.spaces = spaces
        self.groups = groups
        self.group_by_id = {g.id: g for g in groups}
        self._idx = {
            p: (None if r.in_label is None else class_of[np.asarray(r.in_label, dtype=np.int64)],
                None if r.out_label is None else class_of[np.asarray(r.out_label, dtype=np.int64)])
            for p, r in records.items()
        }

    # -- channels ------------------------------------------------------------------------
    def prunable_classes(self) -> list[int]:
        return [c for g in self.groups for c, ok in zip(g.classes, g.prunable) if ok]

    def group_of_class(self) -> dict[int, Group]:
        return {c: g for g in self.groups for c in g.classes}

    def producers(self) -> list[ModuleRecord]:
        """Records that create a prunable output space (convs, linears)."""
        owners = {s.producer for s in self.spaces}
        return [r for p, r in self.records.items() if p in owners and not r.ignored]

    # -- costs ---------------------------------------------------------------------------
    def keep_positions(self, removed: np.ndarray) -> dict[str, tuple[list[int], list[int]]]:
        """For each module, the input and output positions kept when ``removed[c]`` is True."""
        out = {}
        for path, (ic, oc) in self._idx.items():
            ik = [] if ic is None else np.flatnonzero(~removed[ic]).tolist()
            ok = [] if oc is None else np.flatnonzero(~removed[oc]).tolist()
            out[path] = (ik, ok)
        return out

    def cost(self, removed: np.ndarray | None = None) -> tuple[int, int]:
        """Estimated (MACs, params) of the prunable layers with the given channels removed."""
        if removed is None:
            removed = np.zeros(len(self.class_locked), dtype=bool)
        macs = params = 0
        for path, rec in self.records.items():
            if rec.slicer is None or rec.ignored:
                m, p = 0, sum(t.numel() for t in rec.module.parameters())
            else:
                ic, oc = self._idx[path]
                n_in = 0 if ic is None else int((~removed[ic]).sum())
                n_out = 0 if oc is None else int((~removed[oc]).sum())
                m, p = rec.slicer.cost(rec.module, n_in, n_out, rec.out_shape)
            macs += m
            params += p
        return macs, params

    def class_scores(self, per_module: dict[str, torch.Tensor], reduce: str = "mean") -> np.ndarray:
        """Aggregate per-module, per-output-channel scores into one score per class.

        ``per_module[path]`` is aligned with that module's output channels. A class
        that appears in several modules (a residual sum) gets the mean (or sum).
        Classes with no score get NaN.
        """
        n = len(self.class_locked)
        total, count = np.zeros(n), np.zeros(n)
        for path, scores in per_module.items():
            oc = self._idx[path][1]
            if oc is None:
                continue
            s = scores.detach().double().cpu().numpy().reshape(-1)
            if s.shape[0] != oc.shape[0]:
                raise ValueError(f"score for {path!r} has {s.shape[0]} entries, expected {oc.shape[0]}")
            np.add.at(total, oc, s)
            np.add.at(count, oc, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / count if reduce == "mean" else np.where(count > 0, total, np.nan)

    def summary(self) -> str:
        lines = [f"{len(self.groups)} groups, {len(self.prunable_classes())} prunable channels"]
        for g in self.groups:
            lines.append(f"  {g.id}: {g.size} channels ({sum(g.prunable)} prunable) <- {', '.join(g.members)}")
        return "\n".join(lines)


def build_dependency_graph(model: nn.Module, example_inputs: tuple | torch.Tensor,
                           ignore: Sequence[str] = (),
                           on_unsupported: OnUnsupported = "error",
                           protect_first: bool = False) -> DependencyGraph:
    """Trace ``model`` and group its coupled channels.

    Args:
        model: any torch.fx-traceable module.
        example_inputs: a tensor or tuple of tensors for one forward pass.
        ignore: module paths to leave untouched (their channels are locked).
        on_unsupported: ``"error"`` raises on an unknown operation; ``"lock"``
            freezes the channels around it instead.
        protect_first: lock the first producer's output channels (the first conv).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    ctx, _ = trace_labels(model, tuple(example_inputs), ignore, on_unsupported)
    table = ctx.table
    if protect_first:
        first = next((s for s in table.spaces if not s.locked), None)
        if first is not None:
            table.lock(list(range(first.start, first.start + first.size)))
    n = len(table)
    roots = np.array([table.find(e) for e in range(n)], dtype=np.int64)
    locked = np.zeros(n, dtype=bool)
    for e in range(n):
        locked[roots[e]] |= table.locked[e]
    groups = _make_groups(table, roots, locked, ctx.records)
    return DependencyGraph(model, ctx.records, roots, locked, table.spaces, groups)


def _make_groups(table, roots: np.ndarray, locked: np.ndarray, records) -> list[Group]:
    """Connected components of spaces (linked by shared classes)."""
    parent = list(range(len(table.spaces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_space_of_class: dict[int, int] = {}
    for e in range(len(roots)):
        c, s = int(roots[e]), table.owner[e]
        if c in first_space_of_class:
            a, b = find(first_space_of_class[c]), find(s)
            if a != b:
                parent[max(a, b)] = min(a, b)
        else:
            first_space_of_class[c] = s
    comp: dict[int, list[int]] = {}
    for e in range(len(roots)):
        c = int(roots[e])
        if c == e:  # one entry per class, in element order
            comp.setdefault(find(table.owner[e]), []).append(c)
    touched = {p: {int(roots[e]) for e in (r.in_label or []) + (r.out_label or [])}
               for p, r in records.items()}
    groups = []
    for sid, classes in sorted(comp.items()):
        cls = set(classes)
        members = [p for p, t in touched.items() if t & cls]
        groups.append(Group(table.spaces[sid].producer, classes, [not locked[c] for c in classes],
                            members))
    return groups
