"""Feature taps: forward hooks that fill a dict ``{module path: output}``.

The design follows torchdistill (Matsubara, *torchdistill: A Modular,
Configuration-Driven Framework for Knowledge Distillation*, 2021): a loss never
reaches into a model's internals; it reads named intermediate outputs from a
dict that forward hooks filled during the ordinary forward pass. Models need no
changes, and the same loss works on any architecture.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Iterator

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from edgeslim.errors import ConfigError

__all__ = ["FeatureTaps", "resolve_module"]


def resolve_module(model: nn.Module, path: str, *, what: str = "feature tap") -> nn.Module:
    """The submodule of ``model`` at dotted ``path`` ("" is the model itself).

    Raises:
        ConfigError: no such module; the message names the closest valid paths.
    """
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    close = difflib.get_close_matches(path, list(modules), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"{what}: {type(model).__name__} has no submodule {path!r}.{hint} "
        "List valid paths with [p for p, _ in model.named_modules()]."
    )


class FeatureTaps:
    """Records the outputs of chosen submodules during a forward pass.

    Hooks are registered on construction and removed by :meth:`remove` or on
    leaving a ``with`` block, so a model never keeps hooks it was not asked to
    (a left-over hook would pin tensors in memory and break pickling).

    Example:
        >>> with FeatureTaps(model, ["layer1", "layer2"]) as taps:
        ...     logits = model(x)
        >>> taps["layer1"].shape

    Args:
        model: the module to tap.
        paths: dotted module paths (as in ``model.named_modules()``).
        detach: store detached outputs (for a teacher whose features must not
            carry a graph); the default keeps the autograd graph so a loss on a
            student's features trains the student.

    Attributes:
        outputs: ``{path: tensor}`` of the latest call of each tapped module.
        calls: ``{path: number of calls}`` since construction or :meth:`clear`;
            a module called more than once per forward keeps its last output.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], *, detach: bool = False) -> None:
        self.paths: tuple[str, ...] = tuple(dict.fromkeys(paths))
        self.detach = detach
        self.outputs: dict[str, Any] = {}
        self.calls: dict[str, int] = {}
        modules = [resolve_module(model, p) for p in self.paths]
        self._handles: list[RemovableHandle] = [
            module.register_forward_hook(self._make_hook(path))
            for path, module in zip(self.paths, modules)
        ]

    def _make_hook(self, path: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self.detach and isinstance(output, Tensor):
                output = output.detach()
            self.outputs[path] = output
            self.calls[path] = self.calls.get(path, 0) + 1

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
        """Forget the recorded outputs and call counts (the hooks stay)."""
        self.outputs.clear()
        self.calls.clear()

    def remove(self) -> None:
        """Remove every hook from the model; recorded outputs stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
