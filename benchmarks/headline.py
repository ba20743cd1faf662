"""Each seed paper's headline against a recipe run: ratios from the run, latency timed interleaved.

    # run the recipe (timed end to end), then measure it
    python benchmarks/headline.py kt --data-dir ../shared/data --run runs/kt_lenet5_mnist
    python benchmarks/headline.py prune_merge --data-dir ../shared/data --run runs/prune_merge_lenet5_mnist
    # measure a finished run only
    python benchmarks/headline.py kt --run runs/kt_lenet5_mnist --no-compress

``kt`` is ``recipes/kt_lenet5_mnist.yaml``, the README's default job (knowledge-transfer pipeline, Chen et al. 2020: more
than 49.5x fewer parameters, more than 3.2x faster, at most 1 point accuracy loss);
``prune_merge`` is ``recipes/prune_merge_lenet5_mnist.yaml`` (pruning + streamline merging, Xie et
al.: 1/20 of the size, 8x faster, no accuracy loss; beyond it, ADMM weight pruning's 71x fewer
non-zero weights at 99.2%), on the 431K LeNet-5 of the pruning papers (``lenet5_caffe``);
``--recipe recipes/prune_merge_lenet5classic_mnist.yaml`` measures the same method on the classic
61.7K LeNet-5.

Accuracy, parameters, non-zero weights and stored bytes are the run's own metrics (``state.json``):
the trained model before the first compression stage (``teacher.safetensors``) against the final
model. ``stored_bytes`` is the compact lossless sparse format (``save_sparse``, fp32 values) when
most weights are zero, otherwise the dense fp32 weights.

Latency is onnxruntime (CPU execution provider, full graph optimisation, ``--threads`` intra-op
threads, 1 by default) on the exported teacher and final model, at each ``--batch``: ``--rounds``
rounds, each timing teacher, final model and an empty graph (the per-call floor of
``session.run``) one after the other with ``--runs`` passes, so a burst of load on a shared machine
hits all three alike; the reported latency is the median over rounds and the speed-up is the ratio
of the medians. The same for eager PyTorch, for reference. ``--c-api`` adds onnxruntime through its
C API in the same rounds (``benchmarks/ort_capi.py``: what an application on the device calls,
without Python's per-call cost, which is most of a few-microsecond model's time in
``session.run``); its output is checked against Python onnxruntime's first.

With the data (``--data-dir`` / ``$EDGESLIM_DATA``), the accuracy loss comes with its exact 95%
interval on the same test images (paired), the images lost and gained and McNemar's p, computed from
the saved teacher and final model (without it: as the run recorded them in ``vs_baseline``): whether
the loss is larger than the 10,000 test images can tell from noise.

Writes ``benchmarks/results/headline_<recipe>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

RECIPES: dict[str, dict[str, Any]] = {
    "kt": {
        "recipe": "recipes/kt_lenet5_mnist.yaml",
        "paper": "Chen et al., Computer Communications 163 (2020): knowledge-transfer compression",
        "goals": {"params_x": 49.5, "ort_speedup_b1": 3.2, "max_accuracy_loss_pts": 1.0, "max_wall_s": 300},
    },
    "prune_merge": {
        "recipe": "recipes/prune_merge_lenet5_mnist.yaml",
        "paper": "Xie, Zhong, Pan, Zhang (CEA): pruning + streamline merging; ADMM (Zhang et al. 2018) "
                 "for the non-zero weights",
        "goals": {"stored_x": 20.0, "ort_speedup_best_batch": 8.0, "max_accuracy_loss_pts": 0.1,
                  "nonzero_x": 70.0},
    },
}


def _compress(recipe: Path, run: Path, data_dir: str | None, *, resume: bool = False,
              progress: bool = True, threads: int | None = None) -> float:
    """Run the recipe with the edgeslim command in a fresh process; returns its wall seconds.

    ``resume`` continues an interrupted run (a finished one is a no-op); ``progress=False`` hides
    the progress bars (runs side by side); ``threads`` sets the child's ``OMP_NUM_THREADS``."""
    cmd = [sys.executable, "-m", "edgeslim", "compress", str(recipe), "--out", str(run)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    cmd += ["--resume"] * resume + ["--no-progress"] * (not progress)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - start


def _rows(run: Path) -> tuple[dict, dict, dict]:
    """(teacher row, final row, state): the trained model before the first compression stage."""
    state = json.loads((run / "state.json").read_text())
    rows = state["completed"]
    teacher_stage = state["teacher"]["stage"]  # index of the first compression stage
    teacher = next(r for r in rows if r["index"] == teacher_stage - 1)
    return teacher, rows[-1], state


class _Empty(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * 1.0


def latency(models: dict[str, nn.Module], shape: tuple[int, ...], batches: list[int], threads: int,
            rounds: int, runs: int, work: Path, c_api: Path | None = None) -> dict[str, Any]:
    """Interleaved medians (ms) per batch and runtime; see the module docstring. ``c_api``: the
    built ``ort_capi`` harness, to time each model through onnxruntime's C API too (1 thread)."""
    from edgeslim.export import export_onnx
    from edgeslim.profile import measure_latency, ort_latency
    from ort_capi import c_latency

    out: dict[str, Any] = {}
    for b in batches:
        x = torch.randn(b, *shape)
        paths = {}
        for name, m in models.items():
            paths[name] = work / f"{name}_b{b}.onnx"
            export_onnx(m.eval(), x, paths[name])
        n = runs if b == 1 else max(20, runs * 4 // b)
        ort = {k: [] for k in models}
        eager = {k: [] for k in models}
        capi = {k: [] for k in models}
        for _ in range(rounds):
            for name, m in models.items():
                ort[name].append(ort_latency(paths[name], x, threads=threads, runs=n, warmup=n // 5)[0])
                eager[name].append(measure_latency(m, x, threads=threads, runs=max(10, n // 10),
                                                   warmup=5)[0])
                if c_api:
                    capi[name].append(c_latency(c_api, paths[name], x.numpy(), runs=n, warmup=n // 5))
        out[f"batch{b}"] = {
            "runs_per_round": n,
            "onnxruntime_ms": {k: statistics.median(v) for k, v in ort.items()},
            "onnxruntime_rounds_ms": ort,
            "eager_ms": {k: statistics.median(v) for k, v in eager.items()},
        }
        med = out[f"batch{b}"]
        med["onnxruntime_speedup"] = med["onnxruntime_ms"]["teacher"] / med["onnxruntime_ms"]["final"]
        med["eager_speedup"] = med["eager_ms"]["teacher"] / med["eager_ms"]["final"]
        if "empty" in med["onnxruntime_ms"]:
            med["onnxruntime_ceiling"] = med["onnxruntime_ms"]["teacher"] / med["onnxruntime_ms"]["empty"]
        if c_api:
            med["onnxruntime_c_ms"] = {k: statistics.median(v) for k, v in capi.items()}
            med["onnxruntime_c_rounds_ms"] = capi
            med["onnxruntime_c_speedup"] = med["onnxruntime_c_ms"]["teacher"] / med["onnxruntime_c_ms"]["final"]
            if "empty" in capi:
                med["onnxruntime_c_ceiling"] = med["onnxruntime_c_ms"]["teacher"] / med["onnxruntime_c_ms"]["empty"]
    return out


def paired_change(run: Path, t: dict, f: dict, state: dict, data_dir: str | None) -> dict | None:
    """The final model's accuracy change against the teacher on the same test images, computed from
    the saved models (their accuracies must be the run's); without the data, the run's own record
    (``vs_baseline``, absent in runs from before it was recorded), else None."""
    paired = f["metrics"].get("vs_baseline")
    recorded = paired if paired and paired.get("index") == t["index"] else None
    import edgeslim
    from edgeslim.data import make_loaders
    from edgeslim.errors import DataError
    from edgeslim.train import correct_mask, paired_accuracy_change

    d = state["recipe"]["data"]
    try:
        _, test = make_loaders(d["name"], data_dir, batch_size=256, test_subset=d.get("test_subset"),
                               seed=state["recipe"]["seed"])
    except DataError as exc:
        print(f"paired accuracy comparison {'as the run recorded it' if recorded else 'not made'} ({exc})",
              file=sys.stderr)
        return recorded
    masks = [correct_mask(edgeslim.load(run / name), test) for name in ("teacher.safetensors", "model.safetensors")]
    for mask, row in zip(masks, (t, f)):
        if abs(float(mask.double().mean()) - row["metrics"]["accuracy"]) > 1e-9:
            raise SystemExit(f"{run}: the saved {row['stage']} model scores {float(mask.double().mean()):.4f} on "
                             f"this test set, its run recorded {row['metrics']['accuracy']:.4f}: other data?")
    return paired_accuracy_change(*masks)


def verdict(kind: str, t: dict, f: dict, lat: dict, wall: float | None,
            paired: dict | None = None) -> dict[str, Any]:
    goals = RECIPES[kind]["goals"]
    tm, fm = t["metrics"], f["metrics"]
    loss = 100 * (tm["accuracy"] - fm["accuracy"])
    res: dict[str, Any] = {
        "teacher_accuracy": tm["accuracy"], "final_accuracy": fm["accuracy"], "accuracy_loss_pts": loss,
        "params_x": tm["params"] / fm["params"], "nonzero_x": tm["nonzero_params"] / fm["nonzero_params"],
        "stored_x": tm["stored_bytes"] / fm["stored_bytes"],
        "ort_speedup": {b: v["onnxruntime_speedup"] for b, v in lat.items()},
        "ort_c_api_speedup": {b: v["onnxruntime_c_speedup"] for b, v in lat.items() if "onnxruntime_c_speedup" in v}
                             or None,
        "run_onnx_latency_x": (tm["onnx_latency_ms"] / fm["onnx_latency_ms"]
                               if tm.get("onnx_latency_ms") and fm.get("onnx_latency_ms") else None),
        "wall_s": wall, "accuracy_met": loss <= goals["max_accuracy_loss_pts"] + 1e-9,
    }
    if paired:
        res["accuracy_loss_ci95_pts"] = [-paired["ci_pts"][1], -paired["ci_pts"][0]]
        res["test_images_lost_gained"] = [paired["lost"], paired["gained"]]
        res["mcnemar_p"] = paired["p_value"]
    if kind == "kt":
        res["params_met"] = res["params_x"] >= goals["params_x"]
        res["speed_met"] = lat["batch1"]["onnxruntime_speedup"] >= goals["ort_speedup_b1"]
        if "onnxruntime_c_speedup" in lat["batch1"]:
            res["speed_met_c_api"] = lat["batch1"]["onnxruntime_c_speedup"] >= goals["ort_speedup_b1"]
        res["wall_met"] = None if wall is None else wall <= goals["max_wall_s"]
    else:
        best = max(lat, key=lambda b: lat[b]["onnxruntime_speedup"])
        res["best_batch"] = best
        res["stored_met"] = res["stored_x"] >= goals["stored_x"]
        res["speed_met"] = lat[best]["onnxruntime_speedup"] >= goals["ort_speedup_best_batch"]
        res["nonzero_met"] = res["nonzero_x"] >= goals["nonzero_x"]
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(RECIPES))
    p.add_argument("--run", required=True, help="run directory (made by the recipe unless --no-compress)")
    p.add_argument("--recipe", default=None, help="recipe file (default: the shipped one for KIND)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-compress", action="store_true", help="only measure an existing finished run")
    p.add_argument("--batch", type=int, action="append", default=None, help="batch sizes (default 1, 64)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--runs", type=int, default=400, help="timed passes per round at batch 1")
    p.add_argument("--c-api", action="store_true",
                   help="also time through onnxruntime's C API (benchmarks/ort_capi.c, built with the "
                        "system C compiler): the latency without Python's per-call cost; 1 thread only")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.c_api and a.threads != 1:
        p.error("--c-api times 1 intra-op thread; leave --threads at 1")
    spec = RECIPES[a.kind]
    recipe = Path(a.recipe or ROOT / spec["recipe"])
    run = Path(a.run)
    wall = None if a.no_compress else _compress(recipe, run, a.data_dir)
    t, f, state = _rows(run)

    import edgeslim

    torch.set_num_threads(a.threads)
    teacher, final = edgeslim.load(run / "teacher.safetensors"), edgeslim.load(run / "model.safetensors")
    shape = tuple(getattr(teacher, "default_input_size", (1, 28, 28)))
    with tempfile.TemporaryDirectory(prefix="edgeslim-headline-") as tmp:
        c_api = build_c_api(Path(tmp)) if a.c_api else None
        lat = latency({"teacher": teacher, "final": final, "empty": _Empty()}, shape, a.batch or [1, 64],
                      a.threads, a.rounds, a.runs, Path(tmp), c_api)
    res = verdict(a.kind, t, f, lat, wall, paired_change(run, t, f, state, a.data_dir))
    settings = {"recipe": str(recipe.relative_to(ROOT) if recipe.is_relative_to(ROOT) else recipe),
                "run": str(run), "threads": a.threads, "rounds": a.rounds, "runs": a.runs,
                "batches": a.batch or [1, 64], "torch": torch.__version__,
                "onnxruntime": __import__("onnxruntime").__version__, "python": platform.python_version(),
                "machine": platform.machine(), "cpu": _cpu(), "cpus": os.cpu_count(),
                "torch_threads_training": os.environ.get("OMP_NUM_THREADS", "default"),
                "load_average_at_end": os.getloadavg()}
    out = {"benchmark": f"headline_{a.kind}", "paper": spec["paper"], "goals": spec["goals"],
           "settings": settings, "result": res, "latency": lat,
           "stages": [{"stage": r["stage"]} | {k: r["metrics"].get(k) for k in (
               "accuracy", "params", "nonzero_params", "stored_bytes", "macs", "latency_ms", "onnx_latency_ms",
               "wall_s")} for r in state["completed"]]}
    path = Path(a.out or RESULTS / f"headline_{a.kind}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out, indent=1)
    for b, v in lat.items():
        print(f"{b}: onnxruntime teacher {v['onnxruntime_ms']['teacher'] * 1e3:.1f} us, final "
              f"{v['onnxruntime_ms']['final'] * 1e3:.1f} us, empty graph {v['onnxruntime_ms']['empty'] * 1e3:.1f} us"
              f" -> {v['onnxruntime_speedup']:.2f}x (eager {v['eager_speedup']:.2f}x)")
        if "onnxruntime_c_ms" in v:
            c = v["onnxruntime_c_ms"]
            print(f"{b}: onnxruntime C API teacher {c['teacher'] * 1e3:.1f} us, final {c['final'] * 1e3:.1f} us, "
                  f"empty graph {c['empty'] * 1e3:.1f} us -> {v['onnxruntime_c_speedup']:.2f}x")
    print(json.dumps(res, indent=1))
    print(f"-> {path}")


def build_c_api(work: Path) -> Path:
    """The ``ort_capi`` harness (benchmarks/ort_capi.py), built into ``work``."""
    from ort_capi import build

    return build(work)


def _cpu() -> str:
    from edgeslim.profile.runtimes import cpu_model

    return cpu_model()


if __name__ == "__main__":
    main()
