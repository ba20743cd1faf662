"""Analyse+prune time, edgeslim vs Torch-Pruning, on the torchvision models the issue names.

Runs in the zoo venv (see ``zoo_coverage.py`` for the exact set-up commands)::

    /tmp/venv-zoo/bin/python benchmarks/zoo_prune_time.py [--models resnet50 ...] [--repeats 5]

Both tools prune a deep copy (made outside the timer) of the same randomly initialised
model, in place, on one thread, 224x224, batch 1: edgeslim with ``prune_(m, x,
target_flops=0.5)`` (global L1), Torch-Pruning with ``MagnitudePruner`` (global L1, channel
ratio 0.3, classifier ignored). Each repeat times one call of each, alternating which goes
first; reported are the medians and the median of the per-repeat ratios ours/theirs.
Writes ``benchmarks/results/zoo_prune_time.json``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ["resnet50", "wide_resnet50_2", "vgg16_bn", "densenet121", "convnext_tiny"]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    import torch
    import torchvision

    import edgeslim
    from edgeslim.io import atomic_write_json
    from zoo_coverage import prune_torch_pruning

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "zoo_prune_time.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(1, 3, 224, 224)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        ours = lambda m: edgeslim.prune_(m, x, target_flops=0.5)  # noqa: E731
        theirs = lambda m: prune_torch_pruning(m, x)  # noqa: E731
        for fn in (ours, theirs):  # warm-up: imports, kernel selection
            fn(copy.deepcopy(model))
        t_ours, t_theirs = [], []
        for r in range(args.repeats):
            pair = [(ours, t_ours), (theirs, t_theirs)]
            for fn, out in (pair if r % 2 == 0 else pair[::-1]):
                m = copy.deepcopy(model)
                out.append(_timed(lambda: fn(m)))
        ratio = statistics.median(a / b for a, b in zip(t_ours, t_theirs))
        rows.append({"model": name, "edgeslim_s": statistics.median(t_ours),
                     "torch_pruning_s": statistics.median(t_theirs), "ratio": ratio,
                     "edgeslim_all": t_ours, "torch_pruning_all": t_theirs})
        print(f"{name:18s} edgeslim {rows[-1]['edgeslim_s']:.3f}s  torch-pruning "
              f"{rows[-1]['torch_pruning_s']:.3f}s  ratio {ratio:.2f}", flush=True)
    atomic_write_json(args.out, {"setup": "1 thread, 224x224, batch 1, in place, median of "
                                          f"{args.repeats} alternating repeats", "rows": rows})


if __name__ == "__main__":
    main()
