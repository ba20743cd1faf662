"""A recipe stage's config as the options of the Python call (one surface).

``prune(model, x, PruneStage(remove_channels=0.3))`` runs exactly what the YAML stage
``prune: {remove_channels: 0.3}`` and ``edgeslim prune --remove-channels 0.3`` run, and
``prune(model, x, ratio=0.3)`` still works; likewise ``lighten(model, x, LightenStage(...))``,
``distill(student, teacher, data, DistillStage(...))``, ``streamline_merge(model, x, calib,
MergeStage(mode="streamline", ...))`` and ``quantize(model, x, calib, QuantizeStage(...))``.
:func:`takes_stage_config` adds the ``config`` argument to a function; the ``*_keywords``
functions map a stage config onto its keywords (the stage says ``remove_channels``, the
function ``ratio``: both names are contracts). The recipe's handlers call the functions this
way, so a stage and its Python call cannot drift apart.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from .pipeline.configs import DistillStage, LightenStage, MergeStage, PruneStage, QuantizeStage

F = TypeVar("F", bound=Callable[..., Any])
_METHOD_FUNCTION = {"structured": "edgeslim.prune", "easiedge": "edgeslim.admm_prune",
                    "unstructured": "edgeslim.prune_weights (or edgeslim.prune.iterative_prune_weights)"}


def _check_type(config: Any, name: str, where: str) -> None:
    from .pipeline import configs

    expected = getattr(configs, name)
    if not isinstance(config, expected):
        raise ConfigError(f"{where}: config must be an edgeslim.pipeline.configs.{expected.__name__}, "
                          f"got {type(config).__name__}; or pass the options as keywords")


def _check_config(config: Any, method: str, where: str) -> None:
    _check_type(config, "PruneStage", where)
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
        "on_unreachable": config.on_unreachable,
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


def lighten_keywords(config: "LightenStage") -> dict[str, Any]:
    """``lighten`` keywords of a ``LightenStage``."""
    _check_type(config, "LightenStage", "lighten")
    return {"width_mult": config.width_mult, "keep_first_conv": config.keep_first_conv,
            "head": config.head, "exclude": tuple(config.exclude), "activation": config.activation,
            "student": config.student}


def distill_keywords(config: "DistillStage") -> dict[str, Any]:
    """``distill`` keywords of a ``DistillStage`` (lr, optimizer, weight decay and warm-up are
    trainer options of ``distill``)."""
    _check_type(config, "DistillStage", "distill")
    return {"losses": config.losses, "epochs": config.epochs, "T": config.T, "lr": config.lr,
            "optimizer": config.optimizer, "weight_decay": config.weight_decay,
            "warmup_epochs": config.warmup_epochs, "augment": config.augment}


def streamline_keywords(config: "MergeStage") -> dict[str, Any]:
    """``streamline_merge`` keywords of a ``MergeStage(mode="streamline")``.

    Retraining after merging is a recipe step of its own (masked retraining); from Python,
    train the merged model with :class:`edgeslim.Trainer`, so a config asking for it is refused
    rather than silently ignored.
    """
    _check_type(config, "MergeStage", "streamline_merge")
    if config.mode != "streamline":
        raise ConfigError("streamline_merge: config has mode='exact'; streamline_merge runs mode "
                          "'streamline'. For exact merges call edgeslim.fold_batchnorm (and "
                          "edgeslim.transforms.merge_linear_chains)")
    if config.retrain_epochs:
        raise ConfigError(f"streamline_merge: config asks for retrain_epochs={config.retrain_epochs}, "
                          "which the recipe runs after merging; from Python train the merged model "
                          "with edgeslim.Trainer, and give retrain_epochs=0 here")
    return {"steps": config.steps}


def quantize_keywords(config: "QuantizeStage") -> dict[str, Any]:
    """``quantize`` keywords of a ``QuantizeStage``."""
    _check_type(config, "QuantizeStage", "quantize")
    return {"backend": config.backend, "num_batches": config.calib_batches}


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


def takes_stage_config(to_keywords: Callable[[Any], dict[str, Any]], positional: int,
                       config_type: str = "PruneStage") -> Callable[[F], F]:
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
                                  annotation=f"{config_type} | None")
        call.__signature__ = inspect.signature(fn).replace(  # type: ignore[attr-defined]
            parameters=params[:positional] + [extra] + params[positional:])
        return call  # type: ignore[return-value]

    return wrap
