"""Feature taps: forward hooks that fill a dict ``{module path: output}``.

The design follows torchdistill (Matsubara, *torchdistill: A Modular,
Configuration-Driven Framework for Knowledge Distillation*, 2021): a loss never
reaches into a model's internals; it reads named intermediate outputs from a
dict that forward hooks filled during the ordinary forward pass. Models need no
changes, and the same loss works on any architecture.

The mechanism lives in :mod:`edgeslim._core` (pruning criteria and BN folding tap
models with it too); this module is its name in the distillation package.
"""
from __future__ import annotations

from edgeslim._core import FeatureTaps, resolve_module

__all__ = ["FeatureTaps", "resolve_module"]
