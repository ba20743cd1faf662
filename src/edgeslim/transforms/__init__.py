"""Model-to-model transforms: lighten (student builder), fold (BN folding), merge (streamline merging)."""
from __future__ import annotations

import importlib
from typing import Any

# Eager: the submodule ``lighten`` shares its name with the function, and the function must win.
from .lighten import lighten

_LAZY = {
    "fold_batchnorm": "edgeslim.transforms.fold",
    "streamline_merge": "edgeslim.transforms.merge",
    "merge_linear_chains": "edgeslim.transforms.merge",
    "remove_identities": "edgeslim.transforms.merge",
    "merge_branches": "edgeslim.transforms.merge",
}

__all__ = sorted([*_LAZY, "lighten"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeslim.transforms' has no attribute {name!r}")
