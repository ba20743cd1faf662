"""One generic name -> factory registry used for models, criteria, losses, stages.

Dispatch by registry keeps the code free of if/elif chains: a new criterion,
loss or model is one small class or function plus a ``@REGISTRY.register``.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from ._core import did_you_mean
from .errors import EdgeslimError

T = TypeVar("T")


class RegistryError(EdgeslimError, KeyError):
    """An unknown or duplicate name; the message lists the valid names.

    An ``EdgeslimError`` (the CLI prints it without a traceback) and, as before, a ``KeyError``.
    """

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps a lower-case name to a factory (a class or a function).

    Args:
        kind: what the registry holds, used in error messages ("model", "loss").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, *, override: bool = False) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            key = (name or getattr(obj, "__name__")).lower()
            if key in self._items and not override:
                raise RegistryError(
                    f"{self.kind} {key!r} is already registered; pass override=True to replace it"
                )
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        key = name.lower()
        if key not in self._items:
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{did_you_mean(key, self._items)} "
                f"Valid: {', '.join(sorted(self._items))}"
            )
        return self._items[key]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
