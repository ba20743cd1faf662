"""A tiny JSON Schema validator for the subset ``edgeslim schema`` emits (jsonschema is not a dependency).

Keywords: type, enum, properties, additionalProperties (false), required, items,
oneOf, anyOf, $ref (local #/$defs/...), minimum, maximum, minItems, maxItems;
annotations (description, default, deprecated, title, $schema, $id, $defs) are
ignored. ``KNOWN`` lets a test assert the schema uses nothing else.
"""
from __future__ import annotations

from typing import Any

CHECKED = {"type", "enum", "properties", "additionalProperties", "required", "items", "oneOf", "anyOf",
           "$ref", "minimum", "maximum", "minItems", "maxItems"}
KNOWN = CHECKED | {"description", "default", "deprecated", "title", "$schema", "$id", "$defs"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def errors(value: Any, schema: dict, root: dict, path: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (empty: it validates)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return errors(value, root["$defs"][name], root, path)
    out: list[str] = []
    types = schema.get("type")
    if types is not None and not any(_is(value, t) for t in ([types] if isinstance(types, str) else types)):
        return [f"{path}: {value!r} is not of type {types}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in {schema['enum']}")
    for key, op in (("minimum", lambda a, b: a >= b), ("maximum", lambda a, b: a <= b)):
        if key in schema and _is(value, "number") and not op(value, schema[key]):
            out.append(f"{path}: {value!r} breaks {key} {schema[key]}")
    if isinstance(value, dict):
        out += _object(value, schema, root, path)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            out.append(f"{path}: {len(value)} items")
        if "items" in schema:
            for i, item in enumerate(value):
                out += errors(item, schema["items"], root, f"{path}[{i}]")
    if "anyOf" in schema and all(errors(value, s, root, path) for s in schema["anyOf"]):
        out.append(f"{path}: matches none of anyOf")
    if "oneOf" in schema and sum(not errors(value, s, root, path) for s in schema["oneOf"]) != 1:
        out.append(f"{path}: does not match exactly one of oneOf")
    return out


def _object(value: dict, schema: dict, root: dict, path: str) -> list[str]:
    props = schema.get("properties", {})
    out = [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
    for key, item in value.items():
        if key in props:
            out += errors(item, props[key], root, f"{path}.{key}")
        elif schema.get("additionalProperties") is False:
            out.append(f"{path}: unknown key {key!r}")
    return out


def keywords(schema: Any) -> set[str]:
    """Every keyword used anywhere in ``schema`` (property names excluded)."""
    if isinstance(schema, list):
        return set().union(*map(keywords, schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, sub in schema.items():
        if key in ("properties", "$defs"):
            found |= set().union(*map(keywords, sub.values())) if sub else set()
        elif key not in ("enum", "default", "required"):
            found |= keywords(sub)
    return found
