"""OpenVINO IR export (optional extra) and timing: parity with PyTorch, atomic files, clear
errors when openvino is missing. Skipped where openvino is not installed, except the error."""
from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

import edgeslim
import nets
from edgeslim.errors import ExportError
from edgeslim.profile.runtimes import RuntimeUnavailableError
from nets import example_input, randomize_bn_

openvino = pytest.importorskip("openvino", reason="optional extra: pip install openvino")


@pytest.mark.parametrize("make", [nets.resnet_basic, nets.TinyConvNeXt, nets.SENet])
def test_ir_matches_pytorch_and_is_written_atomically(make, tmp_path: Path) -> None:
    model = randomize_bn_(make()).eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.3)
    diff = edgeslim.export_openvino(pruned, x, tmp_path / "m.xml")
    assert diff < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
    # f32 as in the parity check (on CPUs with bf16 units OpenVINO defaults to lower precision)
    compiled = openvino.Core().compile_model(str(tmp_path / "m.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled([x.numpy()])[compiled.output(0)]
    torch.testing.assert_close(torch.from_numpy(out), pruned(x), atol=1e-4, rtol=1e-4)


def test_a_disagreeing_ir_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeslim.export import openvino as ov_export

    monkeypatch.setattr(ov_export, "max_abs_diff", lambda ref, out: 1.0)
    with pytest.raises(ExportError, match="OpenVINO disagrees"):
        edgeslim.export_openvino(nets.resnet_basic().eval(), example_input(1), tmp_path / "m.xml")
    assert not list(tmp_path.glob("m.*"))


def test_openvino_latency_is_measured() -> None:
    model = nets.resnet_basic().eval()
    ms = edgeslim.measure_latency(model, example_input(1), runtime="openvino", threads=1)
    assert ms > 0


def test_missing_openvino_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(RuntimeUnavailableError, match="pip install openvino"):
        edgeslim.export_openvino(nets.resnet_basic().eval(), example_input(1), tmp_path / "m.xml")
