"""Clear errors for a model and example inputs that do not go together.

``profile``, ``prune`` and ``export_onnx`` all run the model once on the
caller's example inputs. When that cannot work (the weights live on the meta
device, ``forward`` takes two inputs and got one, the shape is wrong) the user
gets one ``EdgeslimError`` that says so and how to fix it, not a traceback
from deep inside torch.fx or a convolution.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from .errors import ConfigError, EdgeslimError, UnsupportedModelError

T = TypeVar("T")


class InputMismatchError(ConfigError):
    """The example inputs do not fit the model (their number or shape)."""


def _shapes(inputs: tuple) -> str:
    shown = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in inputs]
    return ", ".join(str(s) for s in shown) or "none"


def check_model_and_inputs(model: nn.Module, inputs: tuple, what: str) -> None:
    """Refuse a model without data (meta device) and a wrong number of inputs, before running."""
    meta = next((n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta), None)
    if meta is not None:
        raise UnsupportedModelError(
            f"{what}: {type(model).__name__} has tensors on the meta device (first: {meta!r}), which "
            "hold no values, so it cannot run. Fix: materialise the weights first, e.g. "
            "model.to_empty(device='cpu') then model.load_state_dict(state, assign=True)"
        )
    if any(isinstance(t, torch.Tensor) and t.is_meta for t in inputs):
        raise ConfigError(f"{what}: the example inputs are on the meta device; pass real tensors, "
                          "e.g. torch.randn(1, 3, 32, 32)")
    _check_arity(model, inputs, what)


def _check_arity(model: nn.Module, inputs: tuple, what: str) -> None:
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without a Python signature
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    if len(required) <= len(inputs) and (varargs or len(inputs) <= len(positional)):
        return
    names = ", ".join(p.name for p in positional)
    need = f"{len(required)}" if len(required) == len(positional) else \
        f"{len(required)} to {len(positional)}"
    raise InputMismatchError(
        f"{what}: {type(model).__name__}.forward({names}) takes {need} input(s), but "
        f"{len(inputs)} example input(s) were given (shapes: {_shapes(inputs)}). Fix: pass every "
        f"input, as a tuple in forward's order, e.g. example_inputs=({names})"
    )


def _expected_input(model: nn.Module) -> str:
    """What the model wants, as far as it says: the zoo's input size, or its first layer."""
    size = getattr(model, "default_input_size", None)
    if size is not None:
        dims = ", ".join(str(int(s)) for s in size)
        return f"; it expects {tuple(size)} per sample, e.g. torch.randn(1, {dims})"
    for path, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return f"; its first layer {path!r} takes {m.in_channels} input channels"
        if isinstance(m, nn.Linear):
            return f"; its first layer {path!r} takes {m.in_features} input features"
    return ""


def forward_error(model: nn.Module, inputs: tuple, exc: BaseException, what: str) -> ConfigError:
    """The error to raise when ``model(*inputs)`` failed with ``exc``."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return InputMismatchError(
        f"{what}: {type(model).__name__} does not run on the example input(s) of shape "
        f"{_shapes(inputs)} ({type(exc).__name__}: {first}){_expected_input(model)}. Fix: pass "
        "example inputs of the shape (and number) the model was built for"
    )


def run_checked(call: Callable[[], T], model: nn.Module, inputs: tuple, what: str) -> T:
    """``call()`` (which runs ``model`` on ``inputs``), with a failure turned into a ConfigError."""
    try:
        return call()
    except EdgeslimError:
        raise
    except Exception as exc:  # any torch/user error from the forward pass
        raise forward_error(model, inputs, exc, what) from exc


def check_finite(model: nn.Module, what: str) -> None:
    """Refuse NaN/inf weights or buffers (a diverged training run), naming the first one."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        # a sum is one pass with no allocation and is finite unless some value is not (or it
        # overflows: then the exact test decides); 10x faster than isfinite().all() on ResNet-50
        if t.is_floating_point() and not bool(torch.isfinite(t.detach().sum())) \
                and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UnsupportedModelError(
                f"{what}: {name!r} has {bad} NaN/inf value(s) of {t.numel()}, so no channel can be "
                "ranked and the result would not run. Fix: load a checkpoint from before the "
                "training diverged (or retrain with a lower learning rate / gradient clipping)"
            )


def _find_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return next((t for t in map(_find_tensor, output) if t is not None), None)
    return None


def first_tensor(output: Any, what: str) -> torch.Tensor:
    """The output a loss is computed on: the tensor itself, or the first tensor of a
    tuple/list/dict output (``(logits, features)`` -> ``logits``)."""
    found = _find_tensor(output)
    if found is None:
        raise ConfigError(f"{what}: the model returned {type(output).__name__} with no tensor in it; "
                          "it needs logits (a tensor, or a tuple/list/dict whose first tensor is them)")
    return found
