"""The recipe's ``prune`` stage config as the options of the Python calls (one surface).

``prune(model, x, PruneStage(remove_channels=0.3))`` runs exactly what the YAML stage
``prune: {remove_channels: 0.3}`` and ``edgeslim prune --remove-channels 0.3`` run, and
``prune(model, x, ratio=0.3)`` still works. :func:`takes_stage_config` adds the ``config``
argument to a function; the ``*_keywords`` functions map a stage config onto its keywords
(the stage says ``remove_channels``, the function ``ratio``: both names are contracts).
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..pipeline.configs import PruneStage

F = TypeVar("F", bound=Callable[..., Any])
_METHOD_FUNCTION = {"structured": "edgeslim.prune", "easiedge": "edgeslim.admm_prune",
                    "unstructured": "edgeslim.prune_weights (or edgeslim.prune.iterative_prune_weights)"}


def _check_config(config: Any, method: str, where: str) -> None:
    from ..pipeline.configs import PruneStage

    if not isinstance(config, PruneStage):
        raise ConfigError(f"{where}: config must be an edgeslim.pipeline.configs.PruneStage, got "
                          f"{type(config).__name__}; or pass the options as keywords")
    if config.method != method:
        raise ConfigError(f"{where}: config has method={config.method!r}; {where} runs method "
                          f"{method!r}. Use {_METHOD_FUNCTION[config.method]} for that config")


def structured_keywords(config: "PruneStage") -> dict[str, Any]:
    """``prune``/``prune_`` keywords of a ``PruneStage(method="structured")``.

    ``finetune="none"`` leaves ``finetune`` out, so a Python callable may be given instead.
    """
    _check_config(config, "structured", "prune")
    keywords = {
        "criterion": config.criterion, "planner": config.planner, "ratio": config.remove_channels,
        "target_flops": config.target_flops, "target_params": config.target_params,
        "target_latency": config.target_latency, "target_speedup": config.target_speedup,
        "runtime": config.runtime, "threads": config.threads, "steps": config.steps,
        "round_to": config.round_to, "ignore": tuple(config.ignore), "min_channels": config.min_channels,
        "protect_first": config.protect_first, "on_unsupported": config.on_unsupported,
        "finetune_epochs": config.finetune_epochs, "finetune_options": {"lr": config.finetune_lr}}
    if config.finetune != "none":
        keywords["finetune"] = config.finetune
    return keywords


def easiedge_keywords(config: "PruneStage") -> dict[str, Any]:
    """``admm_prune`` keywords of a ``PruneStage(method="easiedge")`` (as the recipe runs it:
    ``finetune="none"`` is zero fine-tuning epochs; ``finetune_lr`` is the lr of both phases).
    The stage's structured-only fields (``ignore``, ``round_to``, ...) are not read, as in a recipe."""
    _check_config(config, "easiedge", "admm_prune")
    tuned = config.finetune != "none"
    return {"target_filters": config.remove_filters, "target_flops": config.target_flops,
            "criterion": config.criterion, "rho": config.rho, "admm_epochs": config.admm_epochs,
            "finetune_epochs": config.finetune_epochs if tuned else 0,
            "finetune": config.finetune if tuned else "plain", "lr": config.finetune_lr}


def _same(given: Any, from_config: Any) -> bool:
    """Equal as options: a list is its tuple, 0 is 0.0, but True is not 1."""
    a, b = (tuple(v) if isinstance(v, list) else v for v in (given, from_config))
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return a is b or (numbers or type(a) is type(b)) and a == b


def merge_keywords(where: str, from_config: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``from_config`` with the keywords ``given`` beside the config added; a keyword that says
    something else than the config raises ``ConfigError`` (dict options merge key by key)."""
    merged = dict(from_config)
    for key, value in given.items():
        if key not in from_config:
            merged[key] = value
            continue
        theirs = from_config[key]
        if isinstance(value, dict) and isinstance(theirs, dict):
            clash = next((k for k in value if k in theirs and not _same(value[k], theirs[k])), None)
            if clash is None:
                merged[key] = theirs | value
                continue
            key, value, theirs = f"{key}[{clash!r}]", value[clash], theirs[clash]
        elif _same(value, theirs):
            continue
        hint = " (a callable finetune= needs finetune='none' in the config)" if callable(value) else ""
        raise ConfigError(f"{where}: {key}={value!r} contradicts the config, which gives {theirs!r}{hint}. "
                          "Give each option in one place: drop the keyword or change the config")
    return merged


def takes_stage_config(to_keywords: Callable[[Any], dict[str, Any]], positional: int) -> Callable[[F], F]:
    """Let a function take a stage config after its ``positional`` leading arguments (positionally
    or as ``config=``); its fields become keywords, merged with the keywords given beside it."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if len(args) > positional + 1:
                raise TypeError(f"{fn.__name__}() takes {positional} positional arguments and a "
                                f"config, but {len(args)} were given; pass the options as keywords")
            config = args[positional] if len(args) > positional else kwargs.pop("config", None)
            if len(args) > positional and "config" in kwargs:
                raise TypeError(f"{fn.__name__}() got config twice (positionally and as config=)")
            if config is None:
                return fn(*args[:positional], **kwargs)
            merged = merge_keywords(f"{fn.__name__}()", to_keywords(config), kwargs)
            return fn(*args[:positional], **merged)

        params = list(inspect.signature(fn).parameters.values())
        extra = inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                  annotation="PruneStage | None")
        call.__signature__ = inspect.signature(fn).replace(  # type: ignore[attr-defined]
            parameters=params[:positional] + [extra] + params[positional:])
        return call  # type: ignore[return-value]

    return wrap
