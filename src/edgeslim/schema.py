"""The JSON Schema (draft 2020-12) of recipe files, generated from the stage configs.

``$defs`` holds one object schema per stage kind, named as in YAML (``train``,
``prune``, ...), plus ``ModelSpec`` and ``DataSpec``; each field becomes a
property with its type, default, range, choices and help text, and each
deprecated alias a property marked ``"deprecated": true``. ``edgeslim schema``
prints it; point an editor's YAML language server at the file.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from .options import choices_of, help_of

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean"}


def type_schema(tp: Any) -> dict[str, Any]:
    """The schema of one annotation (the subset edgeslim configs use)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        members = [type_schema(a) for a in args if a is not type(None)]
        schema = members[0] if len(members) == 1 else {"anyOf": members}
        if type(None) in args:
            nullable = isinstance(schema.get("type"), str)
            schema = schema | {"type": [schema["type"], "null"]} if nullable else \
                {"anyOf": [schema, {"type": "null"}]}
        return schema
    if origin in (list, tuple):
        return {"type": "array"} | ({"items": type_schema(args[0])} if args and args[0] is not Any else {})
    if origin is dict or tp is dict:
        return {"type": "object"}
    return {}


def _property(f: dataclasses.Field, tp: Any) -> dict[str, Any]:
    schema = type_schema(tp)
    names = choices_of(f)
    if names is not None:
        schema["enum"] = names + ([None] if "null" in schema.get("type", ()) else [])
    check = f.metadata.get("check")
    for key in ("minimum", "maximum"):
        if check is not None and getattr(check, key) is not None:
            schema[key] = getattr(check, key)
    if help_of(f):
        schema["description"] = help_of(f) + (f"; {check.text}" if check is not None else "")
    if f.default is not dataclasses.MISSING:
        schema["default"] = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
        if not dataclasses.is_dataclass(default):
            schema["default"] = default
    return schema


def config_schema(cls: type, refs: dict[type, str] | None = None) -> dict[str, Any]:
    """An object schema with one property per field of dataclass ``cls`` (unknown keys: invalid)."""
    hints, refs = typing.get_type_hints(cls), refs or {}
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        props[f.name] = {"$ref": f"#/$defs/{refs[tp]}", "description": help_of(f)} if tp in refs \
            else _property(f, tp)
    for old, new in getattr(cls, "aliases", {}).items():
        props[old] = {k: v for k, v in props[new].items() if k != "default"} | {
            "deprecated": True, "description": f"deprecated name of {new!r}"}
    schema = {"type": "object", "properties": props, "additionalProperties": False}
    return ({"description": cls.__doc__.strip().splitlines()[0]} if cls.__doc__ else {}) | schema


def recipe_schema() -> dict[str, Any]:
    """The whole recipe schema (``$defs``: one per stage kind, ModelSpec, DataSpec)."""
    from .pipeline.recipe import MAX_STAGES, DataSpec, ModelSpec, Recipe, stage_types

    kinds = stage_types()
    defs: dict[str, Any] = {kind: config_schema(cls) for kind, cls in kinds.items()}
    defs |= {"ModelSpec": config_schema(ModelSpec), "DataSpec": config_schema(DataSpec)}
    one_stage = [{"type": "object", "properties": {k: {"anyOf": [{"$ref": f"#/$defs/{k}"}, {"type": "null"}]}},
                  "required": [k], "additionalProperties": False} for k in kinds]
    top = config_schema(Recipe, {ModelSpec: "ModelSpec", DataSpec: "DataSpec"})
    top["properties"]["stages"] = {
        "type": "array", "minItems": 1, "maxItems": MAX_STAGES, "description": "the stages, in order",
        "items": {"oneOf": one_stage + [{"enum": list(kinds)}]}}
    return {"$schema": DIALECT, "$id": "urn:edgeslim:recipe",
            "title": "edgeslim recipe"} | top | {"required": ["stages"], "$defs": defs}
