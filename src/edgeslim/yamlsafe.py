"""Bounded, strict YAML reading: every YAML file edgeslim reads goes through here.

``yaml.safe_load`` builds only plain data, but a tiny file can still ask for a
lot: aliases (``*name``) repeat what an anchor (``&name``) marks, so a few
hundred bytes of nested aliases expand to billions of values once anything
walks the result; and PyYAML's pure-Python loader needs about a minute for
10 MB. So this module

* uses libyaml (``yaml.CSafeLoader``) where PyYAML was built with it, else
  ``yaml.SafeLoader`` (same results, slower);
* refuses files over :data:`MAX_BYTES`;
* counts the values a document holds *with aliases expanded* and refuses more
  than :data:`MAX_NODES` (and self-referencing anchors), before anything is built;
* refuses duplicate keys in a mapping (YAML says they are an error; PyYAML
  silently keeps the last one), naming the key and both lines.

Errors are ``ConfigError`` with ``file:line:column`` and what to change.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgeslim.errors import ConfigError

__all__ = ["MAX_BYTES", "MAX_NODES", "StrictLoader", "loads", "read"]

#: Largest YAML file read (1 MiB): recipes and configs are a few kB.
MAX_BYTES = 1 << 20
#: Most values (scalars, lists, mappings) one document may hold after alias expansion.
MAX_NODES = 100_000

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """Internal: a document this module refuses (carries the node's position)."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class StrictLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe loader (libyaml where available) that checks the composed node graph first."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        check_nodes(node)
        return self.construct_document(node)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_keys(node: yaml.Node) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[tuple, Any] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
            continue
        ident = (key.tag, key.value)
        if ident in first:
            raise _Refused(f"duplicate key {key.value!r} (first given on line "
                           f"{first[ident].line + 1}); keep only one of them", key.start_mark)
        first[ident] = key.start_mark


def check_nodes(root: yaml.Node, limit: int = MAX_NODES) -> int:
    """Count ``root``'s values with aliases expanded (iteratively, each node once).

    Raises ``yaml.YAMLError`` (with the position) past ``limit`` values, for an
    anchor that contains an alias to itself, or for a duplicate mapping key.
    """
    size: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > limit:
                raise _Refused(f"the document holds more than {limit} values once its aliases "
                               "(*name) are expanded; write the values out instead of repeating "
                               "anchors, or split the file", node.start_mark)
            size[id(node)] = total
            active.discard(id(node))
        elif id(node) in active:
            raise _Refused("an anchor (&name) contains an alias (*name) to itself; a config "
                           "cannot be infinitely deep", node.start_mark)
        elif id(node) not in size:
            _check_keys(node)
            active.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node) if id(c) not in size)
    return size[id(root)]


def loads(text: str, where: str = "<string>") -> Any:
    """Parse one YAML document (see the module docstring for what is refused)."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        kind = "" if isinstance(exc, _Refused) else "YAML syntax error: "
        raise ConfigError(f"{where}{loc}: {kind}{problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read; flatten the YAML") from None


def read(path: str | Path, what: str = "config file") -> Any:
    """Read and parse a YAML file of at most :data:`MAX_BYTES` bytes (UTF-8)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder; pass the YAML file inside it") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_BYTES} bytes (1 MiB), the limit for a "
                          "YAML file; a recipe or config is a few kB, so check that this is the right file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return loads(text, where=str(path))
