"""MNIST from the four standard IDX files (gzipped or not).

Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied
to document recognition", Proc. IEEE 86(11), 1998. File format: the IDX
format described on the MNIST page — a big-endian header (magic number whose
third byte is the element type, 0x08 = uint8, and fourth byte the number of
dimensions, then one uint32 per dimension) followed by the raw array.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from edgeslim.data.base import DATASETS, ArrayDataset, check_split, missing_data_error
from edgeslim.errors import DataError

IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions (N, rows, cols)
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension (N)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Sub-folders of the data folder searched, in order ("" = the folder itself);
#: ``MNIST/raw`` is where torchvision keeps the same files.
MNIST_SUBDIRS = ("mnist", "MNIST/raw", "MNIST", "")


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"MNIST file {path} is corrupt or truncated ({type(exc).__name__}: {exc}). "
            "Replace it with a fresh copy of the canonical file (see the data README)"
        ) from exc


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one uint8 IDX file and check its magic number and length.

    Args:
        path: the ``.gz`` or uncompressed IDX file.
        magic: the expected magic number (``IMAGES_MAGIC`` or ``LABELS_MAGIC``).

    Returns:
        A uint8 array shaped by the header's dimensions.
    """
    raw = _read_bytes(path)
    found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if found != magic:
        shown = "none (file under 4 bytes)" if found is None else f"0x{found:08x}"
        raise DataError(
            f"MNIST file {path} has magic number {shown}, expected 0x{magic:08x}; "
            "it is not the IDX file its name says (images and labels swapped?)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"MNIST file {path} is {len(raw)} bytes, too short for its IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"MNIST file {path} holds {len(raw)} bytes but its header {dims} needs {expected}; "
            "the file is truncated or corrupt, replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, base: str) -> Path | None:
    for name in (base + ".gz", base):
        if (root / name).is_file():
            return root / name
    return None


def find_mnist_files(data_dir: Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of ``split``, searched in ``MNIST_SUBDIRS``."""
    names = MNIST_FILES[split]
    searched = [data_dir / sub if sub else data_dir for sub in MNIST_SUBDIRS]
    for folder in searched:
        images, labels = (_find(folder, n) for n in names)
        if images is not None and labels is not None:
            return images, labels
    raise missing_data_error(
        f"MNIST ({split} split)",
        [f"{n}.gz (or un-gzipped {n})" for n in names],
        searched,
    )


@DATASETS.register("mnist")
def load_mnist(data_dir: Path, split: str = "train") -> ArrayDataset:
    """Load one MNIST split as uint8 images ``[N, 1, 28, 28]`` and int64 labels."""
    check_split("mnist", split)
    images_path, labels_path = find_mnist_files(data_dir, split)
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DataError(f"MNIST file {images_path} holds images of {images.shape[1:]}, not 28x28")
    if len(images) != len(labels):
        raise DataError(
            f"MNIST {split}: {images_path.name} holds {len(images)} images but "
            f"{labels_path.name} holds {len(labels)} labels; the pair does not match"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"MNIST file {labels_path} has label {labels.max()}; labels must be 0-9")
    return ArrayDataset(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=[str(d) for d in range(10)],
        mean=MNIST_MEAN,
        std=MNIST_STD,
        name="mnist",
        augment="none",
    )
