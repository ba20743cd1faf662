"""Latency-first pruning: measured speed-up achieved vs. asked, FLOPs/params kept, prediction error,
and what FLOPs-targeted pruning (ours and Torch-Pruning) keeps at the same measured latency.

For each model, runtime, batch and target speed-up: prune with ``target_speedup`` (the
latency planner). Then, for comparison:

* ``flops_same_flops``: ours with ``target_flops`` = the FLOPs the latency planner kept;
* ``flops_same_latency``: ours with ``target_flops`` bisected (measured) until the model is
  as fast as the latency planner's;
* ``tp_same_latency``: Torch-Pruning's ``MagnitudePruner`` (L1, global, the classifier
  left alone; its ``pruning_ratio`` bisected the same way). Torch-Pruning lives in another
  environment here, so the benchmark is run with that interpreter when it is wanted
  (without ``torch_pruning`` importable its columns are skipped, with a note).

All models are then timed *interleaved* (round-robin over ``--rounds``, so drift on a busy
machine hits all alike) and reported: measured speed-up, FLOPs and params kept, and
``l1_kept``, the share of the unpruned network's conv/linear L1 weight mass that the pruned
one still holds (the importance the criterion sees; removed blocks lose theirs).

    EDGESLIM_LATENCY_CLOCK=thread PYTHONPATH=src /work/venv-zoo/bin/python benchmarks/latency_target.py \
        --models resnet56 lenet5 --speedups 2 --runtimes onnxruntime --batches 1 \
        --out benchmarks/results/latency_target.json

Accuracy at equal measured latency on real data: ``benchmarks/latency_accuracy.py``.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch

import edgeslim
from edgeslim.io import atomic_write_json
from edgeslim.models import create_model
from edgeslim.profile import count_flops, count_params
from edgeslim.profile.latency import latency_clock


def interleaved(models: dict, x: torch.Tensor, runtime: str, threads: int, rounds: int, runs: int) -> dict:
    """Median over ``rounds`` of each model's median latency, models timed in turn each round."""
    times = {k: [] for k in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(edgeslim.measure_latency(model, x, runtime=runtime, threads=threads,
                                                        runs=runs, warmup=max(2, runs // 5)))
    return {k: statistics.median(v) for k, v in times.items()}


def l1_mass(model: torch.nn.Module) -> float:
    return sum(float(m.weight.detach().abs().sum()) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def torch_pruning(model: torch.nn.Module, x: torch.Tensor, ratio: float) -> torch.nn.Module:
    """Torch-Pruning's global L1 MagnitudePruner (as ``prune_vs_torch_pruning.py``)."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), global_pruning=True,
                              pruning_ratio=ratio, ignored_layers=head).step()
    return model


def match_latency(build, lo: float, hi: float, goal_ms: float, measure, steps: int = 7, keep_grows: bool = True):
    """Bisect ``build(p)`` on ``p`` in [lo, hi] for a model measured within ``goal_ms`` that
    keeps the most (``keep_grows``: a larger ``p`` keeps more; else less). Returns ``(p,
    model)``; the fastest one tried when none is fast enough. A ``p`` that cannot be built
    (``prune`` refuses a cut past what can be cut) counts as too much cut."""
    fast, slow = None, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        try:
            model = build(mid)
        except edgeslim.errors.EdgeslimError:  # a cut past what can be cut: keep more
            lo, hi = (mid, hi) if keep_grows else (lo, mid)
            continue
        ms = measure(model)
        if ms <= goal_ms:
            if fast is None or (mid > fast[0]) == keep_grows:
                fast = (mid, model)
            lo, hi = (mid, hi) if keep_grows else (lo, mid)
        else:
            if slow is None or ms < slow[2]:
                slow = (mid, model, ms)
            lo, hi = (lo, mid) if keep_grows else (mid, hi)
    return fast or slow[:2]


def _tp_available() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


def _tp_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("torch-pruning") if _tp_available() else "not importable: skipped"


def one(name: str, runtime: str, batch: int, speedup: float, threads: int, rounds: int, runs: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(batch, *model.default_input_size)
    ours = edgeslim.prune(model, x, target_speedup=speedup, runtime=runtime, threads=threads,
                          latency_runs=runs)
    info = edgeslim.info(ours).latency.to_dict()
    flops0, params0, mass0 = count_flops(model, x)[0], count_params(model), l1_mass(model)
    kept = count_flops(ours, x)[0] / flops0
    measure = lambda m: edgeslim.measure_latency(m, x, runtime=runtime, threads=threads, runs=runs)  # noqa: E731
    goal = info["measured_ms"]
    models = {"base": model, "latency": ours, "flops_same_flops": edgeslim.prune(model, x, target_flops=kept)}
    _, models["flops_same_latency"] = match_latency(
        lambda f: edgeslim.prune(model, x, target_flops=f), 0.02, 1.0, goal, measure)
    if _tp_available():
        _, models["tp_same_latency"] = match_latency(
            lambda r: torch_pruning(model, x, r), 0.0, 0.95, goal, measure, keep_grows=False)
    t = interleaved(models, x, runtime, threads, rounds, runs)
    row = {"model": name, "runtime": runtime, "batch": batch, "threads": threads, "target": speedup,
           "clock": latency_clock(threads), "base_ms": t["base"],
           "blocks_removed": len(info.get("removed_blocks", [])),
           "pred_error_first": abs(info["attempts"][0]["predicted_ms"] - info["attempts"][0]["measured_ms"])
           / info["attempts"][0]["measured_ms"],
           "pred_error": abs(info["predicted_ms"] - info["measured_ms"]) / info["measured_ms"],
           "attempts": len(info["attempts"]), "torch_pruning": _tp_version(),
           "attempt_log": [{k: a[k] for k in ("budget_ms", "predicted_ms", "measured_ms")} for a in info["attempts"]],
           "target_ms": info["target_ms"], "planner_baseline_ms": info["baseline_ms"], "met": info["met"],
           "probes": info["probes"]}
    for k, m in models.items():
        if k != "base":
            row[k] = {"speedup": t["base"] / t[k], "ms": t[k], "flops_kept": count_flops(m, x)[0] / flops0,
                      "params_kept": count_params(m) / params0, "l1_kept": l1_mass(m) / mass0}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet56", "vgg16", "mobilenetv2", "lenet5"])
    ap.add_argument("--speedups", nargs="+", type=float, default=[2.0, 4.0])
    ap.add_argument("--runtimes", nargs="+", default=["onnxruntime", "torch"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", default=None, help="add rows to this JSON file (same model/runtime/batch/target replaced)")
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
                    print(json.dumps(_rounded(row)), flush=True)
                    if args.out:
                        _save(args.out, row)


def _rounded(v):
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return round(v, 4) if isinstance(v, float) else v


def _save(path: str, row: dict) -> None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        data = {"rows": []}
    key = lambda r: (r["model"], r["runtime"], r["batch"], r["target"])  # noqa: E731
    data["rows"] = [r for r in data["rows"] if key(r) != key(row)] + [row]
    data["machine"] = "shared 2-core machine (other processes at nice 19); torch " + torch.__version__
    atomic_write_json(path, data, indent=1)


if __name__ == "__main__":
    main()
