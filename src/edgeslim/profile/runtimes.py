"""The runtimes a model is deployed to, and the latency of a model in each of them.

A *runtime* times a whole ``nn.Module`` the way it will run after deployment:
``onnxruntime`` (the default: exported to ONNX, CPU execution provider, full graph
optimisation, which fuses Conv+BN+ReLU), ``torch`` (eager PyTorch) and ``openvino``
(an optional extra, used when ``import openvino`` works). Latency is the median over
``runs`` timed passes after ``warmup`` untimed ones, at the batch size of the
example inputs and ``threads`` intra-op threads.

A runtime is one small class registered in ``RUNTIMES``; tests register a
deterministic one (a cost function), so planners can be checked exactly.
"""
from __future__ import annotations

import copy
import functools
import platform
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from edgeslim._core import as_input_tuple, device_of, eval_mode
from edgeslim.errors import ConfigError, EdgeslimError
from edgeslim.profile import latency as _lat
from edgeslim.registry import Registry


class RuntimeUnavailableError(EdgeslimError):
    """The runtime named is an optional extra that is not installed."""


class Runtime:
    """Times a model in one deployment runtime (subclass and register in ``RUNTIMES``)."""

    name: str = ""

    def version(self) -> str:
        """Part of the latency cache key: another version may be faster or slower."""
        return "0"

    def time(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int,
             runs: int, warmup: int) -> float:
        """Median milliseconds of one inference of ``model`` on ``inputs``."""
        raise NotImplementedError

    def channel_multiple(self) -> int:
        """The channel count multiple the runtime's fast kernels want (1: any count)."""
        return 1

    def folds_batchnorm(self) -> bool:
        """Whether the runtime's own graph optimiser folds a BatchNorm into the conv before
        it (then folding it beforehand cannot save time, and the latency planner does not
        offer it: a difference its tables measured would be noise)."""
        return False


def blocked_layout_multiple() -> int:
    """Channels per block of the blocked (NCHWc) layout that onnxruntime's MLAS and
    OpenVINO's CPU plugin use on x86: 16 with AVX-512, 8 with AVX2, else 1.

    Why the planner needs it: a convolution whose channels are not a multiple of the block
    runs in plain NCHW, and inside a network the runtime converts the layout on each side
    of it. A layer timed alone cannot show that cost (its unit pays the conversions at
    either width). Measured on onnxruntime, ResNet-56, batch 1, AVX-512: every group at 3/4
    (12/24/48 channels, 56% of the FLOPs) ran at the unpruned latency, 1.89 vs 1.90 ms,
    where the tables predicted 1.54 ms; at 1/2 (8/16/32) it ran at 1.13 ms.
    """
    flags = _cpuinfo().get("flags", "").split()
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


RUNTIMES: Registry[type] = Registry("runtime")


@RUNTIMES.register("torch")
class TorchRuntime(Runtime):
    """PyTorch eager mode (``edgeslim.profile.measure_latency``)."""

    name = "torch"

    def version(self) -> str:
        return torch.__version__

    def time(self, model, inputs, threads, runs, warmup):
        return _lat.measure_latency(model, inputs, threads=threads, runs=runs, warmup=warmup)[0]


def _export(model: nn.Module, inputs: tuple, path: Path) -> None:
    from edgeslim.export.onnx import export_onnx

    export_onnx(model, inputs, path, dynamic_batch=False)


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    """onnxruntime's CPU execution provider on the exported ONNX graph."""

    name = "onnxruntime"

    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def time(self, model, inputs, threads, runs, warmup):
        with tempfile.TemporaryDirectory(prefix="edgeslim-latency-") as tmp:
            path = Path(tmp) / "model.onnx"
            _export(model, inputs, path)
            return _lat.ort_latency(path, inputs, threads=threads, runs=runs, warmup=warmup)[0]

    def channel_multiple(self) -> int:
        return blocked_layout_multiple()

    def folds_batchnorm(self) -> bool:
        return True  # full graph optimisation: Conv+BN(+ReLU) is one kernel


def _openvino():  # -> the openvino module
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "runtime='openvino' needs the optional OpenVINO package, which is not installed. "
            "Fix: pip install openvino (or choose runtime='onnxruntime' or 'torch')") from exc
    return openvino


@RUNTIMES.register("openvino")
class OpenVinoRuntime(Runtime):
    """OpenVINO's CPU plugin on the exported ONNX graph (optional extra: ``pip install openvino``)."""

    name = "openvino"

    def version(self) -> str:
        return str(getattr(_openvino(), "__version__", "unknown"))

    def time(self, model, inputs, threads, runs, warmup):
        ov = _openvino()
        with tempfile.TemporaryDirectory(prefix="edgeslim-latency-") as tmp:
            path = Path(tmp) / "model.onnx"
            _export(model, inputs, path)
            compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
            request = compiled.create_infer_request()
            feed = [t.detach().cpu().numpy() for t in inputs]
            return _lat._timed(lambda: request.infer(feed), runs, warmup, threads=threads)[0]

    def channel_multiple(self) -> int:
        return blocked_layout_multiple()

    def folds_batchnorm(self) -> bool:
        return True  # full graph optimisation: Conv+BN(+ReLU) is one kernel


class CostRuntime(Runtime):
    """A deterministic runtime (for tests and what-if studies): ``cost(module, input_shape)``
    milliseconds summed over the leaf modules of one forward pass, plus ``overhead_ms``."""

    def __init__(self, cost: Callable[[nn.Module, tuple[int, ...]], float], overhead_ms: float = 0.0,
                 name: str = "cost", multiple: int = 1) -> None:
        self.cost, self.overhead_ms, self.name, self.multiple = cost, overhead_ms, name, multiple
        self.calls = 0  # models timed so far

    def channel_multiple(self) -> int:
        return self.multiple

    def time(self, model, inputs, threads, runs, warmup):
        total = [self.overhead_ms]

        def hook(module, args, out):
            total[0] += float(self.cost(module, tuple(args[0].shape) if args else ()))

        leaves = [m for m in model.modules() if not list(m.children())] or [model]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with eval_mode(model), torch.no_grad():
                model(*inputs)
        finally:
            for h in handles:
                h.remove()
        self.calls += 1
        return total[0]


def get_runtime(runtime: str | Runtime) -> Runtime:
    """A ``Runtime`` from its registered name (or the instance itself)."""
    if isinstance(runtime, Runtime):
        return runtime
    if not isinstance(runtime, str):
        raise ConfigError(f"runtime={runtime!r} must be a name: one of {', '.join(RUNTIMES.names())}")
    runtime_obj = RUNTIMES.get(runtime)()
    runtime_obj.version()  # an optional runtime that is missing fails here, clearly
    return runtime_obj


#: the instruction sets that change which kernels a runtime runs (and so its latency)
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return {}


def parse_cpuinfo(text: str) -> dict[str, str]:
    """``key: value`` fields of the first processor block of a ``/proc/cpuinfo`` text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def describe_cpu(fields: dict[str, str]) -> str:
    """Model name, family / model / stepping and vector ISA, from ``parse_cpuinfo`` fields.

    The model name alone does not tell CPUs apart: cloud VMs report a generic one
    ("Intel(R) Xeon(R) Processor") for generations with and without AVX-512 or AMX, whose
    latencies differ (LeNet-5 in onnxruntime, 1 thread, batch 1: 36.5 us on one such VM,
    23.5 us on another), so the latency cache key and every benchmark's "cpu" hold all three.
    """
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown-cpu"
    ids = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if fields.get(k)]
    flags = set(fields.get("flags", "").split())
    isa = [f for f in _ISA_FLAGS if f in flags]
    extra = "; ".join(x for x in (", ".join(ids), " ".join(isa)) if x)
    return f"{name} ({extra})" if extra else name


def cpu_model() -> str:
    """This CPU, as ``describe_cpu`` writes it (part of the latency cache key)."""
    return describe_cpu(_cpuinfo())


def measure_latency(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
                    runtime: str | Runtime = "onnxruntime", threads: int = 1, runs: int = 50,
                    warmup: int = 10) -> float:
    """Median milliseconds of one inference of ``model`` in the runtime it is deployed to.

    Args:
        model: the network (eval mode while timing; flags restored).
        example_inputs: a tensor or tuple of tensors; its batch size is the one timed.
        runtime: ``"onnxruntime"`` (default), ``"torch"`` (eager) or ``"openvino"``
            (needs ``pip install openvino``); any name registered in ``RUNTIMES``.
        threads: intra-op CPU threads.
        runs: timed inferences.
        warmup: untimed inferences first.

    Returns:
        The median latency in milliseconds (wall clock; with one thread and
        ``EDGESLIM_LATENCY_CLOCK=thread``, the thread's CPU time, which a machine shared
        with other processes does not inflate: ``edgeslim.profile.latency.CLOCK_ENV``).

    Raises:
        RuntimeUnavailableError: ``openvino`` asked for but not installed.
        ConfigError: an unknown runtime or bad counts.
    """
    _lat._check_counts(threads, runs, warmup)
    inputs = tuple(t.detach().cpu() if isinstance(t, torch.Tensor) else t
                   for t in as_input_tuple(example_inputs))
    if device_of(model, default=None) not in (None, torch.device("cpu")):
        model = copy.deepcopy(model).cpu()  # CPU runtimes; the caller's model stays where it is
    return float(get_runtime(runtime).time(model, inputs, threads, runs, warmup))
