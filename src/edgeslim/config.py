"""Typed dataclass configs <-> plain dicts and YAML files.

Every config in edgeslim is a ``@dataclass`` with type annotations. This module
turns a YAML mapping into such a dataclass and back, checking each value
against its annotation on the way in, so a typo in a recipe fails at load time
with the key, the closest valid key and the valid keys -- not three hours into
a run with a ``TypeError`` deep in the training loop.

Supported annotations: ``int``, ``float``, ``str``, ``bool``, ``pathlib.Path``,
``Literal[...]``, ``Optional[X]`` / ``X | None`` (and other unions),
``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]``, nested
dataclasses and ``Any`` (unchecked). Conversion is dispatched by a table keyed
on the annotation's origin, not an if/elif chain; add an entry to
``_ORIGIN_CHECKS`` or ``_SCALAR_CHECKS`` to support a new kind of annotation.

YAML is read with ``edgeslim.yamlsafe`` only (a safe loader that also bounds
size and alias expansion and refuses duplicate keys): configs are data, never code.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, TypeVar, Union

import yaml

from edgeslim import yamlsafe
from edgeslim._core import did_you_mean
from edgeslim.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "from_dict",
    "to_dict",
    "load_yaml",
    "save_yaml",
    "apply_overrides",
    "check_literals",
]


class _Mismatch(Exception):
    """Internal: a value does not fit an annotation (turned into ConfigError)."""


# --------------------------------------------------------------------------- #
# value checking / conversion, dispatched by annotation
# --------------------------------------------------------------------------- #
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _check_int(value: Any, tp: Any, where: str) -> int:
    # bool is a subclass of int in Python; ``epochs: true`` is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Mismatch
    return value


def _check_float(value: Any, tp: Any, where: str) -> float:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, (int, float)):
        return float(value)
    # PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a *string*;
    # accept numeric strings for float fields so ``lr: 1e-3`` just works.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise _Mismatch from None
    raise _Mismatch


def _check_exact(kind: type) -> Callable[[Any, Any, str], Any]:
    def check(value: Any, tp: Any, where: str) -> Any:
        if not isinstance(value, kind):
            raise _Mismatch
        return value

    return check


def _check_path(value: Any, tp: Any, where: str) -> Path:
    if isinstance(value, (str, Path)):
        return Path(value)
    raise _Mismatch


def _check_literal(value: Any, tp: Any, where: str) -> Any:
    choices = typing.get_args(tp)
    # compare type too, so ``True`` does not match ``Literal[1]``
    for choice in choices:
        if value == choice and type(value) is type(choice):
            return choice
    valid = ", ".join(repr(c) for c in choices)
    hint = did_you_mean(value, [str(c) for c in choices])
    raise ConfigError(f"{where}: invalid value {value!r}.{hint} Valid values: {valid}")


def _check_union(value: Any, tp: Any, where: str) -> Any:
    members = typing.get_args(tp)
    if value is None and type(None) in members:
        return None
    for member in members:
        if member is type(None):
            continue
        try:
            return _convert(value, member, where)
        except (_Mismatch, ConfigError):
            continue
    raise _Mismatch


def _check_list(value: Any, tp: Any, where: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    (item_tp,) = typing.get_args(tp) or (Any,)
    return [_convert_field(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]


def _check_tuple(value: Any, tp: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    args = typing.get_args(tp)
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert_field(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}: {value!r}")
    return tuple(_convert_field(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def _check_dict(value: Any, tp: Any, where: str) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise _Mismatch
    key_tp, val_tp = typing.get_args(tp) or (Any, Any)
    return {
        _convert_field(k, key_tp, f"{where} key"): _convert_field(v, val_tp, f"{where}.{k}")
        for k, v in value.items()
    }


_SCALAR_CHECKS: dict[Any, Callable[[Any, Any, str], Any]] = {
    int: _check_int,
    float: _check_float,
    str: _check_exact(str),
    bool: _check_exact(bool),
    Path: _check_path,
}

_ORIGIN_CHECKS: dict[Any, Callable[[Any, Any, str], Any]] = {
    typing.Literal: _check_literal,
    Union: _check_union,
    types.UnionType: _check_union,
    list: _check_list,
    tuple: _check_tuple,
    dict: _check_dict,
}


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it converted."""
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return from_dict(tp, value, where=where)
    check = _ORIGIN_CHECKS.get(typing.get_origin(tp)) or _SCALAR_CHECKS.get(tp)
    if check is None:
        raise ConfigError(f"{where}: edgeslim.config cannot check annotation {_type_name(tp)}")
    return check(value, tp, where)


def _convert_field(value: Any, tp: Any, where: str) -> Any:
    try:
        return _convert(value, tp, where)
    except _Mismatch:
        raise ConfigError(
            f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        ) from None


# --------------------------------------------------------------------------- #
# dataclass <-> dict
# --------------------------------------------------------------------------- #
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unknown_key_error(key: str, valid: list[str], where: str) -> ConfigError:
    hint = did_you_mean(key, valid)
    return ConfigError(
        f"{where}: unknown key {key!r}.{hint} Valid keys: {', '.join(sorted(valid))}"
    )


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, checking every value's type.

    Args:
        cls: a dataclass type; nested dataclass fields are built recursively.
        data: plain mapping (e.g. from ``yaml.safe_load``). Missing keys take
            the field defaults.
        where: prefix for error messages (a file name or a dotted key path).

    Returns:
        An instance of ``cls``; its ``__post_init__`` validation has run.

    Raises:
        ConfigError: unknown key (with the closest valid key and all valid
            keys), a missing required key, or a value of the wrong type.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    types_ = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in types_:
            raise _unknown_key_error(str(key), list(types_), where)
        kwargs[key] = _convert_field(value, types_[key], f"{where}.{key}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in kwargs
    ]
    if required:
        raise ConfigError(f"{where}: missing required key(s): {', '.join(required)}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        from edgeslim.options import FieldError  # "name=value ..." errors read as a key path

        raise ConfigError(f"{where}{'.' if isinstance(exc, FieldError) else ': '}{exc}") from None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Turn a dataclass instance into plain JSON/YAML-safe data.

    Tuples become lists and paths become strings, so the result survives
    ``yaml.safe_dump``/``json.dumps`` and ``from_dict`` turns it back into an
    equal object.
    """
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        raise TypeError(f"to_dict needs a dataclass instance, got {type(obj).__name__}")
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}


def check_literals(obj: Any) -> None:
    """Validate every ``Literal``-annotated field of a dataclass instance.

    Call from ``__post_init__`` so directly constructed configs
    (``TrainConfig(optimizer="adam")``) fail as clearly as YAML ones.

    Raises:
        ConfigError: naming the field, the closest valid value and all values.
    """
    for name, tp in _field_types(type(obj)).items():
        if typing.get_origin(tp) is typing.Literal:
            _check_literal(getattr(obj, name), tp, name)


# --------------------------------------------------------------------------- #
# YAML files and overrides
# --------------------------------------------------------------------------- #
def load_yaml(path: str | Path, cls: type[T]) -> T:
    """Read a YAML file into dataclass ``cls`` (strict keys; see ``edgeslim.yamlsafe``).

    Raises:
        ConfigError: the file is missing, unreadable or over 1 MiB, has a YAML
            syntax error or a duplicate key (with line and column), expands its
            aliases past the node limit, is not a mapping, or holds an invalid
            key/value (see :func:`from_dict`).
    """
    data = yamlsafe.read(path, what="config file")
    return from_dict(cls, {} if data is None else data, where=str(path))


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write a dataclass instance as YAML, atomically (temp file + rename)."""
    from edgeslim.io import atomic_write_text

    text = yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)
    atomic_write_text(path, text)


def _override_one(obj: Any, dotted: str, value: Any, where: str) -> Any:
    head, _, rest = dotted.partition(".")
    types_ = _field_types(type(obj))
    if head not in types_:
        raise _unknown_key_error(head, list(types_), where)
    if rest:
        child = getattr(obj, head)
        if not (dataclasses.is_dataclass(child) and not isinstance(child, type)):
            raise ConfigError(f"{where}.{head} is not a section; cannot set {dotted!r}")
        value = _override_one(child, rest, value, f"{where}.{head}")
        return dataclasses.replace(obj, **{head: value})  # already validated
    tp = types_[head]
    try:
        converted = _convert(value, tp, f"{where}.{head}")
    except _Mismatch:
        if not isinstance(value, str):
            raise ConfigError(
                f"{where}.{head}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
            ) from None
        # a CLI string such as "0.01", "true" or "[30, 60]": parse it as YAML
        converted = _convert_field(_parse_scalar(value), tp, f"{where}.{head}")
    try:
        return dataclasses.replace(obj, **{head: converted})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _parse_scalar(text: str) -> Any:
    try:
        return yamlsafe.loads(text)
    except ConfigError:
        return text


def apply_overrides(
    obj: T, overrides: Mapping[str, Any], *, skip_none: bool = True, where: str = "override"
) -> T:
    """Return a copy of ``obj`` with some fields replaced (CLI flags over file values).

    Args:
        obj: a dataclass instance (not modified).
        overrides: ``{"lr": 0.01, "train.epochs": 5}``; dotted keys reach into
            nested dataclasses. String values for non-string fields are parsed
            as YAML scalars ("0.01", "true", "[30, 60]").
        skip_none: ignore ``None`` values, the argparse default for "flag not
            given". Pass ``False`` to set optional fields to ``None``.
        where: prefix for error messages.

    Raises:
        ConfigError: unknown key (with a suggestion) or a value of the wrong type.
    """
    for key, value in overrides.items():
        if value is None and skip_none:
            continue
        obj = _override_one(obj, key, value, where)
    return obj
