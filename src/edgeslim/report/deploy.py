"""``deploy.md``: how to run the exported model on an image with onnxruntime."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from edgeslim.errors import ConfigError
from edgeslim.io import atomic_write_text

# Input channels -> the PIL mode that yields them.
PIL_MODES: dict[int, str] = {1: "L", 3: "RGB", 4: "RGBA"}


def _floats(values: Sequence[float]) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def _stats(values: Sequence[float] | None, channels: int, default: float, what: str) -> list[float]:
    if values is None:
        return [default] * channels
    values = [float(v) for v in values]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ConfigError(f"write_deploy_md: {what} has {len(values)} values for {channels} input channels; "
                          "give one per channel (0-1 scale)")
    return values


def deploy_snippet(input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                   onnx_name: str, class_names: Sequence[str] | None) -> str:
    """Python that loads ``onnx_name`` with onnxruntime and classifies ``image.png``."""
    channels, height, width = (int(v) for v in input_shape)
    classes = (f"CLASSES = {[str(c) for c in class_names]!r}" if class_names
               else "CLASSES = []  # fill in your class names; [] prints the class index")
    lines = [
        "import numpy as np",
        "import onnxruntime as ort",
        "from PIL import Image",
        "",
        f"MEAN = np.array({_floats(mean)}, dtype=np.float32)[:, None, None]",
        f"STD = np.array({_floats(std)}, dtype=np.float32)[:, None, None]",
        classes,
        f'session = ort.InferenceSession({json.dumps(onnx_name)}, providers=["CPUExecutionProvider"])',
        f'image = Image.open("image.png").convert("{PIL_MODES[channels]}").resize(({width}, {height}))',
        f"x = np.asarray(image, dtype=np.float32).reshape({height}, {width}, {channels}) / 255.0",
        "x = ((x.transpose(2, 0, 1) - MEAN) / STD)[None]  # 1 x C x H x W, normalised",
        "logits = session.run(None, {session.get_inputs()[0].name: x})[0][0]",
        "print(CLASSES[int(logits.argmax())] if CLASSES else int(logits.argmax()), float(logits.max()))",
    ]
    return "\n".join(lines)


def write_deploy_md(run_dir: str | os.PathLike[str], input_shape: Sequence[int],
                    mean: Sequence[float] | None, std: Sequence[float] | None,
                    onnx_name: str = "model.onnx", class_names: Sequence[str] | None = None) -> Path:
    """Write ``run_dir/deploy.md``: input shape, normalisation and an onnxruntime snippet.

    Args:
        run_dir: the run folder holding ``onnx_name``.
        input_shape: ``(C, H, W)`` of one image (C in 1, 3, 4).
        mean: per-channel mean on the 0-1 scale (``None``: no normalisation, 0).
        std: per-channel std on the 0-1 scale (``None``: 1).
        onnx_name: the model file the snippet loads.
        class_names: labels printed by the snippet (else the class index).

    Returns:
        The path of ``deploy.md`` (written atomically).
    """
    if len(input_shape) != 3 or int(input_shape[0]) not in PIL_MODES:
        raise ConfigError(f"write_deploy_md: input_shape must be (C, H, W) with C in {sorted(PIL_MODES)}, "
                          f"got {tuple(input_shape)}")
    channels, height, width = (int(v) for v in input_shape)
    mean_v = _stats(mean, channels, 0.0, "mean")
    std_v = _stats(std, channels, 1.0, "std")
    int8 = Path(run_dir) / "model.int8.onnx"
    text = "\n".join([
        "# Deploying the compressed model",
        "",
        f"- Model: `{onnx_name}` (ONNX, dynamic batch)"
        + (", int8 version: `model.int8.onnx` (same inputs and outputs)" if int8.exists() else ""),
        f"- Input: float32 tensor `[N, {channels}, {height}, {width}]` (N images, "
        f"{channels} channel{'s' if channels > 1 else ''}, {height}x{width} pixels)",
        "- Normalisation: pixel / 255, then `(x - mean) / std` per channel with",
        f"  mean = {_floats(mean_v)}, std = {_floats(std_v)}",
        "- Output: logits `[N, classes]`; the class is the arg-max"
        + (f" over {len(class_names)} classes" if class_names else ""),
        "",
        "Run it on `image.png` with onnxruntime (`pip install onnxruntime pillow numpy`):",
        "",
        "```python",
        deploy_snippet((channels, height, width), mean_v, std_v, onnx_name, class_names),
        "```",
        "",
    ])
    return atomic_write_text(Path(run_dir) / "deploy.md", text)
