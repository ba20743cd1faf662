"""benchmarks/kt_seeds.py: each variant of the recipe changes only its seed and dataset."""
from __future__ import annotations

from pathlib import Path

import pytest
from benchload import benchmark_module  # tests/ is on sys.path

from edgeslim.pipeline import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bench():
    with benchmark_module("kt_seeds") as module:
        yield module


def test_variant_changes_only_seed_and_dataset(bench, tmp_path: Path) -> None:
    shipped = ROOT / "recipes" / "kt_lenet5_mnist.yaml"
    path, run = bench._variant(shipped, "cifar10-gray28", 3, tmp_path)
    assert run == tmp_path / "cifar10-gray28_seed3" and path.parent == tmp_path
    base, variant = load_recipe(shipped).to_dict(), load_recipe(path).to_dict()
    assert variant["seed"] == 3 and variant["data"]["name"] == "cifar10-gray28"
    base["seed"], base["data"]["name"] = 3, "cifar10-gray28"
    assert variant == base  # the stages, batch size, model: all as shipped

    before = path.stat().st_mtime_ns
    assert bench._variant(shipped, "cifar10-gray28", 3, tmp_path) == (path, run)
    assert path.stat().st_mtime_ns == before  # an unchanged variant is not rewritten (resume)
