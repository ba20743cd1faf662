"""edgeslim: make convolutional networks small and fast enough for edge devices.

The public API is re-exported here; names resolve lazily so ``import edgeslim``
stays fast and never initialises CUDA.
"""
from __future__ import annotations

from ._lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # foundation
    "create_model": "edgeslim.models",
    "list_models": "edgeslim.models",
    "register_model": "edgeslim.models",
    "profile": "edgeslim.profile",
    "measure_latency": "edgeslim.profile.runtimes",
    "export_onnx": "edgeslim.export",
    "export_openvino": "edgeslim.export",
    "Trainer": "edgeslim.train",
    "TrainConfig": "edgeslim.train",
    "evaluate": "edgeslim.train",
    "info": "edgeslim.modelinfo",
    "ModelInfo": "edgeslim.modelinfo",
    # structural pruning
    "prune": "edgeslim.prune",
    "prune_": "edgeslim.prune",
    "save": "edgeslim.export",
    "load": "edgeslim.export",
    # knowledge transfer
    "lighten": "edgeslim.transforms",
    "distill": "edgeslim.distill",
    # EasiEdge
    "admm_prune": "edgeslim.prune",
    # hybrid compression
    "fold_batchnorm": "edgeslim.transforms",
    "streamline_merge": "edgeslim.transforms",
    "prune_weights": "edgeslim.prune",
    # int8
    "quantize": "edgeslim.quant",
}

__all__ = sorted(_EXPORTS) + ["__version__"]
__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__
