"""The project's small shared helpers, in one place (the zoo, graph/, prune/ ... all import these).

* :func:`as_input_tuple` - a tensor or a sequence of tensors -> a tuple
* :func:`eval_mode` - eval mode (optionally under ``no_grad``), every submodule's flag restored
* :func:`device_of` - the device a model lives on
* :func:`flatten_outputs` - the tensors of a model's output, in order
* :func:`take_batches` - the first ``n`` input batches of a loader (calibration data)
* :func:`did_you_mean` - the " Did you mean 'x'?" hint of every "unknown name" error
  (:func:`closest` - the names themselves, for hints worded otherwise)
* :class:`FeatureTaps` - the one forward-hook mechanism: named submodules' outputs (and
  inputs) of a forward pass, in dicts (distillation features, Taylor activations, BN folding's
  per-module call record); :func:`resolve_module` - a dotted path to its submodule

torch is imported inside the functions so that config/recipe parsing, which
needs only :func:`did_you_mean`, stays light.
"""
from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def closest(name: object, valid: Iterable[str], n: int = 1) -> list[str]:
    """The (at most ``n``) valid names closest to ``name``, best first; empty when none is close."""
    return difflib.get_close_matches(str(name), list(valid), n=n)


def did_you_mean(name: object, valid: Iterable[str], n: int = 1) -> str:
    """``" Did you mean 'x'?"`` for the closest valid name(s), or ``""`` when none is close."""
    close = closest(name, valid, n)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """Normalise ``example_inputs`` (a tensor, or a tuple/list of model arguments) to a tuple.

    Raises:
        TypeError: anything else, with an example of what to pass.
    """
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs:
        return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a tensor or a tuple/list of tensors, "
        f"got {type(example_inputs).__name__}; pass e.g. torch.randn(1, 3, 32, 32)"
    )


def flatten_outputs(outputs: Any) -> list["torch.Tensor"]:
    """The tensors of a model's output (a tensor, a sequence or a dict), in order."""
    import torch

    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [t for item in outputs for t in flatten_outputs(item)]
    raise TypeError(f"model output of type {type(outputs).__name__} is not a tensor or a sequence")


@contextlib.contextmanager
def eval_mode(model: "nn.Module", no_grad: bool = False) -> Iterator["nn.Module"]:
    """Put ``model`` in eval mode, restoring every submodule's own flag on exit.

    ``model.train(was_training)`` would overwrite submodules a user froze in
    eval mode on purpose (e.g. frozen BatchNorm), so each flag is saved.
    ``no_grad=True`` also disables autograd (analysis passes that only read).
    """
    import torch

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            yield model
    finally:
        for module, training in modes:
            module.training = training


def device_of(model: "nn.Module", default: Any = "cpu") -> "torch.device | None":
    """The device of the first parameter or buffer; ``default`` for a stateless model.

    ``default=None`` returns ``None`` there (callers that then keep inputs where they are).
    """
    import torch

    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None if default is None else torch.device(default)


def take_batches(data: Iterable[Any], n: int | None) -> list[Any]:
    """The first ``n`` batches of ``data`` as it yields them (all when ``n`` is None).

    A ``zip(range(n), loader)`` stops the loader cleanly after ``n`` batches
    (no extra batch is drawn, so a shuffling loader's RNG is left as it was).
    """
    if n is None:
        return list(data)
    return [batch for _, batch in zip(range(n), data)]


def run_on_meta(model: "nn.Module", inputs: tuple, call: Any) -> Any:
    """``call(model, inputs)`` with every parameter, buffer and input tensor replaced by a
    meta-device twin: shapes propagate, nothing is computed or allocated (a shape pass over
    VGG-16 in 12 ms instead of 300). Raises whatever the meta kernels raise (data-dependent
    code, ops without meta kernels): callers fall back to a real pass and its errors."""
    import torch
    from torch.nn.utils.stateless import _reparametrize_module

    state = {name: t.to("meta") for name, t in (*model.named_parameters(remove_duplicate=False),
                                                 *model.named_buffers(remove_duplicate=False))}
    meta = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in inputs)
    with _reparametrize_module(model, state, tie_weights=True):
        return call(model, meta)


def resolve_module(model: "nn.Module", path: str, *, what: str = "feature tap",
                   modules: "dict[str, nn.Module] | None" = None) -> "nn.Module":
    """The submodule of ``model`` at dotted ``path`` ("" is the model itself).

    Args:
        modules: ``dict(model.named_modules())`` when the caller already has it.

    Raises:
        ConfigError: no such module; the message names the closest valid paths.
    """
    from .errors import ConfigError

    modules = dict(model.named_modules()) if modules is None else modules
    if path in modules:
        return modules[path]
    raise ConfigError(
        f"{what}: {type(model).__name__} has no submodule {path!r}.{did_you_mean(path, modules, n=3)} "
        "List valid paths with [p for p, _ in model.named_modules()]."
    )


class FeatureTaps:
    """Records the outputs (and optionally the inputs) of chosen submodules during forward passes.

    Forward hooks fill dicts keyed by module path (torchdistill's design: a loss or a criterion
    reads named intermediate values and never reaches into a model). Hooks are registered on
    construction and removed by :meth:`remove` or on leaving a ``with`` block, so a model never
    keeps hooks it was not asked to (a left-over hook would pin tensors and break pickling).

    Example:
        >>> with FeatureTaps(model, ["layer1", "layer2"]) as taps:
        ...     logits = model(x)
        >>> taps["layer1"].shape

    Args:
        model: the module to tap.
        paths: dotted module paths (as in ``model.named_modules()``).
        detach: store detached outputs (a teacher's features must not carry a graph); the
            default keeps the autograd graph so a loss on a student's features trains it.
        outputs: record each module's output in :attr:`outputs`.
        inputs: record each module's positional arguments in :attr:`inputs`.
        keep: ``"last"`` (default) or ``"first"``: which call of a module called more than
            once per pass is kept (``calls`` counts them all).
        retain_grad: make recorded floating-point outputs keep their gradient (an output that
            needs none, e.g. of a frozen layer, becomes a leaf that does) when autograd is on.

    Attributes:
        outputs: ``{path: output}``; inputs: ``{path: args tuple}``; calls: ``{path: number of
            calls}`` since construction or :meth:`clear`.
    """

    def __init__(self, model: "nn.Module", paths: Iterable[str], *, detach: bool = False,
                 outputs: bool = True, inputs: bool = False, keep: str = "last",
                 retain_grad: bool = False) -> None:
        if keep not in ("last", "first"):
            raise ValueError(f"FeatureTaps: keep={keep!r}; use 'last' or 'first'")
        self.paths: tuple[str, ...] = tuple(dict.fromkeys(paths))
        self.detach, self.retain_grad, self.keep = detach, retain_grad, keep
        self._record = (outputs, inputs)
        self.outputs: dict[str, Any] = {}
        self.inputs: dict[str, tuple] = {}
        self.calls: dict[str, int] = {}
        named = dict(model.named_modules())
        found = [resolve_module(model, p, modules=named) for p in self.paths]
        self._handles = [m.register_forward_hook(self._make_hook(p)) for p, m in zip(self.paths, found)]

    def _store(self, into: dict, path: str, value: Any) -> None:
        if self.keep == "last" or path not in into:
            into[path] = value

    def _make_hook(self, path: str) -> Any:
        import torch

        def hook(module: "nn.Module", args: tuple, output: Any) -> None:
            self.calls[path] = self.calls.get(path, 0) + 1
            if self._record[1]:
                self._store(self.inputs, path, args)
            if not self._record[0]:
                return
            if isinstance(output, torch.Tensor):
                if self.detach:
                    output = output.detach()
                elif self.retain_grad and torch.is_grad_enabled() and output.is_floating_point():
                    output.retain_grad() if output.requires_grad else output.requires_grad_(True)
            self._store(self.outputs, path, output)

        return hook

    def __getitem__(self, path: str) -> Any:
        try:
            return self.outputs[path]
        except KeyError:
            raise KeyError(
                f"tap {path!r} recorded nothing: the module was not called in the last forward "
                f"pass (tapped paths: {list(self.paths)})"
            ) from None

    def __contains__(self, path: object) -> bool:
        return path in self.outputs

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    def clear(self) -> None:
        """Forget the recorded values and call counts (the hooks stay)."""
        self.outputs.clear()
        self.inputs.clear()
        self.calls.clear()

    def remove(self) -> None:
        """Remove every hook from the model; recorded values stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
