"""What a stored torch.fx graph may do: pure tensor operations, nothing else.

A model file written by :func:`edgeslim.save` for a non-zoo model holds its
forward pass as a list of graph nodes (``fxgraph.py``). Whoever hands a user
such a file controls every node, so loading must guarantee that the rebuilt
graph can only compute on tensors. An allowlist of *modules* is not enough:
``torch`` alone exposes ``get_device_module`` (a route to ``os``), file
writers and serialisers, and ``builtins.getattr``/``max(key=...)`` turn any
object reached into a call. The rules here are therefore closed, not open:

* ``call_function`` targets come from an explicit list of the pure tensor,
  ``torch.nn.functional``, ``operator`` and ``builtins`` operations that the
  tracer emits for CNNs. Nothing on the list returns a module, class, storage,
  file or device module, or takes a callable.
* ``call_method`` calls an explicitly listed tensor method, on a node (never on
  a literal); ``builtins.getattr`` reads only listed tensor attributes
  (``shape``, ``dtype``...) of a node, by a literal name.
* ``get_attr`` reads only tensors stored in the file, ``call_module`` calls only
  the torch.nn layers the file describes (``modspec.py``).
* Arguments are data: nodes, numbers, strings, dtypes, devices, slices and
  containers of them (``fxgraph._dec`` can produce nothing else), bounded in
  nesting and size; operations that can multiply memory (``repeat``, ``pad``,
  ``interpolate``, ``new_empty``...) get bounded literal sizes, so a tiny file
  cannot ask for terabytes.

Saving is checked by the same list (:func:`check_savable`), so edgeslim never
writes a graph it would refuse to load.
"""
from __future__ import annotations

import math
from typing import Any

from ..errors import CheckpointError

# --------------------------------------------------------------------------- #
# the operations
# --------------------------------------------------------------------------- #
_TORCH = {
    "_assert", "abs", "add", "addcmul", "addmm", "amax", "amin", "argmax", "argmin", "baddbmm", "bmm",
    "broadcast_to", "cat", "ceil", "channel_shuffle", "chunk", "clamp", "clamp_max", "clamp_min",
    "clip", "concat", "concatenate", "conv1d", "conv2d", "conv3d", "conv_transpose2d", "cos",
    "cumsum", "div", "dstack", "einsum", "empty_like", "erf", "exp", "flatten", "flip", "floor",
    "floor_divide", "fmod", "gather", "hstack", "index_select", "lerp", "log", "log_softmax",
    "logsumexp", "masked_fill", "matmul", "max", "maximum", "mean", "min", "minimum", "mm",
    "movedim", "mul", "narrow", "neg", "norm", "ones_like", "permute", "pixel_shuffle",
    "pixel_unshuffle", "pow", "prod", "reciprocal", "relu", "remainder", "repeat_interleave",
    "reshape", "roll", "round", "rsqrt", "sigmoid", "sign", "sin", "softmax", "split", "sqrt",
    "square", "squeeze", "stack", "std", "sub", "sum", "t", "tanh", "tensor_split", "tile",
    "transpose", "true_divide", "unbind", "unsqueeze", "var", "vstack", "where", "zeros_like",
}
_FUNCTIONAL = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "alpha_dropout", "avg_pool1d", "avg_pool2d", "avg_pool3d", "batch_norm",
    "celu", "channel_shuffle", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "dropout", "dropout1d", "dropout2d", "elu", "gelu", "glu", "group_norm", "hardsigmoid",
    "hardswish", "hardtanh", "instance_norm", "interpolate", "layer_norm", "leaky_relu", "linear",
    "local_response_norm", "log_softmax", "logsigmoid", "lp_pool2d", "max_pool1d", "max_pool2d",
    "max_pool3d", "mish", "normalize", "pad", "pixel_shuffle", "pixel_unshuffle", "prelu", "relu",
    "relu6", "rms_norm", "scaled_dot_product_attention", "selu", "sigmoid", "silu", "softmax",
    "softplus", "softsign", "tanh", "upsample",
}
# no lshift/pow-free shifts: ``1 << 10**9`` is a denial of service in one node
_OPERATOR = {
    "abs", "add", "and_", "eq", "floordiv", "ge", "getitem", "gt", "iadd", "ifloordiv", "imod",
    "imul", "invert", "isub", "itruediv", "le", "lt", "matmul", "mod", "mul", "ne", "neg", "not_",
    "or_", "pos", "pow", "sub", "truediv", "truth", "xor",
}
_BUILTINS = {"getattr", "len", "int", "float", "bool", "abs", "min", "max"}
FUNCTIONS = {"torch": _TORCH, "torch.nn.functional": _FUNCTIONAL, "operator": _OPERATOR,
             "builtins": _BUILTINS}

TENSOR_METHODS = {
    "abs", "add", "add_", "addcmul", "amax", "amin", "argmax", "argmin", "bernoulli_", "bfloat16",
    "bmm", "bool", "ceil", "chunk", "clamp", "clamp_", "clamp_max", "clamp_min", "clip", "clone",
    "contiguous", "cumsum", "detach", "dim", "div", "div_", "double", "erf", "exp", "expand",
    "expand_as", "fill_", "flatten", "flip", "float", "floor", "floor_divide", "gather", "half",
    "index_select", "int", "is_contiguous", "lerp", "log", "log_softmax", "long", "masked_fill",
    "masked_fill_", "matmul", "max", "mean", "min", "mm", "movedim", "mul", "mul_", "narrow",
    "neg", "new_empty", "new_full", "new_ones", "new_zeros", "norm", "numel", "permute", "pow",
    "prod", "reciprocal", "relu", "relu_", "repeat", "repeat_interleave", "reshape", "reshape_as",
    "roll", "round", "rsqrt", "sigmoid", "sigmoid_", "sign", "size", "softmax", "sort", "split",
    "sqrt", "square", "squeeze", "std", "sub", "sub_", "sum", "t", "tanh", "tensor_split", "tile",
    "to", "topk", "transpose", "type_as", "unbind", "unflatten", "unsqueeze", "var", "view",
    "view_as", "zero_",
}
TENSOR_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "T", "mT", "is_cuda", "data", "layout"}

# --------------------------------------------------------------------------- #
# bounds: what one node may ask for
# --------------------------------------------------------------------------- #
MAX_NODES = 100_000
MAX_DEPTH = 16          # nesting of argument containers
MAX_SEQUENCE = 4096     # items in one literal list/tuple
MAX_STRING = 256
MAX_INT = 2 ** 31       # any integer literal
MAX_ELEMENTS = 2 ** 26  # elements a literal shape may name (new_empty, expand, ...)
MAX_FACTOR = 2 ** 12    # a literal repeat count, padding, integer multiplier or exponent
MAX_SCALE = 64.0        # interpolate's scale_factor
_SHAPED = {"new_empty", "new_zeros", "new_ones", "new_full", "expand", "broadcast_to"}
_FACTORED = {"repeat", "tile", "repeat_interleave", "pad", "mul", "imul", "pow"}


def _refuse(what: str) -> CheckpointError:
    return CheckpointError(f"saved graph {what}, which edgeslim does not allow (only pure tensor "
                           "operations may be stored); the file is corrupt or was not written by edgeslim")


def check_function(module: str, name: str) -> None:
    """Raise CheckpointError unless ``module:name`` is a listed pure operation."""
    if name not in FUNCTIONS.get(module, ()):
        raise _refuse(f"calls {module}:{name}")


def check_method(name: Any) -> None:
    if name not in TENSOR_METHODS:
        raise _refuse(f"calls tensor method {name!r}")


def _literals(value: Any, depth: int = 0) -> list[Any]:
    """Every scalar literal in a decoded argument (nodes excluded), checking size bounds."""
    if depth > MAX_DEPTH:
        raise _refuse(f"nests arguments deeper than {MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_SEQUENCE:
            raise _refuse(f"has a literal sequence of {len(value)} items (at most {MAX_SEQUENCE})")
        return [x for v in value for x in _literals(v, depth + 1)]
    if isinstance(value, dict):
        return _literals(list(value.values()), depth + 1)
    if isinstance(value, slice):
        return _literals([value.start, value.stop, value.step], depth + 1)
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise _refuse(f"has a literal string of {len(value)} characters")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise _refuse(f"has the integer literal {value} (at most {MAX_INT})")
    return [value]


def _ints(values: list[Any]) -> list[int]:
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def check_arguments(name: str, args: tuple, kwargs: dict, is_node: Any) -> None:
    """Bound the literal sizes that ``name`` (a function or method name) is given.

    ``is_node(value)`` tells graph nodes (whose values are computed) from literals.
    """
    literals = _literals([a for a in args if not is_node(a)] + [v for v in kwargs.values() if not is_node(v)])
    ints = _ints(literals)
    if name in _SHAPED and math.prod(abs(i) for i in ints if i != -1) > MAX_ELEMENTS:
        raise _refuse(f"asks {name} for a literal shape of more than {MAX_ELEMENTS} elements")
    if name in _FACTORED and any(abs(i) > MAX_FACTOR for i in ints):
        raise _refuse(f"gives {name} a literal factor above {MAX_FACTOR}")
    if name in ("interpolate", "upsample"):
        scale = kwargs.get("scale_factor", args[2] if len(args) > 2 else None)
        scales = _literals([scale]) if not is_node(scale) else []
        if any(isinstance(s, (int, float)) and abs(s) > MAX_SCALE for s in scales):
            raise _refuse(f"asks interpolate for a scale factor above {MAX_SCALE}")
        size = kwargs.get("size", args[1] if len(args) > 1 else None)
        if not is_node(size) and math.prod(abs(i) for i in _ints(_literals([size]))) > MAX_ELEMENTS:
            raise _refuse(f"asks interpolate for an output of more than {MAX_ELEMENTS} elements")


def check_getattr(args: tuple, kwargs: dict, is_node: Any) -> None:
    """``getattr(node, "shape")``: a listed tensor attribute of a node, no default, no kwargs."""
    if kwargs or len(args) != 2 or not is_node(args[0]) or not isinstance(args[1], str) \
            or args[1] not in TENSOR_ATTRIBUTES:
        shown = args[1] if len(args) == 2 else args
        raise _refuse(f"reads attribute {shown!r} (only {sorted(TENSOR_ATTRIBUTES)} of a tensor)")


def check_builtin_call(name: str, args: tuple, kwargs: dict, is_node: Any) -> None:
    """``min``/``max`` and the operators take no keywords (``max(..., key=f)`` calls ``f``);
    an operator has one or two operands, and an in-place one (``iadd``) updates a node."""
    if kwargs:
        raise _refuse(f"passes keywords {sorted(kwargs)} to {name}")
    if name.startswith("operator.") and not 1 <= len(args) <= 2:
        raise _refuse(f"gives {name} {len(args)} operands")
    if name.startswith("operator.i") and name != "operator.invert" and not (args and is_node(args[0])):
        raise _refuse(f"applies the in-place {name} to a literal")


def check_savable(module: str, name: str) -> None:
    """Raise TypeError (save-time) when a traced function is not on the load-time list."""
    if name not in FUNCTIONS.get(module, ()):
        raise TypeError(f"function {module}:{name} is not among the pure tensor operations a saved "
                        "graph may call")


__all__ = ["FUNCTIONS", "TENSOR_METHODS", "TENSOR_ATTRIBUTES", "MAX_NODES", "check_function",
           "check_method", "check_arguments", "check_getattr", "check_builtin_call", "check_savable"]
