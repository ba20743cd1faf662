"""Verifying dataset files against ``SHA256SUMS`` files, as ``sha256sum -c`` would.

A ``SHA256SUMS`` file lists one ``<sha256 hex>  <path>`` per line (the format
``sha256sum`` writes; a ``*`` before the path marks binary mode), paths being
relative to the folder holding it. ``verify_dataset_checksums`` finds every
``SHA256SUMS`` between the data folder and the folder a dataset's files live
in (both included), and checks the entries that belong to that dataset: its
own files, and, when it has a folder of its own (``mnist/``, ``cifar10/``, an
image folder), everything listed under that folder. A listed file that is
missing or whose hash differs fails the check with a ``DataError``. Files are
hashed in chunks, so memory use does not grow with their size.

Example:
    >>> from edgeslim.data import verify_dataset_checksums
    >>> report = verify_dataset_checksums("mnist", "/data")
    >>> report.ok  # the files whose hash matched
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from edgeslim.data.base import DATA_ENV, resolve_data_dir
from edgeslim.errors import DataError

SUMS_NAME = "SHA256SUMS"
#: Bytes hashed per read.
HASH_CHUNK = 1 << 20
_LINE = re.compile(r"^(\\?)([0-9a-fA-F]{64}) [ *](.+)$")


def sha256_file(path: Path, chunk: int = HASH_CHUNK) -> str:
    """The hex sha256 of ``path``'s content, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _entry_name(raw: str, escaped: bool, sums: Path, lineno: int) -> str:
    """The listed path, normalised (``./a`` -> ``a``); absolute or ``..`` paths are refused."""
    if escaped:  # sha256sum escapes "\\" and newlines in names, and marks the line with "\"
        raw = raw.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")
    parts = [p for p in PurePosixPath(raw).parts if p not in (".", "")]
    if raw.startswith("/") or ".." in parts or not parts:
        raise DataError(
            f"{sums} line {lineno} lists {raw!r}, which is not a path inside {sums.parent}; "
            "a SHA256SUMS may only list files under its own folder. Fix or regenerate it "
            f"(cd {sums.parent} && sha256sum FILES > {SUMS_NAME})"
        )
    return "/".join(parts)


def read_sums(sums: Path) -> dict[str, str]:
    """``{relative path: lowercase hex sha256}`` from a ``SHA256SUMS`` file.

    Raises:
        DataError: a line is not ``<64 hex digits>  <path>``, or a path leaves the folder.
    """
    try:
        text = sums.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {sums} ({exc}); fix or delete it") from exc
    entries: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line.rstrip("\r"))
        if match is None:
            raise DataError(
                f"{sums} line {lineno} is not '<sha256 hex>  <path>': {line[:80]!r}. Fix or "
                f"regenerate it (cd {sums.parent} && sha256sum FILES > {SUMS_NAME})"
            )
        escaped, digest, raw = match.groups()
        entries[_entry_name(raw, bool(escaped), sums, lineno)] = digest.lower()
    return entries


@dataclass
class ChecksumReport:
    """What ``verify_dataset_checksums`` found for one dataset.

    Attributes:
        dataset: the dataset checked.
        sums_files: the ``SHA256SUMS`` files consulted (empty: nothing to check).
        ok: listed files whose hash matched.
        mismatched: ``(file, expected, actual)`` for each listed file that differs.
        missing: listed files that do not exist.
        unlisted: files the dataset reads that no ``SHA256SUMS`` lists (not an error).
    """

    dataset: str
    sums_files: list[Path] = field(default_factory=list)
    ok: list[Path] = field(default_factory=list)
    mismatched: list[tuple[Path, str, str]] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)
    unlisted: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No listed file differs or is missing."""
        return not self.mismatched and not self.missing

    def raise_if_failed(self) -> None:
        """Raise ``DataError`` naming every differing and missing file."""
        if self.passed:
            return
        lines = [f"  - {p}: expected sha256 {e}, got {a}" for p, e, a in self.mismatched]
        lines += [f"  - {p}: listed but missing" for p in self.missing]
        sums = ", ".join(str(s) for s in self.sums_files)
        raise DataError(
            f"dataset {self.dataset!r}: {len(lines)} file(s) do not match {sums}:\n"
            + "\n".join(lines)
            + "\nFix: replace these files with fresh copies of the originals; if you changed "
            f"them on purpose, regenerate {SUMS_NAME} with sha256sum"
        )


# ---------------------------------------------------------------- where a dataset's files are


@dataclass(frozen=True)
class _Location:
    """Where one split of a dataset lives."""

    folder: Path | None  # the dataset's own folder: all listed files under it are covered
    files: tuple[Path, ...]  # the files the loader reads

    @property
    def directory(self) -> Path:
        return self.folder if self.folder is not None else self.files[0].parent


def _idx_locations(name: str, root: Path) -> list[_Location]:
    from edgeslim.data.mnist import IDX_FAMILY

    found = [IDX_FAMILY[name].find(root, split) for split in ("train", "test")]
    return [_Location(f[0].parent if f[0].parent != root else None, f) for f in found]


def _cifar10_locations(root: Path) -> list[_Location]:
    from edgeslim.data.cifar import find_cifar10

    out = []
    for split in ("train", "test"):
        source, path, folder = find_cifar10(root, split)
        out.append(_Location(folder if folder != root else None, tuple(source.files(path, split))))
    return out


def _locate(name: str, data_dir: str | Path | None) -> tuple[list[_Location], Path]:
    """The dataset's locations and the top folder whose ``SHA256SUMS`` count."""
    from edgeslim.data.loader import _folder_path, load_dataset
    from edgeslim.data.mnist import IDX_FAMILY

    if name in IDX_FAMILY:
        root = resolve_data_dir(data_dir)
        return _idx_locations(name, root), root
    if name in ("cifar10", "cifar10-gray28"):  # cifar10-gray28 is derived from cifar10's files
        root = resolve_data_dir(data_dir)
        return _cifar10_locations(root), root
    path = resolve_data_dir(data_dir, allow_file=True) if name == "folder" else _folder_path(
        name, data_dir)
    if path is None:  # neither a dataset nor a path: the loader raises its "unknown" error
        load_dataset(name, data_dir)
        raise DataError(f"dataset {name!r} not found (--data-dir / {DATA_ENV})")
    location = _Location(path, ()) if path.is_dir() else _Location(None, (path,))
    return [location], location.directory.parent if path.is_dir() else location.directory


def _norm(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _sums_files(top: Path, directory: Path) -> list[Path]:
    """Every ``SHA256SUMS`` from ``top`` down to ``directory`` (both included)."""
    top, directory = _norm(top), _norm(directory)
    if not directory.is_relative_to(top):
        top = directory
    chain = [directory, *directory.parents]
    dirs = reversed(chain[: chain.index(top) + 1])
    return [d / SUMS_NAME for d in dirs if (d / SUMS_NAME).is_file()]


def _covered(path: Path, locations: Iterable[_Location]) -> bool:
    return any(
        path in map(_norm, loc.files)
        or (loc.folder is not None and path.is_relative_to(_norm(loc.folder)))
        for loc in locations
    )


def _check_entries(report: ChecksumReport, listed: list[tuple[Path, str]]) -> None:
    """Hash each listed file once and sort it into ok / mismatched / missing."""
    actual: dict[Path, str | None] = {}
    for path, expected in sorted(set(listed)):
        if path not in actual:
            actual[path] = sha256_file(path) if path.is_file() else None
        if actual[path] is None:
            report.missing.append(path)
        elif actual[path] == expected:
            report.ok.append(path)
        else:
            report.mismatched.append((path, expected, actual[path]))


def verify_dataset_checksums(
    name: str, data_dir: str | Path | None = None, *, raise_on_failure: bool = True
) -> ChecksumReport:
    """Check a dataset's files against the ``SHA256SUMS`` files that list them.

    Args:
        name: ``mnist``, ``cifar10``, ``folder`` (``data_dir`` is the image folder)
            or a path to an image folder / archive, as for ``load_dataset``.
        data_dir: the data folder; default ``$EDGESLIM_DATA``.
        raise_on_failure: raise on a mismatch or a missing file (else only report).

    Returns:
        The report; ``report.sums_files`` is empty when no ``SHA256SUMS`` applies.

    Raises:
        DataError: the dataset is not found, a ``SHA256SUMS`` is malformed, or
            (``raise_on_failure``) a listed file is missing or its hash differs.
    """
    locations, top = _locate(name, data_dir)
    report = ChecksumReport(name)
    for loc in locations:
        new = [s for s in _sums_files(top, loc.directory) if s not in report.sums_files]
        report.sums_files += new
    listed = [
        (path, digest)
        for sums in report.sums_files
        for entry, digest in read_sums(sums).items()
        if _covered(path := _norm(sums.parent / entry), locations)
    ]
    _check_entries(report, listed)
    seen = {path for path, _ in listed}
    read = sorted({_norm(f) for loc in locations for f in loc.files})
    report.unlisted = [f for f in read if f not in seen]
    if raise_on_failure:
        report.raise_if_failed()
    return report
