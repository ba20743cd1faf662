"""Rebuild a saved model from the user's own unpruned instance: ``load(path, model=m)``.

Some models cannot be stored as data: timm and torchvision networks whose layers are
their own classes (``BatchNormAct2d``, ``Conv2dSame``) and whose forward torch.fx cannot
turn into the pure tensor operations a stored graph may hold. For those the file keeps
only what is data: the pruning plans (which channels each layer keeps, and the example
input shapes to rebuild the channel graph), the torch.nn layers that replaced others, and
the weights. The user's code builds the architecture; the file never names code.
"""
from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, EdgeslimError


def instance_arch(model: nn.Module, why: str) -> dict:
    """The manifest's ``arch`` for a model that only its own code can build."""
    cls = type(model)
    return {"instance": f"{cls.__module__}.{cls.__qualname__}", "why": why[:300]}


def needs_instance(arch: dict, path: str | Path) -> CheckpointError:
    """The error for ``load(path)`` without ``model=`` on such a file."""
    return CheckpointError(
        f"{path} holds a {arch.get('instance', 'model')} whose layers edgeslim cannot store as data "
        f"({arch.get('why', 'custom classes')}). Rebuild it from your own code: "
        "edgeslim.load(path, model=<the unpruned model, e.g. timm.create_model(name)>)")


def from_instance(model: nn.Module, manifest: dict, path: str | Path) -> nn.Module:
    """A copy of the unpruned ``model`` with the file's plans replayed (weights not loaded)."""
    from ..prune.surgery import apply_plan

    if not isinstance(model, nn.Module):
        raise CheckpointError(f"load(model=...) takes the unpruned nn.Module, not a {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    for i, plan in enumerate(manifest.get("plans", [])):
        if not isinstance(plan, dict):
            raise CheckpointError(f"{path}: pruning plan {i} is malformed; the file is corrupt")
        try:
            apply_plan(model, _default_inputs(model, plan), plan)
        except EdgeslimError as exc:
            raise CheckpointError(
                f"{path}: cannot replay pruning step {i + 1} on the given {type(model).__name__} "
                f"({exc}). Pass the same architecture, unpruned, that was pruned.") from None
    return model


def _default_inputs(model: nn.Module, plan: dict):  # noqa: ANN202
    """None (the plan's recorded inputs) or, for older plans of zoo models, a zero image."""
    if (plan.get("replay") or {}).get("inputs"):
        return None
    size = getattr(model, "default_input_size", None)
    if size is None:
        return None
    import torch

    return torch.zeros(1, *size)
