"""A small DenseNet-BC for CIFAR (Huang, Liu, van der Maaten, Weinberger.
*Densely Connected Convolutional Networks*, CVPR 2017).

Each dense layer concatenates its ``growth_rate`` new channels to its input
(``torch.cat``), so every later layer reads the channels of every earlier one:
the network that makes a channel pruner handle concatenation. Layers use the
paper's pre-activation order BN-ReLU-conv with a 1x1 bottleneck of
``bn_size * growth_rate`` channels ("B"), and transitions halve the channels
("C", compression 0.5) before a 2x2 average pool. Default: growth 12, three
dense blocks of 6 layers (DenseNet-BC-40 style, about 0.18M parameters).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgeslim.models.factory import register_model
from edgeslim.models.utils import init_weights


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1(bn_size*k)-BN-ReLU-conv3x3(k), output concatenated to the input."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        hidden = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(hidden, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(self.relu1(self.norm1(x)))
        new = self.conv2(self.relu2(self.norm2(new)))
        return torch.cat([x, new], dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1-avgpool2: compresses channels and halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)


class DenseNetCifar(nn.Module):
    """DenseNet-BC for 32x32 inputs: stem, dense blocks with transitions, BN-ReLU, GAP, linear.

    Args:
        num_classes: classifier outputs.
        in_channels: input channels.
        growth_rate: channels each dense layer adds (k); also sets the width.
        block_config: number of layers in each dense block.
        bn_size: bottleneck width factor (1x1 conv gives ``bn_size * k`` channels).
        compression: channel factor of each transition (0.5 in DenseNet-BC).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, growth_rate: int = 12,
                 block_config: Sequence[int] = (6, 6, 6), bn_size: int = 4,
                 compression: float = 0.5) -> None:
        super().__init__()
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        self.default_input_size = (in_channels, 32, 32)
        channels = 2 * growth_rate
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n_layers in enumerate(block_config):
            block = [DenseLayer(channels + j * growth_rate, growth_rate, bn_size)
                     for j in range(n_layers)]
            stages.append(nn.Sequential(*block))
            channels += n_layers * growth_rate
            if i < len(block_config) - 1:
                out = max(1, int(channels * compression))
                stages.append(Transition(channels, out))
                channels = out
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm(self.features(self.stem(x))))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


@register_model("densenet_cifar")
def densenet_cifar(num_classes: int = 10, in_channels: int = 3, growth_rate: int = 12,
                   block_config: Sequence[int] = (6, 6, 6), bn_size: int = 4,
                   compression: float = 0.5) -> DenseNetCifar:
    """Small DenseNet-BC (growth 12, 3 blocks of 6 layers) that exercises concatenation."""
    return DenseNetCifar(num_classes, in_channels, growth_rate, tuple(block_config), bn_size,
                         compression)
