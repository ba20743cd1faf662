"""Deployment: ONNX export with an onnxruntime parity check; save/load of (pruned) models.

``save``/``load`` live in :mod:`edgeslim.export.bundle` and are imported on
first use, so ``import edgeslim.export`` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

from edgeslim.export.onnx import export_onnx

__all__ = ["export_onnx", "load", "save"]

_LAZY = {"save": "edgeslim.export.bundle", "load": "edgeslim.export.bundle"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeslim.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
