"""The in-memory dataset type, the dataset registry, and where data lives.

Every dataset edgeslim knows is small enough (MNIST, CIFAR-10, user image
folders of thumbnails) to be held as one uint8 tensor, so a dataset is just
``images [N, C, H, W]`` + ``labels [N]`` + the statistics needed to normalise.
Keeping pixels as uint8 until the batch is formed costs a quarter of the
memory of float32 and lets a loader move the whole set to the GPU once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from edgeslim.errors import DataError
from edgeslim.registry import Registry

#: The environment variable naming the folder that holds the datasets.
DATA_ENV = "EDGESLIM_DATA"

#: A dataset loader: ``(data_dir, split) -> ArrayDataset``.
DatasetLoader = Callable[[Path, str], "ArrayDataset"]

#: Dataset loaders by name (``mnist``, ``cifar10``, ``folder``).
DATASETS: Registry[DatasetLoader] = Registry("dataset")


@dataclass(eq=False)
class ArrayDataset(Dataset):
    """A labelled image set held in memory as tensors.

    Attributes:
        images: uint8 tensor ``[N, C, H, W]`` (0-255).
        labels: int64 tensor ``[N]`` with values in ``[0, len(classes))``.
        classes: class names; ``labels`` index into it.
        mean: per-channel mean on the 0-1 scale, used to normalise.
        std: per-channel standard deviation on the 0-1 scale.
        name: a short name for messages and reports (``"mnist"``).
        augment: name of the training augmentation policy that suits this
            data (see ``edgeslim.data.augment.AUGMENTATIONS``); ``"none"`` for
            digits, which are not flip-invariant. Used when a loader is asked
            for ``augment=True`` and as ``make_loaders``' default.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = "dataset"
    augment: str = field(default="none")

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"dataset {self.name!r}: images must be a uint8 tensor [N, C, H, W], got "
                f"{self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise DataError(
                f"dataset {self.name!r}: {len(self.images)} images but labels of shape "
                f"{tuple(self.labels.shape)}; expected one int label per image"
            )
        self.labels = self.labels.to(torch.int64)
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(
                f"dataset {self.name!r}: mean/std have {len(self.mean)}/{len(self.std)} values "
                f"for {channels}-channel images; give one value per channel"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32).div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (x - mean) / std, int(self.labels[index])

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(C, H, W)``."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    def subset(self, n: int, seed: int = 0) -> ArrayDataset:
        """A random subset of ``n`` images, kept in their original order.

        Args:
            n: how many images to keep; ``n >= len(self)`` returns ``self``.
            seed: seed of the random choice, so a subset is reproducible.
        """
        if n <= 0:
            raise DataError(f"dataset {self.name!r}: subset size must be positive, got {n}")
        if n >= len(self):
            return self
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(self), generator=gen)[:n].sort().values
        return replace(self, images=self.images[keep], labels=self.labels[keep])


def resolve_data_dir(path: str | Path | None, *, allow_file: bool = False) -> Path:
    """The data folder: ``path`` if given, else ``$EDGESLIM_DATA``.

    Args:
        path: the folder, or ``None``/``""`` for ``$EDGESLIM_DATA``.
        allow_file: accept a file too (the ``folder`` dataset takes a tar archive).

    Raises:
        DataError: neither is set, the folder does not exist, or it is a file.
    """
    if path is None or str(path) == "":
        env = os.environ.get(DATA_ENV, "")
        if not env:
            raise DataError(
                "no data folder given. Pass --data-dir DIR (Python: data_dir=DIR) or set "
                f"{DATA_ENV}=DIR, where DIR holds e.g. mnist/ and cifar10/"
            )
        path, origin = env, f"${DATA_ENV}"
    else:
        origin = "data_dir"
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DataError(
            f"data folder {resolved} (from {origin}) does not exist. Point --data-dir or "
            f"{DATA_ENV} at the folder that holds the datasets"
        )
    if not allow_file and not resolved.is_dir():
        raise DataError(
            f"data folder {resolved} (from {origin}) is a file, not a folder. Point "
            f"--data-dir or {DATA_ENV} at the folder that holds the datasets (e.g. mnist/, "
            f"cifar10/), perhaps {resolved.parent}"
        )
    return resolved


def missing_data_error(
    what: str, expected: Sequence[str], searched: Iterable[Path], note: str = ""
) -> DataError:
    """A ``DataError`` saying which files were expected, where we looked, and the fix."""
    looked = "\n".join(f"  - {p}" for p in searched)
    files = "\n".join(f"  - {f}" for f in expected)
    extra = f"\n{note}" if note else ""
    return DataError(
        f"{what} not found.\nExpected files:\n{files}\nLooked in:\n{looked}\n"
        f"Fix: pass --data-dir DIR (Python: data_dir=DIR) or set {DATA_ENV}=DIR to a folder "
        f"holding these files (directly or in the sub-folder shown above).{extra}"
    )


def check_split(name: str, split: str, valid: Sequence[str] = ("train", "test")) -> None:
    """Raise ``DataError`` unless ``split`` is one of ``valid``."""
    if split not in valid:
        raise DataError(f"dataset {name!r} has no split {split!r}; use one of {list(valid)}")
