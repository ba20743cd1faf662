"""MNIST, Fashion-MNIST and Kuzushiji-MNIST from their four standard IDX files (gzipped or not).

MNIST: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied
to document recognition", Proc. IEEE 86(11), 1998. File format: the IDX
format described on the MNIST page — a big-endian header (magic number whose
third byte is the element type, 0x08 = uint8, and fourth byte the number of
dimensions, then one uint32 per dimension) followed by the raw array.
Fashion-MNIST: H. Xiao, K. Rasul, R. Vollgraf, arXiv:1708.07747, 2017. Kuzushiji-MNIST:
T. Clanuwat et al., arXiv:1812.01718, 2018. Both ship the same four file names and format.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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


#: Deflate's largest possible expansion (RFC 1951 caps it near 1032:1): a gzipped
#: file can never decompress to more than this many bytes per compressed byte.
MAX_DEFLATE_RATIO = 1032
#: Bytes read per call, so a read allocates only as much as the file really holds.
READ_CHUNK = 1 << 20


def _corrupt(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"IDX file {path} is corrupt or truncated ({type(exc).__name__}: {exc}). "
        "Replace it with a fresh copy of the canonical file (see the data README)"
    )


def _read_up_to(f: IO[bytes], n: int) -> bytearray:
    """Up to ``n`` bytes from ``f``, in chunks: memory grows with the data, not with ``n``."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(n - len(buf), READ_CHUNK))
        if not chunk:
            break
        buf += chunk
    return buf


def _read_header(f: IO[bytes], path: Path, magic: int) -> tuple[int, ...]:
    """Check the magic number and return the dimensions the IDX header declares."""
    head = _read_up_to(f, 4)
    found = struct.unpack(">I", head)[0] if len(head) == 4 else None
    if found != magic:
        shown = "none (file under 4 bytes)" if found is None else f"0x{found:08x}"
        raise DataError(
            f"IDX file {path} has magic number {shown}, expected 0x{magic:08x}; "
            "it is not the IDX file its name says (images and labels swapped?)"
        )
    ndim = magic & 0xFF
    raw = _read_up_to(f, 4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(
            f"IDX file {path} is {4 + len(raw)} bytes, too short for its {4 + 4 * ndim}-byte "
            "IDX header; the file is truncated or corrupt, replace it"
        )
    return struct.unpack(f">{ndim}I", raw)


def _payload_bound(path: Path, f: IO[bytes], header: int) -> int:
    """The most payload bytes ``path`` can hold after its ``header``-byte header."""
    if path.suffix == ".gz":
        return path.stat().st_size * MAX_DEFLATE_RATIO
    return os.fstat(f.fileno()).st_size - header


def _size_error(path: Path, dims: tuple[int, ...], need: int, held: str) -> DataError:
    return DataError(
        f"IDX file {path} holds {held} bytes of pixels/labels but its IDX header declares "
        f"dimensions {dims}, which need {need:,} bytes; the file is truncated or corrupt "
        "(or its header is), replace it with a fresh copy"
    )


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one uint8 IDX file and check its magic number and length.

    The payload is read only after the header's dimensions are checked against
    what the file can hold, and never beyond what they declare, so a forged
    header (dimensions overflowing 64 bits, a gzip bomb) costs no memory.

    Args:
        path: the ``.gz`` or uncompressed IDX file.
        magic: the expected magic number (``IMAGES_MAGIC`` or ``LABELS_MAGIC``).

    Returns:
        A uint8 array shaped by the header's dimensions.
    """
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            dims = _read_header(f, path, magic)
            need = math.prod(dims)  # exact: a Python int cannot overflow
            bound = _payload_bound(path, f, 4 + 4 * len(dims))
            if need > bound:
                held = f"at most {bound:,}" if path.suffix == ".gz" else f"{bound:,}"
                raise _size_error(path, dims, need, held)
            payload = _read_up_to(f, need + 1)  # one extra byte reveals trailing data
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt(path, exc) from exc
    if len(payload) != need:
        raise _size_error(path, dims, need, f"{len(payload):,}" if len(payload) < need else "more")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _find(root: Path, base: str) -> Path | None:
    for name in (base + ".gz", base):
        if (root / name).is_file():
            return root / name
    return None


@dataclass(frozen=True)
class IdxFamily:
    """A 28x28 grey 10-class dataset shipped as MNIST's four IDX files (same names, same format).

    Fashion-MNIST (Xiao et al. 2017) and Kuzushiji-MNIST (Clanuwat et al. 2018) were made as
    drop-in replacements for MNIST, so one reader serves all three; only the folder searched,
    the normalisation and the class names differ.
    """

    name: str
    title: str
    subdirs: tuple[str, ...]  # searched in order under the data folder ("" = the folder itself)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def find(self, data_dir: Path, split: str) -> tuple[Path, Path]:
        """The (images, labels) files of ``split``, searched in ``subdirs``."""
        names = MNIST_FILES[split]
        searched = [data_dir / sub if sub else data_dir for sub in self.subdirs]
        for folder in searched:
            images, labels = (_find(folder, n) for n in names)
            if images is not None and labels is not None:
                return images, labels
        raise missing_data_error(
            f"{self.title} ({split} split)",
            [f"{n}.gz (or un-gzipped {n})" for n in names],
            searched,
        )

    def load(self, data_dir: Path, split: str = "train") -> ArrayDataset:
        """One split as uint8 images ``[N, 1, 28, 28]`` and int64 labels."""
        check_split(self.name, split)
        images_path, labels_path = self.find(data_dir, split)
        images = read_idx(images_path, IMAGES_MAGIC)
        labels = read_idx(labels_path, LABELS_MAGIC)
        if images.shape[1:] != (28, 28):
            raise DataError(f"{self.title} file {images_path} holds images of {images.shape[1:]}, "
                            "not 28x28")
        if len(images) != len(labels):
            raise DataError(
                f"{self.title} {split}: {images_path.name} holds {len(images)} images but "
                f"{labels_path.name} holds {len(labels)} labels; the pair does not match"
            )
        if labels.size and labels.max() >= len(self.classes):
            raise DataError(f"{self.title} file {labels_path} has label {labels.max()}; labels "
                            f"must be 0-{len(self.classes) - 1}")
        return ArrayDataset(
            images=torch.from_numpy(images.copy()).unsqueeze(1),
            labels=torch.from_numpy(labels.astype(np.int64)),
            classes=list(self.classes),
            mean=self.mean,
            std=self.std,
            name=self.name,
            augment="none",
        )


#: ``MNIST/raw`` (and the others' ``<Name>/raw``) is where torchvision keeps the same files. Only
#: MNIST is also read from the data folder itself: files there are never taken for another set.
MNIST = IdxFamily("mnist", "MNIST", MNIST_SUBDIRS, MNIST_MEAN, MNIST_STD,
                  tuple(str(d) for d in range(10)))
FASHION_MNIST = IdxFamily(
    "fashion-mnist", "Fashion-MNIST",
    ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
    (0.2860,), (0.3530,),
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
     "Ankle boot"))
KMNIST = IdxFamily(
    "kmnist", "Kuzushiji-MNIST", ("kmnist", "KMNIST/raw", "KMNIST"), (0.1918,), (0.3483,),
    ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"))
IDX_FAMILY = {d.name: d for d in (MNIST, FASHION_MNIST, KMNIST)}
for _family in IDX_FAMILY.values():
    DATASETS.register(_family.name)(_family.load)


def find_mnist_files(data_dir: Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of MNIST's ``split``, searched in ``MNIST_SUBDIRS``."""
    return MNIST.find(data_dir, split)


def load_mnist(data_dir: Path, split: str = "train") -> ArrayDataset:
    """Load one MNIST split as uint8 images ``[N, 1, 28, 28]`` and int64 labels."""
    return MNIST.load(data_dir, split)
