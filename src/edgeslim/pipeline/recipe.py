"""Recipes: a typed, validated list of compression stages (YAML at the boundary only).

A recipe file looks like::

    name: kt-lenet5-mnist
    model: {name: lenet5}
    data: {name: mnist, batch_size: 128}
    stages:
      - train: {epochs: 3, lr: 0.05}
      - lighten: {}
      - distill: {losses: "kd:0.9,hint:1.0,ce:0.1", epochs: 3}
      - prune: {ratio: 0.5, steps: 2, finetune: kd}
      - export: {}

Every stage has a dataclass config; unknown stages or keys are errors that name
the key and suggest the closest valid one (``edgeslim.config.from_dict``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from .. import yamlsafe
from ..config import from_dict, to_dict
from ..errors import ConfigError
from ..registry import Registry


@dataclass
class ModelSpec:
    """The starting model: a zoo name, optionally with weights (edgeslim.save file)."""

    name: str = "lenet5"
    num_classes: int = 10
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None


@dataclass
class DataSpec:
    """The dataset and how it is batched (``name``: mnist, cifar10 or a folder path)."""

    name: str = "mnist"
    batch_size: int = 128
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    augment: Optional[bool] = None
    calib_batches: int = 4


@dataclass
class TrainStage:
    epochs: int = 3
    lr: float = 0.05
    optimizer: Literal["sgd", "adamw"] = "sgd"
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class LoadStage:
    path: str = ""


@dataclass
class LightenStage:
    width_mult: float = 1.0
    keep_first_conv: bool = True
    head: Literal["gap_linear", "conv", "keep"] = "gap_linear"
    exclude: list[str] = field(default_factory=list)


@dataclass
class DistillStage:
    losses: str = "kd:0.9,ce:0.1"
    T: float = 4.0
    epochs: int = 3
    lr: float = 0.05
    optimizer: Literal["sgd", "adamw"] = "sgd"
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5  # a fresh student's first logits can be huge: ramp the lr up


@dataclass
class PruneStage:
    method: Literal["structured", "easiedge", "unstructured"] = "structured"
    criterion: str = "l1"
    planner: Literal["global", "layerwise"] = "global"
    ratio: Optional[float] = None
    target_flops: Optional[float] = None
    target_params: Optional[float] = None
    target_filters: Optional[float] = None
    sparsity: Optional[float] = None
    scope: Literal["global", "layer"] = "global"
    steps: int = 1
    round_to: int = 1
    finetune: Literal["none", "plain", "kd"] = "plain"
    finetune_epochs: int = 1
    finetune_lr: float = 0.01
    admm_epochs: int = 2
    rho: float = 1e-3


@dataclass
class FinetuneStage:
    mode: Literal["plain", "kd"] = "plain"
    epochs: int = 1
    lr: float = 0.01
    T: float = 4.0


@dataclass
class MergeStage:
    mode: Literal["exact", "streamline"] = "exact"
    rebirth_steps: int = 200
    retrain_epochs: int = 0
    lr: float = 0.01


@dataclass
class QuantizeStage:
    backend: Literal["onnxruntime", "torch"] = "onnxruntime"
    calib_batches: int = 4


@dataclass
class ExportStage:
    opset: int = 17
    tol: float = 1e-4


@dataclass
class ProfileStage:
    threads: int = 1
    runs: int = 50


STAGE_CONFIGS: Registry[type] = Registry("stage")
for _name, _cls in [("train", TrainStage), ("load", LoadStage), ("lighten", LightenStage),
                    ("distill", DistillStage), ("prune", PruneStage), ("finetune", FinetuneStage),
                    ("merge", MergeStage), ("quantize", QuantizeStage), ("export", ExportStage),
                    ("profile", ProfileStage)]:
    STAGE_CONFIGS.register(_name)(_cls)


@dataclass
class Stage:
    kind: str
    config: Any


@dataclass
class Recipe:
    name: str = "recipe"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    latency_runs: int = 30
    stages: list = field(default_factory=list)

    def to_dict(self) -> dict:
        out = to_dict(self)
        out["stages"] = [{s.kind: to_dict(s.config)} for s in self.stages]
        return out


#: Most stages a recipe may list (a real one has 3-10); bounds the work a file can ask for.
MAX_STAGES = 1000
#: A learning rate above this diverges at once; larger values are typos (1e3 for 1e-3).
MAX_LR = 10.0
#: The largest distillation temperature accepted (typical: 1-20).
MAX_T = 100.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _finite(lo: float, hi: float, lo_open: bool = True) -> Callable[[Any], bool]:
    return lambda v: math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi


_INT_GE0 = (lambda v: v >= 0, "an integer >= 0")
_INT_GE1 = (lambda v: v >= 1, "an integer >= 1")
_LR = (_finite(0, MAX_LR), f"a finite number in (0, {MAX_LR:g}] (typical: 1e-4 to 0.5; above "
       f"{MAX_LR:g} training diverges at once)")
#: Field name -> (valid?, what a valid value is). Applied to every section that has the field.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": _LR, "finetune_lr": _LR,
    "T": (_finite(0, MAX_T), f"a finite temperature in (0, {MAX_T:g}] (typical: 1 to 20)"),
    "weight_decay": (_finite(0, 1, lo_open=False), "a finite number in [0, 1] (typical: 1e-4 to 5e-4)"),
    "warmup_epochs": (_finite(0, math.inf, lo_open=False), "a finite number >= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "rho": (_finite(0, 1e6), "a finite number in (0, 1e6] (typical: 1e-4 to 1e-1)"),
    "tol": (_finite(0, math.inf), "a finite number > 0"),
    "opset": (lambda v: v >= 7, "an ONNX opset >= 7 (default 17)"),
    "epochs": _INT_GE0, "finetune_epochs": _INT_GE0, "admm_epochs": _INT_GE0,
    "retrain_epochs": _INT_GE0, "rebirth_steps": _INT_GE0,
    "steps": _INT_GE1, "round_to": _INT_GE1, "calib_batches": _INT_GE1, "runs": _INT_GE1,
    "threads": _INT_GE1, "batch_size": _INT_GE1, "num_classes": _INT_GE1, "latency_runs": _INT_GE1,
    "train_subset": _INT_GE1, "test_subset": _INT_GE1,
    "seed": (lambda v: 0 <= v < 2**31, "an integer in [0, 2**31) (each stage i is seeded with seed + i)"),
}


def _check_fields(obj: Any, where: str) -> None:
    """Check every field of ``obj`` that has a rule in ``_RULES`` (None means "not set")."""
    for f in dataclasses.fields(obj):
        value, rule = getattr(obj, f.name), _RULES.get(f.name)
        if rule is not None and value is not None and not rule[0](value):
            raise ConfigError(f"{where}.{f.name}={value!r} is invalid: it must be {rule[1]}")
    epochs, warmup = getattr(obj, "epochs", None), getattr(obj, "warmup_epochs", None)
    if epochs is not None and warmup is not None and warmup > epochs:
        raise ConfigError(f"{where}.warmup_epochs={warmup!r} is longer than epochs={epochs}; "
                          "lower warmup_epochs or raise epochs")


def _parse_stage(i: int, item: Any, file: str = "recipe") -> Stage:
    where = f"{file}.stages[{i}]"
    if isinstance(item, str):
        item = {item: {}}
    if not isinstance(item, dict) or len(item) != 1:
        raise ConfigError(f"{where} must be a mapping with one stage name, e.g. '- prune: {{ratio: 0.5}}'")
    (kind, body), = item.items()
    if kind not in STAGE_CONFIGS:
        close = difflib.get_close_matches(str(kind), STAGE_CONFIGS.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: unknown stage {kind!r}.{hint} Valid: {', '.join(STAGE_CONFIGS.names())}")
    cfg = from_dict(STAGE_CONFIGS.get(kind), body or {}, where=f"{where}.{kind}")
    _check_fields(cfg, f"{where}.{kind}")
    _check_values(kind, cfg, f"{where}.{kind}")
    return Stage(kind, cfg)


def _check_values(kind: str, cfg: Any, where: str) -> None:
    for name in ("ratio", "sparsity"):
        v = getattr(cfg, name, None)
        if v is not None and not 0 <= v < 1:
            raise ConfigError(f"{where}.{name}={v} must lie in [0, 1)")
    for name in ("target_flops", "target_params", "target_filters", "width_mult"):
        v = getattr(cfg, name, None)
        if v is not None and not 0 < v <= (1 if name != "target_filters" else 0.999):
            raise ConfigError(f"{where}.{name}={v} must lie in (0, 1]")
    if kind == "load" and not cfg.path:
        raise ConfigError(f"{where}.path is empty: name the edgeslim model file to load")
    if kind == "prune":
        targets = {"structured": ("ratio", "target_flops", "target_params"),
                   "easiedge": ("target_filters", "target_flops"),
                   "unstructured": ("sparsity",)}[cfg.method]
        given = [t for t in targets if getattr(cfg, t) is not None]
        if len(given) != 1:
            raise ConfigError(f"{where}: method {cfg.method!r} needs exactly one of {', '.join(targets)}")


_TRAINING = frozenset({"train", "load"})
_COMPRESSION = frozenset({"lighten", "prune", "merge"})


def _check_order(stages: list[Stage], where: str = "recipe") -> None:
    """Reject orders that make no sense (and say why); one pass, O(number of stages)."""
    compressed = other_than_training = quantized = False
    for i, s in enumerate(stages):
        if s.kind in _TRAINING and other_than_training:
            raise ConfigError(f"{where}.stages[{i}] {s.kind!r} must come before any compression stage")
        if s.kind == "distill" and not compressed:
            raise ConfigError(f"{where}.stages[{i}] 'distill' needs a teacher: put it after 'lighten' "
                              "(or prune/merge); the model before the first compression stage is the teacher")
        if s.kind == "finetune" and s.config.mode == "kd" and not compressed:
            raise ConfigError(f"{where}.stages[{i}] 'finetune' with mode kd needs an earlier compression "
                              "stage (its input model becomes the teacher)")
        if s.kind == "quantize" and quantized:
            raise ConfigError(f"{where}.stages[{i}]: the model is already quantized")
        if quantized and s.kind not in ("export", "profile"):
            raise ConfigError(f"{where}.stages[{i}] {s.kind!r} cannot follow 'quantize': an int8 model is "
                              "final; only export/profile may come after it")
        compressed |= s.kind in _COMPRESSION
        other_than_training |= s.kind not in _TRAINING
        quantized |= s.kind == "quantize"


def _check_top(recipe: Recipe, where: str) -> None:
    # both names become folder names (runs/<name>, runs/<command>-<model>)
    for key, name in (("name", recipe.name), ("model.name", recipe.model.name)):
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}.{key}={name!r} is invalid: it becomes a folder name "
                              "(runs/<name>), so use 1-100 of A-Z a-z 0-9 . _ - , not starting with a dot "
                              "(no '/', spaces or '..')")
    _check_fields(recipe, where)
    _check_fields(recipe.model, f"{where}.model")
    _check_fields(recipe.data, f"{where}.data")


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
    _check_top(recipe, where)
    recipe.stages = [_parse_stage(i, item, where) for i, item in enumerate(raw_stages)]
    _check_order(recipe.stages, where)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe (``edgeslim.yamlsafe``; errors name file, line and key)."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise ConfigError(f"recipe {path} not found; shipped recipes are in the repository's recipes/ folder")
    return parse_recipe(yamlsafe.read(path, what="recipe"), where=str(path))
