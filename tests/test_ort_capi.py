"""benchmarks/ort_capi.py: onnxruntime timed through its C API, its output checked against Python's."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from benchload import benchmark_module
from edgeslim.export import export_onnx

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")),
                                reason="no C compiler to build benchmarks/ort_capi.c")


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, 3), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                         nn.Conv2d(16, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10)).eval()


@pytest.mark.parametrize("batch", [1, 3])
def test_c_api_times_the_model_python_onnxruntime_runs(tmp_path, batch):
    x = torch.randn(batch, 1, 28, 28)
    export_onnx(_net(0), x, tmp_path / "m.onnx")
    with benchmark_module("ort_capi") as capi:
        exe = capi.build(tmp_path)
        ms = capi.c_latency(exe, tmp_path / "m.onnx", x.numpy(), runs=5, warmup=1)
    assert 0 < ms < 1000


def test_c_api_output_that_is_not_pythons_is_refused(tmp_path, monkeypatch):
    """The parity check can fail: Python onnxruntime runs another model of the same shapes."""
    import edgeslim.profile

    x = torch.randn(1, 1, 28, 28)
    export_onnx(_net(0), x, tmp_path / "a.onnx")
    export_onnx(_net(1), x, tmp_path / "b.onnx")
    real = edgeslim.profile.ort_session
    monkeypatch.setattr(edgeslim.profile, "ort_session", lambda path, threads=1: real(tmp_path / "b.onnx"))
    with benchmark_module("ort_capi") as capi:
        exe = capi.build(tmp_path)
        with pytest.raises(SystemExit, match="differs from Python onnxruntime"):
            capi.c_latency(exe, tmp_path / "a.onnx", x.numpy(), runs=2, warmup=0)


def test_headline_latency_times_the_c_api_in_the_same_rounds(tmp_path):
    with benchmark_module("headline") as headline:
        exe = headline.build_c_api(tmp_path)
        models = {"teacher": _net(0), "final": _net(1), "empty": headline._Empty()}
        lat = headline.latency(models, (1, 28, 28), [1], threads=1, rounds=2, runs=10, work=tmp_path, c_api=exe)
    b1 = lat["batch1"]
    assert set(b1["onnxruntime_c_ms"]) == set(models)
    assert all(len(v) == 2 and min(v) > 0 for v in b1["onnxruntime_c_rounds_ms"].values())
    assert b1["onnxruntime_c_speedup"] == pytest.approx(b1["onnxruntime_c_ms"]["teacher"] / b1["onnxruntime_c_ms"]["final"])
    assert np.isfinite(b1["onnxruntime_c_ceiling"])


def test_c_api_times_with_the_thread_clock_when_edgeslim_latency_clock_says_so(tmp_path, monkeypatch):
    """The clock of ``EDGESLIM_LATENCY_CLOCK`` is handed to the harness: ``thread`` times, and a clock
    name the harness does not know fails with its usage error instead of timing with another clock."""
    x = torch.randn(1, 1, 28, 28)
    export_onnx(_net(0), x, tmp_path / "m.onnx")
    with benchmark_module("ort_capi") as capi:
        exe = capi.build(tmp_path)
        monkeypatch.setenv("EDGESLIM_LATENCY_CLOCK", "thread")
        assert capi.c_latency(exe, tmp_path / "m.onnx", x.numpy(), runs=5, warmup=1) > 0
        monkeypatch.setattr("edgeslim.profile.latency.latency_clock", lambda threads=1: "cpu")
        with pytest.raises(SystemExit, match="CLOCK wall or thread"):
            capi.c_latency(exe, tmp_path / "m.onnx", x.numpy(), runs=5, warmup=1)
