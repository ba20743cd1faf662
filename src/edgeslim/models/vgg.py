"""VGG for CIFAR (Simonyan & Zisserman, *Very Deep Convolutional Networks for
Large-Scale Image Recognition*, ICLR 2015) with batch normalisation, in the
form used by the filter-pruning literature (Li et al., *Pruning Filters for
Efficient ConvNets*, ICLR 2017; Liu et al., *Network Slimming*, ICCV 2017).

Every 3x3 convolution is followed by BN and ReLU; five 2x2 max pools bring a
32x32 input to 1x1, so the classifier sees ``512 * width_mult`` features.
The default classifier is a single ``Linear(512, num_classes)`` (Network
Slimming); ``classifier="mlp"`` gives ``Linear(512, 512)-ReLU-Linear(512,
num_classes)``, close to the two-FC head of Li et al.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from edgeslim.models.factory import register_model
from edgeslim.models.utils import init_weights, scale_channels

_POOL = "M"
VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

ClassifierKind = Literal["linear", "mlp"]


def _linear_head(features: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, num_classes))


def _mlp_head(features: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(features, features), nn.ReLU(), nn.Linear(features, num_classes)
    )


_HEADS: dict[str, Callable[[int, int], nn.Sequential]] = {"linear": _linear_head, "mlp": _mlp_head}


def _make_features(cfg: Sequence[int | str], in_channels: int, width_mult: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in cfg:
        if item == _POOL:
            layers.append(nn.MaxPool2d(2))
            continue
        out = scale_channels(int(item), width_mult)
        conv = nn.Conv2d(channels, out, 3, padding=1, bias=False)
        layers += [conv, nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """CIFAR VGG with BN: ``features`` -> global average pool -> ``classifier``.

    The global average pool is the identity on the 1x1 maps of a 32x32 input
    and lets larger inputs work unchanged.

    Args:
        cfg: channel counts and ``"M"`` (2x2 max pool) in order.
        num_classes: classifier outputs.
        in_channels: input channels.
        width_mult: multiplies every conv width (e.g. 0.25 for CPU benchmarks).
        classifier: ``"linear"`` (one Linear) or ``"mlp"`` (Linear-ReLU-Linear).
    """

    def __init__(
        self,
        cfg: Sequence[int | str],
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        classifier: ClassifierKind = "linear",
    ) -> None:
        super().__init__()
        if classifier not in _HEADS:
            raise ValueError(f"VGG classifier must be one of {sorted(_HEADS)}, got {classifier!r}")
        self.default_input_size = (in_channels, 32, 32)
        self.features = _make_features(cfg, in_channels, width_mult)
        last = [c for c in cfg if c != _POOL][-1]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _HEADS[classifier](scale_channels(int(last), width_mult), num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _vgg(name: str, num_classes: int, in_channels: int, width_mult: float,
         classifier: ClassifierKind) -> VGG:
    return VGG(VGG_CFGS[name], num_classes, in_channels, width_mult, classifier)


@register_model("vgg11")
def vgg11(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
          classifier: ClassifierKind = "linear") -> VGG:
    """VGG-11 with BN (8 convs), CIFAR variant."""
    return _vgg("vgg11", num_classes, in_channels, width_mult, classifier)


@register_model("vgg13")
def vgg13(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
          classifier: ClassifierKind = "linear") -> VGG:
    """VGG-13 with BN (10 convs), CIFAR variant."""
    return _vgg("vgg13", num_classes, in_channels, width_mult, classifier)


@register_model("vgg16")
def vgg16(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
          classifier: ClassifierKind = "linear") -> VGG:
    """VGG-16 with BN (13 convs), CIFAR variant used by L1 pruning and EasiEdge."""
    return _vgg("vgg16", num_classes, in_channels, width_mult, classifier)


@register_model("vgg19")
def vgg19(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
          classifier: ClassifierKind = "linear") -> VGG:
    """VGG-19 with BN (16 convs), CIFAR variant (Network Slimming)."""
    return _vgg("vgg19", num_classes, in_channels, width_mult, classifier)
