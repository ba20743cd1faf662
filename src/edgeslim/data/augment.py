"""Batched data augmentation on uint8 image tensors.

The standard CIFAR recipe — pad 4 pixels with zeros, take a random crop of
the original size, flip horizontally with probability 1/2 — comes from
K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016, Sec. 4.2 (after Lee et al., "Deeply-Supervised
Nets", 2015). Here it runs on a whole batch at once with tensor indexing, on
whatever device holds the batch, instead of per image in worker processes.

All random numbers come from a CPU ``torch.Generator`` that the loader seeds
from (seed, epoch) and are then moved to the batch's device, so a CPU run and
a GPU run see exactly the same crops and flips.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from edgeslim.registry import Registry

#: Zero padding of the random crop, in pixels (He et al. 2016 use 4 for 32x32).
CROP_PADDING = 4
#: Largest shift of the ``shift`` policy, in pixels (digits: a stroke moved by one pixel is the
#: same digit, a flip or a 4-pixel crop can push it off a 28x28 image).
SHIFT_PIXELS = 1


class Augmentation(Protocol):
    """Maps a uint8 batch ``[B, C, H, W]`` to an augmented batch of the same shape."""

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor: ...


#: Augmentation policies by name; each entry builds an ``Augmentation``.
AUGMENTATIONS: Registry[Callable[[], Augmentation]] = Registry("augmentation")


def random_crop(x: torch.Tensor, gen: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """Zero-pad each image by ``padding`` and crop it back to ``H x W`` at a random offset."""
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(dev)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_hflip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = (torch.rand(x.shape[0], generator=gen) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@AUGMENTATIONS.register("none")
class NoAugment:
    """Identity: the default for digits (MNIST), which flips and shifts would mislabel."""

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return x


@AUGMENTATIONS.register("flip")
class Flip:
    """Random horizontal flip only."""

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return random_hflip(x, gen)


@AUGMENTATIONS.register("crop")
class Crop:
    """Random crop with ``CROP_PADDING`` zero padding only (no flip)."""

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return random_crop(x, gen)


@AUGMENTATIONS.register("shift")
class Shift:
    """Random shift of up to ``SHIFT_PIXELS`` in each direction, zero-filled, no flip (digits)."""

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return random_crop(x, gen, padding=SHIFT_PIXELS)


@AUGMENTATIONS.register("crop_flip")
class CropFlip:
    """Random crop with 4-pixel padding, then random horizontal flip (He et al. 2016)."""

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return random_hflip(random_crop(x, gen), gen)
