"""Settings shared by the quantization backends."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuantOptions:
    """How to quantize (the defaults were chosen by measurement; see :mod:`edgeslim.quant`).

    Attributes:
        per_channel: one weight scale per output channel (Krishnamoorthi,
            *Quantizing deep convolutional networks for efficient inference*,
            2018, sec. 3.1.2) instead of one per tensor.
        reduce_range: onnxruntime backend: 7-bit weights, which avoid int16
            saturation in the u8 x s8 kernels of x86 CPUs without VNNI. (The
            torch backend's x86 qconfig always reduces the *activation*
            range by one bit for the same reason, so this flag does not
            apply to it.)
        opset: ONNX opset of the exported files (QDQ per-channel needs >= 13).
    """

    per_channel: bool = True
    reduce_range: bool = True
    opset: int = 17
