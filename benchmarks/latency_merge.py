"""Exact merges in the latency planner: the same target with and without BN folding moves.

For each model: ``prune(target_latency=<unpruned ms / speedup>)`` with ``merge="exact"`` (BatchNorms folded where
the runtime runs the folded conv faster, ``prune/latency_planner.py``) and ``merge="none"``,
plus the unpruned model with every BN folded (``fold_batchnorm``: what folding alone gives).
All are then timed interleaved (``latency_target.interleaved``) against the unpruned model:
measured speed-up, FLOPs kept, the folds taken, predicted vs measured ms.

    EDGESLIM_LATENCY_CLOCK=thread OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 10 \\
        /work/main/.venv/bin/python benchmarks/latency_merge.py --models lenet5 resnet20 \\
        --runtime torch --speedup 2 --runs 30 --rounds 15 --repeats 3 --out benchmarks/results/latency_merge.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import edgeslim
from edgeslim.io import atomic_write_json
from edgeslim.models import create_model
from edgeslim.profile import count_flops
from edgeslim.prune.latency_planner import LatencyTargetError
from edgeslim.transforms.fold import fold_batchnorm
from latency_target import interleaved


def _variants(name: str, x: torch.Tensor, args) -> tuple[dict, dict]:
    torch.manual_seed(0)
    model = create_model(name).eval()
    models, notes = {"unpruned": model, "folded_only": fold_batchnorm(model, x)}, {}
    # one target in ms for both (the unpruned latency timed over rounds): a target_speedup would
    # divide each prune's own single baseline measurement, whose noise decides more than the folds
    target = interleaved({"u": model}, x, args.runtime, 1, args.rounds, args.runs)["u"] / args.speedup
    for merge in ("exact", "none"):
        try:
            pruned = edgeslim.prune(model, x, target_latency=target, runtime=args.runtime,
                                    merge=merge, latency_runs=args.runs)
        except LatencyTargetError as exc:
            notes[merge] = {"error": str(exc).split(". Fix")[0]}
            continue
        lat = edgeslim.info(pruned).latency
        models[merge] = pruned
        notes[merge] = {"merges": len(lat.merges), "predicted_ms": lat.predicted_ms,
                        "measured_in_prune_ms": lat.measured_ms, "target_ms": lat.target_ms,
                        "removed_blocks": len(lat.removed_blocks)}
    return models, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lenet5", "resnet20"])
    ap.add_argument("--runtime", default="torch")
    ap.add_argument("--speedup", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1, help="whole runs (plans differ by timing noise)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    for repeat, name in ((r, n) for r in range(args.repeats) for n in args.models):
        size = (1, 28, 28) if name == "lenet5" else (3, 32, 32)
        x = torch.randn(1, *size)
        models, notes = _variants(name, x, args)
        ms = interleaved(models, x, args.runtime, 1, args.rounds, args.runs)
        flops0, macs0 = count_flops(models["unpruned"], x)
        for key, model in models.items():
            row = {"model": name, "repeat": repeat, "variant": key, "ms": ms[key], "speedup": ms["unpruned"] / ms[key],
                   "flops_kept": count_flops(model, x)[0] / flops0, "macs_kept": count_flops(model, x)[1] / macs0,
                   **notes.get(key, {})}
            rows.append(row)
            print(json.dumps(row))
        rows += [{"model": name, "repeat": repeat, "variant": k, **v} for k, v in notes.items() if k not in models]
    if args.out:
        atomic_write_json(args.out, {"runtime": args.runtime, "batch": 1, "threads": 1,
                                     "target_speedup": args.speedup, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
