"""Datasets (MNIST, Fashion-MNIST, Kuzushiji-MNIST, CIFAR-10, CIFAR-10 as 28x28 grey
(``cifar10-gray28``), class-per-folder images) and fast in-memory loaders.

Data is found through a ``data_dir`` argument, the CLI's ``--data-dir`` flag,
or ``$EDGESLIM_DATA``; nothing is ever downloaded. ``verify_dataset_checksums``
checks the files against a ``SHA256SUMS`` next to them.

Example:
    >>> from edgeslim.data import make_loaders
    >>> train, test = make_loaders("cifar10", "/data", batch_size=256, device="cuda")
    >>> for x, y in train: ...
"""

from __future__ import annotations

# Importing the dataset modules registers them in DATASETS.
from edgeslim.data import cifar as _cifar  # noqa: F401
from edgeslim.data import derived as _derived  # noqa: F401
from edgeslim.data import mnist as _mnist  # noqa: F401
from edgeslim.data.augment import AUGMENTATIONS
from edgeslim.data.base import DATASETS, ArrayDataset, resolve_data_dir
from edgeslim.data.cache import cache_dir
from edgeslim.data.checksums import ChecksumReport, sha256_file, verify_dataset_checksums
from edgeslim.data.folder import load_image_folder
from edgeslim.data.loader import TensorLoader, as_loader, load_dataset, make_loaders, with_augment
from edgeslim.errors import DataError

__all__ = [
    "AUGMENTATIONS",
    "ArrayDataset",
    "ChecksumReport",
    "DATASETS",
    "DataError",
    "TensorLoader",
    "as_loader",
    "cache_dir",
    "load_dataset",
    "load_image_folder",
    "make_loaders",
    "resolve_data_dir",
    "sha256_file",
    "verify_dataset_checksums",
    "with_augment",
]
