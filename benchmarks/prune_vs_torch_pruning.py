"""edgeslim vs Torch-Pruning (DepGraph), side by side, in one run on this CPU.

    pip install torch-pruning          # benchmark-only dependency
    python benchmarks/prune_vs_torch_pruning.py [--models resnet56 vgg16 mobilenetv2] [--targets 0.5 0.25]

For each model and FLOPs target (fraction of FLOPs kept), both tools prune the
same randomly initialised zoo model with the same criterion (L1 filter norm,
global ranking, classifier left alone). Torch-Pruning has no FLOPs target, so
its global channel ratio is bisected (untimed) until its FLOPs match ours; the
timed run is then one full analyse+prune. Reported per row: analyse+prune time
(median of --repeats), params, FLOPs, CPU latency (1 thread; batch 1 and 32;
PyTorch eager and onnxruntime) and the *latency realisation* = measured
speed-up / FLOPs reduction (1.0 = the model got exactly as much faster as its
FLOPs dropped). Writes benchmarks/results/prune_vs_torch_pruning.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import edgeslim
from edgeslim.export import export_onnx
from edgeslim.io import atomic_write_json
from edgeslim.profile import count_flops, count_params, measure_latency, ort_latency
from edgeslim.profile.summary import format_table

RESULTS = Path(__file__).resolve().parent / "results"


def ours(model: torch.nn.Module, x: torch.Tensor, target: float, round_to: int) -> torch.nn.Module:
    return edgeslim.prune(model, x, criterion="l1", planner="global", target_flops=target,
                          round_to=round_to, protect_first=False)


def theirs(model: torch.nn.Module, x: torch.Tensor, ratio: float, round_to: int) -> torch.nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       global_pruning=True, pruning_ratio=ratio, ignored_layers=head,
                                       round_to=round_to if round_to > 1 else None)
    pruner.step()
    return model


def match_ratio(model, x, flops_goal: float, round_to: int) -> float:
    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        flops = count_flops(theirs(model, x, mid, round_to), x)[0]
        lo, hi = (mid, hi) if flops > flops_goal else (lo, mid)
    return hi


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def latencies(model, shape, runs: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for b in (1, 32):
            x = torch.randn(b, *shape)
            out[f"eager_b{b}_ms"] = measure_latency(model, x, threads=1, runs=runs if b == 1 else max(runs // 5, 3),
                                                    warmup=3)[0]
            path = Path(tmp) / f"m{b}.onnx"
            export_onnx(model, x, path)
            out[f"ort_b{b}_ms"] = ort_latency(path, x, threads=1, runs=runs if b == 1 else max(runs // 5, 3),
                                              warmup=3)[0]
    return out


def row(tool, name, target, model, base, t, shape, runs) -> dict:
    x = torch.randn(1, *shape)
    flops = count_flops(model, x)[0]
    r = {"tool": tool, "model": name, "target_flops": target, "prune_s": t, "params": count_params(model),
         "flops": flops} | latencies(model, shape, runs)
    for k in ("eager_b1_ms", "ort_b1_ms", "eager_b32_ms", "ort_b32_ms"):
        r[k.replace("_ms", "_realisation")] = (base[k] / r[k]) / (base["flops"] / flops)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet56", "vgg16", "mobilenetv2"])
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.25])
    p.add_argument("--round-to", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--out", default=str(RESULTS / "prune_vs_torch_pruning.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = edgeslim.create_model(name).eval()
        shape = tuple(model.default_input_size)
        x = torch.randn(1, *shape)
        base = {"flops": count_flops(model, x)[0], "params": count_params(model)} | latencies(model, shape, args.runs)
        rows.append({"tool": "unpruned", "model": name, "target_flops": 1.0, "prune_s": 0.0} | base)
        for target in args.targets:
            t_ours, m_ours = timed(lambda: ours(model, x, target, args.round_to), args.repeats)
            ratio = match_ratio(model, x, count_flops(m_ours, x)[0], args.round_to)
            t_theirs, m_theirs = timed(lambda: theirs(model, x, ratio, args.round_to), args.repeats)
            rows.append(row("edgeslim", name, target, m_ours, base, t_ours, shape, args.runs))
            rows.append(row("torch-pruning", name, target, m_theirs, base, t_theirs, shape, args.runs)
                        | {"tp_ratio": ratio})
            rows[-2]["prune_time_ratio_ours_over_theirs"] = t_ours / t_theirs
            print(format_table(rows[-3:]), flush=True)
    result = {"rows": rows, "round_to": args.round_to, "threads": 1, "torch": torch.__version__}
    try:
        import torch_pruning as tp

        result["torch_pruning"] = tp.__version__
    except ImportError:
        pass
    atomic_write_json(args.out, result)
    print(json.dumps({"written": args.out}))


if __name__ == "__main__":
    main()
