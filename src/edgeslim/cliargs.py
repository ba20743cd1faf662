"""CLI flags generated from a config dataclass: one ``--name-with-hyphens`` per field.

Types, choices (from the registries), defaults and help come from the fields
(``edgeslim.options.opt``), so a stage's recipe keys and its command's flags
are the same set. Every generated flag defaults to ``None`` ("not given"), so
only the flags a user typed override a ``--config`` file or the defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
import warnings
from typing import Any, Literal, Union

from .errors import EdgeslimDeprecationWarning
from .options import choices_of, help_of

PREFIX = "cfg_"  # argparse dest of a generated flag: cfg_<field>


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unoptional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, getattr(__import__("types"), "UnionType", Union)):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return members[0] if len(members) == 1 else str
    return tp


def _argparse_kwargs(f: dataclasses.Field, tp: Any) -> dict[str, Any]:
    tp = _unoptional(tp)
    kwargs: dict[str, Any] = {}
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(tp) is Literal:
        kwargs["choices"] = list(typing.get_args(tp))
    elif typing.get_origin(tp) is list:
        kwargs |= {"nargs": "*", "metavar": "NAME"}
    elif tp in (int, float, str):
        kwargs |= {"type": tp, "metavar": f.name.upper()}
    names = choices_of(f)
    if names is not None:
        kwargs["choices"] = names
        kwargs.pop("metavar", None)
    return kwargs


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "" if f.default is None else f" (default: {f.default})"
    return " (default: none)"


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str | None = None) -> None:
    """Add one flag per field of dataclass ``cls`` (and one per deprecated alias it declares)."""
    group = parser.add_argument_group(title or f"{getattr(cls, 'kind', cls.__name__)} options")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in getattr(cls, "cli_skip", ()):
            continue
        group.add_argument(flag(f.name), dest=PREFIX + f.name, default=None,
                           help=help_of(f) + _default_text(f), **_argparse_kwargs(f, hints[f.name]))
    for old, new in getattr(cls, "aliases", {}).items():
        field = next(f for f in dataclasses.fields(cls) if f.name == new)
        kwargs = _argparse_kwargs(field, hints[new])
        group.add_argument(flag(old), dest=PREFIX + old, default=None,
                           help=f"deprecated: use {flag(new)}", **kwargs)


def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The generated flags a user gave, as ``{field: value}`` (deprecated aliases under their old key)."""
    return {k[len(PREFIX):]: v for k, v in vars(args).items() if k.startswith(PREFIX) and v is not None}


class Deprecated(argparse.Action):
    """An old flag: warns, then stores ``value`` (or the flag's argument) into ``dest``."""

    def __init__(self, option_strings: list[str], dest: str, new: str, value: Any = None,
                 **kwargs: Any) -> None:
        self.new, self.value = new, value
        if value is not None:
            kwargs["nargs"] = 0
        kwargs.setdefault("help", f"deprecated: use {new}")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warnings.warn(f"{option_string} is deprecated; use {self.new} (the old flag goes in the next "
                      "release)", EdgeslimDeprecationWarning, stacklevel=2)
        setattr(namespace, self.dest, self.value if self.value is not None else values)


def deprecated_flag(parser: argparse.ArgumentParser, old: str, new: str, dest: str, value: Any = None,
                    **kwargs: Any) -> None:
    """``old`` (e.g. ``--loss``) as a warning alias of ``new``; ``value``: a flag without argument."""
    parser.add_argument(old, dest=dest, action=Deprecated, new=new, value=value, default=None, **kwargs)
