"""CIFAR ResNets (He, Zhang, Ren, Sun. *Deep Residual Learning for Image
Recognition*, CVPR 2016, section 4.2): a 3x3 stem with 16 channels, three
stages of ``n`` BasicBlocks with 16/32/64 channels (the 2nd and 3rd start with
stride 2), global average pooling and one linear layer; depth = 6n + 2.

Shortcuts use **option B**: where the shape changes, the shortcut is a 1x1
strided convolution + BN projection; elsewhere it is the identity. The paper's
CIFAR models use option A (subsample + zero-pad the extra channels), which has
no parameters but ties the padded channels to a fixed position, so channel
pruning would have to keep a zero-padding layout in sync. Option B adds 2
projections (about 2.7K parameters) and keeps every residual sum prunable as
one channel group.

With ``zero_init_residual=True`` (default) the last BN of every residual
branch starts with a zero scale (Goyal et al., 2017), so an untrained network
is well scaled; set it to False for the plain Kaiming init of the paper.
"""
from __future__ import annotations

import torch
from torch import nn

from edgeslim.models.factory import register_model
from edgeslim.models.utils import init_weights, scale_channels, zero_init_


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU.

    Args:
        in_channels: block input channels.
        channels: block output channels.
        stride: stride of the first conv (and of the projection shortcut).
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs.

    Args:
        depth: 20, 32, 44, 56, 110, ... (``(depth - 2) % 6 == 0``).
        num_classes: classifier outputs.
        in_channels: input channels.
        width_mult: multiplies the 16/32/64 stage widths.
        zero_init_residual: start each block's ``bn2`` scale at zero.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 width_mult: float = 1.0, zero_init_residual: bool = True) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        widths = [scale_channels(c, width_mult) for c in (16, 32, 64)]
        self.default_input_size = (in_channels, 32, 32)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._stage(widths[0], widths[0], blocks, stride=1)
        self.layer2 = self._stage(widths[0], widths[1], blocks, stride=2)
        self.layer3 = self._stage(widths[1], widths[2], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        init_weights(self)
        if zero_init_residual:
            for block in self.modules():
                if isinstance(block, BasicBlock):
                    zero_init_(block.bn2)

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, channels, stride)]
        layers += [BasicBlock(channels, channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
             zero_init_residual: bool = True) -> CifarResNet:
    """ResNet-20 (3 blocks per stage), option-B shortcuts."""
    return CifarResNet(20, num_classes, in_channels, width_mult, zero_init_residual)


@register_model("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
             zero_init_residual: bool = True) -> CifarResNet:
    """ResNet-32 (5 blocks per stage), option-B shortcuts."""
    return CifarResNet(32, num_classes, in_channels, width_mult, zero_init_residual)


@register_model("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
             zero_init_residual: bool = True) -> CifarResNet:
    """ResNet-56 (9 blocks per stage), option-B shortcuts; the standard pruning benchmark."""
    return CifarResNet(56, num_classes, in_channels, width_mult, zero_init_residual)


@register_model("resnet110")
def resnet110(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
             zero_init_residual: bool = True) -> CifarResNet:
    """ResNet-110 (18 blocks per stage), option-B shortcuts."""
    return CifarResNet(110, num_classes, in_channels, width_mult, zero_init_residual)
