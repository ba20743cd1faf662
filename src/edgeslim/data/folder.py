"""Class-per-folder image sets (``<split>/<class>/<file>``), as folders or tar archives.

The layout is the usual "image folder" one: the name of the folder holding an
image is its class. Images are decoded with Pillow straight from the folder or
archive (no extraction to disk) and are *not* resized: every image must have
the same size, or a ``DataError`` names the first one that differs. Resizing
silently would change what the model sees; do it once, offline, instead.
"""

from __future__ import annotations

import contextlib
import io
import re
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from edgeslim.data.base import DATASETS, ArrayDataset
from edgeslim.data.cache import Arrays, cached_arrays
from edgeslim.data.progress import track
from edgeslim.errors import DataError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff"}
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
#: Pillow modes decoded as one grey channel; everything else becomes RGB.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
#: Folder names that mark a split; used to tell a wrong split from an unsplit folder.
SPLIT_NAMES = frozenset({"train", "test", "val", "valid", "validation"})
#: Largest image decoded, in pixels (4096 x 4096). Pillow's own limit (~89M pixels,
#: only a warning below twice that) lets one forged header cost gigabytes; edgeslim
#: holds whole datasets in memory, so a larger image is refused before decoding.
MAX_IMAGE_PIXELS = 1 << 24
#: Largest image file read, in bytes: 8 bytes per pixel (16-bit RGBA, uncompressed)
#: at ``MAX_IMAGE_PIXELS`` plus room for metadata. A larger file cannot be a valid
#: image within the pixel limit, so it is refused before its bytes are read.
MAX_IMAGE_FILE_BYTES = 8 * MAX_IMAGE_PIXELS + (1 << 20)
#: Deflate's largest expansion (about 1032:1): what a .tar.gz member can really hold.
MAX_DEFLATE_RATIO = 1032


@dataclass(frozen=True)
class ImageEntry:
    """One image file: where it sits and how to read its bytes."""

    prefix: str  # folders above the class folder, "/"-joined ("train", "")
    cls: str
    name: str
    where: str  # for messages: "archive.tar.gz:train/cat/1.jpg" or a file path
    read: Callable[[], bytes]


def is_archive(path: Path) -> bool:
    """Whether ``path`` names a tar archive edgeslim reads (``.tar``, ``.tar.gz``, ``.tgz``)."""
    return path.name.endswith(ARCHIVE_SUFFIXES)


def _entry(parts: Sequence[str], where: str, read: Callable[[], bytes]) -> ImageEntry | None:
    """An entry for an image path split into parts, or None for non-images."""
    if not parts or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    if any(p.startswith(".") for p in parts):  # hidden files, macOS "._x.jpg" forks
        return None
    if len(parts) < 2:
        raise DataError(
            f"image {where} is not inside a class folder; the layout must be "
            "<class>/<image> (optionally under <split>/)"
        )
    return ImageEntry("/".join(parts[:-2]), parts[-2], parts[-1], where, read)


def _too_big(where: str, size: int) -> DataError:
    return DataError(
        f"image file {where} is {size:,} bytes, over edgeslim's limit of "
        f"{MAX_IMAGE_FILE_BYTES:,} bytes per image (MAX_IMAGE_FILE_BYTES, which fits a "
        f"{MAX_IMAGE_PIXELS:,}-pixel image); remove it or shrink it to thumbnail size"
    )


def _tar_reader(tf: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> Callable[[], bytes]:
    def read() -> bytes:
        f = tf.extractfile(member)
        assert f is not None  # only regular files are listed
        data = f.read(member.size)  # the size was checked against the archive's in _tar_entry
        if len(data) != member.size:
            raise DataError(f"archive member {where} is truncated; replace the archive")
        return data

    return read


def _file_reader(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:
            raise _too_big(str(path), size)
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image file {path} ({exc}); remove or replace it") from exc


def _member_parts(source: Path, member: tarfile.TarInfo) -> list[str]:
    """The member's path parts; refuses absolute paths and ``..`` (archives must be relative)."""
    parts = [p for p in PurePosixPath(member.name).parts if p not in (".", "")]
    if member.name.startswith(("/", "\\")) or ".." in parts:
        raise DataError(
            f"archive {source} has a member with an unsafe path {member.name!r} (absolute or "
            "with '..'); edgeslim refuses such archives. Re-create it with paths relative to "
            "its top folder, e.g. `tar -czf data.tar.gz -C DIR train test`"
        )
    return parts


def _tar_entry(
    source: Path, tf: tarfile.TarFile, m: tarfile.TarInfo, room: int
) -> ImageEntry | None:
    """The entry of one regular-file member, its path and declared size checked first."""
    entry = _entry(_member_parts(source, m), f"{source}:{m.name}", lambda: b"")
    if entry is None:
        return None
    if m.size > room:
        raise DataError(
            f"archive member {entry.where} declares {m.size:,} bytes, more than the "
            f"{source.stat().st_size:,}-byte archive can hold; the archive is corrupt or "
            "forged, replace it"
        )
    if m.size > MAX_IMAGE_FILE_BYTES:
        raise _too_big(entry.where, m.size)
    return replace(entry, read=_tar_reader(tf, m, entry.where))


def _archive_room(source: Path) -> int:
    """The most bytes one member of ``source`` can hold once decompressed."""
    size = source.stat().st_size
    return size if source.name.endswith(".tar") else size * MAX_DEFLATE_RATIO


@contextlib.contextmanager
def open_entries(source: Path) -> Iterator[list[ImageEntry]]:
    """The image entries of a folder or tar archive, in storage order.

    For an archive the entries read from the open archive, so use them inside
    the ``with`` block and in the listed order (gzip cannot seek backwards cheaply).
    Member paths and declared sizes are checked while listing; nothing is extracted.
    """
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
        entries = [
            _entry(p.relative_to(source).parts, str(p), partial(_file_reader, p)) for p in files
        ]
        yield [e for e in entries if e is not None]
        return
    try:
        with tarfile.open(source, "r:*") as tf:
            room = _archive_room(source)
            # iterate (not getmembers()) so each header is checked before tarfile seeks past it
            listed = [_tar_entry(source, tf, m, room) for m in tf if m.isfile()]
            yield [e for e in listed if e is not None]
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"archive {source} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            "replace it with a fresh copy"
        ) from exc


def select_split(entries: list[ImageEntry], split: str, source: Path) -> list[ImageEntry]:
    """Keep the entries of ``split`` when the source holds several split folders."""
    prefixes = sorted({e.prefix for e in entries})
    if len(prefixes) > 1:
        entries = [e for e in entries if split in e.prefix.split("/")]
        prefixes = sorted({e.prefix for e in entries})
        if len(prefixes) != 1:
            raise DataError(
                f"{source} holds images under several folders {prefixes or 'none'} and none "
                f"(or more than one) is split {split!r}; use <split>/<class>/<image>"
            )
    if not entries:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {source}")
    # the source's own name counts too: "test.tar.gz" or a folder named "test"
    parts = set(prefixes[0].split("/")) | {source.name.split(".")[0]}
    others = (parts & SPLIT_NAMES) - {split}
    if split not in parts and others:
        raise DataError(f"{source} holds split {sorted(others)}, not {split!r}")
    if split not in parts and split != "train":
        warnings.warn(
            f"{source} has no {split!r} split folder; using all its images as {split!r}",
            stacklevel=3,
        )
    return entries


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode one image to uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB).

    The size in the header is checked against ``MAX_IMAGE_PIXELS`` before any
    pixel is decoded, so a decompression bomb costs nothing.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise _too_many_pixels(where, f"{img.width}x{img.height}")
                mode = "L" if img.mode in GRAY_MODES else "RGB"
                # converting an image already in `mode` would only copy it (~30% of the time)
                return np.asarray(img if img.mode == mode else img.convert(mode), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's checks run first, at open
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise _too_many_pixels(where, size) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {where} ({exc}); remove or replace it") from exc


def _too_many_pixels(where: str, size: str) -> DataError:
    return DataError(
        f"image {where} is {size}, over edgeslim's limit of {MAX_IMAGE_PIXELS:,} pixels "
        "(edgeslim.data.folder.MAX_IMAGE_PIXELS); it was refused before decoding, since a "
        "forged header could cost gigabytes. Remove it or resize it to thumbnail size"
    )


def stack_images(arrays: list[np.ndarray], entries: list[ImageEntry]) -> np.ndarray:
    """Stack decoded images into uint8 ``[N, C, H, W]``; all must share one size."""
    size = arrays[0].shape[:2]
    for arr, entry in zip(arrays, entries):
        if arr.shape[:2] != size:
            raise DataError(
                f"image {entry.where} is {arr.shape[1]}x{arr.shape[0]} but {entries[0].where} is "
                f"{size[1]}x{size[0]}; edgeslim does not resize, so resize all images to one "
                "size before loading"
            )
    rgb = any(a.ndim == 3 for a in arrays)
    out = np.empty((len(arrays), 3 if rgb else 1, *size), dtype=np.uint8)
    for i, arr in enumerate(arrays):
        out[i] = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]
    return out


def decode_entries(entries: list[ImageEntry], description: str) -> np.ndarray:
    """Decode ``entries`` in the given (storage) order into ``[N, C, H, W]``."""
    arrays = [decode_image(e.read(), e.where) for e in track(entries, len(entries), description)]
    return stack_images(arrays, entries)


OrderKey = Callable[[ImageEntry], tuple]


def read_class_images(
    source: Path,
    split: str,
    *,
    classes: Sequence[str] | None = None,
    order: OrderKey | None = None,
    description: str = "decoding images",
) -> Arrays:
    """Decode a class-per-folder image set into ``images``, ``labels``, ``classes`` arrays.

    Args:
        source: a folder or tar archive.
        split: which split folder to read when the source holds several.
        classes: the class names in label order; default the sorted folder names.
        order: sort key of the returned images; default (class, file name).
        description: label of the progress bar.
    """
    with open_entries(source) as listed:
        entries = select_split(listed, split, source)
        images = decode_entries(entries, description)
    found = sorted({e.cls for e in entries})
    names = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataError(f"{source} has class folders {unknown} not among the classes {names}")
    index = {c: i for i, c in enumerate(names)}
    keys = [(order or _by_class_and_name)(e) for e in entries]
    perm = sorted(range(len(entries)), key=keys.__getitem__)
    labels = np.array([index[entries[i].cls] for i in perm], dtype=np.int64)
    return {"images": images[perm], "labels": labels, "classes": np.array(names, dtype=str)}


def _by_class_and_name(entry: ImageEntry) -> tuple:
    return (entry.cls, entry.name)


def channel_stats(
    images: np.ndarray, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 ``[N, C, H, W]`` images on the 0-1 scale."""
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].astype(np.float64) / 255.0
        total += x.sum(axis=(0, 2, 3))
        squares += np.square(x).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def resolve_folder_source(path: Path, split: str) -> Path:
    """Where ``split`` lives: ``path/<split>``, ``path/<split>.tar.gz``, else ``path``."""
    if not path.exists():
        raise DataError(
            f"image folder {path} does not exist; pass an existing folder or .tar/.tar.gz "
            "archive laid out as [<split>/]<class>/<image>"
        )
    if path.is_dir():
        candidates = [path / split] + [path / f"{split}{s}" for s in ARCHIVE_SUFFIXES]
        for candidate in candidates:
            if candidate.exists():
                return candidate
    elif not is_archive(path):
        raise DataError(f"{path} is neither a folder nor a .tar/.tar.gz/.tgz archive")
    return path


@DATASETS.register("folder")
def load_image_folder(path: Path, split: str = "train") -> ArrayDataset:
    """Load a class-per-folder image set (folder or tar archive) without resizing.

    Classes are the sorted folder names; mean/std are measured on the loaded
    images (``make_loaders`` gives the test split the training statistics).
    Decoded archives are cached (see ``edgeslim.data.cache``).
    """
    source = resolve_folder_source(Path(path).expanduser(), split)

    def build() -> Arrays:
        return read_class_images(source, split, description=f"decoding {source.name}")

    arrays = cached_arrays(source, f"folder-{split}", build) if is_archive(source) else build()
    images = torch.from_numpy(arrays["images"])
    mean, std = channel_stats(arrays["images"])
    return ArrayDataset(
        images=images,
        labels=torch.from_numpy(arrays["labels"]),
        classes=[str(c) for c in arrays["classes"]],
        mean=mean,
        std=std,
        name=source.name.split(".")[0] if is_archive(source) else source.name,
        augment="crop_flip" if images.shape[1] == 3 else "none",
    )
