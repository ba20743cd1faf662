"""Model-to-model transforms: lighten (student builder), fold (BN folding), merge (streamline merging)."""
from __future__ import annotations

from edgeslim._lazy import lazy_getattr
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


__getattr__ = lazy_getattr(__name__, _LAZY)
