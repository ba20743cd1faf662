"""``quantize``: int8 post-training static quantization of a float model.

Backend choice, measured with ``benchmarks/quant_latency.py`` on this
project's shared 2-core x86 CPU (AVX2, no VNNI); latency: 1 thread, batch 1,
median ms (the machine was loaded, so compare within a row):

======================  =====  ========  ========  ==========  ==================
model                   eager  ORT fp32  ORT int8  torch int8  ORT int8 of torch's
======================  =====  ========  ========  ==========  ==================
LeNet-5 (MNIST)         0.60   0.067     0.16      0.73        0.14
VGG-16 x0.25 (CIFAR)    4.2    0.83      0.32      1.4         0.44
VGG-16 (CIFAR, random)  90     38        13        23          13
======================  =====  ========  ========  ==========  ==================

Top-1 agreement with fp32 on the full test sets (and accuracy change):
LeNet-5 trained 1 epoch (97.90%): onnxruntime 99.81% (+0.07 pts), torch
99.76% (-0.03). VGG-16 x0.25 trained 4 epochs on 20k images (64.92%):
onnxruntime 98.36% (-0.19 pts), torch 97.64% (-0.28); onnxruntime with
``reduce_range=False`` only 88.61% (-2.35 pts), see :mod:`edgeslim.quant.ort_backend`.

So ``backend="onnxruntime"`` is the default: it agrees best with fp32, runs
2.6-2.9x faster than onnxruntime fp32 on the VGGs and 1.8-4.6x faster than
torch's int8 kernels, needs only an ONNX export (no ``torch.fx`` tracing),
and uses no deprecated torch API. On a model as small as LeNet-5 int8 does
not pay: the quantize/dequantize steps cost more than the integer arithmetic
saves, so ship the fp32 ONNX model there. ``"torch"`` (FX graph mode) is kept
for users who want int8 inside PyTorch; its ONNX export also runs in
onnxruntime, a little slower than the onnxruntime backend's file (0.44 vs 0.32
ms on VGG-16 x0.25).
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from edgeslim.errors import ConfigError, ExportError
from edgeslim._core import as_input_tuple, eval_mode, flatten_outputs
from edgeslim._core import device_of as model_device
from edgeslim.quant.calibration import calibration_batches
from edgeslim.quant.model import QuantizedModel
from edgeslim.quant.options import QuantOptions
from edgeslim.quant.ort_backend import quantize_onnxruntime
from edgeslim.quant.torch_backend import quantize_torch
from edgeslim.registry import Registry, RegistryError
from edgeslim.stage_args import quantize_keywords, takes_stage_config

# (model, inputs, calibration batches, options, target file, scratch folder)
#   -> (int8 ONNX file, in-memory int8 module or None)
Backend = Callable[[nn.Module, tuple[torch.Tensor, ...], list[torch.Tensor], QuantOptions, Path, Path],
                   tuple[Path, "nn.Module | None"]]
QUANT_BACKENDS: Registry[Backend] = Registry("quantization backend")
QUANT_BACKENDS.register("onnxruntime")(quantize_onnxruntime)
QUANT_BACKENDS.register("torch")(quantize_torch)

INT8_NAME = "model.int8.onnx"


def _backend(name: str) -> Backend:
    try:
        return QUANT_BACKENDS.get(name)
    except RegistryError as exc:
        raise ConfigError(f"quantize(backend={name!r}): {exc}") from None


def _check_runs(qm: QuantizedModel, inputs: tuple[torch.Tensor, ...], reference: torch.Tensor) -> None:
    """The int8 model must run on the example inputs and give finite outputs of the right shape."""
    out = qm(*inputs)
    if out.shape != reference.shape or not torch.isfinite(out).all():
        raise ExportError(
            f"the int8 model {qm.onnx_path} gives outputs of shape {tuple(out.shape)} "
            f"(finite: {bool(torch.isfinite(out).all())}) where the float model gives "
            f"{tuple(reference.shape)}; the calibration data may not match the model's input"
        )


@takes_stage_config(quantize_keywords, positional=3, config_type="QuantizeStage")
def quantize(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], calib_data: Any, *,
             backend: str = "onnxruntime", num_batches: int = 8, max_samples: int | None = 512,
             path: str | os.PathLike[str] | None = None,
             options: QuantOptions | None = None) -> QuantizedModel:
    """int8 post-training static quantization (Jacob et al., CVPR 2018; Krishnamoorthi, 2018).

    Weights become int8 with one scale per output channel; activation scales
    come from the min/max seen on the calibration images.

    Args:
        model: the float network (left unchanged; moved to CPU copies if needed).
        example_inputs: a tensor (or tuple) of the input shape, batch 1 is fine;
            used to export and as the default input of ``QuantizedModel.latency``.
        calib_data: a few hundred *training* images: a loader, a list of
            ``(x, y)`` batches, an ``(X, Y)`` pair or a tensor of normalised images.
        backend: ``"onnxruntime"`` (default: static QDQ quantization by
            onnxruntime) or ``"torch"`` (``torch.ao`` FX graph mode, x86 engine).
        num_batches: calibration batches to use.
        max_samples: calibration images at most (bounds calibration memory).
        path: where to write the int8 ONNX file (atomically), conventionally
            ``<run>/model.int8.onnx``; ``None`` keeps it in a temporary folder
            that lives as long as the returned object.
        options: per-channel weights, reduced range, opset (see ``QuantOptions``).

    Returns:
        A :class:`QuantizedModel` callable on float tensors.

    Raises:
        ConfigError: unknown backend (the message lists the valid ones) or bad counts.
        DataError: the calibration data is empty or not images.
        ExportError / UnsupportedModelError: the model cannot be exported or traced.
    """
    run = _backend(backend)
    options = options or QuantOptions()
    inputs = tuple(t.detach().cpu() for t in as_input_tuple(example_inputs))
    batches = calibration_batches(calib_data, num_batches, max_samples)
    cpu_model = model if model_device(model).type == "cpu" else copy.deepcopy(model).cpu()
    scratch = tempfile.TemporaryDirectory(prefix="edgeslim-quant-")
    keep = path is None
    target = Path(scratch.name) / INT8_NAME if keep else Path(path)
    try:
        with eval_mode(cpu_model), torch.no_grad():
            reference = flatten_outputs(cpu_model(*inputs))[0]
        onnx_path, module = run(cpu_model, inputs, batches, options, target, Path(scratch.name))
        qm = QuantizedModel(onnx_path, inputs, module=module, backend=backend.lower())
        _check_runs(qm, inputs, reference)
    except BaseException:
        scratch.cleanup()
        raise
    if keep:
        qm._workdir = scratch  # the temporary int8 file lives as long as qm
    else:
        scratch.cleanup()
    return qm
