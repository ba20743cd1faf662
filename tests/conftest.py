"""Shared fixtures: where the real data is, a small MNIST subset, and a private cache.

Tests that need the real datasets take the ``data_dir`` fixture; it reads
``$EDGESLIM_DATA`` and skips the test (with the reason) when that is unset, so
the suite passes on a machine without the data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

MNIST_SMALL_SIZE = 512


@pytest.fixture(autouse=True, scope="session")
def _one_thread_session() -> None:
    """The same for fixtures of wider scope (a module's finished run): results compared
    bitwise (resume == uninterrupted) must come from runs with the same thread count, since
    float sums in another order differ in the last bits."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread per test: pytest-xdist runs one worker per core, and a worker
    using several OpenMP threads oversubscribes the CPU (tiny convs get 10-50x slower)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding the real datasets (``$EDGESLIM_DATA``), or skip."""
    env = os.environ.get("EDGESLIM_DATA", "")
    if not env:
        pytest.skip("needs real data: set EDGESLIM_DATA to the folder holding mnist/ and cifar10/")
    path = Path(env).expanduser()
    if not path.is_dir():
        pytest.skip(f"needs real data: EDGESLIM_DATA={env} is not an existing folder")
    return path


@pytest.fixture(scope="session")
def mnist_small(data_dir: Path):
    """512 MNIST training images (seeded subset) as an ``ArrayDataset``."""
    from edgeslim.data import DataError, load_dataset

    try:
        full = load_dataset("mnist", data_dir, "train")
    except DataError as exc:
        pytest.skip(f"MNIST not usable under EDGESLIM_DATA={data_dir}: {exc}")
    return full.subset(MNIST_SMALL_SIZE, seed=0)


@pytest.fixture(scope="session")
def tmp_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``$EDGESLIM_CACHE`` at a fresh folder for the rest of the session.

    Tests that decode archives use it so they neither read a stale user cache
    nor fill the user's ``~/.cache/edgeslim``.
    """
    path = tmp_path_factory.mktemp("edgeslim-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESLIM_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny class-per-folder image set (``tinydata.make_image_folder``), one per test module."""
    from tinydata import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("tiny-data"))
