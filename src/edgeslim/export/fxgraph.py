"""Save any torch.fx-traceable model as data: its graph as JSON plus torch.nn layer specs.

This is how edgeslim saves models that are not from the zoo (a user's
torchvision-style network after pruning) or whose forward was rewritten (the
lightened student). Function targets are written as ``"torch.nn.functional:relu"``.
On load every node is checked against ``graph_policy``: an explicit list of pure
tensor operations, tensor methods and tensor attributes, with bounded literal
arguments. A file can therefore describe a tensor computation but never name
other code, reach a module, class, storage or file, or ask for unbounded memory.
"""
from __future__ import annotations

import builtins
import keyword
import operator
import re
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from . import graph_policy, modspec

_MODULES = {"torch": torch, "torch.nn.functional": F, "operator": operator, "builtins": builtins}
_OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")


def _target_name(fn: Any) -> str:
    """``module:name`` of a traced function, under the first module that lists it as pure."""
    name = getattr(fn, "__name__", None)
    homes = [m for m, mod in _MODULES.items() if name and getattr(mod, name, None) is fn]
    for mod_name in homes:
        if name in graph_policy.FUNCTIONS[mod_name]:
            return f"{mod_name}:{name}"
    if homes:
        graph_policy.check_savable(homes[0], name)
    raise TypeError(f"function {fn!r} is outside torch / torch.nn.functional / operator / builtins")


def _resolve(name: Any) -> Any:
    mod_name, _, attr = str(name).partition(":")
    graph_policy.check_function(mod_name, attr)
    fn = getattr(_MODULES[mod_name], attr, None)
    if fn is None or not callable(fn):
        raise CheckpointError(f"saved graph calls {name!r}, which this torch version does not have")
    return fn


_MODULE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def _plain(part: Any, module_path: bool = False) -> bool:
    """A name torch.fx may put into the code it generates: an identifier (or, in a module path,
    also an index such as ``layer1.0`` or torchvision's ``block1-0``, which fx quotes); never a
    keyword, never private."""
    if not isinstance(part, str) or part.startswith("__") or keyword.iskeyword(part):
        return False
    return part.isidentifier() or (module_path and part.isascii() and bool(_MODULE_PART.fullmatch(part)))


def _check_names(n: dict) -> None:
    """Node names and targets end up in Python source that torch.fx generates and runs:
    they must be plain names (see :func:`_plain`), never code."""
    if not isinstance(n, dict) or n.get("op") not in _OPS:
        raise CheckpointError(f"saved graph has a malformed node {str(n)[:120]!r}; the file is corrupt")
    kwargs = n.get("kwargs") or {}
    names = [n.get("name")] + [k for k, _ in (kwargs.get("dict", []) if isinstance(kwargs, dict) else [])]
    if n.get("op") in ("placeholder", "call_method"):
        names.append(n.get("target"))
    paths = str(n.get("target")).split(".") if n.get("op") in ("get_attr", "call_module") else []
    for part, ok in [(p, _plain(p)) for p in names] + [(p, _plain(p, module_path=True)) for p in paths]:
        if not ok:
            raise CheckpointError(f"saved graph has an invalid node name or target {part!r}; the file "
                                  "is corrupt or was not written by edgeslim")


def _checked_target(n: dict, args: tuple, kwargs: dict, attrs: set, modules: set) -> Any:
    """The node's target, once it is known to do only what ``graph_policy`` allows."""
    op, target = n["op"], n["target"]
    if not isinstance(target, str):
        raise CheckpointError(f"saved graph node {n['name']!r} has a target that is not a name")
    is_node = lambda v: isinstance(v, fx.Node)  # noqa: E731
    if op == "call_function":
        fn = _resolve(target)
        mod_name, _, name = target.partition(":")
        if mod_name in ("builtins", "operator"):
            graph_policy.check_builtin_call(f"{mod_name}.{name}", args, kwargs, is_node)
        if fn is builtins.getattr:
            graph_policy.check_getattr(args, kwargs, is_node)
        graph_policy.check_arguments(name, args, kwargs, is_node)
        return fn
    if op == "call_method":
        graph_policy.check_method(target)
        if not (args and is_node(args[0])):
            raise CheckpointError(f"saved graph calls method {target!r} on a literal; the file is corrupt")
        graph_policy.check_arguments(target, args[1:], kwargs, is_node)
    elif op == "get_attr" and target not in attrs:
        raise CheckpointError(f"saved graph reads {target!r}, which is not a tensor stored in the file")
    elif op == "call_module" and target not in modules:
        raise CheckpointError(f"saved graph calls layer {target!r}, which the file does not describe")
    return target


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


def _dec(value: Any, env: dict[str, fx.Node], depth: int = 0) -> Any:
    if depth > graph_policy.MAX_DEPTH:
        raise CheckpointError(f"saved graph nests arguments deeper than {graph_policy.MAX_DEPTH} levels")
    if isinstance(value, list):
        return [_dec(v, env, depth + 1) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise CheckpointError(f"saved graph has a malformed argument {str(value)[:80]!r}")
    (kind, payload), = value.items()
    decoders = {
        "node": lambda p: env[p],
        "tuple": lambda p: tuple(_dec(v, env, depth + 1) for v in p),
        "dict": lambda p: {k: _dec(v, env, depth + 1) for k, v in p},
        "slice": lambda p: slice(*(_dec(v, env, depth + 1) for v in p)),
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


def _check_layout(spec: Any) -> None:
    ok = (isinstance(spec, dict) and isinstance(spec.get("nodes"), list)
          and isinstance(spec.get("modules"), dict) and isinstance(spec.get("attrs", []), list))
    if not ok:
        raise CheckpointError("saved graph is not a mapping with a node list, layers and attributes; "
                              "the file is corrupt or was not written by edgeslim")
    if len(spec["nodes"]) > graph_policy.MAX_NODES:
        raise CheckpointError(f"saved graph has {len(spec['nodes'])} nodes (at most "
                              f"{graph_policy.MAX_NODES}); the file is corrupt or hostile")


def graph_from_json(spec: dict, tensors: dict[str, torch.Tensor]) -> fx.GraphModule:
    """Rebuild a GraphModule written by :func:`graph_to_json` (weights loaded by the caller).

    Every node is checked against ``graph_policy`` before it joins the graph, so a
    crafted file can describe only pure tensor computation (CheckpointError otherwise).
    """
    _check_layout(spec)
    root = nn.Module()
    for path, mspec in spec["modules"].items():
        if not all(_plain(part, module_path=True) for part in str(path).split(".")):
            raise CheckpointError(f"saved graph has an invalid layer path {path!r}; the file is corrupt")
        _place(root, path, modspec.build(mspec))
    for path in spec.get("attrs", []):
        if path not in tensors:
            raise CheckpointError(f"saved graph reads attribute {path!r}, missing from the weights")
        owner, _, name = path.rpartition(".")
        parent = _ensure(root, owner)
        if name not in parent._parameters and name not in parent._buffers:
            parent.register_buffer(name, torch.empty_like(tensors[path]))
    graph, env = fx.Graph(), {}
    attrs, modules = set(spec.get("attrs", [])), set(spec["modules"])
    for n in spec["nodes"]:
        _check_names(n)
        args, kwargs = _dec(n.get("args", {"tuple": []}), env), _dec(n.get("kwargs", {"dict": []}), env)
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise CheckpointError(f"saved graph node {n['name']!r} has malformed arguments")
        target = _checked_target(n, args, kwargs, attrs, modules)
        if n["op"] == "output":
            env[n["name"]] = graph.output(args[0])
            continue
        env[n["name"]] = graph.create_node(n["op"], target, args, kwargs, name=n["name"])
    try:
        return fx.GraphModule(root, graph)
    except Exception as exc:  # torch.fx's code generation rejects malformed graphs in many ways
        raise CheckpointError(f"saved graph cannot be rebuilt ({type(exc).__name__}: {exc}); the file "
                              "is corrupt or was not written by edgeslim") from None


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
