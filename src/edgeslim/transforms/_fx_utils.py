"""Small torch.fx helpers shared by BN folding, exact merges and streamline merging.

Private to ``edgeslim.transforms``: tracing with an actionable error, shape
propagation that never touches batch-norm statistics, and the bookkeeping that
proves a rewrite is safe (a module called exactly once, a value with exactly one
user, a parameter not tied to another module).
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any
from collections.abc import Iterator, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from edgeslim._core import as_input_tuple  # noqa: F401  (re-exported for the transforms)
from edgeslim._core import eval_mode as _core_eval_mode
from edgeslim.errors import UnsupportedModelError

ExampleInputs = Tensor | Sequence[Tensor]


def eval_mode(module: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Eval mode under ``no_grad``, every submodule's flag restored (``edgeslim._core.eval_mode``).

    Running a model in train mode would update batch-norm running statistics,
    which must never happen as a side effect of analysing it.
    """
    return _core_eval_mode(module, no_grad=True)


def trace(model: nn.Module, what: str = "this transform") -> fx.GraphModule:
    """Symbolically trace ``model`` with torch.fx, raising an actionable error.

    The returned GraphModule shares its submodules with ``model`` (no copy), so
    module replacements made on ``model`` are visible through the graph.
    """
    from ..graph.trace import symbolic_trace

    return symbolic_trace(model, what=what, fix="Move data-dependent control flow out of forward() "
                          "or wrap it in a leaf module (torch.fx.wrap).")


def propagate_shapes(gm: fx.GraphModule, inputs: tuple[Any, ...]) -> None:
    """Record ``node.meta['tensor_meta']`` for every node (eval mode, no grad)."""
    with eval_mode(gm):
        try:
            ShapeProp(gm).propagate(*inputs)
        except Exception as exc:
            raise UnsupportedModelError(
                f"running {type(gm).__name__} on example_inputs of shapes "
                f"{[tuple(x.shape) for x in inputs if isinstance(x, Tensor)]} failed: "
                f"{type(exc).__name__}: {exc}. Pass example_inputs that the model accepts."
            ) from exc


def node_shape(node: Any) -> tuple[int, ...] | None:
    """The output shape ShapeProp recorded for ``node``, or None if unknown."""
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def module_call_counts(gm: fx.GraphModule) -> Counter[str]:
    """How many graph nodes call each submodule (a shared module has count > 1)."""
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")


def tied_parameter_owners(model: nn.Module) -> set[str]:
    """Paths of modules that own a parameter also owned by another module."""
    owners: dict[int, set[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), set()).add(path)
    return {path for paths in owners.values() if len(paths) > 1 for path in paths}


def called_module(gm: fx.GraphModule, node: Any, types: tuple[type, ...]) -> nn.Module | None:
    """The submodule a ``call_module`` node calls if it is one of ``types``, else None."""
    if not isinstance(node, fx.Node) or node.op != "call_module":
        return None
    module = gm.get_submodule(str(node.target))
    return module if isinstance(module, types) else None


def only_input(node: fx.Node) -> fx.Node | None:
    """The node's single tensor argument when it has exactly one argument and no kwargs."""
    if len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node):
        return node.args[0]
    return None


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` of ``root`` by ``new``."""
    root.set_submodule(path, new)
