"""A disk cache of decoded arrays, keyed by the source file's identity.

Decoding 60,000 JPEGs takes tens of seconds; reading the same pixels back
from an uncompressed ``.npz`` takes well under a second. The key holds the
source's resolved path, size and modification time (plus Pillow's version,
since another JPEG decoder may give slightly different pixels), so a changed
archive misses the cache and is decoded again. Files are written to a
temporary name and moved into place with ``os.replace``: a crash never leaves
a half-written entry, and two processes filling the cache at once both end
with a valid file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL

CACHE_ENV = "EDGESLIM_CACHE"
#: Bump when the layout of cached arrays changes, to invalidate old entries.
CACHE_FORMAT = 1

Arrays = dict[str, np.ndarray]


def cache_dir() -> Path:
    """``$EDGESLIM_CACHE`` if set, else ``~/.cache/edgeslim``."""
    env = os.environ.get(CACHE_ENV, "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeslim"


def source_key(source: Path) -> str:
    """A short hash of what identifies ``source``'s content without reading it."""
    st = source.stat()
    ident = f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{PIL.__version__}|{CACHE_FORMAT}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _path_tag(source: Path) -> str:
    return hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]


def cache_path(source: Path, tag: str) -> Path:
    """Where the arrays decoded from ``source`` under ``tag`` are cached."""
    return cache_dir() / f"{tag}-{_path_tag(source)}-{source_key(source)}.npz"


def _load(path: Path) -> Arrays | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        warnings.warn(
            f"ignoring unreadable cache file {path} ({exc}); decoding again", stacklevel=3
        )
        return None


def _save(path: Path, arrays: Arrays) -> None:
    """Write ``arrays`` to ``path`` atomically and drop stale entries of the same source."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    prefix = path.name.rsplit("-", 1)[0] + "-"
    for old in path.parent.glob(prefix + "*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def cached_arrays(source: Path, tag: str, build: Callable[[], Arrays]) -> Arrays:
    """Arrays decoded from ``source``: from the cache, or ``build()`` and cached.

    Args:
        source: the file the arrays are decoded from (its size and mtime key the cache).
        tag: names the decoding (dataset and split), e.g. ``"cifar10-train"``.
        build: decodes ``source``; called only on a cache miss.
    """
    path = cache_path(source, tag)
    if path.is_file():
        arrays = _load(path)
        if arrays is not None:
            return arrays
    arrays = build()
    try:
        _save(path, arrays)
    except OSError as exc:  # a read-only home must not stop training
        warnings.warn(
            f"could not write the data cache {path} ({exc}); set {CACHE_ENV} to a writable "
            "folder to avoid decoding again next time",
            stacklevel=2,
        )
    return arrays
