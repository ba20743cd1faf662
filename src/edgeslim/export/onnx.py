"""ONNX export with an onnxruntime parity check.

``export_onnx`` writes the model atomically, validates it with
``onnx.checker`` and runs onnxruntime on the same inputs as PyTorch: a file
that disagrees with the model by more than ``tol`` never reaches ``path``.

Exporter choice (torch 2.13): the TorchScript-based exporter
(``dynamo=False``) is tried first. It exports the zoo models in about a second
at any opset, honours ``dynamic_axes`` even when the example batch is 1, and
writes a single file. The torch.export-based exporter (``dynamo=True``, the
default since torch 2.9) is the fallback: it is several times slower, starts
at opset 18, and specialises a batch dimension of size 1. If a future torch
drops the TorchScript path, the fallback keeps ``export_onnx`` working.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim._checks import check_model_and_inputs, run_checked
from edgeslim.errors import ExportError
from edgeslim.io import atomic_path
from edgeslim._core import as_input_tuple, eval_mode, flatten_outputs


@dataclass(frozen=True)
class _ExportSpec:
    """What every exporter backend needs: where, which opset, which names/axes."""

    path: Path
    opset: int
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] | None


def _export_torchscript(model: nn.Module, inputs: tuple[torch.Tensor, ...],
                        spec: _ExportSpec) -> None:
    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with warnings.catch_warnings():
        # We choose the legacy exporter on purpose (see module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, inputs, str(spec.path), input_names=spec.input_names,
            output_names=spec.output_names, opset_version=spec.opset,
            dynamic_axes=spec.dynamic_axes, do_constant_folding=True, **kwargs,
        )


def _export_dynamo(model: nn.Module, inputs: tuple[torch.Tensor, ...], spec: _ExportSpec) -> None:
    torch.onnx.export(
        model, inputs, str(spec.path), input_names=spec.input_names,
        output_names=spec.output_names, opset_version=spec.opset,
        dynamic_axes=spec.dynamic_axes, dynamo=True, external_data=False,
    )


ExporterBackend = Callable[[nn.Module, tuple[torch.Tensor, ...], _ExportSpec], None]
# Tried in order; the first that writes a file wins.
EXPORTERS: tuple[tuple[str, ExporterBackend], ...] = (
    ("torchscript", _export_torchscript),
    ("dynamo", _export_dynamo),
)


def _names(prefix: str, count: int) -> list[str]:
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]


def _run_exporters(model: nn.Module, inputs: tuple[torch.Tensor, ...], spec: _ExportSpec,
                   target: Path) -> str:
    """Export with the first backend that succeeds; returns its name."""
    errors: list[str] = []
    for name, backend in EXPORTERS:
        try:
            backend(model, inputs, spec)
            return name
        except Exception as exc:  # any exporter failure: try the next backend
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise ExportError(
        f"ONNX export of {type(model).__name__} to {target} failed with every exporter:\n  "
        + "\n  ".join(errors)
        + "\nCheck that the model traces (no data-dependent Python control flow) "
        "or try another opset"
    )


def onnxruntime_outputs(onnx_path: str | os.PathLike[str], inputs: Sequence[torch.Tensor],
                        threads: int = 1) -> list[np.ndarray]:
    """Run an ONNX file once on the CPU with onnxruntime; inputs are fed in graph order."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    # strict=False: the exporter drops inputs the graph never reads
    metas = session.get_inputs()
    feed = {m.name: t.detach().cpu().numpy() for m, t in zip(metas, inputs, strict=False)}
    return session.run(None, feed)


def max_abs_diff(reference: Sequence[torch.Tensor], outputs: Sequence[np.ndarray]) -> float:
    """Largest absolute difference over all outputs (inf on a count/shape mismatch or NaN)."""
    if len(reference) != len(outputs):
        return float("inf")
    worst = 0.0
    for ref, out in zip(reference, outputs, strict=True):
        ref_np = ref.detach().float().cpu().numpy()
        if ref_np.shape != out.shape:
            return float("inf")
        diff = float(np.max(np.abs(ref_np - out))) if ref_np.size else 0.0
        worst = max(worst, diff if np.isfinite(diff) else float("inf"))
    return worst


def parity_bound(reference: Sequence[torch.Tensor], tol: float, rtol: float) -> tuple[float, float]:
    """(largest accepted |runtime - torch| difference, max |output|): numpy.allclose-style,
    large logits get a proportional allowance."""
    scale = max((float(r.detach().abs().max()) for r in reference if r.numel()), default=0.0)
    return tol + rtol * scale, scale


def _verify(tmp: Path, target: Path, inputs: tuple[torch.Tensor, ...],
            reference: list[torch.Tensor], tol: float, rtol: float) -> float:
    import onnx

    try:
        onnx.checker.check_model(str(tmp))
    except Exception as exc:
        raise ExportError(f"exported ONNX model for {target} fails onnx.checker: {exc}") from exc
    diff = max_abs_diff(reference, onnxruntime_outputs(tmp, inputs))
    bound, scale = parity_bound(reference, tol, rtol)
    if not diff <= bound:
        raise ExportError(
            f"onnxruntime disagrees with PyTorch for {target}: max abs diff {diff:.3g} > "
            f"tol {tol:g} + rtol {rtol:g} x max |output| {scale:.3g}. "
            "The file was not written. Look for ops that behave differently in eval mode or "
            "when traced (data-dependent control flow), or raise tol if the model is low precision"
        )
    return diff


@contextlib.contextmanager
def _true_fp32(enabled: bool) -> Iterator[None]:
    """Disable TF32 while computing the CUDA reference (onnxruntime on CPU is true fp32).

    On Ampere and newer GPUs cuDNN convolutions default to TF32, whose ~1e-3
    relative error would fail the parity check for reasons unrelated to export.
    """
    if not enabled:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def export_onnx(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                path: str | os.PathLike[str], *, tol: float = 1e-4, rtol: float = 1e-5,
                opset: int = 17, dynamic_batch: bool = True) -> float:
    """Export ``model`` (in eval mode) to ONNX and check onnxruntime against PyTorch.

    Args:
        model: the network; its train/eval flags are restored afterwards.
        example_inputs: a tensor or a tuple of tensors to trace and compare with.
        path: the ``.onnx`` file; written atomically, only if the check passes.
        tol: accepted absolute difference between the outputs ...
        rtol: ... plus this fraction of the largest |output| (float32 rounding grows with
            the magnitude of the logits; ``rtol=0`` makes the check purely absolute).
        opset: ONNX opset version.
        dynamic_batch: make dimension 0 of every input and output symbolic.

    Returns:
        The max absolute difference between PyTorch and onnxruntime outputs.

    Raises:
        ExportError: the export failed, the checker rejected the graph, or the
            difference exceeds ``tol + rtol * max|output|`` (the message names the file
            and the diff).
        ConfigError: the example inputs do not fit the model (wrong shape or number).
        UnsupportedModelError: the model's weights are on the meta device.
    """
    inputs = as_input_tuple(example_inputs)
    check_model_and_inputs(model, inputs, "export_onnx")
    target = Path(path)
    on_cuda = any(t.device.type == "cuda" for t in inputs)
    with eval_mode(model), torch.no_grad():
        with _true_fp32(on_cuda):
            reference = flatten_outputs(run_checked(lambda: model(*inputs), model, inputs, "export_onnx"))
        input_names, output_names = _names("input", len(inputs)), _names("output", len(reference))
        axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
        with atomic_path(target, suffix=".onnx") as tmp:
            spec = _ExportSpec(tmp, opset, input_names, output_names, axes)
            _run_exporters(model, inputs, spec, target)
            return _verify(tmp, target, inputs, reference, tol, rtol)
