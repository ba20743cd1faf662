"""Small helpers shared by the model zoo, the profiler and the exporter."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn


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


def as_input_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """Normalise ``example_inputs`` (a tensor or a sequence of tensors) to a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Sequence) and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a tensor or a tuple/list of tensors, "
        f"got {type(example_inputs).__name__}; pass e.g. torch.randn(1, 3, 32, 32)"
    )


def flatten_outputs(outputs: Any) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, a sequence or a dict), in order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [t for item in outputs for t in flatten_outputs(item)]
    raise TypeError(f"model output of type {type(outputs).__name__} is not a tensor or a sequence")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode, restoring every submodule's own flag on exit.

    ``model.train(was_training)`` would overwrite submodules a user froze in
    eval mode on purpose (e.g. frozen BatchNorm), so each flag is saved.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of the first parameter or buffer (CPU for a stateless model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
