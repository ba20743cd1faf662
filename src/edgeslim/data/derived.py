"""Datasets derived from the shipped ones.

``cifar10-gray28``: CIFAR-10 (read as ``cifar10`` reads it, either on-disk form)
converted to one grey channel and resized to 28x28, so that networks and
settings written for MNIST's shape (``1 x 28 x 28``, 10 classes) run on natural
images. It is a harder stand-in for "a second 28x28 dataset of 10 classes" when
no other one is on the machine; it is *not* Fashion-MNIST, and its accuracies
are not comparable with published ones.

Derivation, per image (fixed, so the same CIFAR-10 files give the same bytes):

1. grey = (299 R + 587 G + 114 B) / 1000 (ITU-R BT.601 luma, as Pillow's ``"L"`` mode);
2. 32x32 -> 28x28 by antialiased bilinear resampling
   (``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``);
3. rounded to the nearest integer and clipped to 0-255 (uint8).

Labels, class names, order and split sizes are CIFAR-10's, and so is the training
augmentation (``crop_flip``: natural images, unlike digits, survive flips). The derived arrays
are cached on disk (``edgeslim.data.cache``) next to CIFAR-10's decoded ones,
keyed by the CIFAR-10 source file, so the derivation runs once per source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeslim.data.base import DATASETS, ArrayDataset, check_split
from edgeslim.data.cache import Arrays, cached_arrays
from edgeslim.data.cifar import CIFAR10_CLASSES, find_cifar10, load_cifar10

GRAY28_NAME = "cifar10-gray28"
GRAY28_SIZE = 28
#: BT.601 luma weights (per mille) of R, G, B.
LUMA = (299, 587, 114)
# Statistics of the derived training set (from the shipped JPEG copy); fixed, like CIFAR-10's.
GRAY28_MEAN = (0.4807,)
GRAY28_STD = (0.2314,)
#: Bump when the derivation changes, so cached arrays of the old one are not reused.
GRAY28_VERSION = 1
_CHUNK = 5000


def to_gray28(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 ``[N, 3, 32, 32]`` RGB -> uint8 ``[N, 1, 28, 28]`` grey (see the module docstring)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"to_gray28: expected uint8 images [N, 3, H, W], got {x.dtype} {tuple(x.shape)}")
    weights = torch.tensor(LUMA, dtype=torch.float64).view(1, 3, 1, 1) / 1000.0
    out = []
    for start in range(0, len(x), _CHUNK):
        grey = (x[start:start + _CHUNK].to(torch.float64) * weights).sum(1, keepdim=True)
        small = F.interpolate(grey, size=(GRAY28_SIZE, GRAY28_SIZE), mode="bilinear",
                              align_corners=False, antialias=True)
        out.append(small.round().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out).numpy() if out else np.zeros((0, 1, GRAY28_SIZE, GRAY28_SIZE), np.uint8)


def _cache_source(data_dir: Path, split: str) -> Path:
    """The CIFAR-10 file whose identity keys the cache (the archive, or the split's last batch)."""
    source, path, _ = find_cifar10(data_dir, split)
    return source.files(path, split)[-1]


@DATASETS.register(GRAY28_NAME)
def load_cifar10_gray28(data_dir: Path, split: str = "train") -> ArrayDataset:
    """CIFAR-10 as uint8 grey images ``[N, 1, 28, 28]`` with CIFAR-10's int64 labels."""
    check_split(GRAY28_NAME, split)

    def build() -> Arrays:
        rgb = load_cifar10(data_dir, split)
        return {"images": to_gray28(rgb.images), "labels": rgb.labels.numpy()}

    tag = f"{GRAY28_NAME}-v{GRAY28_VERSION}-{split}"
    arrays = cached_arrays(_cache_source(data_dir, split), tag, build)
    return ArrayDataset(
        images=torch.from_numpy(np.ascontiguousarray(arrays["images"])),
        labels=torch.from_numpy(arrays["labels"].astype(np.int64)),
        classes=list(CIFAR10_CLASSES),
        mean=GRAY28_MEAN,
        std=GRAY28_STD,
        name=GRAY28_NAME,
        augment="crop_flip",
    )
