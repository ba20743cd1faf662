"""DSNet: a small depthwise-separable CNN built for latency-bound edge inference.

The lightweight student of the knowledge-transfer pipeline (Chen et al. 2020:
depthwise-separable convolutions and a pooling head), with the
*fast downsampling* of FD-MobileNet (Qin et al., ICIP 2018): the stem is a
non-overlapping ``stem_stride`` x ``stem_stride`` patch convolution, so every
later layer already runs at the reduced resolution. On a 28x28 input with the
defaults (3x3 patches, no block stride) both blocks run at 9x9; a dense runtime
(onnxruntime, 1 thread, batch 1) runs the whole network in a few microseconds
above its per-call cost, where LeNet-5's two full-resolution convolutions take
several times that.

    stem: conv k x k, stride k (in -> c0) - BN - ReLU
    block i: depthwise 3x3 (stride s_i) - pointwise 1x1 (-> c_i) - BN - ReLU
    head ("gdconv", the default): average pooling to a head_grid x head_grid grid - a
        per-channel learned weighting of the grid cells (depthwise conv, kernel head_grid:
        MobileFaceNet's global depthwise conv, Chen et al. 2018, on a pooled grid) -
        Linear(c_last, num_classes)
    head ("gap"): global average pooling - Linear(c_last, num_classes)

Global average pooling forgets *where* a feature was, which matters on centred inputs
(digits, faces); the grid head keeps it for ``c_last * head_grid**2`` weights.

BN layers fold into the convolutions exactly (``merge`` mode ``exact``), so the
deployed network has none. ``width_mult`` scales every width (``lighten`` with a
``student`` uses it), keeping multiples of 8 where the width allows (SIMD
kernels of onnxruntime / OpenVINO run 8- and 16-channel convolutions fastest).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgeslim.models.factory import register_model
from edgeslim.models.utils import init_weights, make_divisible

# The defaults (1,226 parameters once BN is folded, 1/50.3 of LeNet-5) were chosen by measuring on
# MNIST (40 epochs from labels, one or two seeds) and in onnxruntime (1 thread, batch 1):
# - resolution buys accuracy per parameter, strides cost it: two blocks kept at 9x9 (3x3 stem, no
#   block stride) reached 98.31% at 1,162 parameters and 10.3 us (AVX-512 CPU, random 1-pixel
#   shifts, GAP head), against 97.71% (9.4 us) for a 4x4 stem with a stride-2 second block (7x7
#   then 3x3, 1,194 parameters), 97.88% for a 3x3 stem with a stride-2 second block and 98.07% for
#   7x7 throughout (1,274); a stride-1 block at 14x14 (2x2 stem) cost 13-17 us, too slow for a
#   3.2x speed-up over LeNet-5's ~36 us.
# - the head: the 2x2 grid head reached 98.64% / 98.72% (seeds 0 / 1, no augmentation) against
#   98.24% / 97.96% with global average pooling, and 98.77% / 99.04% against 98.43% / 98.22% with
#   1-pixel shifts, for 64 weights and +0.35 us (19.01 against 18.66 us on an AVX2 CPU, where
#   LeNet-5 takes 39.9 us and an empty graph 7.9). A 3x3 grid did no better (98.60% / 98.84%, 144
#   weights, over the 1/49.5 budget; at widths 16/16/12 to fit it, 98.63% / 98.46% and 2.4 us
#   slower); global max pooling 97.93% / 97.97%.
# - widths off a multiple of 16 ran slower, not faster (8/12/12/20: 18.1 us against 9.4 us for
#   16/16/16 on the AVX-512 CPU), and a third block cost 2 us.
# - a residual add on the stride-1 blocks or a ReLU between depthwise and pointwise gave nothing
#   (97.86% / 97.85% against 97.88%, 3x3 stem with a stride-2 second block); AdamW (lr 0.01) 97.88% /
#   97.91% against SGD's 98.24% / 97.96%; an EMA of the weights nothing (the cosine schedule ends
#   at lr 0).
DEFAULT_WIDTHS = (16, 16, 16)  # stem, then one per block
DEFAULT_STRIDES = (1, 1)
DEFAULT_HEAD = "gdconv"


def _width(c: int, width_mult: float) -> int:
    if width_mult == 1.0:
        return c  # widths given are kept as they are
    return make_divisible(c * width_mult, 8 if c * width_mult >= 8 else 1)


class DSNet(nn.Module):
    """Patch stem + depthwise-separable blocks + GAP/Linear head (module docstring).

    Args:
        num_classes: classifier outputs.
        in_channels: input channels (1 for MNIST).
        width_mult: multiplies every width (rounded to a multiple of 8 when >= 8).
        stem_stride: the stem's kernel and stride (non-overlapping patches).
        widths: stem width, then one output width per block.
        strides: the depthwise stride of each block (``len(widths) - 1`` values).
        kernel_sizes: the depthwise kernel of each block (default: 3 everywhere; a 2 with
            stride 2 is a learned per-channel 2x2 pooling with 4/9 of a 3x3's weights).
        input_size: the nominal input height = width (``default_input_size``); with the
            ``gap`` head any size the stem's stride divides into at least one patch works
            (global pooling), the ``gdconv`` head's pooling is built for this size.
        head: ``"gap"`` or ``"gdconv"`` (module docstring).
        head_grid: the ``gdconv`` head's grid (cells pooled from the last feature map, which
            the windows cover exactly, overlapping where the size does not divide).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0,
                 stem_stride: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS,
                 strides: Sequence[int] = DEFAULT_STRIDES, input_size: int = 28,
                 kernel_sizes: Sequence[int] | None = None, head: str = DEFAULT_HEAD,
                 head_grid: int = 2) -> None:
        super().__init__()
        widths, strides = [int(w) for w in widths], [int(s) for s in strides]
        if kernel_sizes is None:
            kernel_sizes = [3] * len(strides)
        kernels = [int(k) for k in kernel_sizes]
        if len(kernels) != len(strides) or any(k < 1 for k in kernels):
            raise ValueError(f"DSNet needs one depthwise kernel size >= 1 per block, got {kernels}")
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"DSNet widths must be positive channel counts, got {widths}")
        if len(strides) != len(widths) - 1 or any(s < 1 for s in strides):
            raise ValueError(f"DSNet needs one stride >= 1 per block (len(widths) - 1 = "
                             f"{len(widths) - 1}), got strides={strides}")
        if not 1 <= stem_stride <= input_size:
            raise ValueError(f"DSNet stem_stride must be in [1, input_size={input_size}], got {stem_stride}")
        self.default_input_size = (in_channels, input_size, input_size)
        c = [_width(w, width_mult) for w in widths]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c[0], stem_stride, stem_stride, bias=False),
                                   nn.BatchNorm2d(c[0]), nn.ReLU()]
        for cin, cout, s, k in zip(c, c[1:], strides, kernels):
            # no BN between depthwise and pointwise: the pair is one linear map, so a single BN
            # after it normalises the same, and the folded network has no depthwise bias
            layers += [nn.Conv2d(cin, cin, k, s, (k - 1) // 2, groups=cin, bias=False),
                       nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = _head_pool(head, head_grid, c[-1], _map_size(input_size, stem_stride, strides,
                                                                  kernels))
        self.classifier = nn.Linear(c[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _map_size(input_size: int, stem_stride: int, strides: Sequence[int], kernels: Sequence[int]) -> int:
    """Height = width of the last feature map for an ``input_size`` input."""
    m = input_size // stem_stride
    for s, k in zip(strides, kernels):
        m = (m + 2 * ((k - 1) // 2) - k) // s + 1
    return m


def _head_pool(head: str, grid: int, channels: int, map_size: int) -> nn.Module:
    """The pooling between the features and the classifier (to ``[N, C, 1, 1]``)."""
    if head == "gap":
        return nn.AdaptiveAvgPool2d(1)
    if head != "gdconv":
        raise ValueError(f"DSNet head must be 'gap' or 'gdconv', got {head!r}")
    if not 1 <= grid <= map_size:
        raise ValueError(f"DSNet head_grid must be in [1, {map_size}] (the last feature map is "
                         f"{map_size}x{map_size}), got {grid}")
    # windows of `kernel` every `stride` cells cover the map exactly (overlapping when it does not
    # divide): the same cells as adaptive pooling, but one plain AveragePool node in ONNX
    stride = map_size // grid
    kernel = map_size - (grid - 1) * stride
    return nn.Sequential(nn.AvgPool2d(kernel, stride),
                         nn.Conv2d(channels, channels, grid, groups=channels, bias=False))


@register_model("dsnet")
def dsnet(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0, stem_stride: int = 3,
          widths: Sequence[int] = DEFAULT_WIDTHS, strides: Sequence[int] = DEFAULT_STRIDES,
          input_size: int = 28, kernel_sizes: Sequence[int] | None = None,
          head: str = DEFAULT_HEAD, head_grid: int = 2) -> DSNet:
    """Depthwise-separable CNN with a fast-downsampling patch stem (a latency-first KT student)."""
    return DSNet(num_classes, in_channels, width_mult, stem_stride, widths, strides, input_size,
                 kernel_sizes, head, head_grid)
