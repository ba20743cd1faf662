"""Recipes: a typed, validated list of compression stages (YAML at the boundary only).

A recipe file looks like::

    name: kt-lenet5-mnist
    model: {name: lenet5}
    data: {name: mnist, batch_size: 128}
    stages:
      - train: {epochs: 3, lr: 0.05}
      - lighten: {}
      - distill: {losses: "kd:0.9,hint:1.0,ce:0.1", epochs: 3}
      - prune: {remove_channels: 0.5, steps: 2, finetune: kd}
      - export: {}

Every stage has a dataclass config (``configs.py``) registered with its handler
(``stages.py``); unknown stages or keys are errors that name the key and
suggest the closest valid one; values are checked by the configs themselves.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

from .. import yamlsafe
from .._core import closest, did_you_mean
from ..config import from_dict, to_dict
from ..errors import ConfigError
from ..options import INT_GE1, MAX_LR, MAX_T, SEED, FieldError, opt, rename_deprecated, validate  # noqa: F401
from .configs import (DistillStage, ExportStage, FinetuneStage, LightenStage, LoadStage,  # noqa: F401
                      MergeStage, ProfileStage, PruneStage, QuantizeStage, StageConfig, TrainStage,
                      _augmentations)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _check_name(key: str, name: str) -> None:
    # both names become folder names (runs/<name>, runs/<command>-<model>)
    if not _NAME.fullmatch(name):
        raise FieldError(f"{key}={name!r} is invalid: it becomes a folder name "
                         "(runs/<name>), so use 1-100 of A-Z a-z 0-9 . _ - , not starting with a dot "
                         "(no '/', spaces or '..')")


@dataclass
class ModelSpec:
    """The starting model: a zoo name, optionally with weights (edgeslim.save file)."""

    name: str = opt("lenet5", "zoo model name (see `edgeslim models`)")
    num_classes: int = opt(10, "classes of the classifier", check=INT_GE1)
    kwargs: dict[str, Any] = opt(help="keyword arguments of the zoo model (e.g. width_mult)", factory=dict)
    checkpoint: Optional[str] = opt(None, "weights written by edgeslim (model.safetensors)")

    def __post_init__(self) -> None:
        validate(self)
        _check_name("name", self.name)


@dataclass
class DataSpec:
    """The dataset and how it is batched (``name``: a registered dataset or a folder path)."""

    name: str = opt("mnist", "mnist, fashion-mnist, kmnist, cifar10, cifar10-gray28, or an "
                    "image-folder path")
    batch_size: int = opt(128, "images per batch", check=INT_GE1)
    train_subset: Optional[int] = opt(None, "train on N random images", check=INT_GE1)
    test_subset: Optional[int] = opt(None, "evaluate on N random images", check=INT_GE1)
    augment: Optional[Union[bool, str]] = opt(
        None, "true (the dataset's own policy: crop + flip for CIFAR-like sets, none for digits), "
        "false, or a policy name (default: the dataset's own)", choices=_augmentations)
    calib_batches: int = opt(4, "training batches kept for calibration", check=INT_GE1)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class Stage:
    kind: str
    config: Any


#: Version of the recipe schema; state.json records it (see runner._check_same_recipe).
SCHEMA_VERSION = 2


@dataclass
class Recipe:
    """A named model + dataset + ordered stages; ``stages`` items are ``{kind: config}`` in YAML."""

    name: str = opt("recipe", "run name (runs/<name>)")
    model: ModelSpec = opt(help="the starting model", factory=ModelSpec)
    data: DataSpec = opt(help="the dataset", factory=DataSpec)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where training runs")
    seed: int = opt(0, "random seed", check=SEED)
    latency_runs: int = opt(30, "timed runs per latency measurement", check=INT_GE1)
    stages: list = opt(help="the stages, in order", factory=list)

    def __post_init__(self) -> None:
        validate(self)
        _check_name("name", self.name)

    def to_dict(self) -> dict:
        out = to_dict(self)
        out["stages"] = [{s.kind: to_dict(s.config)} for s in self.stages]
        return out


#: Most stages a recipe may list (a real one has 3-10); bounds the work a file can ask for.
MAX_STAGES = 1000


def stage_types() -> dict[str, type[StageConfig]]:
    """Stage kind -> config type, from the one stage registry (``stages.STAGES``)."""
    from .stages import STAGES

    return {name: STAGES.get(name).config for name in STAGES.names()}


def _stage_body(cls: type[StageConfig], body: Any, where: str) -> dict:
    """``body`` with deprecated keys renamed; unknown keys named with the closest valid one."""
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(body).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in body:
        if key not in valid and key not in cls.aliases:
            close = closest(key, valid + list(cls.aliases))
            hint = ""
            if close:
                new = cls.aliases.get(close[0])
                hint = f" Did you mean {close[0]!r}{f' (now {new!r})' if new else ''}?"
            raise ConfigError(f"{where}: unknown key {key!r}.{hint} Valid keys: {', '.join(sorted(valid))}")
    return rename_deprecated(body, cls.aliases, where)


def parse_stage(kind: str, body: Any, where: str) -> Stage:
    """One stage from its YAML body (``{}`` or None: all defaults)."""
    types = stage_types()
    if kind not in types:
        raise ConfigError(f"{where}: unknown stage {kind!r}.{did_you_mean(kind, types)} "
                          f"Valid: {', '.join(types)}")
    cls, where = types[kind], f"{where}.{kind}"
    body = body or {}
    try:
        return Stage(kind, from_dict(cls, _stage_body(cls, body, where), where=where))
    except ConfigError as exc:  # name the key as the user wrote it
        used = {old: new for old, new in cls.aliases.items() if isinstance(body, dict) and old in body}
        msg = str(exc)
        for old, new in used.items():
            if f"{where}.{new}=" in msg:
                msg = msg.replace(f"{where}.{new}=", f"{where}.{old}=") + f" ({old!r} is now {new!r})"
        if msg == str(exc):
            raise
        raise ConfigError(msg) from None


def _parse_stage(i: int, item: Any, file: str = "recipe") -> Stage:
    where = f"{file}.stages[{i}]"
    if isinstance(item, str):
        item = {item: {}}
    if not isinstance(item, dict) or len(item) != 1:
        raise ConfigError(f"{where} must be a mapping with one stage name, e.g. '- prune: {{remove_channels: 0.5}}'")
    (kind, body), = item.items()
    return parse_stage(str(kind), body, where)


def check_order(stages: list[Stage], where: str = "recipe") -> None:
    """Reject orders that make no sense (and say why), from the configs' ordering properties."""
    compressed = other_than_training = quantized = False
    for i, s in enumerate(stages):
        c = s.config
        if c.trains and other_than_training:
            raise ConfigError(f"{where}.stages[{i}] {s.kind!r} must come before any compression stage")
        if c.needs_teacher and not compressed:
            raise ConfigError(f"{where}.stages[{i}] {s.kind!r} {c.teacher_hint}")
        if c.quantizes and quantized:
            raise ConfigError(f"{where}.stages[{i}]: the model is already quantized")
        if quantized and not (c.final or c.quantizes):
            raise ConfigError(f"{where}.stages[{i}] {s.kind!r} cannot follow 'quantize': an int8 model is "
                              "final; only export/profile may come after it")
        compressed |= c.compresses
        other_than_training |= not c.trains
        quantized |= c.quantizes


_check_order = check_order  # the old private name


def parse_recipe(data: dict, where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a recipe must be a mapping with keys name, model, data, stages")
    body = dict(data)
    raw_stages = body.pop("stages", None)
    if not raw_stages:
        raise ConfigError(f"{where}: 'stages' is missing or empty; list at least one stage")
    if not isinstance(raw_stages, list):
        raise ConfigError(f"{where}.stages must be a list ('- train: {{epochs: 3}}' lines), "
                          f"not a {type(raw_stages).__name__}")
    if len(raw_stages) > MAX_STAGES:
        raise ConfigError(f"{where}: {len(raw_stages)} stages; a recipe may have at most {MAX_STAGES} "
                          "(real ones have 3-10): split it into several recipes")
    recipe = from_dict(Recipe, body, where=where)
    recipe.stages = [_parse_stage(i, item, where) for i, item in enumerate(raw_stages)]
    check_order(recipe.stages, where)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe (``edgeslim.yamlsafe``; errors name file, line and key)."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise ConfigError(f"recipe {path} not found; shipped recipes are in the repository's recipes/ folder")
    return parse_recipe(yamlsafe.read(path, what="recipe"), where=str(path))
