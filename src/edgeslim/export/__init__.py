"""Deployment: ONNX export with an onnxruntime parity check; save/load of (pruned) models.

``save``/``load`` live in :mod:`edgeslim.export.bundle` and are imported on
first use, so ``import edgeslim.export`` stays light.
"""
from __future__ import annotations

from edgeslim._lazy import lazy_getattr
from edgeslim.export.onnx import export_onnx

__all__ = ["export_onnx", "export_openvino", "load", "save"]

_LAZY = {"save": "edgeslim.export.bundle", "load": "edgeslim.export.bundle",
         "export_openvino": "edgeslim.export.openvino"}


__getattr__ = lazy_getattr(__name__, _LAZY)
