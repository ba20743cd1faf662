"""Profiler: analytic parameter/FLOP counts, sparsity, memory, latency plumbing."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.models import create_model
from edgeslim.profile import (
    count_flops,
    count_params,
    flops_by_module,
    format_table,
    format_value,
    measure_latency,
    ort_latency,
    peak_memory,
    profile,
    weight_bytes,
)


def test_params_of_known_layers() -> None:
    assert count_params(nn.Conv2d(3, 8, 3)) == 3 * 8 * 3 * 3 + 8
    assert count_params(nn.Conv2d(8, 8, 3, groups=8, bias=False)) == 8 * 3 * 3
    assert count_params(nn.Linear(10, 5)) == 10 * 5 + 5
    assert count_params(nn.BatchNorm2d(6)) == 2 * 6  # running stats are buffers
    assert weight_bytes(nn.Linear(10, 5)) == 4 * 55


def test_shared_parameters_are_counted_once() -> None:
    layer = nn.Linear(4, 4)
    assert count_params(nn.Sequential(layer, nn.ReLU(), layer)) == 4 * 4 + 4


@pytest.mark.parametrize("cin,cout,k,stride,hw,batch", [
    (3, 8, 3, 1, 16, 1), (4, 6, 5, 2, 20, 2), (16, 32, 1, 2, 8, 3),
])
def test_conv_flops_analytic(cin: int, cout: int, k: int, stride: int, hw: int, batch: int) -> None:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
    flops, macs = count_flops(conv, torch.randn(batch, cin, hw, hw))
    assert flops == batch * 2 * cin * cout * k * k * hw * hw // stride**2
    assert flops == 2 * macs


def test_depthwise_and_linear_flops() -> None:
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_flops(dw, torch.randn(1, 8, 10, 10))[1] == 8 * 3 * 3 * 10 * 10
    assert count_flops(nn.Linear(20, 7), torch.randn(3, 20))[1] == 3 * 20 * 7


def test_lenet5_flops_by_hand() -> None:
    model = create_model("lenet5")  # 28x28, first conv padded by 2
    macs = (
        6 * 1 * 5 * 5 * 28 * 28      # conv1 -> 6x28x28
        + 16 * 6 * 5 * 5 * 10 * 10   # conv2 on 6x14x14 -> 16x10x10
        + 400 * 120 + 120 * 84 + 84 * 10
    )
    assert count_flops(model, torch.randn(1, 1, 28, 28)) == (2 * macs, macs)
    per_module = flops_by_module(model, torch.randn(1, 1, 28, 28))
    assert per_module[""] == 2 * macs
    assert per_module["features.0"] == 2 * 6 * 25 * 28 * 28
    assert per_module["features"] + per_module["classifier"] == 2 * macs


def test_zeroed_weights_reduce_nonzero_params() -> None:
    model = create_model("lenet5")
    dense = count_params(model, nonzero=True)
    with torch.no_grad():
        model.features[0].weight[:2] = 0.0  # 2 filters of 1x5x5
    assert count_params(model, nonzero=True) == dense - 2 * 25
    assert count_params(model) == profile(model, torch.randn(1, 1, 28, 28), latency=False)["params"]


def test_peak_memory_counts_live_activations() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    out_bytes = 2 * 8 * 16 * 16 * 4
    # conv output and ReLU output are alive together; weights and input are not counted
    assert peak_memory(model, torch.randn(2, 3, 16, 16)) == 2 * out_bytes


def test_profile_keys_and_json(tmp_path) -> None:
    model = create_model("resnet20", width_mult=0.25)
    model.train()
    result = profile(model, torch.randn(1, 3, 32, 32), runs=3, warmup=1, onnx=True)
    expected = {"params", "nonzero_params", "flops", "macs", "bytes", "latency_ms",
                "latency_p90_ms", "peak_memory_bytes", "onnx_latency_ms", "onnx_latency_p90_ms"}
    assert expected == set(result)
    assert result["flops"] == 2 * result["macs"] > 0
    assert result["bytes"] == 4 * result["params"]
    assert result["latency_ms"] > 0 and result["latency_p90_ms"] >= result["latency_ms"]
    assert result["onnx_latency_ms"] > 0
    assert model.training
    assert json.loads(json.dumps(result)) == result


def test_latency_restores_threads_and_mode() -> None:
    model = create_model("lenet5")
    before = torch.get_num_threads()
    median, p90 = measure_latency(model, torch.randn(1, 1, 28, 28), threads=1, runs=3, warmup=1)
    assert 0 < median <= p90
    assert torch.get_num_threads() == before and model.training
    with pytest.raises(ConfigError, match="runs"):
        measure_latency(model, torch.randn(1, 1, 28, 28), runs=0)


def test_ort_latency(tmp_path) -> None:
    from edgeslim.export import export_onnx

    model = create_model("lenet5")
    x = torch.randn(1, 1, 28, 28)
    export_onnx(model, x, tmp_path / "m.onnx")
    median, p90 = ort_latency(tmp_path / "m.onnx", x, threads=1, runs=3, warmup=1)
    assert 0 < median <= p90


def test_format_table() -> None:
    rows = [
        {"model": "a", "params": 1_234_567, "bytes": 2048, "latency_ms": 1.5},
        {"model": "b", "params": 999, "bytes": 10, "latency_ms": None, "macs": 3_000_000_000},
    ]
    lines = format_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["model", "params", "bytes", "latency_ms", "macs"]
    assert "1.235M" in lines[2] and "2 KiB" in lines[2] and "1.500" in lines[2]
    assert lines[3].split()[-2:] == ["-", "3G"]
    assert format_value("peak_memory_bytes", 3 * 1024**2) == "3 MiB"


def test_format_table_leaves_structured_values_out() -> None:
    from edgeslim.profile.summary import format_table

    rows = [{"stage": "train", "accuracy": 0.98, "latency_setup": {"batch": 1}, "layer_latency_ms": {"a": 0.1}},
            {"stage": "prune", "accuracy": 0.97, "moves": ["x"]}]
    header = format_table(rows).splitlines()[0].split()
    assert header == ["stage", "accuracy"]
