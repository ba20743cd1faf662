"""Describe torch.nn layers as plain JSON and rebuild them, without pickling.

A spec is ``{"type": "Conv2d", "args": {...constructor arguments...}}``, with
``"children"`` for containers (Sequential, ModuleList, ModuleDict). Only
classes defined in ``torch.nn`` can be rebuilt: a spec can never name
arbitrary code, so loading an untrusted file cannot run any.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_SKIP_ARGS = {"self", "device", "dtype", "args", "kwargs", "_weight", "_freeze"}


def _torch_nn_class(name: str) -> type[nn.Module]:
    cls = getattr(nn, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)
            and cls.__module__.startswith("torch.nn.modules")):
        raise CheckpointError(f"saved model names layer type {name!r}, which is not a torch.nn layer; "
                              "the file is corrupt or was not written by edgeslim")
    return cls


def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, where) for v in value]
    raise TypeError(f"{where}: value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def describe(module: nn.Module, where: str = "") -> dict:
    """JSON spec of ``module`` (a torch.nn layer or container of them).

    Raises:
        TypeError: the module (or a child) is not a plain torch.nn layer.
    """
    cls = type(module)
    if getattr(nn, cls.__name__, None) is not cls:
        raise TypeError(f"{where or 'module'} is a {cls.__module__}.{cls.__name__}, not a torch.nn layer")
    if isinstance(module, _CONTAINERS):
        return {"type": cls.__name__,
                "children": [[n, describe(m, f"{where}.{n}")] for n, m in module.named_children()]}
    args = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in _SKIP_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name == "bias" and isinstance(p.default, bool):  # the flag, not the tensor
            args[name] = getattr(module, "bias", None) is not None
            continue
        if not hasattr(module, name):
            continue
        value = getattr(module, name)
        if isinstance(value, torch.Tensor):
            continue  # learned state travels in the weights file
        args[name] = _jsonable(value, f"{where}.{name}")
    return {"type": cls.__name__, "args": args}


def build(spec: dict) -> nn.Module:
    """Rebuild a module from :func:`describe`'s spec (weights uninitialised)."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise CheckpointError(f"malformed layer spec {spec!r} in saved model")
    cls = _torch_nn_class(spec["type"])
    if issubclass(cls, _CONTAINERS):
        children = [(n, build(s)) for n, s in spec.get("children", [])]
        if cls is nn.ModuleDict:
            return nn.ModuleDict(dict(children))
        if cls is nn.ModuleList:
            return nn.ModuleList([m for _, m in children])
        seq = nn.Sequential()
        for n, m in children:
            seq.add_module(n, m)
        return seq
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("args", {}).items()}
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot rebuild layer {spec['type']} from saved arguments {args}: {exc}") from exc


def same_config(a: nn.Module, b: nn.Module) -> bool:
    """True when both are the same class with the same constructor arguments (leaves only)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, _CONTAINERS) or getattr(nn, type(a).__name__, None) is not type(a):
        return True  # containers/custom classes: compare their children instead
    try:
        return describe(a) == describe(b)
    except TypeError:
        return True
