"""Train the zoo's baselines on real data and report accuracy and speed.

    python benchmarks/train_baselines.py --data-dir ../shared/data                       # LeNet-5 / MNIST (CPU)
    python benchmarks/train_baselines.py --model resnet56 --dataset cifar10 --epochs 160 --device cuda
    python benchmarks/train_baselines.py --model vgg16 --dataset cifar10 --epochs 160 --device cuda

Targets (issue "Foundation"): LeNet-5 >= 99.0% on MNIST; ResNet-56 and VGG-16
>= 92.5% on our JPEG copy of CIFAR-10 at a full schedule. Writes JSON to
benchmarks/results/train_<model>_<dataset>.json and the trained model
(edgeslim.save) next to it under benchmarks/results/models/ when --save is given.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import edgeslim
from edgeslim.data import make_loaders
from edgeslim.io import atomic_write_json
from edgeslim.train import TrainConfig, Trainer

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULTS = {  # per dataset: epochs, lr, batch size, weight decay
    "mnist": dict(epochs=8, lr=0.05, batch_size=128, weight_decay=5e-4),
    "cifar10": dict(epochs=160, lr=0.1, batch_size=128, weight_decay=5e-4),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--train-subset", type=int)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for training")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--save", action="store_true", help="also write the trained model")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    d = DEFAULTS.get(args.dataset, DEFAULTS["cifar10"]) | {
        k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size)) if v}
    train, test = make_loaders(args.dataset, args.data_dir, batch_size=d["batch_size"], device=args.device,
                               train_subset=args.train_subset)
    torch.manual_seed(0)
    model = edgeslim.create_model(args.model, num_classes=len(train.dataset.classes))
    cfg = TrainConfig(epochs=d["epochs"], lr=d["lr"], weight_decay=d["weight_decay"], batch_size=d["batch_size"],
                      device=args.device, amp=args.amp, channels_last=args.channels_last,
                      warmup_epochs=1 if args.dataset == "cifar10" else 0)
    t0 = time.perf_counter()
    history = Trainer(model, cfg).fit(train, test)
    wall = time.perf_counter() - t0
    epoch_s = sorted(h["epoch_time_s"] for h in history)[len(history) // 2]
    result = {
        "model": args.model, "dataset": args.dataset, "device": args.device, "epochs": d["epochs"],
        "test_accuracy": history[-1]["val_accuracy"], "best_test_accuracy": max(h["val_accuracy"] for h in history),
        "median_epoch_s": epoch_s, "images_per_s": len(train.dataset) / epoch_s, "wall_s": wall,
        "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
        "history": history,
    }
    name = f"train_{args.model}_{args.dataset}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{name}.json", result)
    if args.save:
        edgeslim.save(model.cpu(), RESULTS / "models" / f"{name}.safetensors",
                      extra={"test_accuracy": result["test_accuracy"]})
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
