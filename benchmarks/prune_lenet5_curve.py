"""Accuracy vs parameters of LeNet-5 on MNIST under global iterative L1 filter pruning.

    python benchmarks/prune_lenet5_curve.py --data-dir ../shared/data

Trains LeNet-5 once, then for each parameter budget prunes a copy of it with
``edgeslim.prune(criterion="l1", planner="global", target_params=..., steps=...)``
and fine-tunes after every step (plain CE or KD from the unpruned model).
Prints the curve and writes benchmarks/results/prune_lenet5_curve.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import edgeslim
from edgeslim.data import make_loaders
from edgeslim.io import atomic_write_json
from edgeslim.profile.summary import format_table
from edgeslim.train import TrainConfig, Trainer, evaluate

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=4, help="baseline training epochs")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.25, 0.1, 0.05])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--finetune", default="kd", choices=["plain", "kd"])
    p.add_argument("--finetune-epochs", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train, test = make_loaders("mnist", args.data_dir, batch_size=128)
    torch.manual_seed(0)
    base = edgeslim.create_model("lenet5")
    Trainer(base, TrainConfig(epochs=args.epochs, lr=0.05, progress=False)).fit(train)
    x = torch.randn(1, 1, 28, 28)
    rows = [{"target_params": 1.0, "accuracy": evaluate(base, test)["accuracy"]}
            | {k: edgeslim.profile(base, x, latency=False)[k] for k in ("params", "flops")}]
    for budget in args.budgets:
        pruned = edgeslim.prune(base, x, criterion="l1", planner="global", target_params=budget,
                                steps=args.steps, finetune=args.finetune, train_data=train,
                                finetune_epochs=args.finetune_epochs)
        prof = edgeslim.profile(pruned, x, latency=False)
        rows.append({"target_params": budget, "accuracy": evaluate(pruned, test)["accuracy"],
                     "params": prof["params"], "flops": prof["flops"]})
        print(format_table(rows[-1:]), flush=True)
    print(format_table(rows))
    atomic_write_json(RESULTS / "prune_lenet5_curve.json",
                      {"rows": rows, "settings": vars(args), "wall_s": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
