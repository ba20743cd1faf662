"""Depth moves: residual blocks whose branch can be removed (the block becomes the identity).

A block is a submodule whose ``forward`` computes ``x + branch(x)`` with an identity
shortcut (the input itself, or an empty ``nn.Sequential``/``nn.Identity``), optionally
followed by a ReLU: ResNet's basic and bottleneck blocks without downsampling,
MobileNetV2's inverted residuals with stride 1. Removing the branch replaces the block
by the identity (or by its final ReLU), which saves every layer of the branch and the
addition; at batch 1 that saves per-layer overhead that cutting channels cannot.

Importance of a block, from data: the relative change of the block's output when the
branch is removed, ``||y - post(x)|| / ||y||`` on calibration batches (``y`` the block's
output, ``post`` the identity or the ReLU). It is the fraction of the block's output
signal the branch carries, the same unit the latency planner gives channels (the
fraction of a group's importance), so both kinds of move are ranked on one scale
(Veit et al. 2016 show residual networks degrade smoothly when single blocks are
removed, which is what makes this a move worth offering).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .._core import as_input_tuple, eval_mode, take_batches

Post = Literal["identity", "relu"]
_ADDS = {operator.add, operator.iadd, torch.add}
_RELUS = {F.relu, torch.relu}


@dataclass(frozen=True)
class ResidualBlock:
    """A block at ``path`` whose branch can be removed; ``post`` is what remains."""

    path: str
    post: Post


def _is_relu(node: fx.Node, module: nn.Module) -> bool:
    if node.op == "call_function":
        return node.target in _RELUS
    if node.op == "call_method":
        return node.target == "relu"
    if node.op == "call_module":
        return type(module.get_submodule(node.target)) is nn.ReLU
    return False


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADDS) or \
        (node.op == "call_method" and node.target in ("add", "add_"))


def _is_input(node: Any, x: fx.Node, module: nn.Module) -> bool:
    """The block's input itself, or passed through an identity shortcut module."""
    if node is x:
        return True
    if isinstance(node, fx.Node) and node.op == "call_module" and node.args == (x,):
        sub = module.get_submodule(node.target)
        return isinstance(sub, nn.Identity) or (isinstance(sub, nn.Sequential) and len(sub) == 0)
    return False


def residual_post(module: nn.Module) -> Post | None:
    """``"identity"``/``"relu"`` when ``module`` is ``[relu](x + branch(x))``, else None."""
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # not traceable alone: not a candidate (the model is still prunable)
        return None
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    out = next(n for n in graph.nodes if n.op == "output").args[0]
    if len(inputs) != 1 or not isinstance(out, fx.Node):
        return None
    post: Post = "identity"
    if _is_relu(out, module) and isinstance(out.args[0], fx.Node):
        out, post = out.args[0], "relu"
    if not _is_add(out) or len(out.args) != 2 or out.kwargs:
        return None
    a, b = (_is_input(arg, inputs[0], module) for arg in out.args)
    if a == b:  # exactly one operand is the input itself
        return None
    return post


def find_residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """Every submodule (not the model itself) with a removable residual branch."""
    blocks = []
    for path, module in model.named_modules():
        if path and list(module.children()):
            post = residual_post(module)
            if post is not None:
                blocks.append(ResidualBlock(path, post))
    return blocks


def block_importance(model: nn.Module, blocks: list[ResidualBlock], data: Any,
                     max_batches: int = 4) -> dict[str, float]:
    """Mean relative output change ``||y - post(x)|| / ||y||`` of each block over ``data``
    (a tensor, a tuple of inputs, or batches of ``(x, y)``)."""
    sums = {b.path: 0.0 for b in blocks}
    count = {b.path: 0 for b in blocks}
    handles = []
    for b in blocks:
        def hook(mod, args, out, b=b):
            rest = F.relu(args[0]) if b.post == "relu" else args[0]
            sums[b.path] += float((out - rest).norm() / out.norm().clamp_min(1e-12))
            count[b.path] += 1
        handles.append(model.get_submodule(b.path).register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            for inputs in _batches(data, max_batches):
                model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return {p: sums[p] / max(count[p], 1) for p in sums}


def _batches(data: Any, n: int) -> list[tuple]:
    if isinstance(data, torch.Tensor) or (isinstance(data, tuple) and data
                                          and all(isinstance(t, torch.Tensor) for t in data)):
        return [as_input_tuple(data)]
    return [as_input_tuple(batch[0] if isinstance(batch, (tuple, list)) else batch)
            for batch in take_batches(data, n)]


def remove_blocks_(model: nn.Module, removed: dict[str, str]) -> nn.Module:
    """Replace each block ``path`` by what remains without its branch (``post``), in place."""
    for path in sorted(removed, key=len, reverse=True):
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, nn.ReLU() if removed[path] == "relu" else nn.Identity())
    return model
