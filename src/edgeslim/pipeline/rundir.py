"""The run directory's safety rails: one run at a time, a trusted state, clear disk errors.

* :func:`locked` holds an OS lock (``fcntl.flock``) on ``RUN_DIR/.edgeslim.lock``
  for the whole run; a second run into the same directory fails at once. The
  kernel drops the lock when the process ends, however it ends (even SIGKILL).
* :func:`read_state` refuses a ``state.json`` that is not what edgeslim writes.
* :func:`verified_prefix` checks every artefact the state claims (the stage
  models against the SHA-256 recorded when they were written, the teacher,
  the ONNX files), so a resumed run never builds on a missing or changed file.
* :func:`clean_temp_files` removes what a killed ``io.atomic_path`` left behind.
* :func:`storage_errors` turns "disk full" / "read-only" into one clear error.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import RunDirError

STATE = "state.json"
LOCK = ".edgeslim.lock"
FINAL = "model.safetensors"
TEACHER = "teacher.safetensors"
#: Temp files of ``edgeslim.io.atomic_path``: ".<target>.<8 mkstemp chars><suffix>".
_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}(\.tmp|\.onnx)")
#: Artefacts a stage records (by name, in RUN_DIR) besides its model.
_ARTIFACT_FILES = ("onnx", "int8_onnx")

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]


def _make_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(f"cannot use {run_dir} as a run directory: it, or a folder above it, is a "
                          "file; choose another --out") from None


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Create ``run_dir`` and hold its run lock (non-blocking) until the block exits."""
    _make_dir(run_dir)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise RunDirError(
                    f"{run_dir} is in use: another edgeslim run (pid {holder}) holds its lock "
                    f"{run_dir / LOCK}. Wait for that run to finish, or choose another --out"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


_DISK_FULL = {errno.ENOSPC: "the disk is full", getattr(errno, "EDQUOT", -1): "the disk quota is used up"}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def _inside(path: Any, run_dir: Path) -> bool:
    if path is None:
        return True
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(run_dir))
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def storage_errors(run_dir: Path) -> Iterator[None]:
    """Re-raise "no space left" and "read-only" ``OSError``\\ s as one ``RunDirError``."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or run_dir
        if exc.errno in _DISK_FULL:
            raise RunDirError(
                f"cannot write {where}: {_DISK_FULL[exc.errno]}. Free some space on the disk holding "
                f"{run_dir} (or choose another --out), then run the same command again with --resume: "
                "finished stages are kept and no half-written file was left behind") from exc
        if exc.errno == errno.EROFS or (exc.errno in _NOT_WRITABLE and _inside(exc.filename, run_dir)):
            raise RunDirError(f"cannot write {where}: {exc.strerror}. Choose a --out on a writable disk "
                              "where you have write permission") from exc
        raise


def _fix(run_dir: Path) -> str:
    return (f"edgeslim cannot tell what the run holds, so it changed nothing. Move {run_dir} aside (or "
            f"delete {run_dir / STATE} to start the run over there), or choose another --out")


def _state_problem(state: Any) -> str | None:
    if not isinstance(state, dict) or not isinstance(state.get("recipe"), dict):
        return "it is not a mapping with a 'recipe'"
    entries = state.get("completed")
    if not isinstance(entries, list):
        return "'completed' is not a list"
    for i, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("stage"), str) and isinstance(e.get("model"), str)
                and isinstance(e.get("metrics"), dict)):
            return f"completed[{i}] lacks stage/model/metrics"
        if not _relative(e["model"]) or not isinstance(e.get("sha256", ""), str):
            return f"completed[{i}].model {e['model']!r} is not a file inside the run directory"
    teacher = state.get("teacher")
    if teacher is not None and not (isinstance(teacher, dict) and isinstance(teacher.get("sha256"), str)
                                    and isinstance(teacher.get("stage"), int)):
        return "'teacher' is not a {sha256, stage} record"
    return None


def _relative(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def read_state(run_dir: Path) -> dict:
    """``RUN_DIR/state.json``, checked; ``RunDirError`` (with the fix) when it is not valid."""
    path = run_dir / STATE
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} is corrupt (not JSON: {exc}). {_fix(run_dir)}") from None
    problem = _state_problem(state)
    if problem:
        raise RunDirError(f"{path} is not an edgeslim run state ({problem}). {_fix(run_dir)}")
    return state


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, sha256: str | None) -> str | None:
    """Why ``path`` is not the file recorded (``None``: it is)."""
    if not path.is_file():
        return f"{path} is missing"
    if sha256 and file_sha256(path) != sha256:
        return f"{path} changed since it was written (SHA-256 differs from state.json)"
    return None


def _entry_problem(run_dir: Path, entry: dict) -> str | None:
    problem = check_file(run_dir / entry["model"], entry.get("sha256"))
    for key in _ARTIFACT_FILES:
        name = entry.get("artifacts", {}).get(key)
        if problem is None and isinstance(name, str) and not (run_dir / Path(name).name).is_file():
            problem = f"{run_dir / Path(name).name} ({key}) is missing"
    return problem


def verified_prefix(run_dir: Path, state: dict) -> tuple[int, str | None]:
    """How many completed entries have all their artefacts on disk, and what is wrong with the next."""
    entries = state["completed"]
    teacher = state.get("teacher")
    for i, entry in enumerate(entries):
        problem = _entry_problem(run_dir, entry)
        if problem is None and teacher is not None and teacher["stage"] + 1 == i:
            problem = check_file(run_dir / TEACHER, teacher["sha256"])
        if problem is not None:
            return i, problem
    return len(entries), None


def clean_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files a killed ``atomic_path`` left in the run's folders (call under the lock)."""
    found = [p for p in run_dir.glob(".*") if p.is_file() and _TEMP.fullmatch(p.name)]
    for sub in ("plots", "stages"):
        found += [p for p in (run_dir / sub).rglob(".*") if p.is_file() and _TEMP.fullmatch(p.name)]
    for path in found:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if found:
        log.warning("removed %d half-written temp file(s) of an interrupted run in %s", len(found), run_dir)
    return found
