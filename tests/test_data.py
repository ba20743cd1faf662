"""Tests of edgeslim.data: readers, cache, restricted unpickling, loaders, augmentation."""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features
from torch.utils.data import DataLoader, TensorDataset

from edgeslim.data import (
    ArrayDataset,
    DataError,
    TensorLoader,
    as_loader,
    load_dataset,
    make_loaders,
    resolve_data_dir,
)
from edgeslim.data import cache as cache_mod
from edgeslim.data import folder as folder_mod
from edgeslim.data.augment import CROP_PADDING, SHIFT_PIXELS, random_crop, random_hflip
from edgeslim.data.cifar import (
    CIFAR10_CLASSES,
    RestrictedUnpickler,
    load_batch,
    read_batches,
    read_cifar_archive,
)
from edgeslim.data.mnist import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from edgeslim.errors import ConfigError

# Label counts and first labels published in /work/shared/data/README.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_FIRST_20 = [6, 9, 9, 4, 1, 1, 2, 7, 8, 3, 4, 7, 7, 2, 9, 9, 9, 3, 2, 6]
# sha256 of the decoded pixels (N, H, W, C) stacked in index order, as the README gives them
CIFAR_TRAIN_SHA256 = "5aaf8a2cf2e577ff4dbb15e4f368840fab5aca1812bcc69682005f8dc661d466"
CIFAR_TEST_SHA256 = "5a6aa8185204d80b65d3dfb540696dadd5f10d185ded226a96665d3e0fc6259f"


# ------------------------------------------------------------------ helpers


def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool = True) -> Path:
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_mnist(folder: Path, n_train: int = 20, n_test: int = 7, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, IMAGES_MAGIC, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, LABELS_MAGIC, gz)
        out[prefix] = (images, labels)
    return out


def image_bytes(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def id_dataset(n: int = 300, channels: int = 3, size: int = 32) -> ArrayDataset:
    """Random images whose label is their index, so a batch tells which images it holds."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    return ArrayDataset(
        images=images,
        labels=torch.arange(n),
        classes=[str(i) for i in range(n)],
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        name="ids",
        augment="crop_flip",
    )


def to_uint8(x: torch.Tensor, ds: ArrayDataset) -> torch.Tensor:
    """Undo a loader's normalisation (exact after rounding)."""
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return (x * std + mean).mul(255).round().to(torch.uint8)


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


# ------------------------------------------------------------------ data folder


def test_resolve_data_dir_explicit_env_and_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGESLIM_DATA", raising=False)
    assert resolve_data_dir(tmp_path) == tmp_path
    with pytest.raises(DataError, match="--data-dir.*EDGESLIM_DATA"):
        resolve_data_dir(None)
    monkeypatch.setenv("EDGESLIM_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope")


def test_data_dir_that_is_a_file_says_so(tmp_path, monkeypatch):
    afile = tmp_path / "train-images-idx3-ubyte.gz"
    afile.write_bytes(b"x")
    for name in ("mnist", "cifar10"):
        with pytest.raises(DataError, match="is a file, not a folder") as info:
            load_dataset(name, afile)
        assert str(afile) in str(info.value) and str(tmp_path) in str(info.value)
        assert "not found" not in str(info.value)
    monkeypatch.setenv("EDGESLIM_DATA", str(afile))
    with pytest.raises(DataError, match=r"from \$EDGESLIM_DATA\) is a file"):
        load_dataset("mnist")


def test_unknown_dataset_name_suggests_the_closest(tmp_path):
    with pytest.raises(DataError, match="Did you mean 'mnist'"):
        load_dataset("mnsit", tmp_path)


# ------------------------------------------------------------------ MNIST


def test_mnist_real_counts_and_stats(data_dir):
    train = load_dataset("mnist", data_dir, "train")
    test = load_dataset("mnist", data_dir, "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28) and test.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    # exact statistics from the histogram of the 47M pixel values
    hist = torch.bincount(train.images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (hist * values).sum() / hist.sum()
    std = ((hist * (values - mean) ** 2).sum() / hist.sum()).sqrt()
    assert round(mean.item(), 4) == train.mean[0] == 0.1307
    assert round(std.item(), 4) == train.std[0] == 0.3081


def test_mnist_small_fixture_is_a_seeded_subset(mnist_small, data_dir):
    assert len(mnist_small) == 512 and mnist_small.input_shape == (1, 28, 28)
    again = load_dataset("mnist", data_dir, "train").subset(512, seed=0)
    assert torch.equal(again.images, mnist_small.images)
    assert torch.equal(again.labels, mnist_small.labels)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_synthetic_idx_exactly(tmp_path, gz):
    arrays = write_mnist(tmp_path / "mnist", gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("mnist", tmp_path, split)
        images, labels = arrays[prefix]
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
        assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    x, y = ds[3]
    expected = (torch.from_numpy(images[3]).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[0], expected) and y == int(labels[3])


@pytest.mark.parametrize("name, folder, mean, first_class", [
    ("fashion-mnist", "fashion-mnist", 0.2860, "T-shirt/top"),
    ("fashion-mnist", "FashionMNIST/raw", 0.2860, "T-shirt/top"),  # torchvision's layout
    ("kmnist", "kmnist", 0.1918, "o"),
    ("kmnist", "KMNIST/raw", 0.1918, "o"),
])
def test_mnist_drop_in_datasets_read_their_own_idx_files(tmp_path, name, folder, mean, first_class):
    arrays = write_mnist(tmp_path / folder)
    write_mnist(tmp_path / "mnist", n_train=5, n_test=5)  # MNIST beside it is never read instead
    ds = load_dataset(name, tmp_path, "train")
    images, labels = arrays["train"]
    assert ds.name == name and ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    assert ds.classes[0] == first_class and ds.mean == (mean,)
    assert len(load_dataset(name, tmp_path, "test")) == len(arrays["t10k"][0])


def test_mnist_drop_in_dataset_missing_names_itself_not_mnist(tmp_path):
    write_mnist(tmp_path / "mnist")
    write_mnist(tmp_path)  # MNIST files in the data folder itself are not taken for it either
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", tmp_path, "train")
    msg = str(info.value)
    for needle in ["Fashion-MNIST (train split) not found", str(tmp_path / "fashion-mnist"),
                   str(tmp_path / "FashionMNIST" / "raw"), "--data-dir"]:
        assert needle in msg


def test_kmnist_label_out_of_range_is_refused(tmp_path):
    write_mnist(tmp_path / "kmnist")
    write_idx(tmp_path / "kmnist" / "train-labels-idx1-ubyte", np.full(20, 10, np.uint8),
              LABELS_MAGIC, True)
    with pytest.raises(DataError, match="Kuzushiji-MNIST file .* has label 10; labels must be 0-9"):
        load_dataset("kmnist", tmp_path, "train")


def test_mnist_missing_folder_lists_files_and_places(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path, "train")
    msg = str(info.value)
    expected = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", str(tmp_path / "mnist")]
    for needle in [*expected, "--data-dir", "EDGESLIM_DATA"]:
        assert needle in msg


def test_mnist_corrupt_gz_names_the_file(tmp_path):
    write_mnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated gzip stream
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*corrupt"):
        load_dataset("mnist", tmp_path, "train")


def test_idx_checks_magic_and_length(tmp_path):
    labels = write_idx(tmp_path / "labels", np.zeros(5, np.uint8), LABELS_MAGIC)
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803"):
        read_idx(labels, IMAGES_MAGIC)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">II", LABELS_MAGIC, 10) + bytes(9))
    with pytest.raises(DataError, match="truncated"):
        read_idx(short, LABELS_MAGIC)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("payload", [0, 28 * 28])
@pytest.mark.parametrize("dims", [(2**31, 2**31, 4), (2**32 - 1,) * 3, (10**6, 28, 28)])
def test_idx_header_larger_than_the_file_is_refused(tmp_path, gz, payload, dims):
    """(2^31, 2^31, 4) wraps a 64-bit product to 0 (an empty payload then 'fit' and reshape
    crashed); the others claim far more than the file holds."""
    raw = struct.pack(">4I", IMAGES_MAGIC, *dims) + bytes(payload)
    path = tmp_path / ("x-idx3-ubyte.gz" if gz else "x-idx3-ubyte")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match="header declares dimensions") as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in str(info.value) and f"{math.prod(dims):,}" in str(info.value)


def test_idx_gzip_bomb_is_not_read_beyond_the_header(tmp_path):
    """10 labels declared, 32 MB of zeros behind them: only what the header claims is read."""
    path = tmp_path / "bomb-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">II", LABELS_MAGIC, 10) + bytes(32 << 20)))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"bomb-labels-idx1-ubyte.gz holds"):
            read_idx(path, LABELS_MAGIC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the old reader held all 32 MB at once


def test_idx_header_shorter_than_its_dimensions(tmp_path):
    path = tmp_path / "cut-idx3-ubyte"
    path.write_bytes(struct.pack(">II", IMAGES_MAGIC, 5))
    with pytest.raises(DataError, match="too short for its 16-byte IDX header"):
        read_idx(path, IMAGES_MAGIC)


def test_mnist_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8), LABELS_MAGIC)
    with pytest.raises(DataError, match="20 images but .* 3 labels"):
        load_dataset("mnist", tmp_path, "train")


# ------------------------------------------------------------------ CIFAR batches (pickle)


def write_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    # protocol 4: arrays pickle through numpy's _reconstruct, as in the original batches
    path.write_bytes(
        pickle.dumps({"batch_label": "synthetic", "data": data, "labels": labels}, protocol=4)
    )
    return data, labels


def test_restricted_unpickler_reads_synthetic_batch(tmp_path):
    data, labels = write_batch(tmp_path / "data_batch_1", 6, seed=0)
    images, got = load_batch(tmp_path / "data_batch_1")
    assert images.shape == (6, 3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images.reshape(6, -1), data) and got.tolist() == labels


def test_read_batches_concatenates_in_order(tmp_path):
    parts = [write_batch(tmp_path / f"data_batch_{i}", 4, seed=i) for i in range(1, 6)]
    arrays = read_batches(tmp_path, "train")
    assert np.array_equal(arrays["images"].reshape(20, -1), np.concatenate([p[0] for p in parts]))
    assert arrays["labels"].tolist() == sum((p[1] for p in parts), [])


def test_incomplete_batches_are_refused_by_count(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    write_batch(tmp_path / "cifar-10-batches-py" / "test_batch", 5, seed=0)
    with pytest.raises(DataError, match="5 images .* expected 10000"):
        load_dataset("cifar10", tmp_path, "test")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Evil(marker), "labels": []}, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="refusing .*system"):
        RestrictedUnpickler(io.BytesIO(payload)).load()
    (tmp_path / "data_batch_1").write_bytes(payload)
    with pytest.raises(DataError, match="cannot be read safely"):
        load_batch(tmp_path / "data_batch_1")
    assert not marker.exists()


def test_pickled_class_is_refused(tmp_path):
    payload = pickle.dumps({"data": Path("x")}, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        RestrictedUnpickler(io.BytesIO(payload)).load()


# ------------------------------------------------------------------ CIFAR JPEG archives


def make_cifar_tar(path: Path, split: str = "train") -> dict[int, tuple[int, bytes]]:
    """Nine 32x32 JPEGs in 3 classes, indices interleaved across classes."""
    rng = np.random.default_rng(0)
    owners = {0: "frog", 1: "truck", 2: "truck", 3: "airplane", 4: "frog", 5: "airplane",
              6: "truck", 7: "frog", 8: "airplane"}  # fmt: skip
    files, truth = {}, {}
    for index, cls in owners.items():
        data = image_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "JPEG")
        files[f"{split}/{cls}/{index:05d}.jpg"] = data
        truth[index] = (CIFAR10_CLASSES.index(cls), data)
    write_tar(path, dict(sorted(files.items())))  # stored class by class, like the real archive
    return truth


def test_cifar_archive_orders_by_index_and_decodes_with_pillow(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    truth = make_cifar_tar(tmp_path / "train.tar.gz")
    arrays = read_cifar_archive(tmp_path / "train.tar.gz", "train")
    assert arrays["labels"].tolist() == [truth[i][0] for i in range(9)]
    assert arrays["images"].shape == (9, 3, 32, 32) and arrays["images"].dtype == np.uint8
    for i in range(9):
        pillow = np.asarray(Image.open(io.BytesIO(truth[i][1])).convert("RGB"))
        assert np.array_equal(arrays["images"][i], pillow.transpose(2, 0, 1))
    assert list(arrays["classes"]) == list(CIFAR10_CLASSES)


def test_cifar_cache_hit_and_invalidation(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGESLIM_CACHE", str(cache))
    archive = tmp_path / "train.tar.gz"
    make_cifar_tar(archive)
    first = read_cifar_archive(archive, "train")
    [entry] = list(cache.glob("cifar10-train-*.npz"))

    def fail(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr("edgeslim.data.cifar.read_class_images", fail)
    again = read_cifar_archive(archive, "train")
    assert all(np.array_equal(first[k], again[k]) for k in first)

    monkeypatch.undo()
    monkeypatch.setenv("EDGESLIM_CACHE", str(cache))
    write_tar(
        archive, {"train/ship/00000.jpg": image_bytes(np.zeros((32, 32, 3), np.uint8), "JPEG")}
    )
    os.utime(archive, ns=(1, 1))  # a different mtime even on coarse-timestamp filesystems
    changed = read_cifar_archive(archive, "train")
    assert changed["labels"].tolist() == [CIFAR10_CLASSES.index("ship")]
    assert [p.name for p in cache.glob("cifar10-train-*.npz")] != [entry.name]
    assert len(list(cache.glob("cifar10-train-*.npz"))) == 1  # the stale entry is gone


def test_corrupt_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "train.tar.gz"
    make_cifar_tar(archive)
    first = read_cifar_archive(archive, "train")
    entry = cache_mod.cache_path(archive, "cifar10-train")
    entry.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable cache file"):
        again = read_cifar_archive(archive, "train")
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert np.load(entry)["labels"].tolist() == first["labels"].tolist()  # rewritten


def test_cifar_missing_lists_both_forms(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path, "train")
    msg = str(info.value)
    assert "train.tar.gz" in msg and "cifar-10-batches-py/data_batch_1" in msg
    assert str(tmp_path / "cifar10") in msg and "EDGESLIM_DATA" in msg


def test_corrupt_archive_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "train.tar.gz"
    make_cifar_tar(archive)
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(DataError, match="train.tar.gz is corrupt"):
        read_cifar_archive(archive, "train")


@pytest.mark.slow
def test_cifar10_real_archive(data_dir, tmp_cache):
    """The one test that decodes the real archives (tens of seconds, once per session)."""
    train = load_dataset("cifar10", data_dir, "train")  # decodes once into tmp_cache
    test = load_dataset("cifar10", data_dir, "test")
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[:20].tolist() == CIFAR_FIRST_20
    cached = load_dataset("cifar10", data_dir, "train")
    assert torch.equal(cached.images, train.images) and torch.equal(cached.labels, train.labels)
    if features.version("libjpeg_turbo") == "3.2.0":  # the decoder the README's hashes used
        for ds, digest in ((train, CIFAR_TRAIN_SHA256), (test, CIFAR_TEST_SHA256)):
            hwc = np.ascontiguousarray(ds.images.permute(0, 2, 3, 1).numpy())
            assert hashlib.sha256(hwc.tobytes()).hexdigest() == digest


# ------------------------------------------------------------------ image folders


def test_image_folder_and_tar_give_the_same_exact_pixels(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    files = {}
    for split in ("train", "test"):
        for cls in ("dog", "cat"):
            for k in range(3):
                files[f"{split}/{cls}/{k}.png"] = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    root = tmp_path / "imgs"
    for name, arr in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(image_bytes(arr, "PNG"))
    archive = write_tar(
        tmp_path / "imgs.tar.gz", {n: image_bytes(a, "PNG") for n, a in files.items()}
    )
    for source in (root, archive):
        test = load_dataset(str(source), split="test")
        assert test.classes == ["cat", "dog"] and test.labels.tolist() == [0, 0, 0, 1, 1, 1]
        expected = np.stack([files[f"test/{c}/{k}.png"] for c in ("cat", "dog") for k in range(3)])
        assert np.array_equal(test.images.numpy(), expected.transpose(0, 3, 1, 2))
        assert test.augment == "crop_flip" and test.input_shape == (3, 8, 10)
    train_loader, test_loader = make_loaders(str(root), batch_size=4, seed=0)
    assert test_loader.dataset.mean == train_loader.dataset.mean  # test uses train statistics
    assert sum(len(y) for _, y in train_loader) == 6


def test_image_folder_grayscale_and_size_mismatch(tmp_path):
    root = tmp_path / "gray"
    for cls, size in (("a", (6, 6)), ("b", (6, 6))):
        (root / cls).mkdir(parents=True)
        (root / cls / "0.png").write_bytes(image_bytes(np.full(size, 7, np.uint8), "PNG"))
    ds = load_dataset("folder", root, "train")
    assert ds.images.shape == (2, 1, 6, 6) and ds.augment == "none"
    (root / "b" / "1.png").write_bytes(image_bytes(np.zeros((5, 6), np.uint8), "PNG"))
    with pytest.raises(DataError, match=r"b/1.png is 6x5 .* does not resize"):
        load_dataset("folder", root, "train")


def test_archive_of_one_split_refuses_the_other(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "data.tar.gz"
    write_tar(archive, {"train/x/0.png": image_bytes(np.zeros((4, 4), np.uint8), "PNG")})
    with pytest.raises(DataError, match=r"holds split \['train'\], not 'test'"):
        folder_mod.load_image_folder(archive, "test")


def _tar_with_names(path: Path, names: list[str]) -> Path:
    png = image_bytes(np.zeros((4, 4), np.uint8), "PNG")
    with tarfile.open(path, "w") as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(png)
            tf.addfile(info, io.BytesIO(png))
    return path


@pytest.mark.parametrize("bad", ["../evil/cls/1.png", "train/../../cls/1.png", "/abs/cls/2.png"])
def test_archive_member_with_unsafe_path_is_refused(tmp_path, monkeypatch, bad):
    """These were silently skipped as 'hidden' (or gave a '//abs' split); refuse the archive."""
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    archive = _tar_with_names(tmp_path / "a.tar", ["train/x/0.png", bad])
    with pytest.raises(DataError, match="unsafe path") as info:
        load_dataset(str(archive))
    assert repr(bad) in str(info.value) and str(archive) in str(info.value)


def test_archive_member_declaring_more_than_the_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    archive = _tar_with_names(tmp_path / "b.tar", ["train/x/0.png", "train/x/1.png"])
    raw = bytearray(archive.read_bytes())
    header = 512 + 512  # the second member's header (the first one's data fits one block)
    raw[header + 124 : header + 136] = b"\x80" + (2**40).to_bytes(11, "big")  # base-256 size
    raw[header + 148 : header + 156] = b" " * 8
    raw[header + 148 : header + 156] = b"%06o\0 " % sum(raw[header : header + 512])
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"b.tar:train/x/1.png declares 1,099,511,627,776 bytes"):
        load_dataset(str(archive))


@pytest.mark.parametrize("packed", [False, True])
def test_image_file_over_the_size_limit_is_not_read(tmp_path, monkeypatch, packed):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(folder_mod, "MAX_IMAGE_FILE_BYTES", 40, raising=False)
    files = {"x/0.png": image_bytes(np.zeros((4, 4), np.uint8), "PNG")}
    assert len(files["x/0.png"]) > 40
    if packed:
        source = write_tar(tmp_path / "c.tar.gz", files)
    else:
        source = tmp_path / "imgs"
        (source / "x").mkdir(parents=True)
        (source / "x" / "0.png").write_bytes(files["x/0.png"])
    with pytest.raises(DataError, match=r"x/0.png is \d+ bytes, over edgeslim's limit of 40"):
        load_dataset(str(source))


def _png_header_only(width: int, height: int) -> bytes:
    """A grey PNG that declares width x height but holds only a few rows of pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(bytes(width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path, recwarn):
    """10000x10000 is under twice Pillow's limit, so Pillow only warned and decoded 100 MB."""
    root = tmp_path / "bomb"
    (root / "x").mkdir(parents=True)
    (root / "x" / "0.png").write_bytes(_png_header_only(10_000, 10_000))
    with pytest.raises(DataError, match=r"x/0.png is 100,000,000 pixels, over edgeslim's limit"):
        load_dataset("folder", root)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_image_over_the_pixel_limit_is_refused_with_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_mod, "MAX_IMAGE_PIXELS", 8 * 8, raising=False)
    root = tmp_path / "imgs"
    (root / "x").mkdir(parents=True)
    (root / "x" / "0.png").write_bytes(image_bytes(np.zeros((8, 8), np.uint8), "PNG"))
    (root / "x" / "1.png").write_bytes(image_bytes(np.zeros((9, 8), np.uint8), "PNG"))
    with pytest.raises(DataError, match=r"x/1.png is 8x9, over edgeslim's limit of 64 pixels"):
        load_dataset("folder", root)


# ------------------------------------------------------------------ TensorLoader


def test_loader_yields_every_image_once_normalised():
    ds = id_dataset(300)
    loader = TensorLoader(ds, batch_size=64, shuffle=True, seed=3)
    got = batches(loader)
    assert len(loader) == len(got) == 5 and [len(y) for _, y in got] == [64] * 4 + [44]
    x = torch.cat([b[0] for b in got])
    y = torch.cat([b[1] for b in got])
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(y.tolist()) == list(range(300)) and y.tolist() != list(range(300))
    assert torch.equal(to_uint8(x, ds), ds.images[y])
    assert torch.allclose(x[0], ds[int(y[0])][0])  # same normalisation as __getitem__
    assert len(TensorLoader(ds, batch_size=64, drop_last=True)) == 4


def test_loader_is_deterministic_per_seed_and_epoch():
    ds = id_dataset(200)
    make = lambda seed: TensorLoader(ds, batch_size=50, shuffle=True, augment=True, seed=seed)  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    first_a, first_b, first_c = batches(a), batches(b), batches(c)
    assert all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first_a, first_b)
    )
    assert not torch.equal(first_a[0][1], first_c[0][1])
    second_a = batches(a)  # the epoch advanced by itself
    assert not torch.equal(first_a[0][1], second_a[0][1])
    b.set_epoch(1)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(second_a, batches(b)))
    a.set_epoch(0)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(first_a, batches(a)))


def test_unshuffled_loader_keeps_order_without_augmentation():
    ds = id_dataset(70)
    y = torch.cat([y for _, y in TensorLoader(ds, batch_size=32)])
    assert y.tolist() == list(range(70))


# ------------------------------------------------------------------ augmentation


def test_random_crop_is_a_window_of_the_padded_image():
    ds = id_dataset(64)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(ds.images, gen)
    assert out.shape == ds.images.shape and out.dtype == torch.uint8
    p = CROP_PADDING
    padded = torch.nn.functional.pad(ds.images, (p, p, p, p))
    offsets = set()
    for i in range(64):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]  # fmt: skip
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 10  # offsets really are random


def test_flips_happen_and_are_exact_mirrors():
    ds = id_dataset(256)
    out = random_hflip(ds.images, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, ds.images)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, ds.images)])
    assert torch.all(flipped ^ kept)
    assert 80 < int(flipped.sum()) < 176  # ~Binomial(256, 1/2)


def test_loader_augmentation_keeps_shape_and_changes_pixels():
    ds = id_dataset(128)
    x, y = next(iter(TensorLoader(ds, batch_size=128, augment=True, seed=0)))
    assert x.shape == (128, 3, 32, 32)
    changed = sum(not torch.equal(a, ds.images[int(i)]) for a, i in zip(to_uint8(x, ds), y))
    assert changed > 100  # 1/81 chance of the identity crop, then 1/2 of no flip


def test_shift_policy_moves_images_at_most_one_pixel_and_never_flips():
    ds = id_dataset(64)
    loader = TensorLoader(ds, batch_size=64, shuffle=False, augment="shift", seed=0)
    assert loader.augment == "shift"
    x, _ = next(iter(loader))
    p = SHIFT_PIXELS
    padded = torch.nn.functional.pad(ds.images, (p, p, p, p))
    offsets = set()
    for i, out in enumerate(to_uint8(x, ds)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out, padded[i, :, dy:dy + 32, dx:dx + 32])]  # fmt: skip
        assert len(hits) == 1  # a window of the padded image, never a mirror of one
        offsets.add(hits[0])
    assert len(offsets) == (2 * p + 1) ** 2  # every offset occurs: the shifts really are random


def test_with_augment_changes_the_policy_of_a_copy_only(tmp_path):
    from edgeslim.data import with_augment

    write_mnist(tmp_path, n_train=40, n_test=10)
    train, _ = make_loaders("mnist", tmp_path, batch_size=16, seed=0)
    shifted = with_augment(train, "shift")
    assert shifted.augment == "shift" and train.augment == "none"
    assert shifted._images is train._images  # the data is shared, not copied
    assert with_augment(train, True).augment == "none"  # the dataset's own (none for digits)
    assert with_augment(train, None) is train

    def epoch0(loader):
        loader.set_epoch(0)
        return [x for x, _ in loader]

    plain, moved = epoch0(train), epoch0(shifted)
    assert not all(torch.equal(a, b) for a, b in zip(plain, moved))
    assert all(torch.equal(a, b) for a, b in zip(plain, epoch0(train)))  # the original: no shifts
    with pytest.raises(ConfigError, match="unknown augmentation 'rotate'"):
        with_augment(train, "rotate")
    with pytest.raises(ConfigError, match="needs edgeslim's TensorLoader"):
        with_augment([(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long))], "shift")


def test_mnist_default_has_no_augmentation(tmp_path):
    write_mnist(tmp_path, n_train=40, n_test=10)
    train, test = make_loaders("mnist", tmp_path, batch_size=16, seed=0)
    assert train.augment == "none" and test.augment == "none" and not test.shuffle
    x, _ = next(iter(train))
    assert x.shape == (16, 1, 28, 28)
    originals = {img.numpy().tobytes() for img in train.dataset.images}
    assert all(img.numpy().tobytes() in originals for img in to_uint8(x, train.dataset))
    with pytest.raises(ConfigError, match="unknown augmentation 'rotate'.*crop_flip"):
        make_loaders("mnist", tmp_path, augment="rotate")


# ------------------------------------------------------------------ as_loader


def test_as_loader_accepts_every_documented_input():
    ds = id_dataset(10)
    tl = TensorLoader(ds, batch_size=4)
    assert as_loader(tl) is tl
    dl = DataLoader(TensorDataset(torch.zeros(5, 2), torch.zeros(5)), batch_size=2)
    assert as_loader(dl) is dl
    assert isinstance(as_loader(ds, batch_size=4), TensorLoader)
    x, y = torch.randn(10, 3), torch.arange(10)
    pair = as_loader((x, y), batch_size=4)
    assert len(pair) == 3 and torch.equal(torch.cat([b[0] for b in pair]), x)
    generic = as_loader(TensorDataset(x, y), batch_size=4)
    assert isinstance(generic, DataLoader) and torch.equal(torch.cat([b[1] for b in generic]), y)
    listed = [(x[:5], y[:5]), (x[5:], y[5:])]
    assert as_loader(listed) is listed
    with pytest.raises(TypeError, match="cannot batch a int"):
        as_loader(3)
    with pytest.raises(DataError, match="10 rows but Y has 9"):
        as_loader((x, y[:9]))


# ------------------------------------------------------------------ CIFAR batches: forged pickles


class _Forge:
    """Pickles as whatever ``__reduce__`` tuple it is given (to write hostile pickles)."""

    def __init__(self, *reduce_value) -> None:
        self.reduce_value = reduce_value

    def __reduce__(self):
        return self.reduce_value


_RECON = np.zeros(1).__reduce__()[0]


def _forged_batch(path: Path, data, labels) -> Path:
    path.write_bytes(pickle.dumps({"data": data, "labels": labels}, protocol=4))
    return path


def _body(obj) -> bytes:
    """The opcodes that push ``obj`` (a protocol-2 pickle without PROTO and STOP)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def test_pickle_cannot_allocate_an_array_of_its_choosing(tmp_path):
    """numpy.ndarray(shape) via NEWOBJ, or _reconstruct with a shape, would allocate
    whatever the pickle says from a few bytes."""
    newobj = b"cnumpy\nndarray\n" + _body(((1000, 3072),)) + b"\x81"  # ndarray.__new__(ndarray, shape)
    reconstruct = pickle.dumps(_Forge(_RECON, (np.ndarray, (1000, 3072), b"B")), protocol=2)[2:-1]
    for array in (newobj, reconstruct):
        payload = b"\x80\x02}(" + _body("data") + array + _body("labels") + b"]u."
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            RestrictedUnpickler(io.BytesIO(payload)).load()
        (tmp_path / "data_batch_1").write_bytes(payload)
        with pytest.raises(DataError, match="cannot be read safely"):
            load_batch(tmp_path / "data_batch_1")


def test_object_arrays_are_refused(tmp_path):
    items = [int(v) for v in np.arange(2 * 3072) % 256]
    forged = _Forge(_RECON, (np.ndarray, (0,), b"b"),
                    (1, (2, 3072), np.dtype("O"), False, items))
    with pytest.raises(DataError, match="refusing array dtype 'O"):
        load_batch(_forged_batch(tmp_path / "b", forged, [0, 1]))


def test_short_object_array_does_not_crash_the_process(tmp_path):
    """numpy leaves invalid pointers in an object array whose item list is too short:
    touching or freeing it segfaulted the old unpickler. Run in a child process."""
    import subprocess
    import sys

    forged = _Forge(_RECON, (np.ndarray, (0,), b"b"), (1, (2, 3072), np.dtype("O"), False, [1]))
    path = _forged_batch(tmp_path / "b", forged, [0, 1])
    code = ("import sys; from pathlib import Path; from edgeslim.data.cifar import load_batch\n"
            "try:\n    load_batch(Path(sys.argv[1]))\nexcept Exception as e:\n    print(type(e).__name__)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "DataError", done


def test_python2_style_batch_with_str_pixels_still_loads(tmp_path):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)  # wraps at 256
    forged = _Forge(_RECON, (np.ndarray, (0,), b"b"),
                    (1, (2, 3072), np.dtype("u1"), False, data.tobytes().decode("latin1")))
    images, labels = load_batch(_forged_batch(tmp_path / "b", forged, [3, 4]))
    assert np.array_equal(images.reshape(2, -1), data) and labels.tolist() == [3, 4]
    assert type(images) is np.ndarray and images.dtype == np.uint8


@pytest.mark.parametrize("data, labels, message", [
    (np.zeros((2, 3072), np.uint8), ["a", "b"], "'labels' must be a list of ints 0-9, got a list holding str"),
    (np.zeros((2, 3072), np.uint8), [2**70, 1], "labels must be 0-9, found 1180591620717411303424"),
    (np.zeros((2, 3072), np.uint8), {"a": 1}, "got dict"),
    (np.zeros((2, 3072), np.uint8), [1, 2, 3], "2 images but 3 labels"),
    (np.full((2, 3072), 300.7), [1, 1], "must be a uint8 array .n, 3072., got float64"),
])
def test_malformed_batch_contents_are_data_errors(tmp_path, data, labels, message):
    with pytest.raises(DataError, match=message) as info:
        load_batch(_forged_batch(tmp_path / "data_batch_3", data, labels))
    assert "data_batch_3" in str(info.value)


def test_pickle_declaring_a_huge_bytes_object_is_a_data_error(tmp_path):
    """BINBYTES8 with a 2**62-byte length: the C unpickler tries to allocate it up front."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc")
    with pytest.raises(DataError, match="cannot be read safely: MemoryError"):
        load_batch(path)


def test_pickle_cannot_set_attributes_on_the_array_marker(tmp_path):
    """BUILD on the class numpy.ndarray unpickles to would change it for every later load."""
    payload = b"\x80\x02cnumpy\nndarray\nN}" + _body("x") + b"K\x01s\x86b."
    with pytest.raises(TypeError):
        RestrictedUnpickler(io.BytesIO(payload)).load()
    data, labels = write_batch(tmp_path / "data_batch_1", 2, seed=0)
    assert load_batch(tmp_path / "data_batch_1")[1].tolist() == labels


# ---------------------------------------------------------------- cifar10-gray28 (derived)


def _tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int = 7) -> tuple[np.ndarray, list[int]]:
    """A CIFAR-10 test split of ``n`` images (image 0 constant, 1 black, 2 white), caching in tmp."""
    from edgeslim.data import cifar

    (tmp_path / "cifar-10-batches-py").mkdir()
    data, labels = write_batch(tmp_path / "cifar-10-batches-py" / "test_batch", n, seed=3)
    data[0] = np.repeat(np.array([10, 200, 30], np.uint8), 1024)
    data[1], data[2] = 0, 255
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({"batch_label": "synthetic", "data": data, "labels": labels}, protocol=4))
    monkeypatch.setitem(cifar.CIFAR10_COUNTS, "test", n)
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    return data, labels


def test_cifar10_gray28_is_cifar10_in_one_grey_channel_at_28x28(tmp_path, monkeypatch):
    data, labels = _tiny_cifar(tmp_path, monkeypatch)
    grey, rgb = load_dataset("cifar10-gray28", tmp_path, "test"), load_dataset("cifar10", tmp_path, "test")
    assert grey.images.dtype == torch.uint8 and tuple(grey.images.shape) == (7, 1, 28, 28)
    assert grey.input_shape == (1, 28, 28) and grey.name == "cifar10-gray28"
    assert grey.labels.tolist() == labels == rgb.labels.tolist() and grey.classes == rgb.classes
    # constant images stay constant: BT.601 luma of (10, 200, 30) is 123.81; black/white keep 0/255
    assert grey.images[0].unique().tolist() == [124]
    assert grey.images[1].max() == 0 and grey.images[2].min() == 255
    x, y = next(iter(TensorLoader(grey, 4)))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32 and y.tolist() == labels[:4]


def test_cifar10_gray28_is_deterministic_and_derived_once(tmp_path, monkeypatch):
    from edgeslim.data import derived

    _tiny_cifar(tmp_path, monkeypatch)
    first = load_dataset("cifar10-gray28", tmp_path, "test")
    assert len(list((tmp_path / "cache").glob("cifar10-gray28-*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("derived again despite the cache")

    monkeypatch.setattr(derived, "load_cifar10", fail)
    again = load_dataset("cifar10-gray28", tmp_path, "test")
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    rgb = load_dataset("cifar10", tmp_path, "test").images
    assert np.array_equal(derived.to_gray28(rgb), derived.to_gray28(rgb.clone()))
    assert np.array_equal(derived.to_gray28(rgb), first.images.numpy())
    with pytest.raises(ValueError, match=r"uint8 images \[N, 3, H, W\]"):
        derived.to_gray28(rgb[:, :1])


def test_cifar10_gray28_on_the_real_data(data_dir: Path) -> None:
    for split, n in (("train", 50_000), ("test", 10_000)):
        grey, rgb = load_dataset("cifar10-gray28", data_dir, split), load_dataset("cifar10", data_dir, split)
        assert tuple(grey.images.shape) == (n, 1, 28, 28) and grey.images.dtype == torch.uint8
        assert torch.equal(grey.labels, rgb.labels)
        assert 0 < int(grey.images.min()) + 1 and int(grey.images.max()) <= 255
