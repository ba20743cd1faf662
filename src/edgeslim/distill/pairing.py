"""Automatic pairing of student and teacher layers for hint / attention losses.

FitNets (Romero et al., *FitNets: Hints for Thin Deep Nets*, ICLR 2015) and
attention transfer (Zagoruyko & Komodakis, ICLR 2017) both supervise a
student's intermediate feature maps with the teacher's at matching *depths*.
The natural matching points are the ends of the resolution stages: the last
feature map before each change of spatial size (a strided conv or a pooling
layer) and the last feature map before the classifier head. Both networks are
traced with torch.fx, those points are found in each, and they are paired in
order; when the counts differ the lists are aligned from the end (the deepest
stages are the most informative about the output, Romero et al. sec. 2.2).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, Union

import torch
import torch.fx as fx
from torch import Tensor, nn

from edgeslim._core import device_of
from edgeslim.distill.taps import FeatureTaps
from edgeslim.errors import ConfigError

__all__ = ["LayerPair", "find_stage_ends", "pair_layers", "probe_shapes"]

ExampleInputs = Union[Tensor, Sequence[Tensor]]


@dataclass(frozen=True)
class LayerPair:
    """One student layer supervised by one teacher layer.

    Attributes:
        student: module path in the student.
        teacher: module path in the teacher.
        student_shape: the student's output shape there ``(N, C, H, W)``.
        teacher_shape: the teacher's output shape there ``(N, C, H, W)``.
    """

    student: str
    teacher: str
    student_shape: tuple[int, ...]
    teacher_shape: tuple[int, ...]

    def __iter__(self) -> Iterator[str]:
        """Unpacks as the two paths: ``student_path, teacher_path = pair``."""
        return iter((self.student, self.teacher))


def _inputs(example_inputs: ExampleInputs, model: nn.Module | None = None) -> tuple[Tensor, ...]:
    """``example_inputs`` as a tuple, moved to ``model``'s device (student and teacher may differ)."""
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, Tensor) for t in example_inputs):
        device = device_of(model, default=None) if model is not None else None
        return tuple(t.to(device) if device is not None else t for t in example_inputs)
    raise ConfigError(
        f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}; "
        "pass a batch such as torch.randn(2, 3, 32, 32)"
    )


@contextlib.contextmanager
def _analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode + no grad, restoring each submodule's own flag (BN stats stay untouched)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags:
            module.training = flag


class _ShapeRecorder(fx.Interpreter):
    """Runs a traced graph and records each node's output shape in ``node.meta``."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["edgeslim_shape"] = tuple(result.shape) if isinstance(result, Tensor) else None
        return result


def _traced_with_shapes(model: nn.Module, inputs: tuple[Tensor, ...]) -> fx.GraphModule:
    from ..graph.trace import symbolic_trace

    gm = symbolic_trace(model, what="automatic layer pairing",
                        fix="Pass the layers explicitly with hint_pairs=[(student_path, teacher_path), ...]")
    with _analysis_mode(gm):
        _ShapeRecorder(gm).run(*inputs)
    return gm


def _shape(node: Any) -> tuple[int, ...] | None:
    return node.meta.get("edgeslim_shape") if isinstance(node, fx.Node) else None


def _changes_resolution(user: fx.Node, shape: tuple[int, ...]) -> bool:
    """True if ``user`` turns the 4-D map ``shape`` into another spatial size or a vector."""
    out = _shape(user)
    if out is None or user.op == "output":
        return False
    return (len(out) == 4 and out[2:] != shape[2:]) or len(out) == 2


def _scopes(node: fx.Node) -> list[str]:
    """Module paths whose forward the node was traced in, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    return [value[0] if isinstance(value, tuple) else key for key, value in stack.items()]


def _in_scope(node: fx.Node, path: str) -> bool:
    return path in _scopes(node)


def _tap_path(node: fx.Node) -> str | None:
    """The outermost module whose forward returns ``node`` (so a hook on it sees the value).

    A value leaves a module only through its return value, so a module that
    contains ``node`` but none of its users returns it.
    """
    for path in _scopes(node):
        if all(not _in_scope(user, path) for user in node.users if user.op != "output"):
            return path
    return None


def find_stage_ends(model: nn.Module, example_inputs: ExampleInputs) -> list[tuple[str, tuple[int, ...]]]:
    """Module paths (and output shapes) where a resolution stage of ``model`` ends.

    A stage end is a 4-D feature map larger than 1x1 that some operation turns
    into another spatial size (strided conv, pooling) or into a vector (the
    head's flatten / pooling). Each is named by the outermost module returning
    it (``layer1`` rather than ``layer1.2.relu2``); a map computed by a bare
    function at the top level of ``forward`` has no module to hook and is
    skipped. 1x1 maps are skipped: attention maps on them are constant.

    Returns:
        ``[(path, shape), ...]`` in execution order.
    """
    inputs = _inputs(example_inputs, model)
    gm = _traced_with_shapes(model, inputs)
    ends: dict[str, tuple[int, ...]] = {}
    for node in gm.graph.nodes:
        shape = _shape(node)
        if node.op == "placeholder" or shape is None or len(shape) != 4 or shape[2] * shape[3] <= 1:
            continue
        if not any(_changes_resolution(user, shape) for user in node.users):
            continue
        path = _tap_path(node)
        if path is not None and path not in ends:
            ends[path] = shape
    return _verified(model, inputs, ends)


def _verified(
    model: nn.Module, inputs: tuple[Tensor, ...], ends: dict[str, tuple[int, ...]]
) -> list[tuple[str, tuple[int, ...]]]:
    """Keep only taps that fire once per forward with the traced shape (shared modules fire twice)."""
    with _analysis_mode(model), FeatureTaps(model, ends) as taps:
        model(*inputs)
    return [
        (path, shape)
        for path, shape in ends.items()
        if taps.calls.get(path) == 1
        and isinstance(taps.outputs.get(path), Tensor)
        and tuple(taps.outputs[path].shape) == shape
    ]


def probe_shapes(model: nn.Module, paths: Sequence[str], example_inputs: ExampleInputs) -> list[tuple[int, ...]]:
    """Output shapes of the modules at ``paths`` on ``example_inputs`` (eval mode, no grad).

    Raises:
        ConfigError: a path is unknown, not called, or does not return a 4-D tensor.
    """
    inputs = _inputs(example_inputs, model)
    with _analysis_mode(model), FeatureTaps(model, paths) as taps:
        model(*inputs)
    shapes = []
    for path in paths:
        out = taps.outputs.get(path)
        if not isinstance(out, Tensor) or out.dim() != 4:
            got = "nothing (module not called)" if out is None else (
                f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            )
            raise ConfigError(
                f"hint layer {path!r} of {type(model).__name__} must return a 4-D feature map "
                f"(N, C, H, W) but returned {got}; choose a conv/BN/activation or block path"
            )
        shapes.append(tuple(out.shape))
    return shapes


def pair_layers(
    student: nn.Module,
    teacher: nn.Module,
    example_inputs: ExampleInputs,
    *,
    student_paths: Sequence[str] | None = None,
    teacher_paths: Sequence[str] | None = None,
) -> list[LayerPair]:
    """Pair student and teacher feature layers for hint / attention losses.

    Without paths, both models are traced and their stage ends
    (:func:`find_stage_ends`) are paired in order, aligned from the end when
    the counts differ. ``student_paths`` / ``teacher_paths`` override the
    automatic choice on either side (the other side stays automatic and is
    aligned from the end); given both, they are paired one to one.

    Args:
        student: the student model.
        teacher: the teacher model.
        example_inputs: a batch both models accept (used in eval mode, no grad).
        student_paths: manual student module paths.
        teacher_paths: manual teacher module paths.

    Returns:
        The pairs, shallowest first, with both output shapes.

    Raises:
        ConfigError: manual lists of different lengths, or no pair found.
    """
    if student_paths is not None and teacher_paths is not None and len(student_paths) != len(teacher_paths):
        raise ConfigError(
            f"hint layer lists differ in length: {len(student_paths)} student paths vs "
            f"{len(teacher_paths)} teacher paths; give one teacher layer per student layer"
        )
    s_layers = _layers(student, student_paths, example_inputs)
    t_layers = _layers(teacher, teacher_paths, example_inputs)
    n = min(len(s_layers), len(t_layers))
    if n == 0:
        raise ConfigError(
            f"no feature layers to pair (student: {len(s_layers)}, teacher: {len(t_layers)} stage "
            "ends found); pass hint_pairs=[(student_path, teacher_path), ...] explicitly"
        )
    return [
        LayerPair(s_path, t_path, s_shape, t_shape)
        for (s_path, s_shape), (t_path, t_shape) in zip(s_layers[len(s_layers) - n:], t_layers[len(t_layers) - n:])
    ]


def _layers(
    model: nn.Module, paths: Sequence[str] | None, example_inputs: ExampleInputs
) -> list[tuple[str, tuple[int, ...]]]:
    if paths is None:
        return find_stage_ends(model, example_inputs)
    return list(zip(paths, probe_shapes(model, list(paths), example_inputs)))
