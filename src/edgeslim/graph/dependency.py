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

from .._checks import check_model_and_inputs
from .trace import has_unmodelled_cost, ModuleRecord, OnUnsupported, output_shape, trace_labels


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
        self.group_classes = [np.asarray(g.classes, dtype=np.int64) for g in groups]
        self.output_shape: tuple[int, ...] | None = None  # the model's, on the example inputs
        self.lock_notes: list[tuple[list[int], str]] = []  # (elements, why they are locked)
        self.tied: list[list[tuple[str, str]]] = []  # tied parameters: [(module path, name), ...]
        self.space_of = np.zeros(0, dtype=np.int64)  # element id -> space id
        self._init_cost_tables()

    def _init_cost_tables(self) -> None:
        """Flat index arrays so ``cost`` counts every layer's kept channels in two bincounts
        (the planner calls it once per bisection step)."""
        self._sliced = [(p, r) for p, r in self.records.items() if r.slicer is not None and not r.ignored]
        self._fixed_params = sum(t.numel() for r in self.records.values()
                                 if r.slicer is None or r.ignored for t in r.module.parameters())
        for side in (0, 1):
            parts = [self._idx[p][side] for p, _ in self._sliced]
            parts = [np.zeros(0, dtype=np.int64) if a is None else a for a in parts]
            cat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            seg = np.repeat(np.arange(len(parts)), [len(a) for a in parts])
            setattr(self, f"_cat{side}", cat)
            setattr(self, f"_seg{side}", seg)

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

    def emptied_layers(self, removed: np.ndarray) -> list[np.ndarray]:
        """Output classes of each layer that ``removed`` would leave with no channel at all
        (possible inside a group that keeps some: one branch of a concat in a residual sum)."""
        n = len(self._sliced)
        kept = np.bincount(self._seg1, weights=(~removed[self._cat1]).astype(np.int64), minlength=n)
        size = np.bincount(self._seg1, minlength=n)
        return [self._idx[self._sliced[i][0]][1] for i in np.flatnonzero((kept == 0) & (size > 0))]

    def cost(self, removed: np.ndarray | None = None) -> tuple[int, int]:
        """Estimated (MACs, params) of the prunable layers with the given channels removed."""
        if removed is None:
            removed = np.zeros(len(self.class_locked), dtype=bool)
        kept = (~removed).astype(np.int64)
        n = len(self._sliced)
        n_in = np.bincount(self._seg0, weights=kept[self._cat0], minlength=n).astype(np.int64).tolist()
        n_out = np.bincount(self._seg1, weights=kept[self._cat1], minlength=n).astype(np.int64).tolist()
        macs, params = 0, self._fixed_params
        for (_, rec), i, o in zip(self._sliced, n_in, n_out):
            m, p = rec.slicer.cost(rec.module, i, o, rec.out_shape)
            for shape in rec.call_shapes[:-1]:  # a module called again costs its MACs again
                m += rec.slicer.cost(rec.module, i, o, shape)[0]
            macs += m
            params += p
        return macs, params

    def marginal_cost(self, removed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per class, the (MACs, params) that removing it would save on top of ``removed``.

        Each layer's saving per channel is its cost difference for one input or output
        channel fewer (exact for conv/linear/norm layers, whose costs are linear in each of
        the two counts); a class sums it over every position it occupies (a flattened
        channel's H*W input features, the several layers of a residual stream).
        """
        n = len(self.class_locked)
        removed = np.zeros(n, dtype=bool) if removed is None else removed
        kept = (~removed).astype(np.int64)
        m = len(self._sliced)
        counts = [np.bincount(getattr(self, f"_seg{s}"), weights=kept[getattr(self, f"_cat{s}")],
                              minlength=m).astype(np.int64).tolist() for s in (0, 1)]
        per_channel = np.zeros((2, m, 2))  # [input/output side, layer, (MACs, params)]
        cache = self.__dict__.setdefault("_marginal_cache", {})  # (layer, n_in, n_out) -> savings
        for j, i, o in zip(range(m), *counts):
            saved = cache.get((j, i, o))
            if saved is None:  # the planner asks again and again; most layers' counts do not move
                rec = self._sliced[j][1]
                base = np.asarray(rec.slicer.cost(rec.module, i, o, rec.out_shape), dtype=np.float64)
                saved = cache[(j, i, o)] = (
                    base - rec.slicer.cost(rec.module, max(i - 1, 0), o, rec.out_shape),
                    base - rec.slicer.cost(rec.module, i, max(o - 1, 0), rec.out_shape))
            per_channel[0, j], per_channel[1, j] = saved
        out = np.zeros((2, n))
        for side in (0, 1):
            seg, cat = getattr(self, f"_seg{side}"), getattr(self, f"_cat{side}")
            for k in (0, 1):
                out[k] += np.bincount(cat, weights=per_channel[side, seg, k], minlength=n)
        return out[0], out[1]

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

    def lock_reasons(self, limit: int = 5) -> list[str]:
        """Why channels are locked, most channels first (inputs of the network excluded):
        what to change when nothing, or too little, can be pruned."""
        produced = [s.id for s in self.spaces if s.producer in self.records]
        counts: dict[str, set[int]] = {}
        for elements, reason in self.lock_notes:
            idx = np.asarray(elements, dtype=np.int64)
            classes = self.class_of[idx[np.isin(self.space_of[idx], produced)]]
            if len(classes):
                counts.setdefault(reason, set()).update(classes.tolist())
        # the logits are always locked by the output: say so last
        return sorted(counts, key=lambda r: (r == "the model output", -len(counts[r])))[:limit]

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
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    check_model_and_inputs(model, tuple(example_inputs), "prune")
    ctx, fx_graph = trace_labels(model, tuple(example_inputs), ignore, on_unsupported)
    table = ctx.table
    if protect_first:
        first = next((s for s in table.spaces if not s.locked), None)
        if first is not None:
            table.lock(list(range(first.start, first.start + first.size)),
                       f"protect_first=True keeps the first layer {first.producer!r} whole")
    n = len(table)
    roots = _roots(np.asarray(table.parent, dtype=np.int64))
    locked = np.zeros(n, dtype=bool)
    np.logical_or.at(locked, roots, np.asarray(table.locked, dtype=bool))
    groups = _make_groups(table, roots, locked, ctx.records)
    graph = DependencyGraph(model, ctx.records, roots, locked, table.spaces, groups)
    graph.output_shape = output_shape(fx_graph)
    graph.lock_notes, graph.tied = table.lock_notes, ctx.tied
    graph.space_of = np.asarray(table.owner, dtype=np.int64)
    graph.fully_modelled = not has_unmodelled_cost(fx_graph, ctx.records)
    # what it takes to rebuild this graph on a fresh copy of the model (``apply_plan``)
    graph.replay = {"inputs": [[list(t.shape), str(t.dtype).removeprefix("torch.")]
                               for t in example_inputs if isinstance(t, torch.Tensor)],
                    "ignore": list(ignore), "on_unsupported": on_unsupported}
    return graph


def _roots(parent: np.ndarray) -> np.ndarray:
    """The union-find root of every element, by pointer jumping (log-depth numpy passes)."""
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up


def _make_groups(table, roots: np.ndarray, locked: np.ndarray, records) -> list[Group]:
    """Connected components of spaces (linked by shared classes)."""
    parent = list(range(len(table.spaces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    n_spaces = max(len(table.spaces), 1)
    pairs = np.unique(roots * n_spaces + np.asarray(table.owner, dtype=np.int64))  # (class, space)
    cls, space = pairs // n_spaces, pairs % n_spaces
    shared = np.flatnonzero(cls[1:] == cls[:-1])  # consecutive spaces holding the same class
    for s0, s1 in zip(space[shared].tolist(), space[shared + 1].tolist()):
        a, b = find(s0), find(s1)
        if a != b:
            parent[max(a, b)] = min(a, b)
    space_root = np.array([find(i) for i in range(len(table.spaces))], dtype=np.int64)
    classes = np.flatnonzero(roots == np.arange(len(roots)))  # one entry per class, element order
    comp_of = space_root[np.asarray(table.owner, dtype=np.int64)[classes]]
    order = np.unique(comp_of)  # a component is named by its smallest space id
    by_comp = classes[np.argsort(comp_of, kind="stable")]
    sizes = np.bincount(comp_of, minlength=len(table.spaces))[order]
    comp = dict(zip(order.tolist(), [c.tolist() for c in np.split(by_comp, np.cumsum(sizes)[:-1])]))
    order = order.tolist()
    group_of_class = np.full(len(roots), -1, dtype=np.int64)
    group_of_class[by_comp] = np.repeat(np.arange(len(order)), sizes)
    members: list[list[str]] = [[] for _ in order]
    for path, rec in records.items():
        label = (rec.in_label or []) + (rec.out_label or [])
        if label:
            for gi in np.unique(group_of_class[roots[np.asarray(label, dtype=np.int64)]]).tolist():
                members[gi].append(path)
    return [Group(table.spaces[sid].producer, comp[sid], (~locked[comp[sid]]).tolist(), members[gi])
            for gi, sid in enumerate(order)]
