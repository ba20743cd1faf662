"""LeNet-5 (LeCun, Bottou, Bengio, Haffner. *Gradient-based learning applied to
document recognition*, Proc. IEEE 1998), in its common modern form: ReLU and
max pooling instead of scaled tanh and subsampling, full C3 connectivity; and
Caffe's MNIST LeNet (20-50-500), the "LeNet-5" of the weight-pruning papers.
"""
from __future__ import annotations

import torch
from torch import nn

from edgeslim.models.factory import register_model
from edgeslim.models.utils import init_weights, scale_channels


class _TwoConvNet(nn.Module):
    """conv5x5(c1)-ReLU-maxpool2-conv5x5(c2)-ReLU-maxpool2, then ReLU-separated linear layers."""

    def __init__(self, name: str, widths: tuple[int, ...], num_classes: int, in_channels: int,
                 input_size: int, pad: int, width_mult: float) -> None:
        super().__init__()
        c1, c2, *hidden = (scale_channels(c, width_mult) for c in widths)
        side = ((input_size + 2 * pad - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"{name} needs input_size >= 16, got {input_size}")
        self.default_input_size = (in_channels, input_size, input_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        layers: list[nn.Module] = []
        for n_in, n_out in zip([c2 * side * side, *hidden], hidden):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.classifier = nn.Sequential(*layers, nn.Linear(hidden[-1], num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class LeNet5(_TwoConvNet):
    """conv5x5(6)-ReLU-maxpool2-conv5x5(16)-ReLU-maxpool2-fc120-ReLU-fc84-ReLU-fc.

    A 28x28 input (MNIST) gets padding 2 on the first convolution, so both 28x28
    and the original 32x32 produce 16x5x5 features before the classifier.

    Args:
        num_classes: classifier outputs.
        in_channels: input channels (1 for MNIST).
        input_size: input height = width; 28 pads the first conv by 2.
        width_mult: multiplies every hidden width (6, 16, 120, 84; rounded, at least 1), so
            ``lighten(..., width_mult=w)`` can build a wider or narrower LeNet-5 student.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 width_mult: float = 1.0) -> None:
        super().__init__("LeNet5", (6, 16, 120, 84), num_classes, in_channels, input_size,
                         2 if input_size == 28 else 0, width_mult)


class LeNet5Caffe(_TwoConvNet):
    """conv5x5(20)-ReLU-maxpool2-conv5x5(50)-ReLU-maxpool2-fc500-ReLU-fc: Caffe's MNIST LeNet.

    The "LeNet-5" of the weight-pruning literature (Han et al. 2015: 431K weights, 12x;
    Deep Compression; Dynamic Network Surgery; ADMM weight pruning): 431,080 parameters,
    7x the classic :class:`LeNet5`. Caffe's ``examples/mnist`` prototxt has no activation
    between a convolution and its pooling; like the PyTorch versions in the sparsity papers
    (e.g. L0 regularisation, Louizos et al. 2018) this one puts a ReLU there, so that layer
    merging, which turns each conv -> pool into one strided conv, leaves a non-linear
    feature extractor (two merged convs with nothing between them would be one linear map).

    Args:
        num_classes: classifier outputs.
        in_channels: input channels (1 for MNIST).
        input_size: input height = width (28 for MNIST; 4 x 4 features per channel at 28).
        width_mult: multiplies every hidden width (20, 50, 500; rounded, at least 1).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 width_mult: float = 1.0) -> None:
        super().__init__("LeNet5Caffe", (20, 50, 500), num_classes, in_channels, input_size, 0, width_mult)


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
           width_mult: float = 1.0) -> LeNet5:
    """LeNet-5 for 28x28 (MNIST, default) or 32x32 inputs; ``width_mult`` scales its widths."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                  width_mult=width_mult)


@register_model("lenet5_caffe")
def lenet5_caffe(num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 width_mult: float = 1.0) -> LeNet5Caffe:
    """Caffe's MNIST LeNet (20-50-500, 431K parameters), the LeNet-5 of the pruning papers."""
    return LeNet5Caffe(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                       width_mult=width_mult)
