"""Per-layer latency lookup tables of a runtime, measured once and cached on disk.

A prunable layer (a convolution or a linear layer, the layers whose cost depends on
channel counts) is timed *alone* in the target runtime as a function of its input and
output channel counts: a *unit* with the layer's kernel, stride, padding, groups,
input size and batch. A convolution is timed followed by a BatchNorm and a ReLU, as
nearly every CNN convolution is: onnxruntime and OpenVINO fuse the three into one
kernel, eager PyTorch pays for each, so the unit costs what the layer costs in a
real network.

Entries are measured on demand (only the channel counts a planner asks about) and
kept in ``$EDGESLIM_CACHE/latency/<runtime>-<version>-<cpu>-t<threads>.json``
(default ``~/.cache/edgeslim``; ``<cpu>`` hashes the model name, family / model / stepping
and vector ISA, ``runtimes.cpu_model``, since VMs of different generations share a name),
keyed by the layer signature and ``"n_in,n_out"``, so a second prune of the same
architecture measures nothing. Writes are atomic.

``LatencyModel`` predicts a pruned network's latency as the measured latency of the
unpruned network plus, for each layer, its table latency at the kept channel
counts minus its table latency at the original counts: what the tables do not see
(pooling, additions, the runtime's fixed cost per inference) stays as measured.

Calibration. A layer timed alone is not the layer inside the network: measured on
onnxruntime (CPU, 1 thread, batch 1) the ResNet-20 tables sum to 0.67 ms for a network
that runs in 0.52 ms, because every unit pays what the network pays once (the call into
the runtime, ~4 us; the copy of its output) and, on onnxruntime, the NCHWc layout
reorders at its boundaries that a chain of blocked convolutions does not pay. Channel
deltas and removed layers are therefore off by a factor, and not the same one: removed
blocks were over-credited by 6-13% of the whole network, channel cuts under-credited.
So the model has two scales, ``scale = (channels, depth)``, for the two kinds of
change, fitted by least squares (on relative error) to whole-network measurements
(``observe``): the unpruned model and probes the planner measures before planning,
and then every plan it builds and measures. ``benchmarks/latency_model_error.py``
reports the error before and after calibration. (A third term, ms per parameter, for
weights streamed from memory in the network but cached in a layer timed alone, was
tried and dropped: two channel probes cannot tell it from the channel term, both
shrink as the square of the width, and the fit amplified timing noise: VGG-16 errors
rose from 11% to 97%.)
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgeslim.io import atomic_write_json
from edgeslim.profile.latency import latency_clock
from edgeslim.profile.runtimes import Runtime, cpu_model

#: Bump when the unit definitions change, to invalidate old tables.
TABLE_FORMAT = 1


@dataclass(frozen=True)
class LayerUnit:
    """A layer timed alone: ``build(n_in, n_out) -> (module, inputs)``."""

    signature: str
    build: Callable[[int, int], tuple[nn.Module, tuple[torch.Tensor, ...]]]
    depthwise: bool = False


def _conv_in_size(o: int, k: int, s: int, p: int, d: int) -> int:
    return max(1, (o - 1) * s - 2 * p + d * (k - 1) + 1)


def _conv_unit(conv: nn.modules.conv._ConvNd, out_shape: tuple[int, ...],
               in_shape: tuple[int, ...] = (), norm: bool = True) -> LayerUnit | None:
    dims = len(conv.kernel_size)
    if len(out_shape) != dims + 2 or isinstance(conv.padding, str) or dims > 3:
        return None
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    # the input size it runs at (a stride-2 conv's 8x8 input, not the 7x7 that also gives 4x4)
    spatial = list(in_shape[2:]) if len(in_shape) == dims + 2 else \
        [_conv_in_size(o, k, s, p, d) for o, k, s, p, d in
         zip(out_shape[2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation)]
    batch = out_shape[0]
    conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    norm_cls = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
    args = dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation)
    groups = "dw" if depthwise else conv.groups
    sig = f"conv{dims}d k{conv.kernel_size} {args['stride']} {args['padding']} {args['dilation']} " \
          f"g{groups} in{tuple(spatial)} b{batch}" + ("" if norm else " folded")

    def build(n_in: int, n_out: int):
        g = n_in if depthwise else conv.groups
        n_in, n_out = -(-n_in // g) * g, -(-n_out // g) * g  # grouped: whole groups
        layers = [conv_cls(n_in, n_out if not depthwise else n_in, groups=g, **args)]
        unit = nn.Sequential(*layers, *([norm_cls(n_out)] if norm else []), nn.ReLU())
        return unit, (torch.randn(batch, n_in, *spatial),)

    return LayerUnit(sig, build, depthwise)


def _linear_unit(out_shape: tuple[int, ...]) -> LayerUnit:
    rows = max(1, math.prod(out_shape[:-1]))

    def build(n_in: int, n_out: int):
        return nn.Linear(n_in, n_out), (torch.randn(rows, n_in),)

    return LayerUnit(f"linear rows{rows}", build)


def layer_unit(module: nn.Module, out_shape: tuple[int, ...],
               in_shape: tuple[int, ...] = (), norm: bool = True) -> LayerUnit | None:
    """The unit that times ``module`` (None: a layer whose cost the tables do not model);
    ``norm=False``: a convolution with its BatchNorm folded in (conv and ReLU only)."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return _conv_unit(module, tuple(out_shape), tuple(in_shape), norm)
    if isinstance(module, nn.Linear) and len(out_shape) >= 2:
        return _linear_unit(tuple(out_shape))
    return None


def table_dir() -> Path:
    from edgeslim.data.cache import cache_dir

    return cache_dir() / "latency"


class LatencyTable:
    """Milliseconds per (layer signature, n_in, n_out) in one runtime at one thread count."""

    def __init__(self, runtime: Runtime, threads: int = 1, runs: int = 20, warmup: int = 5) -> None:
        self.runtime, self.threads, self.runs, self.warmup = runtime, threads, runs, warmup
        cpu = hashlib.sha256(cpu_model().encode()).hexdigest()[:8]
        safe = "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in runtime.version())
        clock = "" if latency_clock(threads) == "wall" else "-threadclock"
        self.path = table_dir() / f"{runtime.name}-{safe}-{cpu}-t{threads}{clock}-v{TABLE_FORMAT}.json"
        self.entries: dict[str, dict[str, float]] = self._read()
        self.measured = 0  # entries measured by this object (0 on a warm cache)
        self._dirty = False

    def _read(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data.get("entries", {}) if isinstance(data, dict) else {}

    def get(self, unit: LayerUnit, n_in: int, n_out: int) -> float:
        """The unit's latency at these channel counts (measured now if not cached)."""
        row = self.entries.setdefault(unit.signature, {})
        key = f"{n_in},{n_out}"
        if key not in row:
            module, inputs = unit.build(n_in, n_out)
            module.eval()
            row[key] = float(self.runtime.time(module, inputs, self.threads, self.runs, self.warmup))
            self.measured += 1
            self._dirty = True
        return row[key]

    def save(self) -> None:
        """Write new entries (merged with what another process may have written meanwhile)."""
        if not self._dirty:
            return
        merged = self._read()
        for sig, row in self.entries.items():
            merged.setdefault(sig, {}).update(row)
        meta = {"runtime": self.runtime.name, "version": self.runtime.version(), "cpu": cpu_model(),
                "threads": self.threads, "format": TABLE_FORMAT}
        try:
            atomic_write_json(self.path, {"meta": meta, "entries": merged})
        except OSError:  # a read-only cache must not stop pruning; it only costs re-measuring
            return
        self.entries, self._dirty = merged, False


@dataclass
class _Layer:
    path: str
    unit: LayerUnit
    calls: int
    in_idx: np.ndarray  # class ids of its input channels (repeated after a flatten)
    out_idx: np.ndarray


#: a fitted scale outside this range means a probe measurement went wrong, not the tables
SCALE_RANGE = (0.25, 4.0)


def fit_scales(points: list[tuple[float, float, float]], baseline_ms: float) -> tuple[float, float]:
    """Least-squares ``(channels, depth)`` scales so that ``baseline + a*channels + b*depth``
    matches each measured point, in relative error. A term no point exercises keeps 1;
    fewer points than exercised terms fit one common factor; ``SCALE_RANGE`` bounds it."""
    points = [p for p in points if abs(p[0]) > 1e-12 or abs(p[1]) > 1e-12]  # unpruned: says nothing
    rows = np.asarray([(c, d) for c, d, _ in points], dtype=np.float64).reshape(-1, 2)
    y = np.asarray([m - baseline_ms for _, _, m in points], dtype=np.float64)
    w = 1.0 / np.maximum([m for _, _, m in points], 1e-12)
    scale = np.ones(2)
    used = [j for j in range(2) if np.abs(rows[:, j]).max(initial=0.0) > 1e-12]
    if used and len(points) < len(used):  # under-determined: one common factor
        total = rows.sum(axis=1) * w
        scale[used] = np.clip(float(total @ (y * w)) / max(float(total @ total), 1e-24), *SCALE_RANGE)
    elif used:
        sol, *_ = np.linalg.lstsq(rows[:, used] * w[:, None], y * w, rcond=None)
        scale[used] = np.clip(sol, *SCALE_RANGE)
    return float(scale[0]), float(scale[1])


class LatencyModel:
    """Predicted latency of a network pruned along its dependency graph (see the module doc)."""

    def __init__(self, graph, table: LatencyTable, baseline_ms: float) -> None:
        self.graph, self.table, self.baseline_ms = graph, table, baseline_ms
        self.layers: list[_Layer] = []
        for path, rec in graph.records.items():
            ic, oc = graph._idx[path]
            unit = None if rec.slicer is None or rec.ignored or ic is None or oc is None \
                else layer_unit(rec.module, rec.out_shape, getattr(rec, "in_shape", ()))
            if unit is not None:
                self.layers.append(_Layer(path, unit, max(1, len(rec.call_shapes)), ic, oc))
        self.folded_units: dict[int, LayerUnit] = {}  # layer -> its unit with the BN folded in
        full = np.zeros(len(graph.class_locked), dtype=bool)
        self.full_ms = [self.layer_ms(i, full) for i in range(len(self.layers))]
        self.scale = (1.0, 1.0)  # (channels, depth): see the module doc, "Calibration"
        self.points: list[tuple[float, float, float]] = []  # (channels, depth, measured ms)

    def counts(self, i: int, removed: np.ndarray) -> tuple[int, int]:
        layer = self.layers[i]
        n_out = int((~removed[layer.out_idx]).sum())
        n_in = n_out if layer.unit.depthwise else int((~removed[layer.in_idx]).sum())
        return n_in, n_out

    def offer_folds(self, layer_paths: list[str]) -> dict[int, str]:
        """Register a folded unit (conv + ReLU, no BN) for each conv at ``layer_paths`` whose
        BN can be folded; returns ``{layer index: path}`` of those the tables can time (a
        Linear's unit has no BN: its fold is not offered)."""
        wanted, offered = set(layer_paths), {}
        for i, layer in enumerate(self.layers):
            rec = self.graph.records[layer.path]
            unit = layer_unit(rec.module, rec.out_shape, getattr(rec, "in_shape", ()), norm=False) \
                if layer.path in wanted and layer.unit.signature.startswith("conv") else None
            if unit is not None:
                self.folded_units[i] = unit
                offered[i] = layer.path
        return offered

    def layer_ms(self, i: int, removed: np.ndarray, merged: frozenset[int] = frozenset()) -> float:
        """Table ms of layer ``i`` with ``removed`` cut (its folded unit when ``i in merged``)."""
        n_in, n_out = self.counts(i, removed)
        if n_in == 0 or n_out == 0:
            return 0.0
        unit = self.folded_units[i] if i in merged else self.layers[i].unit
        return self.layers[i].calls * self.table.get(unit, n_in, n_out)

    def terms(self, removed: np.ndarray, dropped: frozenset[int] = frozenset(),
              merged: frozenset[int] = frozenset()) -> tuple[float, float]:
        """(channels, depth): table ms changed by cutting ``removed`` (and folding the BNs of
        ``merged``) in the live layers, and by dropping the layers ``dropped`` (their full
        latency, negated). A fold is a per-layer change like a cut: the channel scale."""
        channels = depth = 0.0
        for i, full in enumerate(self.full_ms):
            if i in dropped:
                depth -= full
            else:
                channels += self.layer_ms(i, removed, merged) - full
        return channels, depth

    def predict(self, removed: np.ndarray, dropped: frozenset[int] = frozenset(),
                merged: frozenset[int] = frozenset()) -> float:
        """Predicted ms with ``removed`` channels cut, the layers ``dropped`` gone and the
        BNs of the layers ``merged`` folded."""
        channels, depth = self.terms(removed, dropped, merged)
        return self.baseline_ms + self.scale[0] * channels + self.scale[1] * depth

    def observe(self, removed: np.ndarray, dropped: frozenset[int], measured_ms: float,
                merged: frozenset[int] = frozenset()) -> None:
        """Record a whole-network measurement of a pruned variant and refit ``scale``."""
        self.points.append((*self.terms(removed, dropped, merged), float(measured_ms)))
        self.scale = fit_scales(self.points, self.baseline_ms)

    def per_layer(self, removed: np.ndarray | None = None,
                  merged: frozenset[int] = frozenset()) -> dict[str, float]:
        """``{module path: predicted ms}`` of every modelled layer."""
        if removed is None:
            removed = np.zeros(len(self.graph.class_locked), dtype=bool)
        return {layer.path: self.layer_ms(i, removed, merged) for i, layer in enumerate(self.layers)}
