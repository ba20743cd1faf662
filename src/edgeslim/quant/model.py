"""``QuantizedModel``: an int8 network, callable like the float model it came from.

The artefact is an int8 ONNX file (QDQ format: ``QuantizeLinear`` /
``DequantizeLinear`` around the int8 weights, which onnxruntime fuses into
integer ``QLinearConv``/``QGemm`` kernels). The torch backend also keeps the
int8 ``torch.fx.GraphModule`` it built, and runs that one in memory; a model
reloaded from its ``.onnx`` file always runs in onnxruntime.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgeslim.data import as_loader
from edgeslim.errors import ConfigError, DataError
from edgeslim._core import as_input_tuple
from edgeslim.profile import measure_latency, ort_latency, ort_session

Inputs = torch.Tensor | Sequence[torch.Tensor]


class QuantizedModel:
    """An int8 classifier: ``qm(x) -> logits``, ``qm.evaluate(loader)``, ``qm.latency()``.

    Args:
        onnx_path: the int8 ONNX file (e.g. ``model.int8.onnx`` from :func:`quantize`).
        example_inputs: default inputs for :meth:`latency` (batch 1 for edge latency).
        module: an in-memory int8 PyTorch module to run instead of onnxruntime
            (set by ``backend="torch"``); ``None`` runs the ONNX file.
        backend: the backend that produced the model (informational).
        threads: onnxruntime intra-op threads for ``__call__``/``evaluate``.

    Attributes:
        onnx_path: the int8 ONNX file, or ``None`` when the torch backend could
            not export its module.
        backend: ``"onnxruntime"`` or ``"torch"``.
        module: the int8 PyTorch module or ``None``.
    """

    def __init__(self, onnx_path: str | os.PathLike[str] | None,
                 example_inputs: Inputs | None = None, *, module: nn.Module | None = None,
                 backend: str = "onnxruntime", threads: int = 1) -> None:
        if onnx_path is None and module is None:
            raise ConfigError("QuantizedModel needs an int8 ONNX file or an int8 module; got neither")
        self.onnx_path = Path(onnx_path) if onnx_path is not None else None
        if self.onnx_path is not None and not self.onnx_path.is_file():
            raise DataError(
                f"int8 model {self.onnx_path} does not exist; create it with "
                "edgeslim.quantize(model, example_inputs, calib_data, path=...)"
            )
        self.example_inputs = as_input_tuple(example_inputs) if example_inputs is not None else None
        self.module = module.eval() if module is not None else None
        self.backend = backend
        self.threads = threads
        self._session: Any = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None  # owns a temporary onnx_path

    def __repr__(self) -> str:
        runtime = "torch" if self.module is not None else "onnxruntime"
        return f"QuantizedModel(onnx_path={self.onnx_path}, backend={self.backend!r}, runs_in={runtime!r})"

    @property
    def session(self) -> Any:
        """The onnxruntime ``InferenceSession`` of :attr:`onnx_path` (created on first use)."""
        if self.onnx_path is None:
            raise ConfigError("this QuantizedModel has no ONNX file (the torch export failed); "
                              "use its .module, or quantize with backend='onnxruntime'")
        if self._session is None:
            self._session = ort_session(self.onnx_path, self.threads)
        return self._session

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Logits for float inputs (any device); returned as a CPU float tensor."""
        cpu = [t.detach().to("cpu", torch.float32) for t in inputs]
        if self.module is not None:
            with torch.inference_mode():
                return self.module(*cpu)
        feed = {meta.name: t.numpy() for meta, t in zip(self.session.get_inputs(), cpu)}
        return torch.from_numpy(np.ascontiguousarray(self.session.run(None, feed)[0]))

    def evaluate(self, loader: Any) -> float:
        """Top-1 accuracy (0-1) on ``loader`` (anything :func:`edgeslim.data.as_loader` takes)."""
        correct = total = 0
        for x, y in as_loader(loader):
            pred = self(x).argmax(1)
            correct += int((pred == y.cpu()).sum())
            total += len(y)
        if total == 0:
            raise DataError("QuantizedModel.evaluate(): the loader yielded no samples")
        return correct / total

    def latency(self, example_inputs: Inputs | None = None, *, threads: int = 1,
                runs: int = 50, warmup: int = 10) -> float:
        """Median milliseconds of one inference (onnxruntime, or torch for an in-memory module).

        Args:
            example_inputs: inputs to time; default those given at construction.
            threads: intra-op threads.
            runs: timed inferences.
            warmup: untimed inferences first.

        Returns:
            The median latency in ms (use :func:`edgeslim.profile.ort_latency`
            on :attr:`onnx_path` for the 90th percentile too).
        """
        inputs = example_inputs if example_inputs is not None else self.example_inputs
        if inputs is None:
            raise ConfigError("QuantizedModel.latency() needs example_inputs (e.g. torch.randn(1, 1, 28, 28)); "
                              "pass them here or when creating the model")
        if self.module is not None:
            return measure_latency(self.module, inputs, threads=threads, runs=runs, warmup=warmup)[0]
        if self.onnx_path is None:  # unreachable by construction; keeps type checkers happy
            raise ConfigError("QuantizedModel has neither a module nor an ONNX file")
        return ort_latency(self.onnx_path, inputs, threads=threads, runs=runs, warmup=warmup)[0]

    def size_bytes(self) -> int | None:
        """Size of the int8 ONNX file in bytes (``None`` without a file)."""
        return self.onnx_path.stat().st_size if self.onnx_path is not None else None
