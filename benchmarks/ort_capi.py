"""onnxruntime through its C API: the latency an application on the device sees, without Python.

``session.run`` in Python pays a per-call cost (argument checks, numpy <-> OrtValue conversion,
output allocation) that an application calling onnxruntime from C or C++ does not: on a 2-core
AMD EPYC (AVX-512) VM a 3-node graph costs 6.6 us per ``session.run`` and 2.3 us per ``OrtApi::Run``.
For a model of a few microseconds that floor decides the speed-up. ``ort_capi.c`` times the same
model, session options as :func:`edgeslim.profile.ort_session` (1 thread, ORT_ENABLE_ALL), with one
``OrtApi::Run`` per call on buffers bound once.

    exe = build(Path("/tmp/x"))                   # gcc or cc, and the onnxruntime wheel's library
    ms = c_latency(exe, "model.onnx", x, runs=400, warmup=80)

The C output is checked against Python onnxruntime on the same input (a mismatch raises), so a
harness that ran the wrong thing cannot report a time.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parent / "ort_capi.c"


def ort_library() -> Path:
    """The shared library of the installed onnxruntime wheel (``capi/libonnxruntime.so.*``)."""
    import onnxruntime

    capi = Path(onnxruntime.__file__).resolve().parent / "capi"
    libs = sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime*.dylib"))
    libs = [p for p in libs if "providers" not in p.name]
    if not libs:
        raise SystemExit(f"--c-api: no onnxruntime shared library in {capi} (Linux and macOS wheels "
                         "ship one; on Windows measure with Python only)")
    return libs[-1]


def build(out_dir: Path) -> Path:
    """Compile ``ort_capi.c`` into ``out_dir``; returns the executable."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if not cc:
        raise SystemExit("--c-api needs a C compiler (gcc, cc or clang on PATH, or $CC); "
                         "install one or leave --c-api out")
    exe = out_dir / "ort_capi"
    proc = subprocess.run([cc, "-O2", "-o", str(exe), str(SOURCE), "-ldl"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"--c-api: {cc} could not build {SOURCE}:\n{proc.stderr}")
    return exe


def _shape(a: np.ndarray) -> str:
    return "x".join(str(d) for d in a.shape)


def c_latency(exe: Path, onnx_path: str | os.PathLike[str], x: np.ndarray, runs: int, warmup: int,
              atol: float = 1e-4) -> float:
    """Median milliseconds of one ``OrtApi::Run`` of a single-input, single-output float model on
    ``x``, after checking its output against Python onnxruntime's (``atol``). The clock is
    :func:`edgeslim.profile.latency.latency_clock`'s (``EDGESLIM_LATENCY_CLOCK``)."""
    from edgeslim.profile import ort_session
    from edgeslim.profile.latency import latency_clock

    session = ort_session(onnx_path)
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1 or len(outs) != 1:
        raise SystemExit(f"{onnx_path}: the C harness times models of one input and one output, "
                         f"this one has {len(ins)} and {len(outs)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    expected = session.run(None, {ins[0].name: x})[0]
    with tempfile.TemporaryDirectory(prefix="edgeslim-capi-") as tmp:
        data = Path(tmp) / "input.bin"
        x.tofile(data)
        proc = subprocess.run([str(exe), str(ort_library()), str(onnx_path), ins[0].name, _shape(x),
                               outs[0].name, _shape(expected), str(data), str(runs), str(warmup),
                               latency_clock(1)],
                              capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{exe} failed on {onnx_path} (exit {proc.returncode}): {proc.stderr.strip()}")
    values = np.array(proc.stdout.split(), dtype=np.float64)
    got = values[1:].reshape(expected.shape)
    if not np.allclose(got, expected, atol=atol, rtol=1e-4):
        raise SystemExit(f"{onnx_path}: the C API's output differs from Python onnxruntime's by up to "
                         f"{np.abs(got - expected).max():.3g}: the harness did not run this model as Python does")
    return float(values[0])
