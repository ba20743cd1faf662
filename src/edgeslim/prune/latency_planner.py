"""Latency-constrained planning: keep the most importance with predicted latency <= budget.

A knapsack over moves, solved greedily by importance lost per millisecond saved:

* *channel moves*: shrink a channel group to a smaller size on its latency staircase
  (the sizes at which the runtime is strictly faster than at every larger size: a size
  that is no faster than a larger one only loses channels), removing its least
  important channels;
* *depth moves*: remove a residual block's branch (``blocks.py``);
* *exact merges*: fold a convolution's BatchNorm into it (``transforms/fold.py``). A
  fold loses nothing (importance lost 0), so at 0 per ms it ranks before every other
  move and is taken whenever it saves time: before the greedy pass, at once, for every
  conv whose folded unit (conv + ReLU) times at least ``FOLD_MIN_SAVING`` faster than
  its unit with the BN (``free_merges``). Eager PyTorch pays a kernel per BN; onnxruntime
  and OpenVINO fuse Conv+BN themselves (``Runtime.folds_batchnorm``), so there no fold is
  offered. The folded layers are timed with their folded unit from then on, so the
  channel moves and the prediction see the network as it will run.

  Not offered: exact linear-chain merges (``merge_linear_chains``: after folding, none of
  the zoo's LeNet-5, ResNet-20, VGG-11, DenseNet, MobileNetV2 has a pair that merges
  without more MACs), and the lossy conv->pool streamline merges (``streamline_merge``;
  a move for them would need the merged conv's geometry in the tables and a trained
  rebirth per block to measure the importance it loses).

Value is in one unit for both (``value="flops"``, the default; ``flops_values``): the
importance-weighted share of the network's MACs. A channel carries its group's MACs
share times its fraction of the group's importance (its score over the group's total),
times the block's relative importance when the group lives inside a removable block; a
block is worth its MACs share times its importance (the fraction of its output its
branch carries, ``blocks.block_importance``) relative to the mean block. With
``value="importance"`` every group is worth 1 and a block its importance: that kept
21% of ResNet-56's FLOPs at 1.77x on onnxruntime, the MACs valuation 43% at 1.94x.

Sizes: multiples of the runtime's blocked-layout width where the group allows
(``grid_sizes``), then only those strictly faster than every larger one. After the
greedy pass, ``_refill`` gives back what still fits. The latency of every move comes
from ``edgeslim.profile.latency_table`` (measured per-layer tables of the target
runtime, calibrated on whole-network measurements).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..graph import DependencyGraph
from ..profile.latency_table import LatencyModel
from .blocks import ResidualBlock


class LatencyTargetError(ConfigError):
    """A latency target the planner cannot reach; the message states the best reachable.

    ``fastest`` is the fastest plan the planner made (None where none was made), so a caller
    can measure it: the prediction is a model of the runtime, not the runtime.
    """

    def __init__(self, message: str, fastest: LatencyPlan | None = None) -> None:
        super().__init__(message)
        self.fastest = fastest


@dataclass
class _GroupMoves:
    order: np.ndarray  # prunable class ids, least important first
    gains: np.ndarray  # normalised importance of each, same order
    sizes: list[int]  # staircase sizes, descending, the first = the group's size
    layers: list[int]  # LatencyModel layers this group's channels touch
    size: int


@dataclass
class LatencyPlan:
    removed: np.ndarray  # channel classes to remove
    blocks: dict[str, str]  # removed block path -> "identity" | "relu"
    predicted_ms: float
    lost: float = 0.0
    moves: list[str] = field(default_factory=list)
    dropped: frozenset[int] = frozenset()  # LatencyModel layers inside removed blocks
    merged: frozenset[int] = frozenset()  # LatencyModel layers whose BN is folded (live ones)


#: a fold is taken when its unit is at least this fraction faster (timing noise on a runtime
#: that fuses Conv+BN itself must not decide it; an exact runtime's 0 saving never does)
FOLD_MIN_SAVING = 0.02


def free_merges(lat: LatencyModel, folds: dict[int, str] | None) -> frozenset[int]:
    """The offered folds (``LatencyModel.offer_folds``) that save time at full width."""
    full = np.zeros(len(lat.graph.class_locked), dtype=bool)
    return frozenset(i for i in folds or {} if
                     lat.layer_ms(i, full) - lat.layer_ms(i, full, frozenset([i]))
                     > FOLD_MIN_SAVING * lat.layer_ms(i, full))


def grid_sizes(size: int, lowest: int, points: int = 8, multiple: int = 1) -> list[int]:
    """Candidate sizes (descending): ``size`` and the multiples of a power-of-two step
    (at most ``points`` of them) down to ``lowest``. A group whose size is a multiple of
    the runtime's ``multiple`` (``Runtime.channel_multiple``: its blocked layout) keeps
    to multiples of it, and a wider group off the block is cut onto it or not at all: a
    width off the block costs layout conversions around it in the network that no
    per-layer table shows (``runtimes.blocked_layout_multiple``). Groups of linear layers
    only (no blocked layout) are not restricted (``group_moves``)."""
    step = 1
    while size / step > points:
        step *= 2
    if multiple > 1 and size > multiple:  # on the block, or cut onto it (24 -> 16)
        step = max(step, multiple)
    elif multiple > 1 and size == multiple:  # one block: halved or not (8 of 16 ran fast)
        step = max(step, multiple // 2)
    sizes = {size} | {s for s in range(step, size, step) if s >= lowest}
    return sorted(sizes, reverse=True)


def _touching(lat: LatencyModel, classes: np.ndarray) -> list[int]:
    cs = set(classes.tolist())
    return [i for i, layer in enumerate(lat.layers)
            if cs.intersection(layer.in_idx.tolist()) or cs.intersection(layer.out_idx.tolist())]


def _removal(n: int, order: np.ndarray, cut: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[order[:cut]] = True
    return mask


def staircase(lat: LatencyModel, layers: list[int], order: np.ndarray, sizes: list[int],
              size: int, merged: frozenset[int] = frozenset()) -> list[int]:
    """The sizes strictly faster than every larger one (the group alone shrunk)."""
    n = len(lat.graph.class_locked)
    kept, best = [], float("inf")
    for s in sizes:  # descending
        mask = _removal(n, order, size - s)
        ms = sum(lat.layer_ms(i, mask, merged) for i in layers)
        if ms < best:
            kept.append(s)
            best = ms
    return kept


def _inside(path: str, prefix: str) -> bool:
    return path.startswith(prefix + ".")


def group_moves(graph: DependencyGraph, scores: np.ndarray, lat: LatencyModel,
                weights: dict[int, float], min_channels: int,
                merged: frozenset[int] = frozenset()) -> list[_GroupMoves | None]:
    """Per group: its removable channels in order, their normalised importance, its staircase."""
    out: list[_GroupMoves | None] = []
    for gi, g in enumerate(graph.groups):
        cls = np.asarray([c for c, ok in zip(g.classes, g.prunable) if ok], dtype=np.int64)
        s = scores[cls] if len(cls) else np.zeros(0)
        cls, s = cls[np.isfinite(s)], np.maximum(s[np.isfinite(s)], 0.0)
        if not len(cls):
            out.append(None)
            continue
        order = np.argsort(s, kind="stable")
        total = s.sum() or 1.0
        gains = (s[order] / total if s.sum() > 0 else np.full(len(s), 1.0 / len(s))) * weights.get(gi, 1.0)
        lowest = max(min_channels, g.size - len(cls), 1)
        layers = _touching(lat, np.asarray(g.classes, dtype=np.int64))
        convs = any(lat.layers[i].unit.signature.startswith("conv") for i in layers)
        multiple = getattr(lat.table.runtime, "channel_multiple", lambda: 1)() if convs else 1
        sizes = staircase(lat, layers, cls[order], grid_sizes(g.size, lowest, multiple=multiple), g.size,
                          merged)
        out.append(_GroupMoves(cls[order], gains, sizes, layers, g.size))
    return out


def group_weights(graph: DependencyGraph, blocks: list[ResidualBlock],
                  block_scores: dict[str, float]) -> dict[int, float]:
    """A group inside a removable block counts with that (innermost) block's importance."""
    weights = {}
    for gi, g in enumerate(graph.groups):
        owners = [b for b in blocks if g.members and all(_inside(m, b.path) for m in g.members)]
        if owners:
            weights[gi] = block_scores.get(max(owners, key=lambda b: len(b.path)).path, 1.0)
    return weights


def _macs_inside(graph: DependencyGraph, prefix: str) -> float:
    total = 0.0
    for path, rec in graph._sliced:
        ic, oc = graph._idx[path]
        if _inside(path, prefix) and ic is not None and oc is not None:
            total += rec.slicer.cost(rec.module, len(ic), len(oc), rec.out_shape)[0] * max(1, len(rec.call_shapes))
    return total


def flops_values(graph: DependencyGraph, blocks: list[ResidualBlock],
                 block_scores: dict[str, float]) -> tuple[dict[int, float], dict[str, float]]:
    """The value of each group (its weight in ``group_moves``) and of each block, in one
    unit: the importance-weighted share of the network's multiply-accumulates.

    A group is worth the MACs share its channels carry (times its block's relative
    importance when it lives inside a removable block); its channels split that by their
    importance. A block is worth its MACs share times its importance relative to the
    average block (``block_importance`` / mean). Why: with every group worth 1 whatever
    its size (``value="importance"``), the planner removed a wide stage's channels as
    readily as a narrow layer's, and kept 26% of ResNet-20's FLOPs at 2.2x. Here
    importance still decides which channels and which blocks go, but the knapsack keeps
    as much (importance-weighted) computation as the latency budget allows."""
    macs = graph.marginal_cost()[0]
    total = max(float(macs.sum()), 1e-12)
    mean = float(np.mean(list(block_scores.values()))) if block_scores else 0.0
    rel = {p: (v / mean if mean > 0 else 1.0) for p, v in block_scores.items()}
    inside = group_weights(graph, blocks, rel)
    groups = {gi: float(macs[np.asarray(g.classes, dtype=np.int64)].sum()) / total * inside.get(gi, 1.0)
              for gi, g in enumerate(graph.groups)}
    full = max(float(graph.cost()[0]), 1e-12)
    return groups, {b.path: rel.get(b.path, 1.0) * _macs_inside(graph, b.path) / full for b in blocks}


@dataclass
class _State:
    removed: np.ndarray
    kept: list[int]  # current size of each group
    blocks: dict[str, str]
    dropped: set[int]  # LatencyModel layers inside removed blocks
    dead: set[int]  # groups that no longer exist (inside a removed block)
    merged: frozenset[int] = frozenset()  # layers whose BN is folded


def _channel_move(lat: LatencyModel, st: _State, gi: int, gm: _GroupMoves, s: int):
    cur = gm.size - st.kept[gi]
    cut = gm.size - s
    mask = st.removed.copy()
    mask[gm.order[cur:cut]] = True
    live = [i for i in gm.layers if i not in st.dropped]
    saved = sum(lat.layer_ms(i, st.removed, st.merged) - lat.layer_ms(i, mask, st.merged) for i in live)
    return float(gm.gains[cur:cut].sum()), saved * lat.scale[0], mask


def _block_layers(lat: LatencyModel, block: ResidualBlock) -> list[int]:
    return [i for i, layer in enumerate(lat.layers) if _inside(layer.path, block.path)]


def _best_move(lat, st, moves, blocks, block_scores):
    """(ratio, saved, description, apply) of the move losing least importance per ms saved."""
    best = None
    for gi, gm in enumerate(moves):
        if gm is None or gi in st.dead:
            continue
        for s in (s for s in gm.sizes if s < st.kept[gi]):
            lost, saved, mask = _channel_move(lat, st, gi, gm, s)
            if saved > 1e-9 and (best is None or lost / saved < best[0]):
                best = (lost / saved, saved, f"group {lat.graph.groups[gi].id} -> {s}", ("c", gi, s, mask))
    for b in blocks:
        if any(b.path == p or _inside(b.path, p) for p in st.blocks):
            continue
        layers = [i for i in _block_layers(lat, b) if i not in st.dropped]
        saved = sum(lat.scale[1] * lat.full_ms[i]
                    - lat.scale[0] * (lat.full_ms[i] - lat.layer_ms(i, st.removed, st.merged))
                    for i in layers)  # = what LatencyModel.predict gains when these layers go
        lost = block_scores.get(b.path, 1.0)
        if saved > 1e-9 and (best is None or lost / saved < best[0]):
            best = (lost / saved, saved, f"block {b.path} removed", ("b", b, layers))
    return best


def _apply(st: _State, move, graph: DependencyGraph) -> None:
    if move[0] == "c":
        _, gi, s, mask = move
        st.removed, st.kept[gi] = mask, s
        return
    _, block, layers = move
    st.blocks[block.path] = block.post
    st.dropped.update(layers)
    st.dead.update(gi for gi, g in enumerate(graph.groups)
                   if g.members and all(_inside(m, block.path) for m in g.members))


def _refill(lat: LatencyModel, st: _State, moves: list[_GroupMoves | None], budget_ms: float) -> list[str]:
    """Give channels back while the prediction stays within the budget: the greedy's last
    move is a whole staircase step and may overshoot. Each round grows the group whose next
    larger staircase size regains the most value and still fits."""
    log = []
    while True:
        best = None
        for gi, gm in enumerate(moves):
            if gm is None or gi in st.dead or st.kept[gi] >= gm.size:
                continue
            s = min(x for x in gm.sizes if x > st.kept[gi])
            mask = st.removed.copy()
            mask[gm.order[gm.size - s:gm.size - st.kept[gi]]] = False
            regained = float(gm.gains[gm.size - s:gm.size - st.kept[gi]].sum())
            fits = lat.predict(mask, frozenset(st.dropped), st.merged) <= budget_ms
            if fits and (best is None or regained > best[0]):
                best = (regained, gi, s, mask)
        if best is None:
            return log
        _, gi, s, st.removed = best
        st.kept[gi] = s
        log.append(f"group {lat.graph.groups[gi].id} back to {s}")


def plan_latency(graph: DependencyGraph, scores: np.ndarray, lat: LatencyModel, budget_ms: float,
                 blocks: list[ResidualBlock] = (), block_scores: dict[str, float] | None = None,
                 min_channels: int = 1, value: str = "flops",
                 folds: dict[int, str] | None = None) -> LatencyPlan:
    """Greedy knapsack: take the free merges among ``folds`` (``free_merges``), then apply
    the cheapest move (value lost per ms saved) until the predicted latency is within
    ``budget_ms``, then give back what still fits (``_refill``). ``value="flops"``:
    importance-weighted MACs (``flops_values``); ``"importance"``: every group worth 1, a
    block its importance.

    Raises:
        LatencyTargetError: no sequence of moves reaches the budget (states the best).
    """
    block_scores = block_scores or {}
    if value == "flops":
        weights, block_scores = flops_values(graph, list(blocks), block_scores)
    else:
        weights = group_weights(graph, list(blocks), block_scores)
    merged = free_merges(lat, folds)
    moves = group_moves(graph, scores, lat, weights, min_channels, merged)
    st = _State(np.zeros(len(graph.class_locked), dtype=bool), [g.size for g in graph.groups], {}, set(), set(),
                merged)
    log = [f"fold the BN of {folds[i]}" for i in sorted(merged)]
    pred, lost = lat.predict(st.removed, merged=merged), 0.0
    while pred > budget_ms:
        best = _best_move(lat, st, moves, list(blocks), block_scores)
        if best is None:
            raise LatencyTargetError(
                f"the latency target {budget_ms:.4g} ms is not reachable: the fastest model the planner "
                f"can make is predicted at {pred:.4g} ms (unpruned {lat.baseline_ms:.4g} ms). Fix: ask for "
                f"target_latency >= {pred:.4g} or target_speedup <= {lat.baseline_ms / pred:.3g}, lower "
                "min_channels, un-ignore layers, or protect_first=False",
                LatencyPlan(st.removed.copy(), dict(st.blocks), pred, lost, log, frozenset(st.dropped),
                            merged - frozenset(st.dropped)))
        _apply(st, best[3], graph)
        lost += best[0] * best[1]
        log.append(best[2])
        pred = lat.predict(st.removed, frozenset(st.dropped), merged)
    log += _refill(lat, st, moves, budget_ms)
    dropped = frozenset(st.dropped)
    pred = lat.predict(st.removed, dropped, merged)
    return LatencyPlan(st.removed, dict(st.blocks), pred, lost, log, dropped, merged - dropped)


def probe_plans(graph: DependencyGraph, scores: np.ndarray, lat: LatencyModel,
                blocks: list[ResidualBlock] = (), min_channels: int = 1,
                fractions: tuple[float, ...] = (0.5, 0.75)) -> list[LatencyPlan]:
    """Variants to measure before planning, so that ``lat.observe`` can calibrate the scales
    of the latency model (``profile/latency_table.py``, "Calibration"): every group cut to
    the staircase size nearest each of ``fractions`` of it (channels only; two of them, so
    that one noisy measurement does not set the scale alone), and every other removable block gone
    (depth only; none without blocks)."""
    moves = group_moves(graph, scores, lat, {}, min_channels)
    probes = []
    for fraction in fractions:
        removed = np.zeros(len(graph.class_locked), dtype=bool)
        for gm in moves:
            if gm is not None:
                s = min(gm.sizes, key=lambda s: abs(s - fraction * gm.size))
                removed[gm.order[:gm.size - s]] = True
        if removed.any() and not any(np.array_equal(removed, p.removed) for p in probes):
            probes.append(LatencyPlan(removed, {}, lat.predict(removed)))
    chosen: dict[str, str] = {}
    for b in sorted(blocks, key=lambda b: b.path)[::2]:
        if not any(b.path == p or _inside(b.path, p) or _inside(p, b.path) for p in chosen):
            chosen[b.path] = b.post
    if chosen:
        none = np.zeros(len(graph.class_locked), dtype=bool)
        dropped = frozenset(i for p in chosen for i, layer in enumerate(lat.layers) if _inside(layer.path, p))
        probes.append(LatencyPlan(none, chosen, lat.predict(none, dropped), dropped=dropped))
    return probes
