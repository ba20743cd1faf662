"""Validation of the latency model: predicted vs measured latency of pruned variants.

For each model, runtime and batch: measure the unpruned model, calibrate the latency
model on the two probe variants ``prune`` itself measures (``probe_plans``), then build
variants the probes did not see and compare the model's prediction with the measured
latency:

* *random*: every prunable group at a random size of its latency staircase (the sizes
  the planner chooses from; its least important channels removed, L1), and each
  removable residual block dropped with probability 0.3;
* *planned*: the latency planner's plans at 1.5x, 2x and 3x predicted speed-up.

Variants and the unpruned model are timed *interleaved* (round-robin, ``--rounds``
rounds, the median kept), so drift on a busy machine hits all alike. Reported per
model/runtime/batch: the relative error ``|pred - meas| / meas`` before calibration
(``scale = (1, 1)``, the tables alone) and after (median and max over the variants).

    EDGESLIM_LATENCY_CLOCK=thread python benchmarks/latency_model_error.py \\
        --batches 1 --out benchmarks/results/latency_model_error.json
    EDGESLIM_LATENCY_CLOCK=thread python benchmarks/latency_model_error.py --batches 32 --runs 8 \\
        --vgg-width 0.5 --out benchmarks/results/latency_model_error.json

On a machine shared with other processes, ``EDGESLIM_LATENCY_CLOCK=thread`` times by the
thread's CPU time (``edgeslim.profile.latency.CLOCK_ENV``); the results file says which.

``--vgg-width`` reduces VGG-16's widths (batch 32 at full width takes ~0.2 s an inference
on one thread; the tables' signatures are the same, only the channel counts differ).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import numpy as np
import torch

import edgeslim
from edgeslim.graph import build_dependency_graph
from edgeslim.models import create_model
from edgeslim.profile.latency import latency_clock
from edgeslim.profile.latency_table import LatencyModel, LatencyTable
from edgeslim.profile.runtimes import get_runtime
from edgeslim.prune.blocks import block_importance, find_residual_blocks, remove_blocks_
from edgeslim.prune.importance import ImportanceContext, get_importance
from edgeslim.prune.latency_planner import (LatencyPlan, LatencyTargetError, _inside, group_moves,
                                            plan_latency, probe_plans)
from edgeslim.prune.surgery import apply_plan, removal_to_plan


def build(model, x, graph, plan: LatencyPlan):
    trial = copy.deepcopy(model)
    apply_plan(trial, (x,), removal_to_plan(graph, plan.removed))
    return remove_blocks_(trial, plan.blocks)


def random_plans(graph, scores, lat, blocks, n: int, rng) -> list[LatencyPlan]:
    """``n`` variants in the planner's space: random staircase sizes, random blocks dropped."""
    moves = group_moves(graph, scores, lat, {}, 1)
    plans = []
    for _ in range(n):
        removed = np.zeros(len(graph.class_locked), dtype=bool)
        for gm in moves:
            if gm is not None:
                s = gm.sizes[rng.integers(len(gm.sizes))]
                removed[gm.order[:gm.size - s]] = True
        chosen = {}
        for b in blocks:
            if rng.random() < 0.3 and not any(_inside(b.path, p) or _inside(p, b.path) for p in chosen):
                chosen[b.path] = b.post
        dropped = frozenset(i for p in chosen for i, layer in enumerate(lat.layers) if _inside(layer.path, p))
        plans.append(LatencyPlan(removed, chosen, 0.0, dropped=dropped))
    return plans


def interleaved(models: list, x, runtime, threads: int, rounds: int, runs: int) -> list[float]:
    times = [[] for _ in models]
    for _ in range(rounds):
        for i, m in enumerate(models):
            times[i].append(edgeslim.measure_latency(m, x, runtime=runtime, threads=threads, runs=runs,
                                                     warmup=max(2, runs // 5)))
    return [statistics.median(t) for t in times]


def _model(name: str, vgg_width: float):
    return create_model(name, width_mult=vgg_width) if name == "vgg16" and vgg_width != 1 else create_model(name)


def one(name: str, runtime_name: str, batch: int, args, rng) -> dict:
    """Calibrate as prune does, then predicted vs measured on unseen variants."""
    torch.manual_seed(0)
    t0 = time.time()
    model = _model(name, args.vgg_width).eval()
    x = torch.randn(batch, *model.default_input_size)
    graph = build_dependency_graph(model, (x,), protect_first=True)
    runtime = get_runtime(runtime_name)
    table = LatencyTable(runtime, args.threads)
    base = edgeslim.measure_latency(model, x, runtime=runtime, threads=args.threads, runs=args.runs)
    lat = LatencyModel(graph, table, base)
    scores = np.asarray(get_importance("l1")(graph, model, ImportanceContext()), dtype=np.float64)
    blocks = find_residual_blocks(model)
    bscores = block_importance(model, blocks, (x,), 1) if blocks else {}
    probes = probe_plans(graph, scores, lat, blocks)
    variants = [("random", p) for p in random_plans(graph, scores, lat, blocks, args.random, rng)]
    for sp in args.speedups:
        try:
            variants.append((f"planned {sp}x", plan_latency(graph, scores, lat, base / sp, blocks, bscores)))
        except LatencyTargetError:
            pass
    built = [model] + [build(model, x, graph, p) for p in probes] + [build(model, x, graph, p) for _, p in variants]
    ms = interleaved(built, x, runtime, args.threads, args.rounds, args.runs)
    table.save()
    lat.baseline_ms = ms[0]
    raw = [lat.predict(p.removed, p.dropped) for _, p in variants]
    for p, m in zip(probes, ms[1:1 + len(probes)]):
        lat.observe(p.removed, p.dropped, m)
    cal = [lat.predict(p.removed, p.dropped) for _, p in variants]
    meas = ms[1 + len(probes):]
    err = lambda preds: [abs(p - m) / m for p, m in zip(preds, meas)]  # noqa: E731
    e_raw, e_cal = err(raw), err(cal)
    return {"model": name, "runtime": runtime_name, "batch": batch, "threads": args.threads,
            "width_mult": args.vgg_width if name == "vgg16" else 1.0,
            "clock": latency_clock(args.threads),
            "base_ms": ms[0], "scale": list(lat.scale), "variants": len(variants),
            "median_err_raw": statistics.median(e_raw), "max_err_raw": max(e_raw),
            "median_err": statistics.median(e_cal), "max_err": max(e_cal),
            "rows": [{"kind": k, "blocks": len(p.blocks), "measured_ms": m, "predicted_raw_ms": r,
                      "predicted_ms": c} for (k, p), m, r, c in zip(variants, meas, raw, cal)],
            "seconds": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet5", "resnet20", "resnet56", "vgg16", "mobilenetv2"])
    ap.add_argument("--runtimes", nargs="+", default=["onnxruntime", "torch"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--random", type=int, default=6)
    ap.add_argument("--speedups", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--vgg-width", type=float, default=1.0)
    ap.add_argument("--out", default=None, help="append rows to this JSON file")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results = []
    for name in args.models:
        for runtime in args.runtimes:
            for batch in args.batches:
                row = one(name, runtime, batch, args, rng)
                results.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                  for k, v in row.items() if k != "rows"}), flush=True)
                if args.out:
                    _save(args.out, row, args)


def _save(path: str, row: dict, args) -> None:
    """Append (replace the same model/runtime/batch) so partial runs accumulate."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {"command": "", "rows": []}
    key = (row["model"], row["runtime"], row["batch"])
    data["rows"] = [r for r in data["rows"] if (r["model"], r["runtime"], r["batch"]) != key] + [row]
    data.setdefault("settings", {})[f"b{row['batch']}"] = {
        "threads": args.threads, "rounds": args.rounds, "runs": args.runs, "random": args.random,
        "speedups": args.speedups, "vgg_width": args.vgg_width,
        "machine": "shared 2-core machine (other processes at nice 19)"}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


if __name__ == "__main__":
    main()
