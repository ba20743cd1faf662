"""Channel bookkeeping: every channel of every produced feature map is an *element*.

A producer (a conv's or linear's output, the model input, a constant) creates a
*space* of fresh elements. Each traced tensor carries a *label*: the list of
element ids along its channel dimension. Operations move labels around
(concatenation concatenates them, flatten repeats them, split slices them) and
couple them (a residual add unions element i of one side with element i of the
other). Union-find over elements then yields the *pruning units*: sets of
channels that must be removed together. This is the same idea as
Torch-Pruning's dependency graph (Fang et al., DepGraph, CVPR 2023), kept at
channel granularity so concat offsets, flatten and split need no special cases.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Space:
    """A run of fresh elements created by one producer."""

    id: int
    start: int  # first element id
    size: int
    producer: str  # module path or node name
    locked: bool  # channels that may never be removed (model input, logits, ignored layers)


@dataclass
class ElementTable:
    """Union-find over channel elements, with per-class lock flags.

    ``lock_notes`` records why channels were locked, as ``(elements, reason)``
    pairs, so that "nothing can be pruned" can be explained after the unions.
    """

    parent: list[int] = field(default_factory=list)
    locked: list[bool] = field(default_factory=list)
    spaces: list[Space] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)  # element -> space id
    lock_notes: list[tuple[list[int], str]] = field(default_factory=list)

    def new_space(self, size: int, producer: str, locked: bool = False, reason: str = "") -> list[int]:
        start = len(self.parent)
        sid = len(self.spaces)
        self.spaces.append(Space(sid, start, size, producer, locked))
        self.parent.extend(range(start, start + size))
        self.locked.extend([locked] * size)
        self.owner.extend([sid] * size)
        label = list(range(start, start + size))
        if locked and reason:
            self.lock_notes.append((label, reason))
        return label

    def find(self, e: int) -> int:
        root = e
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[e] != root:  # path compression
            self.parent[e], e = root, self.parent[e]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.locked[ra] = self.locked[ra] or self.locked[rb]

    def union_labels(self, a: list[int], b: list[int]) -> None:
        for x, y in zip(a, b, strict=True):
            self.union(x, y)

    def lock(self, label: list[int], reason: str = "") -> None:
        for e in label:
            self.locked[self.find(e)] = True
        if reason and label:
            self.lock_notes.append((list(label), reason))

    def is_locked(self, e: int) -> bool:
        return self.locked[self.find(e)]

    def __len__(self) -> int:
        return len(self.parent)
