"""int8 post-training static quantization.

``quantize(model, example_inputs, calib_data)`` returns a
:class:`QuantizedModel` wrapping an int8 ONNX file (``model.int8.onnx``);
backends are looked up by name in ``QUANT_BACKENDS`` (``"onnxruntime"``, the
default, and ``"torch"``). See :mod:`edgeslim.quant.api` for the measurements
behind the default.
"""
from __future__ import annotations

from edgeslim.quant.api import INT8_NAME, QUANT_BACKENDS, quantize
from edgeslim.quant.calibration import calibration_batches
from edgeslim.quant.model import QuantizedModel
from edgeslim.quant.options import QuantOptions

__all__ = ["INT8_NAME", "QUANT_BACKENDS", "QuantOptions", "QuantizedModel", "calibration_batches", "quantize"]
