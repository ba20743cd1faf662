"""Training checkpoints (``out_dir/last.pt``) and the RNG state that makes resume exact.

A checkpoint holds only tensors, numbers, strings and containers so it loads
with ``torch.load(weights_only=True)``; the numpy RNG state is stored as a
tensor plus numbers for the same reason.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeslim.errors import CheckpointError
from edgeslim.io import atomic_torch_save, safe_torch_load

FORMAT = "edgeslim.train.checkpoint/1"
REQUIRED_KEYS = ("format", "epoch", "step", "model", "optimizer", "scheduler", "rng", "history")


def capture_rng() -> dict[str, Any]:
    """Snapshot the torch (CPU and CUDA), numpy and Python ``random`` generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": [int(version), list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write a training checkpoint atomically (the old file survives a crash)."""
    atomic_torch_save({"format": FORMAT, **state}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and sanity-check a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, corrupt, or not an edgeslim
            training checkpoint; the message names the file and the fix.
    """
    state = safe_torch_load(path, map_location="cpu")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not an edgeslim training checkpoint (format {found!r}, expected "
            f"{FORMAT!r}); delete it, point out_dir to another folder, or set resume=False"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}; it is incomplete or from another version. "
            "Delete it or set resume=False to start over"
        )
    return state
