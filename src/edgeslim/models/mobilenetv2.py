"""MobileNetV2 for CIFAR (Sandler, Howard, Zhu, Zhmoginov, Chen. *MobileNetV2:
Inverted Residuals and Linear Bottlenecks*, CVPR 2018).

The ImageNet network downsamples 32x; on 32x32 CIFAR images that leaves 1x1
maps, so the common CIFAR adaptation keeps stride 1 in the stem convolution
and in the first downsampling stage (24 channels), giving 8x downsampling
(32x32 -> 4x4). Otherwise it is the paper's network: inverted residual blocks
(1x1 expand - 3x3 depthwise - 1x1 linear projection, each BN, ReLU6 after the
first two), identity shortcuts where stride is 1 and widths match, a 1x1 conv
to 1280 channels, global average pooling and one linear layer.

With ``zero_init_residual=True`` (default) the projection BN of every block
with an identity shortcut starts with a zero scale (Goyal et al., 2017), so an
untrained network is well scaled in eval mode.
"""
from __future__ import annotations

import torch
from torch import nn

from edgeslim.models.factory import register_model
from edgeslim.models.utils import init_weights, make_divisible, zero_init_

# (expansion t, output channels c, repeats n, first stride s); CIFAR strides.
CIFAR_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) - BN - ReLU6; ``groups=in_channels`` makes it depthwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                      padding=kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when ``expansion == 1``) - 3x3 depthwise - 1x1 linear projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2: ``features`` -> global average pool -> ``classifier``.

    Args:
        num_classes: classifier outputs.
        in_channels: input channels.
        width_mult: multiplies every width (rounded to multiples of 8); the last
            1280-channel conv is only widened, never narrowed, as in the paper.
        zero_init_residual: start the last BN of residual blocks at zero scale.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                 zero_init_residual: bool = True) -> None:
        super().__init__()
        self.default_input_size = (in_channels, 32, 32)
        channels = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, channels, stride=1)]
        for expansion, c, repeats, stride in CIFAR_SETTINGS:
            out = make_divisible(c * width_mult)
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expansion))
                channels = out
        layers.append(ConvBNReLU6(channels, last, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)
        if zero_init_residual:
            for block in self.modules():
                if isinstance(block, InvertedResidual) and block.use_residual:
                    zero_init_(block.conv[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                zero_init_residual: bool = True) -> MobileNetV2:
    """MobileNetV2, CIFAR variant (8x downsampling)."""
    return MobileNetV2(num_classes, in_channels, width_mult, zero_init_residual)
