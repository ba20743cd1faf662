"""Latency-first pruning: measured speed-up achieved vs. asked, FLOPs/params kept, prediction error.

For each model, runtime, batch and target speed-up: prune with ``target_speedup`` (the
latency planner), then time the unpruned and pruned models *interleaved* (round-robin,
so drift on a busy machine hits both alike) and report the achieved speed-up, FLOPs and
params kept, and the planner's prediction error. For comparison, FLOPs-targeted pruning
(ours, ``target_flops`` = the FLOPs the latency planner kept) is timed in the same rounds.

Not yet here (see the issue): Torch-Pruning at equal measured latency, accuracy at equal
latency on LeNet-5/MNIST and CIFAR-10.

    python benchmarks/latency_target.py --models lenet5 resnet20 --speedups 2 --runtimes onnxruntime
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

import edgeslim
from edgeslim.models import create_model
from edgeslim.profile import count_flops, count_params


def interleaved(models: dict, x: torch.Tensor, runtime: str, threads: int, rounds: int, runs: int) -> dict:
    """Median over ``rounds`` of each model's median latency, models timed in turn each round."""
    times = {k: [] for k in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(edgeslim.measure_latency(model, x, runtime=runtime, threads=threads,
                                                        runs=runs, warmup=max(2, runs // 5)))
    return {k: statistics.median(v) for k, v in times.items()}


def one(name: str, runtime: str, batch: int, speedup: float, threads: int, rounds: int, runs: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(batch, *model.default_input_size)
    ours = edgeslim.prune(model, x, target_speedup=speedup, runtime=runtime, threads=threads,
                          latency_runs=runs)
    info = edgeslim.info(ours).latency.to_dict()
    flops0, params0 = count_flops(model, x)[0], count_params(model)
    kept = count_flops(ours, x)[0] / flops0
    by_flops = edgeslim.prune(model, x, target_flops=kept)
    t = interleaved({"base": model, "latency": ours, "flops": by_flops}, x, runtime, threads, rounds, runs)
    return {"model": name, "runtime": runtime, "batch": batch, "threads": threads, "target": speedup,
            "speedup": t["base"] / t["latency"], "speedup_flops_pruned": t["base"] / t["flops"],
            "flops_kept": kept, "params_kept": count_params(ours) / params0,
            "blocks_removed": len(info.get("removed_blocks", [])),
            "pred_error": abs(info["predicted_ms"] - info["measured_ms"]) / info["measured_ms"],
            "base_ms": t["base"], "pruned_ms": t["latency"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet56", "vgg16", "mobilenetv2", "lenet5"])
    ap.add_argument("--speedups", nargs="+", type=float, default=[2.0, 4.0])
    ap.add_argument("--runtimes", nargs="+", default=["onnxruntime", "torch"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    for name in args.models:
        for runtime in args.runtimes:
            for batch in args.batches:
                for speedup in args.speedups:
                    try:
                        row = one(name, runtime, batch, speedup, args.threads, args.rounds, args.runs)
                    except edgeslim.errors.EdgeslimError as exc:
                        row = {"model": name, "runtime": runtime, "batch": batch, "target": speedup,
                               "error": str(exc)}
                    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                          flush=True)


if __name__ == "__main__":
    main()
