"""ONNX export: parity with onnxruntime, dynamic batch, and the failure path."""
from __future__ import annotations

import re

import onnx
import pytest
import torch
from torch import nn

import edgeslim.export
from edgeslim.errors import ExportError
from edgeslim.export import export_onnx
from edgeslim.export.onnx import max_abs_diff, onnxruntime_outputs
from edgeslim.models import create_model


def _perturb_bn_(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.5
            m.running_var = torch.rand(m.num_features, generator=gen) + 0.5
            m.running_mean = torch.randn(m.num_features, generator=gen) * 0.1


@pytest.mark.parametrize("name,kwargs", [
    ("lenet5", {}),
    ("resnet20", {"width_mult": 0.5}),
    ("mobilenetv2", {"width_mult": 0.5}),
    ("vgg11", {"width_mult": 0.25, "classifier": "mlp"}),
])
def test_parity_and_modes_restored(name: str, kwargs: dict, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    _perturb_bn_(model)
    frozen = next(m for m in model.modules() if not list(m.children()))
    frozen.eval()  # a user-frozen submodule must stay frozen
    x = torch.randn(2, *model.default_input_size)
    path = tmp_path / "out" / "model.onnx"
    diff = export_onnx(model, x, path)
    assert diff <= 1e-4
    onnx.checker.check_model(str(path))
    assert model.training and not frozen.training
    with torch.no_grad():
        ref = model.eval()(x)
    assert max_abs_diff([ref], onnxruntime_outputs(path, [x])) <= 1e-4


def test_dynamic_batch(tmp_path) -> None:
    model = create_model("resnet20", width_mult=0.25).eval()
    path = tmp_path / "dyn.onnx"
    export_onnx(model, torch.randn(1, 3, 32, 32), path)
    x3 = torch.randn(3, 3, 32, 32)
    (out,) = onnxruntime_outputs(path, [x3])
    assert out.shape == (3, 10)
    with torch.no_grad():
        assert max_abs_diff([model(x3)], [out]) <= 1e-4


def test_static_batch(tmp_path) -> None:
    model = create_model("lenet5")
    path = tmp_path / "static.onnx"
    export_onnx(model, torch.randn(1, 1, 28, 28), path, dynamic_batch=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 28, 28]


def test_impossible_tolerance_raises_and_writes_nothing(tmp_path) -> None:
    model = create_model("lenet5")
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=re.escape("bad.onnx")) as info:
        export_onnx(model, torch.randn(1, 1, 28, 28), path, tol=-1)
    assert "max abs diff" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp file


def test_failed_export_keeps_an_existing_file(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ExportError):
        export_onnx(create_model("lenet5"), torch.randn(1, 1, 28, 28), path, tol=-1)
    assert path.read_bytes() == b"previous"


class _TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x) + self.b(y), self.a(x).relu()


def test_multiple_inputs_and_outputs(tmp_path) -> None:
    model = _TwoInTwoOut()
    x, y = torch.randn(2, 4), torch.randn(2, 5)
    path = tmp_path / "two.onnx"
    assert export_onnx(model, (x, y), path) <= 1e-4
    names = [i.name for i in onnx.load(str(path)).graph.input]
    assert names == ["input_0", "input_1"]
    outs = onnxruntime_outputs(path, [torch.randn(5, 4), torch.randn(5, 5)])
    assert [o.shape for o in outs] == [(5, 3), (5, 3)]


def test_lazy_attribute_errors_are_clear() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        getattr(edgeslim.export, "nothing")  # noqa: B009
