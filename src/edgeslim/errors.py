"""Exceptions a user can act on. The CLI prints their message without a traceback."""
from __future__ import annotations


class EdgeslimError(Exception):
    """Base class: the message says what was wrong, where, and what to do."""


class DataError(EdgeslimError):
    """A dataset is missing, corrupt, or has the wrong shape."""


class ConfigError(EdgeslimError):
    """A config/recipe key or value is invalid."""


class CheckpointError(EdgeslimError):
    """A checkpoint or saved model is missing, corrupt, or from another architecture."""


class UnsupportedModelError(EdgeslimError):
    """The dependency graph met an operation it cannot prune through; ``module`` is the
    module path where it happened, when known ('' otherwise)."""

    def __init__(self, *args: object, module: str = "") -> None:
        super().__init__(*args)
        self.module = module


class ExportError(EdgeslimError):
    """ONNX export failed or onnxruntime disagrees with PyTorch."""


class RunDirError(ConfigError):
    """A run directory (``--out``) cannot be used: another run holds it, it is not
    writable or its disk is full, or its state is corrupt."""


class EdgeslimDeprecationWarning(FutureWarning):
    """An old option name or spelling still works but goes in the next release (shown to users)."""
