"""OpenVINO IR export (``model.xml`` + ``model.bin``) with the same parity check as ONNX.

OpenVINO is the x86 edge runtime; it is an optional extra (``pip install openvino``). The
model goes through :func:`~edgeslim.export.onnx.export_onnx` (itself checked against
onnxruntime), is converted with ``openvino.convert_model``, compiled for the CPU and run
on the example inputs: an IR that disagrees with PyTorch by more than ``tol + rtol *
max|output|`` is never written. Both files are written atomically. The check runs in f32
(``INFERENCE_PRECISION_HINT``): on CPUs with bf16 units OpenVINO otherwise picks a lower
precision by default, which deploy code can choose deliberately.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .._core import as_input_tuple, eval_mode, flatten_outputs
from ..errors import ExportError
from ..io import atomic_path
from .onnx import export_onnx, max_abs_diff, parity_bound


def _openvino():  # -> the openvino module
    from ..profile.runtimes import _openvino as load

    return load()


def export_openvino(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                    path: str | os.PathLike[str], *, tol: float = 1e-4, rtol: float = 1e-5,
                    opset: int = 17) -> float:
    """Write ``model`` as an OpenVINO IR (``path`` ends in ``.xml``; the ``.bin`` goes beside it).

    Returns:
        The max absolute difference between PyTorch and OpenVINO (CPU plugin) outputs.

    Raises:
        RuntimeUnavailableError: openvino is not installed (``pip install openvino``).
        ExportError: the ONNX step or the conversion failed, or the outputs disagree.
    """
    ov = _openvino()
    inputs = as_input_tuple(example_inputs)
    target = Path(path).with_suffix(".xml")
    with eval_mode(model), torch.no_grad():
        reference = flatten_outputs(model(*inputs))
    with tempfile.TemporaryDirectory(prefix="edgeslim-ov-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, inputs, onnx_path, tol=tol, rtol=rtol, opset=opset)
        try:
            ir = ov.convert_model(str(onnx_path))
        except Exception as exc:  # OpenVINO raises its own types for unsupported graphs
            raise ExportError(f"OpenVINO cannot convert the ONNX graph of {target}: {exc}") from exc
        staged = Path(tmp) / "model.xml"
        ov.save_model(ir, str(staged), compress_to_fp16=False)
        diff = _parity(ov, staged, inputs, reference, tol, rtol, target)
        with atomic_path(target.with_suffix(".bin")) as bin_tmp:
            bin_tmp.write_bytes(staged.with_suffix(".bin").read_bytes())
        with atomic_path(target) as xml_tmp:  # the .xml last: it names a .bin that exists
            xml_tmp.write_bytes(staged.read_bytes())
    return diff


def _parity(ov, xml: Path, inputs: tuple, reference: list[torch.Tensor], tol: float, rtol: float,
            target: Path) -> float:
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled([t.detach().cpu().numpy() for t in inputs])
    outputs = [np.asarray(result[compiled.output(i)]) for i in range(len(compiled.outputs))]
    diff = max_abs_diff(reference, outputs)
    bound, scale = parity_bound(reference, tol, rtol)
    if not diff <= bound:
        raise ExportError(f"OpenVINO disagrees with PyTorch for {target}: max abs diff {diff:.3g} > "
                          f"tol {tol:g} + rtol {rtol:g} x max |output| {scale:.3g}. The IR was not written.")
    return diff
