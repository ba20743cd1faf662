"""int8 post-training static quantization with PyTorch's FX graph mode.

What torch 2.13 (CPU) offers, checked for this project:

* ``torch.ao.quantization.quantize_fx.prepare_fx`` / ``convert_fx`` (FX graph
  mode) works: it traces the model, fuses conv/linear + ReLU, inserts
  observers, and after calibration swaps in quantized modules that run on the
  ``x86`` (fbgemm + oneDNN) engine. It is on its way out and says so: a
  ``DeprecationWarning`` "torch.ao.quantization is deprecated and will be
  removed in 2.10" (still present in 2.13; pytorch/ao#2259 points to torchao),
  and a ``UserWarning`` that quantized-tensor creation functions
  (``torch.quantize_per_tensor`` ...) "will be removed in a future PyTorch
  release" (pytorch/pytorch#184982). edgeslim leaves both visible.
* The PT2E flow is no longer in torch: ``torch.ao.quantization.quantize_pt2e``
  does not exist in 2.13; it moved to the separate ``torchao`` package, which
  edgeslim does not depend on.
* Eager mode (``torch.ao.quantization.prepare``/``convert``) needs
  ``QuantStub``/``DeQuantStub`` and hand-written fusion in every model, so it
  cannot quantize an arbitrary zoo or pruned model; not used.

The converted module exports to ONNX (QDQ) with the TorchScript exporter;
onnxruntime reproduces its outputs up to requantization rounding (checked by
:func:`check_onnx_parity`).
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from edgeslim.errors import EdgeslimError, ExportError, UnsupportedModelError
from edgeslim.export import export_onnx
from edgeslim.io import atomic_write_bytes
from edgeslim.quant.options import QuantOptions

PARITY_STEPS = 8  # allowed output difference torch vs onnxruntime, in output quantization steps
PARITY_IMAGES = 64  # calibration images used for that check

# The first supported engine wins: x86 (fbgemm + oneDNN) on PCs, qnnpack on ARM.
ENGINES: tuple[str, ...] = ("x86", "fbgemm", "qnnpack")


def _engine() -> str:
    supported = set(torch.backends.quantized.supported_engines)
    for name in ENGINES:
        if name in supported:
            return name
    raise EdgeslimError(f"this torch build has no int8 CPU engine (supported: {sorted(supported)}); "
                        "use backend='onnxruntime'")


@contextlib.contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    """Select ``torch.backends.quantized.engine`` for the block, then restore it."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _qconfig_mapping(engine: str, per_channel: bool):  # -> QConfigMapping
    from torch.ao.quantization import QConfig, default_weight_observer, get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(engine)  # per-channel weights on x86/fbgemm
    if not per_channel:
        activation = mapping.global_qconfig.activation
        mapping.set_global(QConfig(activation=activation, weight=default_weight_observer))
    return mapping


def fx_quantize(model: nn.Module, inputs: tuple[torch.Tensor, ...], batches: list[torch.Tensor],
                options: QuantOptions) -> nn.Module:
    """Trace, calibrate and convert a *copy* of ``model`` to an int8 ``GraphModule``.

    Raises:
        UnsupportedModelError: ``torch.fx`` cannot trace the model.
    """
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = _engine()
    float_model = copy.deepcopy(model).cpu().eval()
    with quantized_engine(engine), warnings.catch_warnings():
        # torch's own default qconfig triggers this notice; nothing a user can change.
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        try:
            prepared = prepare_fx(float_model, _qconfig_mapping(engine, options.per_channel), inputs)
        except Exception as exc:
            raise UnsupportedModelError(
                f"torch.fx cannot trace {type(model).__name__} for int8 quantization: "
                f"{type(exc).__name__}: {exc}. Use backend='onnxruntime', which only needs ONNX export"
            ) from exc
        with torch.inference_mode():
            for x in batches:
                prepared(x)
        return convert_fx(prepared).eval()


def output_scale(qmodel: nn.Module, x: torch.Tensor) -> float | None:
    """Quantization step of the model's output: the scale of the last per-tensor int8 tensor."""
    scales: list[float] = []

    def hook(module: nn.Module, args: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.is_quantized and out.qscheme() == torch.per_tensor_affine:
            scales.append(float(out.q_scale()))

    handles = [m.register_forward_hook(hook) for m in qmodel.modules()]
    try:
        with torch.inference_mode():
            qmodel(x)
    finally:
        for handle in handles:
            handle.remove()
    return scales[-1] if scales else None


def check_onnx_parity(qmodel: nn.Module, onnx_file: Path, x: torch.Tensor) -> float:
    """Max output difference between the torch int8 module and onnxruntime on its ONNX export.

    Both run the same int8 model but requantize with different rounding, and a
    one-level difference in a hidden layer can move an output by a few levels:
    measured up to 4 output steps on the zoo (0 on LeNet-5 and ResNet-56,
    1 on ResNet-20, 2-3 on VGG-16, 4 on MobileNetV2). An export bug moves
    outputs by far more, so the limit is :data:`PARITY_STEPS` output steps.

    Raises:
        ExportError: the difference exceeds the limit.
    """
    from edgeslim.export.onnx import onnxruntime_outputs

    with torch.inference_mode():
        reference = qmodel(x)
    diff = float((reference - torch.from_numpy(onnxruntime_outputs(onnx_file, [x])[0])).abs().max())
    step = output_scale(qmodel, x[:1]) or float(reference.abs().max()) / 127
    if not diff <= PARITY_STEPS * step:
        raise ExportError(
            f"the ONNX export of the torch int8 model disagrees with it: max abs diff {diff:.3g} is more "
            f"than {PARITY_STEPS} output quantization steps ({step:.3g} each). Use backend='onnxruntime'"
        )
    return diff


def quantize_torch(model: nn.Module, inputs: tuple[torch.Tensor, ...], batches: list[torch.Tensor],
                   options: QuantOptions, target: Path, workdir: Path) -> tuple[Path, nn.Module]:
    """Backend ``"torch"``: FX PTQ, then export the int8 module to ``target`` (QDQ ONNX).

    The export is checked against the int8 module on the first calibration
    batch (:func:`check_onnx_parity`) before it is moved to ``target``.

    Returns:
        ``(target, int8_module)``: the module runs in memory, the file in onnxruntime.
    """
    qmodel = fx_quantize(model, inputs, batches, options)
    scratch = workdir / "model.torch-int8.onnx"
    with quantized_engine(_engine()):
        # Exact parity is not expected (see check_onnx_parity): check with our own limit.
        export_onnx(qmodel, inputs, scratch, tol=math.inf, opset=options.opset, dynamic_batch=True)
        check_onnx_parity(qmodel, scratch, batches[0][:PARITY_IMAGES])
    atomic_write_bytes(target, scratch.read_bytes())
    return target, qmodel
