"""A tiny class-per-folder image set and recipe, for pipeline tests that need no real data.

Two classes of 28x28 grey PNGs (dark and bright noise), 16 train / 8 test
images each: LeNet-5 trains on it in well under a second.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: 2 training epochs (so a mid-training checkpoint exists), then pruning with one finetune epoch
STAGES = [{"train": {"epochs": 2, "lr": 0.05}},
          {"prune": {"remove_channels": 0.3, "finetune": "plain", "finetune_epochs": 1}}]


def make_image_folder(root: Path, n_train: int = 16, n_test: int = 8) -> Path:
    """``root/{train,test}/c{0,1}/N.png``; returns ``root``."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(2):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 100, (28, 28)) + 120 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def tiny_recipe(data: Path, stages: list | None = None, **top) -> dict:
    """A recipe dict for LeNet-5 on ``make_image_folder(data)``, on the CPU, batches of 8."""
    return {"name": "tiny", "model": {"name": "lenet5", "num_classes": 2}, "device": "cpu",
            "latency_runs": 2, "data": {"name": str(data), "batch_size": 8, "calib_batches": 1},
            "stages": STAGES if stages is None else stages} | top
