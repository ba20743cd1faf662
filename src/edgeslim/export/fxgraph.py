"""Save any torch.fx-traceable model as data: its graph as JSON plus torch.nn layer specs.

This is how edgeslim saves models that are not from the zoo (a user's
torchvision-style network after pruning) or whose forward was rewritten (the
lightened student). Function targets are written as ``"torch.nn.functional:relu"``
and resolved on load *only* inside an allowlist of modules (torch,
torch.nn.functional, operator, builtins) and only to callables found there;
tensor methods must exist on ``torch.Tensor``. A file can therefore describe a
computation but never name arbitrary code.
"""
from __future__ import annotations

import builtins
import keyword
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from . import modspec

_MODULES = {"torch": torch, "torch.nn.functional": F, "operator": operator, "builtins": builtins,
            "math": __import__("math")}


def _target_name(fn: Any) -> str:
    for mod_name, mod in _MODULES.items():
        name = getattr(fn, "__name__", None)
        if name and getattr(mod, name, None) is fn:
            return f"{mod_name}:{name}"
    raise TypeError(f"function {fn!r} is outside torch / torch.nn.functional / operator / builtins")


# builtins and operator hold ways to run code (eval, exec, open, operator.call,
# attrgetter); only these pure functions may be called from a file.
_ALLOWED = {
    "builtins": {"getattr", "len", "int", "float", "bool", "min", "max", "abs", "round", "pow",
                 "divmod", "sum", "slice", "range", "tuple", "list"},
    "operator": {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs",
                 "matmul", "getitem", "iadd", "isub", "imul", "itruediv", "ifloordiv", "imod",
                 "and_", "or_", "xor", "invert", "not_", "eq", "ne", "lt", "le", "gt", "ge",
                 "lshift", "rshift", "truth"},
}
_TORCH_DENIED = {"load", "save", "from_file", "compile", "export"}  # file I/O, code generation


def _resolve(name: str) -> Any:
    mod_name, _, attr = name.partition(":")
    mod = _MODULES.get(mod_name)
    fn = getattr(mod, attr, None) if mod is not None else None
    allowed = attr in _ALLOWED[mod_name] if mod_name in _ALLOWED else not (
        attr.startswith("_") or attr.startswith("set_") or attr in _TORCH_DENIED)
    if fn is None or not callable(fn) or not allowed:
        raise CheckpointError(f"saved graph calls {name!r}, which edgeslim does not allow; the file is "
                              "corrupt or was not written by edgeslim")
    return fn


def _check_names(n: dict) -> None:
    """Node names and targets end up in Python source that torch.fx generates and runs:
    they must be plain dotted identifiers (or indices, ``layer1.0``), never code, and never
    reach private attributes."""
    parts = [n.get("name")] + [k for k, _ in (n.get("kwargs") or {}).get("dict", [])]
    if n.get("op") in ("placeholder", "get_attr", "call_module", "call_method"):
        parts += str(n.get("target")).split(".")
    for part in parts:
        plain = isinstance(part, str) and (part.isidentifier() or part.isascii() and part.isdigit())
        if not plain or keyword.iskeyword(part) or part.startswith("__"):
            raise CheckpointError(f"saved graph has an invalid node name or target {part!r}; the file "
                                  "is corrupt or was not written by edgeslim")
    if n.get("op") == "call_function" and n.get("target") == "builtins:getattr":
        attr = n.get("args", {}).get("tuple", [None, None])[1:2]
        if not (attr and isinstance(attr[0], str) and not attr[0].startswith("_")):
            raise CheckpointError(f"saved graph reads a private attribute {attr!r}; the file is corrupt")


def _enc(value: Any) -> Any:
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, tuple):
        return {"tuple": [_enc(v) for v in value]}
    if isinstance(value, list):
        return [_enc(v) for v in value]
    if isinstance(value, dict):
        return {"dict": [[k, _enc(v)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"slice": [_enc(value.start), _enc(value.stop), _enc(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    raise TypeError(f"argument {value!r} of type {type(value).__name__} cannot be saved")


def _dec(value: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(value, list):
        return [_dec(v, env) for v in value]
    if not isinstance(value, dict):
        return value
    (kind, payload), = value.items()
    decoders = {
        "node": lambda p: env[p],
        "tuple": lambda p: tuple(_dec(v, env) for v in p),
        "dict": lambda p: {k: _dec(v, env) for k, v in p},
        "slice": lambda p: slice(*(_dec(v, env) for v in p)),
        "ellipsis": lambda p: Ellipsis,
        "dtype": lambda p: _dtype(p),
        "device": lambda p: torch.device(p),
    }
    if kind not in decoders:
        raise CheckpointError(f"saved graph has an unknown argument kind {kind!r}")
    return decoders[kind](payload)


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise CheckpointError(f"saved graph names unknown dtype {name!r}")
    return dt


def graph_to_json(gm: fx.GraphModule) -> dict:
    """JSON description of ``gm``: nodes and the torch.nn layers they call."""
    nodes, modules = [], {}
    for n in gm.graph.nodes:
        target = n.target
        if n.op == "call_function":
            target = _target_name(n.target)
        elif n.op == "call_module":
            modules[n.target] = modspec.describe(gm.get_submodule(n.target), n.target)
        elif n.op == "call_method" and not hasattr(torch.Tensor, n.target):
            raise TypeError(f"tensor method {n.target!r} does not exist")
        nodes.append({"op": n.op, "name": n.name, "target": target,
                      "args": _enc(n.args), "kwargs": _enc(dict(n.kwargs))})
    attrs = sorted({n.target for n in gm.graph.nodes if n.op == "get_attr"})
    return {"nodes": nodes, "modules": modules, "attrs": attrs}


def graph_from_json(spec: dict, tensors: dict[str, torch.Tensor]) -> fx.GraphModule:
    """Rebuild a GraphModule written by :func:`graph_to_json` (weights loaded by the caller)."""
    root = nn.Module()
    for path, mspec in spec["modules"].items():
        _place(root, path, modspec.build(mspec))
    for path in spec.get("attrs", []):
        if path not in tensors:
            raise CheckpointError(f"saved graph reads attribute {path!r}, missing from the weights")
        owner, _, name = path.rpartition(".")
        parent = _ensure(root, owner)
        if name not in parent._parameters and name not in parent._buffers:
            parent.register_buffer(name, torch.empty_like(tensors[path]))
    graph, env = fx.Graph(), {}
    for n in spec["nodes"]:
        _check_names(n)
        op, target = n["op"], n["target"]
        if op == "call_function":
            target = _resolve(target)
        elif op == "call_method" and not hasattr(torch.Tensor, target):
            raise CheckpointError(f"saved graph calls unknown tensor method {target!r}")
        args, kwargs = _dec(n["args"], env), _dec(n["kwargs"], env)
        if op == "output":
            env[n["name"]] = graph.output(args[0])
            continue
        node = graph.create_node(op, target, tuple(args), kwargs, name=n["name"])
        env[n["name"]] = node
    return fx.GraphModule(root, graph)


def _ensure(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in filter(None, path.split(".")):
        if not hasattr(mod, part):
            mod.add_module(part, nn.Module())
        mod = getattr(mod, part)
    return mod


def _place(root: nn.Module, path: str, module: nn.Module) -> None:
    owner, _, name = path.rpartition(".")
    _ensure(root, owner).add_module(name, module)
