"""Helpers of the model zoo (channel rounding, weight init).

``as_input_tuple``, ``flatten_outputs``, ``eval_mode`` and ``model_device`` moved
to :mod:`edgeslim._core`; they are re-exported here so old imports keep working.
"""
from __future__ import annotations

import math

from torch import nn

from edgeslim._core import as_input_tuple, device_of, eval_mode, flatten_outputs

model_device = device_of
__all__ = ["as_input_tuple", "eval_mode", "flatten_outputs", "init_weights", "make_divisible",
           "model_device", "scale_channels", "zero_init_"]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing >10%.

    The rule of the MobileNet reference code (Sandler et al., 2018): hardware
    kernels are fastest on channel counts that are multiples of 8.
    """
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def scale_channels(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded to the nearest integer, at least 1."""
    if width_mult <= 0 or not math.isfinite(width_mult):
        raise ValueError(f"width_mult must be a positive finite number, got {width_mult!r}")
    return max(1, round(channels * width_mult))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal init (He et al., 2015) for conv/linear; BN to identity.

    Convolutions use ``fan_out`` as in the ResNet reference code, counted per
    group (``out_channels / groups * k * k``): PyTorch's own fan_out ignores
    groups, which shrinks a depthwise conv's weights by its channel count and
    makes an untrained MobileNet's outputs vanish. Linear layers use
    ``fan_in``; biases start at zero, BN/GN scales at one.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.out_channels // module.groups * math.prod(module.kernel_size)
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def zero_init_(norm: nn.Module) -> None:
    """Zero a residual branch's last BN scale so the block starts as its shortcut.

    Goyal et al., *Accurate, Large Minibatch SGD* (2017), sec. 5.1; also timm's
    ``zero_init_last``. Without it the output variance of an untrained ResNet
    doubles per block (ResNet-110 outputs ~1e9 in eval mode).
    """
    if isinstance(norm, (nn.BatchNorm2d, nn.GroupNorm)) and norm.weight is not None:
        nn.init.zeros_(norm.weight)
