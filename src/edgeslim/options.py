"""Options written once: a dataclass field carries its default, valid range, choices and help.

``opt(default, "help", check=LR)`` is a ``dataclasses.field`` whose metadata the
three surfaces read: ``validate`` (called from ``__post_init__``), the CLI flag
generator (``edgeslim.cliargs``) and the JSON Schema (``edgeslim.schema``).

``choices`` is a tuple or a zero-argument callable returning the valid names
(usually ``REGISTRY.names``), so a registry stays the one source of valid names.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from .errors import ConfigError, EdgeslimDeprecationWarning

Choices = Union[Sequence[str], Callable[[], Iterable[str]], None]


@dataclass(frozen=True)
class Check:
    """A valid range: ``ok(value)`` and what a valid value is, in words (for errors and help)."""

    ok: Callable[[Any], bool]
    text: str
    minimum: Optional[float] = None  # for the JSON Schema (inclusive bounds only)
    maximum: Optional[float] = None


class FieldError(ConfigError):
    """An invalid field value; ``from_dict`` prefixes it with the key path (``recipe.stages[1].prune.``)."""


def _finite(lo: float, hi: float, lo_open: bool = True) -> Callable[[Any], bool]:
    return lambda v: math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi


#: The one learning-rate limit (TrainConfig and every stage's lr): real schedules peak at
#: 1e-4 to 1; above this training diverges at once, and such values are typos (1e3 for 1e-3).
MAX_LR = 10.0
#: The largest distillation temperature accepted (typical: 1-20).
MAX_T = 100.0

INT_GE0 = Check(lambda v: v >= 0, "an integer >= 0", minimum=0)
INT_GE1 = Check(lambda v: v >= 1, "an integer >= 1", minimum=1)
LR = Check(_finite(0, MAX_LR), f"a finite number in (0, {MAX_LR:g}] (typical: 1e-4 to 0.5; above "
           f"{MAX_LR:g} training diverges at once: is a minus sign missing, 1e3 for 1e-3?)", maximum=MAX_LR)
TEMPERATURE = Check(_finite(0, MAX_T), f"a finite temperature in (0, {MAX_T:g}] (typical: 1 to 20)",
                    maximum=MAX_T)
WEIGHT_DECAY = Check(_finite(0, 1, lo_open=False), "a finite number in [0, 1] (typical: 1e-4 to 5e-4)",
                     minimum=0, maximum=1)
NONNEG = Check(_finite(0, math.inf, lo_open=False), "a finite number >= 0", minimum=0)
POSITIVE = Check(_finite(0, math.inf), "a finite number > 0")
FRACTION_KEPT = Check(lambda v: 0 < v <= 1, "a fraction kept in (0, 1]", maximum=1)
FRACTION_REMOVED = Check(lambda v: 0 <= v < 1, "a fraction removed in [0, 1)", minimum=0)
FILTERS_REMOVED = Check(lambda v: 0 < v <= 0.999, "a fraction removed in (0, 0.999]", maximum=0.999)
SMOOTHING = Check(lambda v: 0 <= v < 1, "a number in [0, 1)", minimum=0)
RHO = Check(_finite(0, 1e6), "a finite number in (0, 1e6] (typical: 1e-4 to 1e-1)", maximum=1e6)
#: The ADMM penalty of ``edgeslim.prune.admm.admm_prune``: a number, or "auto" (scaled to the W-step).
RHO_OR_AUTO = Check(lambda v: v == "auto" or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and _finite(0, 1e6)(v)),
                    "'auto' (one W-step contracts the cut filters by about e^-1) or a finite number in "
                    "(0, 1e6]", maximum=1e6)
OPSET = Check(lambda v: v >= 7, "an ONNX opset >= 7 (default 17)", minimum=7)
SEED = Check(lambda v: 0 <= v < 2**31, "an integer in [0, 2**31) (each stage i is seeded with seed + i)",
             minimum=0, maximum=2**31 - 1)


def opt(default: Any = dataclasses.MISSING, help: str = "", *, check: Check | None = None,
        choices: Choices = None, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its help text, valid range and (registry) choices."""
    meta = {"help": help, "check": check, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def choices_of(f: dataclasses.Field) -> list[str] | None:
    """The valid names of field ``f`` (calling a registry's ``names`` when given one)."""
    c = f.metadata.get("choices")
    if c is None:
        return None
    return sorted(c()) if callable(c) else list(c)


def help_of(f: dataclasses.Field) -> str:
    return str(f.metadata.get("help", ""))


def field_message(name: str, value: Any, check: Check) -> str:
    """The one wording of an out-of-range value: ``name=value is invalid: it must be ...``."""
    return f"{name}={value!r} is invalid: it must be {check.text}"


def check_value(name: str, value: Any, check: Check) -> None:
    """Raise ``FieldError`` (:func:`field_message`) unless ``value`` is a real number that passes
    ``check``; for dataclasses that validate a field by hand (``TrainConfig.lr``)."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not real or not check.ok(value):
        raise FieldError(field_message(name, value, check))


def validate(obj: Any) -> None:
    """Check every field of ``obj`` against its ``Check`` and choices (None means "not set").

    Raises:
        FieldError: ``name=value is invalid: it must be ...`` (the caller adds the key path).
    """
    from ._core import did_you_mean
    from .config import check_literals

    check_literals(obj)
    for f in dataclasses.fields(obj):
        value, check = getattr(obj, f.name), f.metadata.get("check")
        if value is None:
            continue
        if check is not None and not check.ok(value):
            raise FieldError(field_message(f.name, value, check))
        names = choices_of(f)
        if names is not None and isinstance(value, str) and value not in names:
            raise FieldError(f"{f.name}={value!r} is invalid.{did_you_mean(value, names)} "
                             f"Valid: {', '.join(names)}")


def rename_deprecated(body: dict, aliases: dict[str, str], where: str) -> dict:
    """Map deprecated keys (``{old: new}``) to their new names, warning once per key."""
    out = dict(body)
    for old, new in aliases.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{where}: both {old!r} and its new name {new!r} are set; keep {new!r}")
            warnings.warn(f"{where}.{old} is deprecated; call it {new!r} (the old name goes in the next "
                          "release)", EdgeslimDeprecationWarning, stacklevel=3)
            out[new] = out.pop(old)
    return out
