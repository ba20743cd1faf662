"""benchmarks/cifar_tables.py --smoke on a synthetic CIFAR-10-like image folder (no real data needed): rows are written,
a rerun skips them, and a rerun with other settings is refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from benchload import benchmark_module  # tests/ is on sys.path
from PIL import Image


def _synthetic_cifar(root: Path, n_train: int = 6, n_test: int = 3) -> Path:
    """``root/{train,test}/c0..c9/N.png``: 32x32 RGB noise, the class in the brightness."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(10):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (32, 32, 3)) + 20 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture()
def bench():
    with benchmark_module("cifar_tables") as module:
        yield module


def test_smoke_rows_resume_and_settings_check(bench, tmp_path, capsys):
    data = _synthetic_cifar(tmp_path / "data")
    out, work = tmp_path / "tables.json", tmp_path / "work"
    argv = ["--smoke", "--dataset", str(data), "--out", str(out), "--work-dir", str(work),
            "--only", "kd_finetune,knowledge_transfer", "--latency-runs", "2"]
    bench.main(argv)
    result = json.loads(out.read_text())
    rows = result["rows"]
    expected = {f"kd_finetune/vgg16_w0.25/{r}" for r in ("plain", "kd")} | {
        f"knowledge_transfer/vgg16_w0.25/{r}" for r in ("teacher", "student_multilevel",
                                                         "student_multilevel_pruned", "student_ce")}
    assert set(rows) == expected and result["complete"]
    for row in rows.values():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["params"] > 0 and row["onnx_latency_ms"] > 0
    teacher, pruned = rows["knowledge_transfer/vgg16_w0.25/teacher"], rows["kd_finetune/vgg16_w0.25/plain"]
    assert pruned["conv_filters"] < teacher["conv_filters"] and pruned["flops"] < teacher["flops"]
    assert (work / "teacher_vgg16_w0.25.safetensors").exists()

    capsys.readouterr()
    bench.main(argv)  # every row is done: nothing is trained again
    assert "training vgg16_w0.25" not in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"] == rows

    with pytest.raises(SystemExit, match="other settings"):
        bench.main(argv + ["--seed", "1"])  # the JSON's rows are from seed 0
    other = [a if a != str(out) else str(tmp_path / "other.json") for a in argv]
    with pytest.raises(SystemExit, match="models trained with other settings"):
        bench.main(other + ["--seed", "1"])  # so are the cached models in the work dir
