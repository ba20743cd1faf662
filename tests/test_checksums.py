"""SHA256SUMS verification of dataset files (edgeslim.data.verify_dataset_checksums)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from test_data import image_bytes, write_mnist, write_tar

from edgeslim.data import DataError, sha256_file, verify_dataset_checksums
from edgeslim.data.checksums import read_sums


def write_sums(folder: Path, files: list[Path], prefix: str = "./", binary: bool = False) -> Path:
    """A SHA256SUMS in ``folder`` as ``sha256sum`` writes it (paths relative to ``folder``)."""
    mark = "*" if binary else " "
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    names = [f.relative_to(folder).as_posix() for f in files]
    lines = [f"{d} {mark}{prefix}{n}" for d, n in zip(digests, names)]
    sums = folder / "SHA256SUMS"
    sums.write_text("\n".join(lines) + "\n")
    return sums


def mnist_root(tmp_path: Path) -> tuple[Path, list[Path]]:
    write_mnist(tmp_path / "mnist", n_train=4, n_test=2, gz=False)
    return tmp_path, sorted((tmp_path / "mnist").iterdir())


def flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # a pixel: the file still loads, only its hash tells
    path.write_bytes(bytes(raw))


def test_sha256_file_streams_in_chunks(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 41)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == sha256_file(path, chunk=7) == expected


def test_matching_files_are_reported_ok(tmp_path):
    root, files = mnist_root(tmp_path)
    sums = write_sums(root, files)
    report = verify_dataset_checksums("mnist", root)
    assert report.passed and report.sums_files == [sums]
    assert report.ok == files and not report.unlisted


def test_fashion_mnist_checks_its_own_folder(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw", n_train=4, n_test=2, gz=False)
    files = sorted((tmp_path / "FashionMNIST" / "raw").iterdir())
    write_sums(tmp_path, files)
    report = verify_dataset_checksums("fashion-mnist", tmp_path)
    assert report.passed and report.ok == files
    flip_last_byte(files[0])
    with pytest.raises(DataError, match=str(files[0])):
        verify_dataset_checksums("fashion-mnist", tmp_path)


def test_mismatch_names_the_file_and_both_hashes(tmp_path):
    root, files = mnist_root(tmp_path)
    write_sums(root, files)
    bad = root / "mnist" / "train-images-idx3-ubyte"
    expected = hashlib.sha256(bad.read_bytes()).hexdigest()
    flip_last_byte(bad)
    with pytest.raises(DataError) as info:
        verify_dataset_checksums("mnist", root)
    msg = str(info.value)
    assert f"{bad}: expected sha256 {expected}, got {sha256_file(bad)}" in msg
    assert "1 file(s)" in msg and "fresh copies" in msg
    report = verify_dataset_checksums("mnist", root, raise_on_failure=False)
    assert [m[0] for m in report.mismatched] == [bad] and len(report.ok) == 3


def test_listed_but_missing_file_fails(tmp_path):
    root, files = mnist_root(tmp_path)
    extra = root / "mnist" / "README"
    extra.write_text("x")
    write_sums(root, [*files, extra])
    extra.unlink()
    with pytest.raises(DataError, match=r"mnist/README: listed but missing"):
        verify_dataset_checksums("mnist", root)


def test_sums_in_the_dataset_folder_binary_mode_and_bare_names(tmp_path):
    root, files = mnist_root(tmp_path)
    sums = write_sums(root / "mnist", files, prefix="", binary=True)
    assert set(read_sums(sums)) == {f.name for f in files}
    report = verify_dataset_checksums("mnist", root)
    assert report.sums_files == [sums] and report.ok == files


def test_only_the_checked_dataset_is_hashed(tmp_path):
    """The data folder's SHA256SUMS also lists CIFAR files; checking MNIST ignores them."""
    root, files = mnist_root(tmp_path)
    cifar = root / "cifar10" / "train.tar.gz"
    cifar.parent.mkdir()
    cifar.write_bytes(b"not really")
    write_sums(root, [*files, cifar])
    cifar.unlink()
    assert verify_dataset_checksums("mnist", root).ok == files


def test_unlisted_files_are_reported_not_failed(tmp_path):
    root, files = mnist_root(tmp_path)
    write_sums(root, files[:3])
    report = verify_dataset_checksums("mnist", root)
    assert report.passed and report.unlisted == files[3:]


def test_no_sums_file_means_nothing_checked(tmp_path):
    root, _ = mnist_root(tmp_path)
    report = verify_dataset_checksums("mnist", root)
    assert report.passed and report.sums_files == [] and report.ok == []


@pytest.mark.parametrize("line, message", [
    ("not a checksum line", "line 2 is not '<sha256 hex>  <path>'"),
    ("0" * 64 + "  ../outside", "lists '../outside', which is not a path inside"),
    ("0" * 64 + "  /etc/passwd", "lists '/etc/passwd'"),
])
def test_malformed_sums_file_is_refused(tmp_path, line, message):
    root, files = mnist_root(tmp_path)
    sums = write_sums(root, files[:1])
    sums.write_text(sums.read_text() + line + "\n")
    with pytest.raises(DataError, match=message) as info:
        verify_dataset_checksums("mnist", root)
    assert str(sums) in str(info.value)


def test_image_folder_and_archive_are_checked_too(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    png = image_bytes(np.zeros((4, 4), np.uint8), "PNG")
    folder = tmp_path / "imgs"
    (folder / "train" / "a").mkdir(parents=True)
    (folder / "train" / "a" / "0.png").write_bytes(png)
    write_sums(folder, [folder / "train" / "a" / "0.png"])
    assert len(verify_dataset_checksums(str(folder)).ok) == 1
    archive = write_tar(tmp_path / "set.tar.gz", {"train/a/0.png": png})
    write_sums(tmp_path, [archive])
    assert verify_dataset_checksums("folder", archive).ok == [archive]
    archive.write_bytes(archive.read_bytes() + b"\0")
    with pytest.raises(DataError, match="set.tar.gz: expected sha256"):
        verify_dataset_checksums("folder", archive)


def test_real_data_matches_its_sha256sums(data_dir):
    if not (data_dir / "SHA256SUMS").is_file():
        pytest.skip(f"no SHA256SUMS in {data_dir}")
    for name, count in (("mnist", 4), ("cifar10", 2)):
        report = verify_dataset_checksums(name, data_dir)
        assert len(report.ok) == count and not report.unlisted
