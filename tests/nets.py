"""Small hand-written networks that mimic torchvision/timm building blocks.

torchvision and timm are not installable here, so these re-create the patterns
their models use (with tiny widths so the pruning tests stay fast): ResNet
BasicBlock/Bottleneck with a downsample branch and in-place ``+=``, DenseNet
concatenation, MobileNetV2's inverted residual (depthwise conv), ResNeXt's
grouped conv, squeeze-excitation in both common styles, ShuffleNetV2-style
channel split, channel shuffle, PReLU, GroupNorm, an Inception block, channel
slicing and a forward with Python control flow on tensor values.

``build_random_net(spec)`` assembles a network from a list of block specs; the
property-based tests draw specs with hypothesis, ``benchmarks/fuzz_prune.py``
with ``random_specs`` (both from the same space: ``BLOCKS``, ``WIDTHS``,
``STRIDES``, ``MAX_BLOCKS``, ``valid_specs``). Every builder here returns a
model whose input is ``[N, 3, H, W]`` (``INPUT``) and whose output is ``[N, 10]``
(a random net built with ``features=True`` also returns its pooled features).
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

INPUT = (3, 16, 16)
NUM_CLASSES = 10


def example_input(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *INPUT, generator=torch.Generator().manual_seed(seed))


def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer non-trivial affine terms and running statistics, so that
    eval-mode outputs depend on each channel (a freshly built BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.weight is not None:
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Head(nn.Module):
    """torchvision-style classifier: adaptive pool, flatten, linear."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------------------
# ResNet (torchvision.models.resnet)

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:  # a static branch: fine for torch.fx
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    """torchvision ResNet layout (conv1/bn1/relu/maxpool, layer1..2, avgpool, fc)."""

    def __init__(self, block: type = BasicBlock, layers: tuple[int, int] = (2, 2),
                 width: int = 16, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        self.inplanes, self.groups, self.base_width = width, groups, base_width
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width * block.expansion, NUM_CLASSES)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        extra = {} if block is BasicBlock else {"groups": self.groups, "base_width": self.base_width}
        layers = [block(self.inplanes, planes, stride, downsample, **extra)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **extra) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet_basic() -> nn.Module:
    return TinyResNet(BasicBlock, (2, 2), width=16)


def resnet_bottleneck() -> nn.Module:
    return TinyResNet(Bottleneck, (2, 1), width=8)


def resnext() -> nn.Module:
    """ResNeXt: Bottleneck with a grouped 3x3 conv (groups=4, width per group 4)."""
    return TinyResNet(Bottleneck, (2, 1), width=8, groups=4, base_width=32)


# ----------------------------------------------------------------------------------------
# DenseNet (torchvision.models.densenet, without the memory-efficient checkpointing)

class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n: int, cin: int, growth: int) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class TinyDenseNet(nn.Module):
    def __init__(self, growth: int = 8, n: int = 3) -> None:
        super().__init__()
        c0 = 2 * growth
        self.conv0 = nn.Conv2d(3, c0, 3, padding=1, bias=False)
        self.block1 = DenseBlock(n, c0, growth)
        c = c0 + n * growth
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                        nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = DenseBlock(n, c // 2, growth)
        c = c // 2 + n * growth
        self.norm5 = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.transition(self.block1(self.conv0(x))))
        x = F.relu(self.norm5(x), inplace=True)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------------------
# MobileNetV2 (torchvision.models.mobilenetv2)

class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(nn.Sequential(nn.Conv2d(inp, hidden, 1, bias=False),
                                        nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)))
        layers += [
            nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                          nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class TinyMobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(3, 16, stride=2),
            InvertedResidual(16, 8, 1, 1),
            InvertedResidual(8, 16, 2, 4),
            InvertedResidual(16, 16, 1, 4),
            _conv_bn(16, 32, k=1),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------------------
# Squeeze-excitation: torchvision/timm style (1x1 convs) and SENet style (Linear + view)

class SEConv(nn.Module):
    """torchvision.ops.SqueezeExcitation: mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid -> scale."""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.scale_activation(self.fc2(self.activation(self.fc1(s))))
        return s * x


class SELinear(nn.Module):
    """SENet (Hu et al. 2018) reference: avgpool -> view(b, c) -> Linear -> ReLU -> Linear -> sigmoid."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(c // reduction, c, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SENet(nn.Module):
    """A residual block with SE on the residual branch, both SE styles."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, stride=2)
        self.conv1 = _conv_bn(16, 16)
        self.se1 = SEConv(16, 8)
        self.conv2 = _conv_bn(16, 24, stride=2)
        self.se2 = SELinear(24)
        self.head = _Head(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.se1(self.conv1(x))
        return self.head(self.se2(self.conv2(x)))


# ----------------------------------------------------------------------------------------
# ShuffleNetV2-style channel split, and channel shuffle

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class SplitBlock(nn.Module):
    """ShuffleNetV2 unit (stride 1): split in two, transform one half, concatenate."""

    def __init__(self, c: int, shuffle: bool, use_chunk: bool = True) -> None:
        super().__init__()
        half = c // 2
        self.use_chunk, self.shuffle = use_chunk, shuffle
        self.branch2 = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_chunk:
            x1, x2 = x.chunk(2, dim=1)
        else:
            x1, x2 = torch.split(x, x.shape[1] // 2, dim=1)
        out = torch.cat((x1, self.branch2(x2)), dim=1)
        return channel_shuffle(out, 2) if self.shuffle else out


class ShuffleModule(nn.Module):
    """Channel shuffle in its own module, so it can be named in ``ignore=``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, 2)


class SplitNet(nn.Module):
    def __init__(self, shuffle: bool = False, shuffle_module: bool = False) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, stride=2)
        self.block1 = SplitBlock(16, shuffle and not shuffle_module, use_chunk=True)
        self.shuffle = ShuffleModule() if shuffle_module else nn.Identity()
        self.block2 = SplitBlock(16, False, use_chunk=False)
        self.conv = _conv_bn(16, 24, k=1)
        self.head = _Head(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.shuffle(self.block1(self.stem(x))))
        return self.head(self.conv(x))


def split_net() -> nn.Module:
    return SplitNet(shuffle=False)


def shuffle_net() -> nn.Module:
    """Shuffle inline in ``block1.forward`` (traced into; must raise UnsupportedModelError)."""
    return SplitNet(shuffle=True)


def shuffle_module_net() -> nn.Module:
    """Shuffle in module ``shuffle`` (can be excluded with ``ignore=["shuffle"]``)."""
    return SplitNet(shuffle=True, shuffle_module=True)


# ----------------------------------------------------------------------------------------
# PReLU, GroupNorm, Inception, slicing, control flow

class PReLUGroupNormNet(nn.Module):
    """PReLU (per-channel and shared) and GroupNorm with 1, C and 2 groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1)
        self.gn1 = nn.GroupNorm(1, 16)
        self.act1 = nn.PReLU(16)
        self.conv2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.gn2 = nn.GroupNorm(16, 16)
        self.act2 = nn.PReLU()
        self.conv3 = nn.Conv2d(16, 16, 3, 1, 1)
        self.gn3 = nn.GroupNorm(2, 16)  # prunable by the same count per group
        self.act3 = nn.PReLU(16)
        self.conv4 = nn.Conv2d(16, 24, 1)
        self.head = _Head(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.gn1(self.conv1(x)))
        x = self.act2(self.gn2(self.conv2(x)))
        x = self.act3(self.gn3(self.conv3(x)))
        return self.head(F.relu(self.conv4(x)))


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    """torchvision Inception-v3 InceptionA with tiny widths: four parallel branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 8, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 6, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(6, 8, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 8, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(8, 12, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(12, 12, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = BasicConv2d(3, 16, kernel_size=3, stride=2, padding=1)
        self.mixed_a = InceptionA(16, 4)
        self.mixed_b = InceptionA(32, 8)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(36, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mixed_b(self.mixed_a(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.fc(torch.flatten(self.dropout(x), 1))


class SliceNet(nn.Module):
    """``x[:, a:b]`` slicing: a GhostNet-style ``cat(...)[:, :oup]`` and a split by slices."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, stride=2)
        self.primary = _conv_bn(16, 12, k=1)
        self.cheap = _conv_bn(12, 12, k=3, groups=12)  # depthwise "ghost" features
        self.conv_a = _conv_bn(8, 16)
        self.conv_b = _conv_bn(12, 16)
        self.head = nn.Linear(16 * 4 * 4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        p = self.primary(x)
        g = torch.cat([p, self.cheap(p)], dim=1)[:, :20]  # keep 20 of 24 ghost channels
        a, b = g[:, :8], g[:, 8:20]
        y = self.conv_a(a) + self.conv_b(b)
        y = F.max_pool2d(y, 2)
        return self.head(y.view(y.size(0), -1))


class ControlFlowNet(nn.Module):
    """Python ``if`` on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.sum() > 0:
            x = F.relu(x)
        return self.fc(x.mean((2, 3)))


class DropPath(nn.Module):
    """timm's stochastic depth: a training-only branch that samples a per-sample mask."""

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class TimmStyleNet(nn.Module):
    """EfficientNet-like: "same"-padded stem, MBConv with SE (SiLU, hardsigmoid gate) and
    stochastic depth on the residual, ``x.flatten(1)`` head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 16, 3, 2, bias=False))
        self.bn1 = nn.BatchNorm2d(16)
        self.conv_pw = nn.Conv2d(16, 32, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv_dw = nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.se_reduce = nn.Conv2d(32, 8, 1)
        self.se_expand = nn.Conv2d(8, 32, 1)
        self.conv_pwl = nn.Conv2d(32, 16, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(16)
        self.drop_path = DropPath(0.2)
        self.conv_head = nn.Conv2d(16, 24, 1, bias=False)
        self.classifier = nn.Linear(24, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.bn1(self.conv_stem(x)))
        shortcut = x
        y = F.silu(self.bn2(self.conv_pw(x)))
        y = F.silu(self.bn3(self.conv_dw(y)))
        s = F.silu(self.se_reduce(y.mean((2, 3), keepdim=True)))
        y = y * F.hardsigmoid(self.se_expand(s))
        y = self.bn4(self.conv_pwl(y))
        x = self.drop_path(y) + shortcut
        x = F.pad(F.silu(self.conv_head(x)), (1, 1, 1, 1))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


NETS: dict[str, Callable[[], nn.Module]] = {
    "resnet_basic": resnet_basic,
    "resnet_bottleneck": resnet_bottleneck,
    "resnext": resnext,
    "densenet": TinyDenseNet,
    "mobilenetv2": TinyMobileNetV2,
    "senet": SENet,
    "split": split_net,
    "prelu_groupnorm": PReLUGroupNormNet,
    "inception": InceptionNet,
    "slicing": SliceNet,
    "timm_style": TimmStyleNet,
}
"""The traceable nets (all prunable without ``ignore=``)."""


# ----------------------------------------------------------------------------------------
# random networks for the property-based tests

@dataclass(frozen=True)
class BlockSpec:
    """One block of a random network.

    kind: ``plain`` (conv-bn-relu), ``residual`` (two convs + identity/projection),
    ``concat`` (two parallel branches concatenated), ``dense`` (input concatenated
    with new features), ``depthwise`` (inverted residual), ``depthwise_x2``
    (depthwise with a channel multiplier of 2), ``grouped`` / ``grouped4`` (grouped
    3x3 with 2 / 4 groups, ResNeXt-like), ``se`` (conv + SE with 1x1 convs),
    ``unused`` (a side branch whose output is discarded) or ``twice`` (one conv
    applied twice).
    """

    kind: str
    width: int
    stride: int = 1


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.proj = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.proj(x))


class _Concat(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.a = _conv_bn(cin, half, 1, stride)
        self.b = nn.Sequential(_conv_bn(cin, cout - half, 1), _conv_bn(cout - half, cout - half, 3, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


class _Dense(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.grow = _conv_bn(cin, cout - cin, 3)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.cat([x, self.grow(x)], 1))


class _Depthwise(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.inner = InvertedResidual(cin, cout, stride, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class _Grouped(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int = 2, width: int = 8) -> None:
        super().__init__()
        self.reduce = _conv_bn(cin, width, 1)
        self.grouped = _conv_bn(width, width, 3, stride, groups=groups)
        self.expand = nn.Sequential(nn.Conv2d(width, cout, 1, bias=True), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.expand(self.grouped(self.reduce(x))))


class _SE(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = _conv_bn(cin, cout, 3, stride)
        self.se = SEConv(cout, max(2, cout // 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.conv(x))


class _DepthwiseX2(nn.Module):
    """Depthwise conv with a channel multiplier (``groups == in_channels``, out = 2 x in)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(cin, 2 * cin, 3, stride, 1, groups=cin, bias=False),
                                nn.BatchNorm2d(2 * cin), nn.ReLU(inplace=True))
        self.pw = _conv_bn(2 * cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class _Unused(nn.Module):
    """A side branch computed and thrown away (an auxiliary head left in the forward)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = _conv_bn(cin, cout, 3, stride)
        self.aux = nn.Conv2d(cout, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        self.aux(x)
        return x


class _Twice(nn.Module):
    """One conv applied twice (weights shared across depth)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = _conv_bn(cin, cout, 3, stride)
        self.shared = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shared(F.relu(self.shared(self.conv(x)))))


BLOCKS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "plain": lambda cin, cout, s: _conv_bn(cin, cout, 3, s),
    "residual": _Residual, "concat": _Concat, "dense": _Dense, "depthwise": _Depthwise,
    "depthwise_x2": _DepthwiseX2, "grouped": _Grouped,
    "grouped4": functools.partial(_Grouped, groups=4, width=16), "se": _SE, "unused": _Unused,
    "twice": _Twice,
}
WIDTHS = (8, 12, 16)
STRIDES = (1, 1, 2)  # a downsampling block one time in three
MAX_BLOCKS = 4
MAX_DOWNSAMPLES = 3  # 16x16 input: at least 2x2 at the end


def valid_specs(specs: list[BlockSpec]) -> bool:
    return sum(s.stride == 2 for s in specs) <= MAX_DOWNSAMPLES


def random_specs(rng: random.Random) -> list[BlockSpec]:
    """A random architecture from the space the hypothesis tests draw from."""
    while True:
        specs = [BlockSpec(rng.choice(sorted(BLOCKS)), rng.choice(WIDTHS), rng.choice(STRIDES))
                 for _ in range(rng.randint(1, MAX_BLOCKS))]
        if valid_specs(specs):
            return specs


class RandomNet(nn.Module):
    def __init__(self, specs: list[BlockSpec], stem: int = 8, features: bool = False) -> None:
        super().__init__()
        self.stem = _conv_bn(3, stem, 3, 1)
        blocks, c = [], stem
        for spec in specs:
            cout = spec.width + c if spec.kind == "dense" else spec.width
            blocks.append(BLOCKS[spec.kind](c, cout, spec.stride))
            c = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = _Head(c)
        self.features = features

    def forward(self, x: torch.Tensor):
        y = self.blocks(self.stem(x))
        if self.features:  # (logits, pooled features), a common distillation setup
            return self.head(y), y.mean((2, 3))
        return self.head(y)


def build_random_net(specs: list[BlockSpec], seed: int = 0, features: bool = False) -> RandomNet:
    torch.manual_seed(seed)
    return randomize_bn_(RandomNet(specs, features=features), seed).eval()


# ----------------------------------------------------------------------------------------
# independent cost model (from layer attributes and recorded output shapes)

def _conv_params(m: nn.Conv2d) -> int:
    k = math.prod(m.kernel_size)
    return m.out_channels * (m.in_channels // m.groups) * k + (m.out_channels if m.bias is not None else 0)


def analytic_params(model: nn.Module) -> int:
    """Parameters from each layer's constructor attributes (in/out channels, groups,
    kernel size, num_features), not from its tensors."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            total += _conv_params(m) + (m.out_channels if isinstance(m, ScaledStdConv2d) else 0)  # gain
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            total += 2 * m.num_features if m.affine else 0
        elif isinstance(m, nn.GroupNorm):
            total += 2 * m.num_channels if m.affine else 0
        elif isinstance(m, nn.PReLU):
            total += m.num_parameters
        elif isinstance(m, nn.LayerNorm):
            total += 2 * math.prod(m.normalized_shape) if m.elementwise_affine else 0
        elif isinstance(m, ConvNeXtBlock):
            total += m.conv_dw.out_channels  # its layer scale (children are counted on their own)
        elif next(m.parameters(recurse=False), None) is not None:
            raise AssertionError(f"analytic_params does not know {type(m).__name__}")
    return total


def analytic_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Conv and linear multiply-accumulates from layer attributes and output sizes."""
    total = 0
    hooks = []

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        per_out = (m.in_channels // m.groups) * math.prod(m.kernel_size)
        total += out.shape[0] * m.out_channels * per_out * math.prod(out.shape[2:])

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() // m.out_features * m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return total


# ----------------------------------------------------------------------------------------
# Plain-PyTorch replicas of timm / torchvision layers that subclass torch.nn layers or that
# torch.fx would otherwise trace into (timm.layers.norm_act, timm.layers.conv2d_same,
# timm.layers.std_conv, torchvision.ops.misc.FrozenBatchNorm2d, torchvision.ops.stochastic_depth)

class BatchNormAct2d(nn.BatchNorm2d):
    """timm's norm + activation layer: a BatchNorm2d whose forward asserts on ``x.ndim`` and
    branches on Python attributes before ``F.batch_norm``, then drops and activates."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.drop = nn.Identity()
        self.act = nn.PReLU(c)  # a per-channel parameter the BatchNorm slicer does not know

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, "expected 4D input")
        factor = 0.0 if self.momentum is None else self.momentum
        bn_training = True if self.training else (self.running_mean is None) and (self.running_var is None)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         bn_training, factor, self.eps)
        return self.act(self.drop(x))


class Conv2dSame(nn.Conv2d):
    """timm's TF-'SAME' conv: pads from the input's shape at run time, then convolves."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]
        kh, kw = self.weight.size()[-2:]
        ph = max((-(-ih // self.stride[0]) - 1) * self.stride[0] + kh - ih, 0)
        pw = max((-(-iw // self.stride[1]) - 1) * self.stride[1] + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class ScaledStdConv2d(nn.Conv2d):
    """timm's NF-Net conv: weights standardised in forward, with a learned per-filter gain."""

    def __init__(self, cin: int, cout: int, k: int, **kw) -> None:
        super().__init__(cin, cout, k, padding=k // 2, **kw)
        self.gain = nn.Parameter(torch.ones(cout, 1, 1, 1))
        self.scale = (cin * k * k) ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0,
                              eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FrozenBatchNorm2d(nn.Module):
    """torchvision's frozen BatchNorm: four buffers, not a BatchNorm2d subclass."""

    def __init__(self, c: int) -> None:
        super().__init__()
        for name, value in (("weight", torch.ones(c)), ("bias", torch.zeros(c)),
                            ("running_mean", torch.zeros(c)), ("running_var", torch.ones(c))):
            self.register_buffer(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + 1e-5).rsqrt()
        return x * scale + (self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale)


def stochastic_depth(x: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision.ops.stochastic_depth: identity in eval, per-sample drop in training."""
    if not training or p == 0.0:
        return x
    keep = x.new_empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"  # where torchvision defines it
torch.fx.wrap("stochastic_depth")  # torchvision wraps it the same way: one fx node


class TimmLayersNet(nn.Module):
    """A residual net built from the replicas above."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 16, 3, stride=2)
        self.bn1 = BatchNormAct2d(16)
        self.conv2 = ScaledStdConv2d(16, 24, 3)
        self.bn2 = FrozenBatchNorm2d(24)
        self.conv3 = nn.Conv2d(24, 16, 1)
        self.bn3 = BatchNormAct2d(16)
        self.head = _Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.stem(x))
        y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(x)))))
        return self.head(x + stochastic_depth(y, 0.1, "row", self.training))


# ----------------------------------------------------------------------------------------
# ConvNeXt (torchvision CNBlock / timm ConvNeXtBlock): a channels-last MLP and a layer scale

class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (permutes inside), as timm/torchvision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dw conv -> permute -> LayerNorm -> Linear(4x) -> GELU -> Linear -> permute -> gamma * x
    (+ stochastic depth) + shortcut."""

    def __init__(self, c: int, gamma_shape: str = "flat") -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.act, self.fc2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma_shape = gamma_shape
        self.gamma = nn.Parameter(torch.rand(c) if gamma_shape == "flat" else torch.rand(c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.fc2(self.act(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        if self.gamma_shape == "flat":  # timm: x.mul(self.gamma.reshape(1, -1, 1, 1))
            y = y.mul(self.gamma.reshape(1, -1, 1, 1))
        else:  # torchvision: self.layer_scale * block(x), layer_scale of shape (C, 1, 1)
            y = self.gamma * y
        return x + stochastic_depth(y, 0.1, "row", self.training)


class TinyConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16))
        self.block1 = ConvNeXtBlock(16, "flat")
        self.down = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 24, 2, stride=2))
        self.block2 = ConvNeXtBlock(24, "torchvision")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), LayerNorm2d(24), nn.Flatten(1), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.down(self.block1(self.stem(x)))))


class ECANet(nn.Module):
    """timm's efficient channel attention: a 1-channel Conv1d slid along the channel axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = _Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = torch.sigmoid(self.eca(y)).view(x.shape[0], -1, 1, 1)
        return self.head(F.relu(self.conv2(x * y.expand_as(x))))


class MixedConv2d(nn.ModuleDict):
    """timm's MixNet conv: uneven channel splits (sizes in ``self.splits``), one kernel size each."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.splits = [c - 2 * (c // 3), c // 3, c // 3]
        for i, (n, k) in enumerate(zip(self.splits, (3, 5, 7))):
            self.add_module(str(i), nn.Conv2d(n, n, k, padding=k // 2, groups=n, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(x, self.splits, 1)
        return torch.cat([conv(pieces[i]) for i, conv in enumerate(self.values())], 1)


class MixNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 18, 3, padding=1)
        self.mixed = MixedConv2d(18)
        self.bn = nn.BatchNorm2d(18)
        self.conv2 = nn.Conv2d(18, 16, 1)
        self.head = _Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.mixed(F.relu(self.conv1(x)))))
        return self.head(F.relu(self.conv2(x)))


# ----------------------------------------------------------------------------------------
# Radix axes: timm's SelectiveKernel (SKNet) and SplitAttn (ResNeSt), as timm writes them

class SelectiveKernel(nn.Module):
    def __init__(self, c: int, paths: int = 2, attn: int = 8) -> None:
        super().__init__()
        self.num_paths = paths
        self.paths = nn.ModuleList([nn.Sequential(nn.Conv2d(c, c, 3, padding=d, dilation=d, bias=False),
                                                  nn.BatchNorm2d(c), nn.ReLU()) for d in range(1, paths + 1)])
        self.fc_reduce = nn.Conv2d(c, attn, 1, bias=False)
        self.bn = nn.BatchNorm2d(attn)
        self.fc_select = nn.Conv2d(attn, c * paths, 1, bias=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[1] == self.num_paths, "")
        x = x.sum(1).mean((2, 3), keepdim=True)
        x = self.fc_select(F.relu(self.bn(self.fc_reduce(x))))
        b, c, h, w = x.shape
        x = x.view(b, self.num_paths, c // self.num_paths, h, w)
        return torch.softmax(x, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.stack([op(x) for op in self.paths], dim=1)
        return torch.sum(x * self.attention(x), dim=1)


class RadixSoftmax(nn.Module):
    def __init__(self, radix: int, cardinality: int) -> None:
        super().__init__()
        self.radix, self.cardinality = radix, cardinality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.size(0)
        x = x.view(batch, self.cardinality, self.radix, -1).transpose(1, 2)
        return F.softmax(x, dim=1).reshape(batch, -1)


class SplitAttn(nn.Module):
    def __init__(self, cin: int, c: int, radix: int = 2, attn: int = 8) -> None:
        super().__init__()
        self.radix = radix
        self.conv = nn.Conv2d(cin, c * radix, 3, padding=1, groups=radix, bias=False)
        self.bn0 = nn.BatchNorm2d(c * radix)
        self.fc1 = nn.Conv2d(c, attn, 1)
        self.bn1 = nn.BatchNorm2d(attn)
        self.fc2 = nn.Conv2d(attn, c * radix, 1)
        self.rsoftmax = RadixSoftmax(radix, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.conv(x)))
        b, rc, h, w = x.shape
        x = x.reshape((b, self.radix, rc // self.radix, h, w))
        gap = x.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.fc2(F.relu(self.bn1(self.fc1(gap))))
        attn = self.rsoftmax(attn).view(b, -1, 1, 1)
        out = (x * attn.reshape((b, self.radix, rc // self.radix, 1, 1))).sum(dim=1)
        return out.contiguous()


class RadixNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.sk = SelectiveKernel(16)
        self.split = SplitAttn(16, 16)
        self.conv = nn.Conv2d(16, 24, 1)
        self.head = _Head(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.sk(x)
        return self.head(F.relu(self.conv(self.split(x))))


# ----------------------------------------------------------------------------------------
# Res2Net (split, then each piece adds the previous piece's output), DPN (slice + add +
# concat of a dual path), RepVGG / MobileOne (3x3 + 1x1 + identity branches summed)

class Res2NetBlock(nn.Module):
    def __init__(self, c: int = 16, scale: int = 4) -> None:
        super().__init__()
        self.width = c // scale
        self.convs = nn.ModuleList([nn.Conv2d(self.width, self.width, 3, padding=1) for _ in range(scale - 1)])
        self.conv_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(x, self.width, 1)
        out, sp = [], None
        for i, conv in enumerate(self.convs):
            sp = pieces[i] if i == 0 else sp + pieces[i]
            sp = F.relu(conv(sp))
            out.append(sp)
        out.append(pieces[-1])
        return F.relu(self.conv_out(torch.cat(out, 1)) + x)


class DualPathBlock(nn.Module):
    """DPN: the first ``res`` channels of a conv's output add to the residual path, the rest
    concatenate to the dense path."""

    def __init__(self, res: int = 16, inc: int = 8) -> None:
        super().__init__()
        self.res = res
        self.conv = nn.Conv2d(res + 8, res + inc, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        resid, dense = x[:, :self.res], x[:, self.res:]
        return torch.cat([resid + y[:, :self.res], dense, y[:, self.res:]], dim=1)


class RepVGGBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dense = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.one = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.identity = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.dense(x) + self.one(x) + self.identity(x))


class MultiPathNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.res2 = Res2NetBlock(16)
        self.expand = nn.Conv2d(16, 24, 1)
        self.dpn = DualPathBlock(16, 8)
        self.rep = RepVGGBlock(32)
        self.head = _Head(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res2(F.relu(self.stem(x)))
        return self.head(self.rep(self.dpn(F.relu(self.expand(x)))))
