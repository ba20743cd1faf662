"""Calibration images for post-training static quantization.

Static quantization fixes the scale and zero-point of every activation ahead
of time from the ranges seen on a few hundred representative inputs (Jacob et
al., *Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference*, CVPR 2018; Krishnamoorthi, *Quantizing
deep convolutional networks for efficient inference: A whitepaper*, 2018:
100-1000 images are enough for min/max calibration).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from edgeslim.data import as_loader
from edgeslim.errors import ConfigError, DataError

# A bare tensor of images is split into batches of this size.
TENSOR_BATCH = 32


def _images_of(item: Any) -> torch.Tensor:
    """The input tensor of one batch: ``x`` of ``(x, y)``, or the batch itself."""
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    raise DataError(
        f"calibration data yielded a {type(item).__name__}; expected (x, y) batches or image "
        "tensors [B, C, H, W]. Pass a loader, an (X, Y) tensor pair or a tensor of images"
    )


def _batches(calib_data: Any) -> Iterable[Any]:
    if isinstance(calib_data, torch.Tensor):
        return calib_data.split(TENSOR_BATCH)
    return as_loader(calib_data)


def calibration_batches(calib_data: Any, num_batches: int = 8,
                        max_samples: int | None = 512) -> list[torch.Tensor]:
    """Collect float CPU image batches for calibration.

    Args:
        calib_data: anything :func:`edgeslim.data.as_loader` accepts (a loader,
            an ``(X, Y)`` pair, a list of ``(x, y)`` batches), or a tensor of
            normalised images ``[N, C, H, W]``. Use *training* images: the
            test set must stay unseen.
        num_batches: take at most this many batches.
        max_samples: stop after this many images (the last batch is cut);
            ``None`` for no limit. Calibration keeps every intermediate
            activation of every image in memory, so this bounds its memory.

    Returns:
        A non-empty list of ``float32`` CPU tensors ``[B, C, H, W]``.

    Raises:
        ConfigError: ``num_batches`` or ``max_samples`` is not positive.
        DataError: the data yielded no images.
    """
    if num_batches < 1 or (max_samples is not None and max_samples < 1):
        raise ConfigError(
            f"calibration needs num_batches >= 1 and max_samples >= 1 (or None); got "
            f"num_batches={num_batches}, max_samples={max_samples}"
        )
    out: list[torch.Tensor] = []
    left = max_samples if max_samples is not None else float("inf")
    for item in _batches(calib_data):
        if len(out) == num_batches or left <= 0:
            break
        x = _images_of(item).detach()[: int(min(left, 1 << 62))]
        out.append(x.to("cpu", torch.float32).contiguous())
        left -= len(x)
    if not out or sum(len(x) for x in out) == 0:
        raise DataError(
            "quantize(): the calibration data yielded no images; pass a few hundred training "
            "images (e.g. the training loader, or a list of its first batches)"
        )
    return out
