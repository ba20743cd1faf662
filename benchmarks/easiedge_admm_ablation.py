"""ADMM settings for EasiEdge at matched FLOPs: the runs behind ``admm_prune``'s defaults.

    python benchmarks/easiedge_admm_ablation.py --data-dir ../shared/data --seed 10 \
        --variants '[{"name": "old", "rho": 0.3, "accuracy_guard": null}, {"name": "default"}]'
    python benchmarks/easiedge_admm_ablation.py --dataset cifar10 --target-flops 0.65 --train-subset 20000 \
        --epochs 4 --data-dir ../shared/data --seed 10 --variants '[{"name": "default"}]'

One (dataset, seed) per call: trains LeNet-5 as ``benchmarks/easiedge.py`` does (the trained
model is cached under ``--cache``), prunes it with the cost-aware global iterative baselines
(``--baselines``) to ``--target-flops``, then runs each EasiEdge variant (keyword arguments of
``admm_prune`` over the benchmark's settings; ``"fisher"`` picks the TBAA Fisher mode) at the
FLOPs global L1 reached. Appends one JSON line per run to ``--log`` (accuracy, FLOPs, and per
ADMM iteration the W-step training accuracy, rho, kept filters, relative primal residual and
support changes). The tuning seeds were 10-17 (MNIST) and 10-15 (CIFAR-10); the benchmark's
are 0-5, never used for choosing. ``benchmarks/results/easiedge_admm_tuning_log.json`` has
the runs and which code state each used.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import edgeslim
from edgeslim.data import TensorLoader, load_dataset, make_loaders
from edgeslim.profile import count_flops
from edgeslim.prune import prune
from edgeslim.prune.admm import admm_prune
from edgeslim.prune.information_gain import TaylorInformationGainImportance
from edgeslim.train import TrainConfig, Trainer, evaluate


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--target-flops", type=float, default=0.4)
    p.add_argument("--baselines", default="l1,taylor,fpgm",
                   help="criteria; a name ending in _importance_only ranks by importance alone (cost_aware=False)")
    p.add_argument("--baseline-lrs", default="0.01", help="fine-tuning learning rates of the baselines (a "
                   "comma list: each baseline runs at each; the first is the benchmark's)")
    p.add_argument("--variants", default="[]", help="JSON list of admm_prune keyword dicts with a 'name'")
    p.add_argument("--train-subset", type=int, default=30000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cache", default="/tmp/edgeslim-easiedge-ablation")
    p.add_argument("--log", default=None, help="JSONL file (default: <cache>/<dataset>_<seed>.jsonl)")
    return p.parse_args()


def trained(args: argparse.Namespace, train: TensorLoader) -> torch.nn.Module:
    channels, size = train.dataset.input_shape[:2]
    torch.manual_seed(args.seed)
    model = edgeslim.create_model("lenet5", num_classes=10, in_channels=channels, input_size=size)
    path = Path(args.cache) / f"{args.dataset}_{args.seed}_{args.train_subset}_{args.epochs}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    Trainer(model, TrainConfig(epochs=args.epochs, lr=0.05, device="cpu", progress=False, seed=args.seed)).fit(train)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def run_variant(variant: dict, base, example, train, test, calib, flops_fraction: float, seed: int) -> dict:
    v = dict(variant)
    name = v.pop("name", json.dumps(variant))
    if "fisher" in v:
        v["criterion"] = TaylorInformationGainImportance(fisher=v.pop("fisher"))
    kw = dict(criterion="information_gain_taylor", admm_epochs=1.0, admm_iterations=8, finetune_epochs=1,
              calib_data=calib, calib_batches=4, device="cpu", lr=0.01, seed=seed) | v
    t0 = time.perf_counter()
    model = admm_prune(base, example, train, target_flops=flops_fraction, **kw)
    hist = [r for r in edgeslim.info(model).admm_history if r["stage"] == "admm"]
    return {"method": name, "variant": variant, "seconds": round(time.perf_counter() - t0, 1),
            "acc": evaluate(model, test)["accuracy"], "flops": count_flops(model, example)[0],
            "w_acc": [round(r["train_accuracy"], 3) for r in hist], "rho": [round(r["rho"], 3) for r in hist],
            "kept": [r["kept_filters"] for r in hist], "primal": [round(r["relative_primal"], 3) for r in hist],
            "support_changes": [r["support_changes"] for r in hist]}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    train, test = make_loaders(args.dataset, args.data_dir, batch_size=128, train_subset=args.train_subset,
                               seed=args.seed)
    calib = list(TensorLoader(load_dataset(args.dataset, args.data_dir, "train").subset(512, seed=args.seed + 1),
                              128))[:4]
    base = trained(args, train)
    example = torch.randn(1, *base.default_input_size)
    flops0 = count_flops(base, example)[0]
    log = Path(args.log) if args.log else Path(args.cache) / f"{args.dataset}_{args.seed}.jsonl"
    rows, match = [], args.target_flops
    lrs = [float(v) for v in args.baseline_lrs.split(",")]
    for lr in lrs:
        for name in [c for c in args.baselines.split(",") if c]:
            criterion = name.removesuffix("_importance_only")
            model = prune(base, example, criterion=criterion, target_flops=args.target_flops, steps=2,
                          finetune="plain", train_data=train, calib_data=calib, finetune_epochs=1,
                          cost_aware=criterion == name, finetune_options=dict(device="cpu", lr=lr, seed=args.seed))
            rows.append({"method": name if lr == lrs[0] else f"{name}@lr{lr}",
                         "acc": evaluate(model, test)["accuracy"], "flops": count_flops(model, example)[0]})
            match = rows[0]["flops"] / flops0
    rows += [run_variant(v, base, example, train, test, calib, match, args.seed) for v in json.loads(args.variants)]
    with log.open("a") as f:
        for row in rows:
            row |= {"dataset": args.dataset, "seed": args.seed}
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
