"""How much does ``edgeslim.train.Trainer`` cost over a minimal hand-written loop?

Same LeNet-like model, same synthetic MNIST-sized data (1x28x28, 10 classes),
same batch size and SGD settings. The minimal loop does only
forward / cross-entropy / zero_grad / backward / step; the Trainer adds the
per-step LR schedule, on-device loss/accuracy bookkeeping, callbacks and the
periodic NaN check. Epochs of the two alternate (so machine load hits both
alike) and the median epoch throughput of each is reported, by wall clock and
by process CPU time (``time.process_time``; with one thread it is far less
disturbed by other jobs on a shared machine). Trainer figures cover its whole
``fit()`` call, per-epoch set-up included. A second copy of the minimal loop
is timed the same way (an A/A control) to show the noise floor.

Run:  PYTHONPATH=src python benchmarks/trainer_overhead.py [--rounds 9] [--threads 1]
Writes benchmarks/results/trainer_overhead.json.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgeslim.io import atomic_write_json
from edgeslim.train import TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results" / "trainer_overhead.json"


def lenet() -> nn.Module:
    """LeNet-5-style network (LeCun et al., 1998) for 1x28x28 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def synthetic_batches(n: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


def minimal_epoch(model: nn.Module, opt: torch.optim.Optimizer, data: list) -> float:
    """One epoch of the plainest possible loop; returns images/s."""
    model.train()
    t0 = time.perf_counter()
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return sum(len(y) for _, y in data) / (time.perf_counter() - t0)


def sgd(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - w0, time.process_time() - c0


def measure(make_model: Callable[[], nn.Module], data: list, cfg: TrainConfig, rounds: int) -> dict:
    """Seconds per epoch of: the minimal loop, an identical copy of it (A/A control), the Trainer.

    The order of the three rotates every round so drift in machine load does
    not favour one of them. Trainer time is its whole ``fit()`` call.
    """
    plain, control, model = make_model(), make_model(), make_model()
    trainer = Trainer(model, cfg)
    runs: dict[str, Callable[[], object]] = {
        "minimal": lambda o=sgd(plain, cfg): minimal_epoch(plain, o, data),
        "control": lambda o=sgd(control, cfg): minimal_epoch(control, o, data),
        "trainer": lambda: trainer.fit(data),
    }
    for run in runs.values():  # warm-up: allocator, lazy imports
        run()
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            w, c = timed(runs[name])
            wall[name].append(w)
            cpu[name].append(c)
    return {"wall": wall, "cpu": cpu}


def speed(times: list[float], n: int) -> float:
    return n / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9, help="epochs of each loop (median reported)")
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = synthetic_batches(args.samples, args.batch_size)
    cfg = TrainConfig(epochs=1, lr=0.01, device="cpu", progress=False, schedule="cosine",
                      channels_last=False)  # the minimal loop runs NCHW too
    n = args.samples

    def make() -> nn.Module:
        torch.manual_seed(0)
        return lenet()

    t = measure(make, data, cfg, args.rounds)
    tiny_steps = 200
    g = torch.Generator().manual_seed(0)
    tiny = [(torch.randn(128, 16, generator=g), torch.randint(0, 10, (128,), generator=g))] * tiny_steps
    t_tiny = measure(lambda: nn.Linear(16, 10), tiny, cfg, args.rounds)
    result = {
        "benchmark": "trainer_overhead",
        "model": "lenet-like (61.7k params)",
        "data": f"synthetic {n}x1x28x28, batch {args.batch_size}",
        "device": "cpu",
        "threads": args.threads,
        "rounds": args.rounds,
        "minimal_images_per_s": speed(t["wall"]["minimal"], n),
        "trainer_images_per_s": speed(t["wall"]["trainer"], n),
        "ratio": speed(t["wall"]["trainer"], n) / speed(t["wall"]["minimal"], n),
        "control_ratio": speed(t["wall"]["control"], n) / speed(t["wall"]["minimal"], n),
        "cpu_time_ratio": speed(t["cpu"]["trainer"], n) / speed(t["cpu"]["minimal"], n),
        "cpu_time_control_ratio": speed(t["cpu"]["control"], n) / speed(t["cpu"]["minimal"], n),
        # absolute engine cost: a model whose step costs ~nothing, best (least disturbed) epochs
        "engine_overhead_us_per_step": (min(t_tiny["cpu"]["trainer"]) - min(t_tiny["cpu"]["minimal"]))
        / tiny_steps * 1e6,
        "seconds_per_epoch": t,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    # what the ratio would be without noise: LeNet step time vs the engine's own cost
    step_s = statistics.median(t["cpu"]["minimal"]) / len(data)
    result["ratio_from_engine_cost"] = step_s / (step_s + result["engine_overhead_us_per_step"] * 1e-6)
    atomic_write_json(args.out, result)
    print(f"minimal loop : {result['minimal_images_per_s']:,.0f} img/s")
    print(f"Trainer      : {result['trainer_images_per_s']:,.0f} img/s")
    print(f"ratio        : {result['ratio']:.3f} wall clock, {result['cpu_time_ratio']:.3f} CPU time "
          f"(goal >= 0.95; A/A control {result['control_ratio']:.3f} / "
          f"{result['cpu_time_control_ratio']:.3f})")
    print(f"engine cost  : {result['engine_overhead_us_per_step']:.0f} us/step of CPU time "
          f"(tiny linear model) => noise-free ratio ~{result['ratio_from_engine_cost']:.3f}  -> {args.out}")


if __name__ == "__main__":
    main()
