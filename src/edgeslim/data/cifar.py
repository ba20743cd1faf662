"""CIFAR-10, from the standard pickled batches or from class-per-folder JPEG archives.

A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
Technical Report, University of Toronto, 2009.

Two on-disk forms are read, tried in this order:

* ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``), the
  original lossless release. Those files are Python pickles, and unpickling
  can run arbitrary code, so they are read with ``RestrictedUnpickler``
  (``edgeslim.data.safepickle``), which can rebuild plain numeric numpy arrays
  and builtin containers and nothing else.
* ``train.tar.gz`` / ``test.tar.gz`` holding ``<split>/<class>/<index>.jpg``
  (the JPEG copy shipped with edgeslim's data). ``<index>`` is the image's
  position in the original order, so images are sorted by it; the decoded
  arrays are cached on disk (``edgeslim.data.cache``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edgeslim.data.base import DATASETS, ArrayDataset, check_split, missing_data_error
from edgeslim.data.cache import Arrays, cached_arrays
from edgeslim.data.folder import ARCHIVE_SUFFIXES, ImageEntry, read_class_images
from edgeslim.data.safepickle import RestrictedUnpickler
from edgeslim.errors import DataError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# The usual statistics of the lossless training set; the JPEG copy differs by
# < 0.002, and a fixed normalisation keeps models portable between the copies.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_COUNTS = {"train": 50_000, "test": 10_000}
#: Sub-folders of the data folder searched, in order ("" = the folder itself).
CIFAR10_SUBDIRS = ("cifar10", "cifar-10", "CIFAR10", "")
BATCHES_DIR = "cifar-10-batches-py"
BATCH_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

# ---------------------------------------------------------------- pickled batches


def _labels_error(path: Path, problem: str) -> DataError:
    return DataError(
        f"CIFAR batch {path}: {problem}; the file is corrupt or not a CIFAR-10 batch, replace it"
    )


def _describe(value: Any) -> str:
    """``'dict'``, or ``'a list holding str'`` for a list with non-int items."""
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value if type(v) is not int})
        return f"a {type(value).__name__} holding {', '.join(kinds)}"
    return type(value).__name__


def _batch_labels(labels: Any, n: int, path: Path) -> np.ndarray:
    """The labels of a batch as int64, range-checked before numpy converts them."""
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    elif isinstance(labels, (list, tuple)) and all(type(v) is int for v in labels):
        lo, hi = (min(labels), max(labels)) if labels else (0, 0)  # 2**70 is fine here
    else:
        raise _labels_error(path, f"'labels' must be a list of ints 0-9, got {_describe(labels)}")
    if not 0 <= lo <= hi <= 9:
        raise _labels_error(path, f"labels must be 0-9, found {lo if lo < 0 else hi}")
    if len(labels) != n:
        raise _labels_error(path, f"{n} images but {len(labels)} labels")
    return np.asarray(labels, dtype=np.int64)


def load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch file into uint8 images ``[n, 3, 32, 32]`` and int64 labels."""
    try:
        # latin1 lets Python 3 read the Python 2 pickles of the original release
        batch = RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (Exception, MemoryError) as exc:  # a hostile pickle can provoke any of them
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else (
            f"{type(exc).__name__} (it declares an object larger than memory)")
        raise DataError(
            f"CIFAR batch {path} cannot be read safely: {reason}. Replace it with a fresh copy "
            "of the original cifar-10-batches-py release"
        ) from exc
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR batch {path} holds a {type(batch).__name__}, expected a dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        is_array = isinstance(data, np.ndarray)
        found = f"{data.dtype} {data.shape}" if is_array else type(data).__name__
        raise DataError(
            f"CIFAR batch {path}: 'data' must be a uint8 array [n, 3072], got {found}; the file "
            "is corrupt or not a CIFAR-10 batch, replace it"
        )
    labels = _batch_labels(batch.get("labels", []), len(data), path)
    return np.ascontiguousarray(data.view(np.ndarray)).reshape(-1, 3, 32, 32), labels


def read_batches(folder: Path, split: str) -> Arrays:
    """Concatenate the batch files of ``split`` found in ``folder``."""
    parts = [load_batch(folder / name) for name in BATCH_FILES[split]]
    return {
        "images": np.concatenate([p[0] for p in parts]),
        "labels": np.concatenate([p[1] for p in parts]),
    }


# ---------------------------------------------------------------- JPEG archives


def _by_index(entry: ImageEntry) -> tuple:
    """Sort key: the file's numeric index (its position in the original order)."""
    stem = entry.name.rsplit(".", 1)[0]
    if not stem.isdigit():
        raise DataError(f"CIFAR image {entry.where} is not named <index>.jpg")
    return (int(stem), entry.cls)


def read_cifar_archive(archive: Path, split: str) -> Arrays:
    """Decode ``<split>/<class>/<index>.jpg`` from a tar archive, ordered by index.

    Labels follow ``CIFAR10_CLASSES``; the result is cached on disk, keyed by
    the archive's path, size and mtime, so the JPEGs are decoded only once.
    """

    def build() -> Arrays:
        return read_class_images(
            archive,
            split,
            classes=CIFAR10_CLASSES,
            order=_by_index,
            description=f"decoding CIFAR-10 {split} (once; cached)",
        )

    return cached_arrays(archive, f"cifar10-{split}", build)


# ---------------------------------------------------------------- finding the files


class CifarSource(Protocol):
    """One on-disk form of CIFAR-10."""

    def expected(self, split: str) -> list[str]: ...

    def find(self, folder: Path, split: str) -> Path | None: ...

    def read(self, path: Path, split: str) -> Arrays: ...

    def files(self, path: Path, split: str) -> list[Path]: ...


class _Batches:
    """The original ``cifar-10-batches-py`` folder."""

    def expected(self, split: str) -> list[str]:
        return [f"{BATCHES_DIR}/{n}" for n in BATCH_FILES[split]]

    def find(self, folder: Path, split: str) -> Path | None:
        for d in (folder / BATCHES_DIR, folder):
            if all((d / n).is_file() for n in BATCH_FILES[split]):
                return d
        return None

    def read(self, path: Path, split: str) -> Arrays:
        return read_batches(path, split)

    def files(self, path: Path, split: str) -> list[Path]:
        return [path / n for n in BATCH_FILES[split]]


class _JpegArchive:
    """``<split>.tar.gz`` archives of class-per-folder JPEGs."""

    def expected(self, split: str) -> list[str]:
        return [f"{split}.tar.gz (JPEGs as {split}/<class>/<index>.jpg)"]

    def find(self, folder: Path, split: str) -> Path | None:
        hits = [folder / f"{split}{s}" for s in ARCHIVE_SUFFIXES]
        return next((p for p in hits if p.is_file()), None)

    def read(self, path: Path, split: str) -> Arrays:
        return read_cifar_archive(path, split)

    def files(self, path: Path, split: str) -> list[Path]:
        return [path]


#: Forms tried in order: the lossless batches first.
CIFAR10_SOURCES: tuple[CifarSource, ...] = (_Batches(), _JpegArchive())


def find_cifar10(data_dir: Path, split: str) -> tuple[CifarSource, Path, Path]:
    """``(form, path, folder)`` of ``split``: the first form found, searched in ``CIFAR10_SUBDIRS``.

    ``path`` is what ``form.read`` takes (the batches folder or the archive);
    ``folder`` is the searched folder it was found in.
    """
    folders = [data_dir / sub if sub else data_dir for sub in CIFAR10_SUBDIRS]
    for folder in folders:
        for source in CIFAR10_SOURCES:
            path = source.find(folder, split)
            if path is not None:
                return source, path, folder
    expected = [f for source in CIFAR10_SOURCES for f in source.expected(split)]
    raise missing_data_error(
        f"CIFAR-10 ({split} split)", expected, folders, note="Either form is enough."
    )


@DATASETS.register("cifar10")
def load_cifar10(data_dir: Path, split: str = "train") -> ArrayDataset:
    """Load one CIFAR-10 split as uint8 images ``[N, 3, 32, 32]`` and int64 labels."""
    check_split("cifar10", split)
    source, path, _ = find_cifar10(data_dir, split)
    return _to_dataset(source.read(path, split), path, split)


def _to_dataset(arrays: Arrays, path: Path, split: str) -> ArrayDataset:
    images, labels = arrays["images"], arrays["labels"]
    if images.shape[1:] != (3, 32, 32) or len(images) != CIFAR10_COUNTS[split]:
        raise DataError(
            f"CIFAR-10 {split} from {path}: {len(images)} images of {images.shape[1:]}, expected "
            f"{CIFAR10_COUNTS[split]} of (3, 32, 32); the files are incomplete, replace them"
        )
    return ArrayDataset(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(CIFAR10_CLASSES),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        name="cifar10",
        augment="crop_flip",
    )
