"""Crash-safe file writes and safe checkpoint loading.

Every file a user keeps (checkpoints, exported models, metrics, manifests) is
written to a temporary file in the *same directory*, flushed and fsync'ed, then
moved over the target with ``os.replace`` (atomic on POSIX and Windows). A
crash or an exception half-way leaves the previous file untouched and no
partial file behind. Checkpoints are read only with ``weights_only=True``: a
file can hold tensors, numbers, strings and containers, never code.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from edgeslim.errors import CheckpointError

PathLike = str | os.PathLike[str]


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_mode(target: Path) -> int:
    """Permissions for the replacement: the old file's, else what ``open()`` would give.

    ``mkstemp`` creates files readable by the owner only; a saved model should
    get the same permissions as any other file the user creates.
    """
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it replaces ``path``.

    For writers that need a file name rather than a file object (e.g. the ONNX
    exporter). The temp file is fsync'ed before the rename; on an exception it
    is deleted and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _new_file_mode(target))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def atomic_write_with(path: PathLike, writer: Callable[[IO[bytes]], None]) -> Path:
    """Atomically write ``path`` by calling ``writer(binary_file)``; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        writer(handle)
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (parent directories are created)."""
    return atomic_write_with(path, lambda handle: handle.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as JSON (serialised first, so a bad object touches no file)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` atomically; an object that fails to serialise leaves ``path`` intact."""
    return atomic_write_with(path, lambda handle: torch.save(obj, handle))


#: How torch starts the message of a ``weights_only=True`` refusal.
_WEIGHTS_ONLY_FAILED = "Weights only load failed"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _refused_object(message: str) -> str:
    """What torch's weights-only unpickler refused, without its advice to load unsafely."""
    found = re.search(r"GLOBAL\s+([\w.]+)", message)
    if found:
        return f"it names the Python object {found.group(1)}"
    found = re.search(r"(Unsupported operand \d+|Unsupported class [\w.]+)", message)
    return found.group(1) if found else "it holds an object type outside the allowed set"


def _first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (ANSI codes removed), or its type name."""
    text = _ANSI.sub("", str(exc)).strip()
    line = text.splitlines()[0].strip() if text else ""
    # never repeat advice to switch the safety off, whatever the wording
    return type(exc).__name__ if not line or "weights_only" in line else line


def _load_error(file: Path, exc: Exception) -> CheckpointError:
    message = _ANSI.sub("", str(exc))
    if _WEIGHTS_ONLY_FAILED in message:
        return CheckpointError(
            f"checkpoint {file} holds Python objects that edgeslim refuses to load, because "
            f"unpickling them could run arbitrary code ({_refused_object(message)}). Re-create "
            "the file so it holds only tensors, numbers, strings and containers: re-run the step "
            "that wrote it, or save model.state_dict() instead of the model object"
        )
    return CheckpointError(
        f"cannot read checkpoint {file}: {_first_line(exc)}. The file is corrupt or truncated; "
        "re-create it (e.g. re-run training, which saves with edgeslim.io.atomic_torch_save)"
    )


def safe_torch_load(path: PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (default CPU).

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, or holds Python
            objects other than tensors and plain containers. The message never
            repeats torch's advice to retry with ``weights_only=False``.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(
            f"checkpoint {file} does not exist (or is not a file); check the path, "
            "or train/save the model first"
        )
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; all mean the same to a user
        if _WEIGHTS_ONLY_FAILED in str(exc):  # don't chain: torch's text says to load unsafely
            raise _load_error(file, exc) from None
        raise _load_error(file, exc) from exc
