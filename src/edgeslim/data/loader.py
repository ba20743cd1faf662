"""Loading datasets by name and iterating them in batches, fast.

``TensorLoader`` is the in-memory fast path: a small dataset is moved to the
device once as uint8, and every batch is sliced, augmented, converted and
normalised there with a few tensor operations. For MNIST/CIFAR-sized data
this is far faster than a ``DataLoader`` that collates single images in
worker processes, and, with all random draws from a generator seeded from
(seed, epoch), every run is exactly reproducible.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import replace
from functools import singledispatch
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgeslim.data.augment import AUGMENTATIONS
from edgeslim.data.base import DATA_ENV, DATASETS, ArrayDataset, resolve_data_dir
from edgeslim.data.folder import load_image_folder
from edgeslim.errors import ConfigError, DataError
from edgeslim.registry import RegistryError

Batch = tuple[torch.Tensor, torch.Tensor]


def _folder_path(name: str, data_dir: str | Path | None) -> Path | None:
    """``name`` as an existing path (absolute, relative to cwd, or inside the data folder)."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    try:
        root = resolve_data_dir(data_dir)
    except DataError:
        return None
    return root / path if (root / path).exists() else None


def load_dataset(
    name: str, data_dir: str | Path | None = None, split: str = "train"
) -> ArrayDataset:
    """Load one split of a dataset into memory.

    Args:
        name: a registered dataset (``mnist``, ``fashion-mnist``, ``kmnist``, ``cifar10``,
            ``cifar10-gray28``, ``folder``) or a path to a class-per-folder image folder / tar
            archive. For ``folder``, ``data_dir`` is the image folder itself.
        data_dir: the data folder; default ``$EDGESLIM_DATA``.
        split: ``"train"`` or ``"test"``.

    Raises:
        DataError: unknown name, or the files are missing or corrupt.
    """
    try:
        loader = DATASETS.get(name)
    except RegistryError as exc:
        path = _folder_path(name, data_dir)
        if path is None:
            raise DataError(
                f"{exc}, or a path to an image folder / .tar(.gz) archive. Relative paths are "
                f"looked up in the current folder and in the data folder (--data-dir / {DATA_ENV})"
            ) from None
        return load_image_folder(path, split)
    # the folder dataset's data_dir is the image folder itself, which may be a tar archive
    return loader(resolve_data_dir(data_dir, allow_file=name == "folder"), split)


def _epoch_seed(seed: int, epoch: int) -> int:
    """Mix (seed, epoch) into one well-spread generator seed."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


class TensorLoader:
    """Batches of an ``ArrayDataset`` kept on ``device``; augmentation on whole batches.

    Iterating yields ``(x, y)``: ``x`` float32 normalised ``[B, C, H, W]`` and
    ``y`` int64 ``[B]``, both on ``device``. Each pass uses the epoch set by
    ``set_epoch`` and then advances it by one, so a loop that never calls
    ``set_epoch`` still gets a new (reproducible) shuffle every epoch.

    Args:
        dataset: the images and labels (moved to ``device`` once).
        batch_size: images per batch.
        shuffle: reshuffle every epoch.
        augment: ``False``/``"none"``; ``True`` for the dataset's own policy
            (``dataset.augment``: crop + flip for CIFAR, none for MNIST); or a
            policy name from ``AUGMENTATIONS`` (``"crop_flip"``, ``"crop"``, ``"flip"``).
        device: where batches are made.
        seed: with the epoch, seeds shuffling and augmentation.
        drop_last: skip the last incomplete batch.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int = 128,
        shuffle: bool = False,
        augment: bool | str = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(dataset, ArrayDataset):
            raise TypeError(
                f"TensorLoader needs an ArrayDataset, got {type(dataset).__name__}; "
                "use edgeslim.data.as_loader for other data"
            )
        if batch_size <= 0:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.device = torch.device(device)
        self._set_augment(augment)
        self._images = dataset.images.to(self.device)
        self._labels = dataset.labels.to(self.device)
        stats = torch.tensor([dataset.mean, dataset.std], dtype=torch.float32, device=self.device)
        self._mean, self._std = stats.view(2, 1, -1, 1, 1).unbind(0)

    @staticmethod
    def _policy(augment: bool | str, dataset: ArrayDataset) -> str:
        """The policy name: ``True`` means the dataset's own, ``False`` means none."""
        if isinstance(augment, bool):
            return dataset.augment if augment else "none"
        return augment

    def _set_augment(self, augment: bool | str) -> None:
        self.augment = self._policy(augment, self.dataset)
        try:
            self._augment = AUGMENTATIONS.get(self.augment)()
        except RegistryError as exc:  # the message lists the valid names
            raise ConfigError(f"augment: {exc}") from None

    def with_augment(self, augment: bool | str) -> TensorLoader:
        """The same loader (data, batches, seed, epoch; the tensors are shared, not copied)
        with another augmentation policy (``augment`` as in the constructor)."""
        other = copy.copy(self)
        other._set_augment(augment)
        return other

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass (shuffle order and augmentation draws)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        n = len(self.dataset)
        order = torch.randperm(n, generator=gen).to(self.device) if self.shuffle else None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                x, y = self._images[lo:hi], self._labels[lo:hi]
            else:
                idx = order[lo:hi]
                x, y = self._images[idx], self._labels[idx]
            x = self._augment(x, gen).to(torch.float32).div_(255.0)
            yield (x - self._mean) / self._std, y

    def __repr__(self) -> str:
        ds = self.dataset
        return (
            f"TensorLoader({ds.name}, n={len(ds)}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, augment={self.augment!r}, device={self.device})"
        )


def with_augment(loader: Any, augment: bool | str | None) -> Any:
    """``loader`` with augmentation ``augment`` (None: ``loader`` unchanged).

    Only edgeslim's :class:`TensorLoader` (what ``make_loaders`` and recipes build) has a
    policy to change; any other loader with ``augment`` set raises ``ConfigError``.
    """
    if augment is None:
        return loader
    if not isinstance(loader, TensorLoader):
        raise ConfigError(
            f"augment={augment!r} needs edgeslim's TensorLoader (edgeslim.data.make_loaders), got "
            f"{type(loader).__name__}; augment your own data in its dataset instead, or leave "
            "augment unset")
    return loader.with_augment(augment)


def make_loaders(
    name: str,
    data_dir: str | Path | None = None,
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    augment: bool | str | None = None,
) -> tuple[TensorLoader, TensorLoader]:
    """Train and test loaders for a dataset (see ``load_dataset`` for ``name``).

    The train loader shuffles and augments (``augment=None``: the dataset's
    default policy); the test loader does neither and is normalised with the
    training statistics. ``*_subset`` keep a random, seeded subset.
    """
    train = load_dataset(name, data_dir, "train")
    test = load_dataset(name, data_dir, "test")
    test = replace(test, mean=train.mean, std=train.std)
    if train_subset is not None:
        train = train.subset(train_subset, seed)
    if test_subset is not None:
        test = test.subset(test_subset, seed)
    policy = train.augment if augment is None else augment
    return (
        TensorLoader(train, batch_size, shuffle=True, augment=policy, device=device, seed=seed),
        TensorLoader(test, batch_size, shuffle=False, augment=False, device=device, seed=seed),
    )


class PairLoader:
    """Batches of a pair of tensors ``(X, Y)`` sliced along the first dimension, in order."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> None:
        if len(x) != len(y):
            raise DataError(f"as_loader: X has {len(x)} rows but Y has {len(y)}; they must match")
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for lo in range(0, len(self.x), self.batch_size):
            yield self.x[lo : lo + self.batch_size], self.y[lo : lo + self.batch_size]


@singledispatch
def as_loader(data: Any, batch_size: int = 128) -> Iterable[Batch]:
    """Whatever holds data -> an iterable of ``(x, y)`` batches.

    Accepts a ``TensorLoader`` or ``DataLoader`` (returned as is), an
    ``ArrayDataset`` (wrapped in a ``TensorLoader``), any other ``Dataset``
    (wrapped in an in-order ``DataLoader``), a tuple ``(X, Y)`` of tensors, or
    any iterable of ``(x, y)`` batches (returned as is).
    """
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        return data
    raise TypeError(
        f"as_loader cannot batch a {type(data).__name__}; pass a TensorLoader, DataLoader, "
        "Dataset, (X, Y) tensor pair, or an iterable of (x, y) batches"
    )


@as_loader.register
def _tensor_loader(data: TensorLoader, batch_size: int = 128) -> Iterable[Batch]:
    return data


@as_loader.register
def _data_loader(data: DataLoader, batch_size: int = 128) -> Iterable[Batch]:
    return data


@as_loader.register
def _array_dataset(data: ArrayDataset, batch_size: int = 128) -> Iterable[Batch]:
    return TensorLoader(data, batch_size)


@as_loader.register
def _dataset(data: Dataset, batch_size: int = 128) -> Iterable[Batch]:
    return DataLoader(data, batch_size=batch_size, shuffle=False)


@as_loader.register
def _tensor_pair(data: tuple, batch_size: int = 128) -> Iterable[Batch]:
    if len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return PairLoader(data[0], data[1], batch_size)
    return data  # a tuple of (x, y) batches
