"""One typed config per recipe stage: its fields are the YAML keys, the CLI flags and the schema.

Each field is an ``edgeslim.options.opt`` (default, help, valid range, choices),
checked in ``__post_init__`` however the config is built (YAML, CLI, Python).
Ordering rules are properties of the configs (``trains``, ``compresses``,
``needs_teacher``, ``final``), read by ``recipe.check_order``.

Targets read one way: ``target_*`` is a fraction *kept*, ``remove_*`` a
fraction *removed* (``sparsity``: the fraction of weights zeroed; ``target_nonzero``, a
count of weights kept, and ``target_latency``/``target_speedup`` say their units).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Union

from ..errors import ConfigError
from ..options import (Check, FILTERS_REMOVED, FRACTION_KEPT, FRACTION_REMOVED, INT_GE0, INT_GE1, LR, NONNEG, OPSET,
                       POSITIVE, RHO_OR_AUTO, SMOOTHING, TEMPERATURE, WEIGHT_DECAY, FieldError, opt, validate)


def _registry_names(module: str, registry: str) -> Callable[[], list[str]]:
    """The valid names of ``edgeslim.<module>.<registry>``, read when asked (the registries
    import torch; recipe parsing must not), so a registered name is never refused."""
    def names() -> list[str]:
        return getattr(importlib.import_module(f"edgeslim.{module}"), registry).names()

    return names


_optimizers = _registry_names("train.optim", "OPTIMIZERS")
_schedules = _registry_names("train.optim", "SCHEDULES")
_planners = _registry_names("prune.planner", "ORDERINGS")
_runtimes = _registry_names("profile.runtimes", "RUNTIMES")
_activations = _registry_names("transforms.lighten", "ACTIVATIONS")
_models = _registry_names("models.factory", "MODELS")
_backends = _registry_names("quant.api", "QUANT_BACKENDS")
_augmentations = _registry_names("data.augment", "AUGMENTATIONS")


def _stage_augment() -> Any:
    """The ``augment`` field of a training stage: its own policy instead of ``data.augment``."""
    return opt(None, "this stage's augmentation instead of data.augment: true (the dataset's own), "
               "false, or a policy name (default: data.augment)", choices=_augmentations)


@dataclass
class StageConfig:
    """Base of every stage config (``kind`` is its name in YAML and on the CLI)."""

    kind: ClassVar[str] = ""
    #: train/load: the model's starting point, so it must come before every other stage
    trains: ClassVar[bool] = False
    #: lighten/prune/merge: the model before the first one becomes the teacher
    compresses: ClassVar[bool] = False
    #: quantize: after it only ``final`` stages may follow
    quantizes: ClassVar[bool] = False
    #: export/profile: may follow quantize (an int8 model is final)
    final: ClassVar[bool] = False
    #: why this stage needs an earlier compression stage (when ``needs_teacher``)
    teacher_hint: ClassVar[str] = ""
    #: deprecated key -> its new name (YAML and CLI accept both for one release)
    aliases: ClassVar[dict[str, str]] = {}
    #: fields that are not YAML/CLI options of the stage command (none so far)
    cli_skip: ClassVar[tuple[str, ...]] = ()

    @property
    def needs_teacher(self) -> bool:
        return False

    def __post_init__(self) -> None:
        validate(self)
        self.check()

    def check(self) -> None:
        """Rules across fields (override); raise ``FieldError``/``ConfigError``."""


def _warmup_fits(cfg: Any) -> None:
    if cfg.warmup_epochs > cfg.epochs:
        raise FieldError(f"warmup_epochs={cfg.warmup_epochs!r} is longer than epochs={cfg.epochs}; "
                         "lower warmup_epochs or raise epochs")


@dataclass
class TrainStage(StageConfig):
    """Train the model with cross-entropy (the run's starting point)."""

    kind: ClassVar[str] = "train"
    trains: ClassVar[bool] = True
    epochs: int = opt(3, "passes over the training set", check=INT_GE0)
    lr: float = opt(0.05, "peak learning rate", check=LR)
    optimizer: str = opt("sgd", "optimizer (registry edgeslim.train.optim.OPTIMIZERS)", choices=_optimizers)
    weight_decay: float = opt(5e-4, "L2 penalty / decoupled weight decay", check=WEIGHT_DECAY)
    schedule: str = opt("cosine", "learning-rate schedule, applied per iteration", choices=_schedules)
    warmup_epochs: float = opt(0.0, "linear learning-rate warm-up, in epochs", check=NONNEG)
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy", check=SMOOTHING)
    augment: Optional[Union[bool, str]] = _stage_augment()

    def check(self) -> None:
        _warmup_fits(self)


@dataclass
class LoadStage(StageConfig):
    """Replace the model by one saved with edgeslim.save (e.g. trained elsewhere)."""

    kind: ClassVar[str] = "load"
    trains: ClassVar[bool] = True
    path: str = opt("", "the edgeslim model file (.safetensors) to load")

    def check(self) -> None:
        if not self.path:
            raise FieldError("path is empty: name the edgeslim model file to load")


@dataclass
class LightenStage(StageConfig):
    """Build a depthwise-separable student with a GAP head from the model (KT, docs/methods.md)."""

    kind: ClassVar[str] = "lighten"
    compresses: ClassVar[bool] = True
    width_mult: float = opt(1.0, "student channel multiplier (< 1 narrower, > 1 wider; zoo models whose "
                            "factory takes width_mult)", check=POSITIVE)
    keep_first_conv: bool = opt(True, "leave the first convolution a standard conv")
    head: Literal["gap_linear", "conv", "keep"] = opt("gap_linear", "classifier head of the student")
    activation: str = opt("relu", "activation of the new depthwise-separable blocks (registry "
                          "edgeslim.transforms.lighten.ACTIVATIONS)", choices=_activations)
    exclude: list[str] = opt(help="module paths left as they are", factory=list)
    student: Optional[str] = opt(None, "build this zoo model (e.g. dsnet) as the student, with the "
                                 "teacher's input channels and classes, instead of converting the "
                                 "teacher's convs", choices=_models)


@dataclass
class DistillStage(StageConfig):
    """Train the student against the teacher with weighted losses (Hinton et al. 2015; hints, attention)."""

    kind: ClassVar[str] = "distill"
    teacher_hint: ClassVar[str] = ("needs a teacher: put it after 'lighten' (or prune/merge); the model "
                                   "before the first compression stage is the teacher")
    losses: str = opt("kd:0.9,ce:0.1", "weighted losses, e.g. kd:0.9,hint:1.0,ce:0.1")
    T: float = opt(4.0, "distillation temperature", check=TEMPERATURE)
    epochs: int = opt(3, "passes over the training set", check=INT_GE0)
    lr: float = opt(0.05, "peak learning rate", check=LR)
    optimizer: str = opt("sgd", "optimizer (registry edgeslim.train.optim.OPTIMIZERS)", choices=_optimizers)
    weight_decay: float = opt(5e-4, "L2 penalty / decoupled weight decay", check=WEIGHT_DECAY)
    # a fresh student's first logits can be huge: ramp the lr up
    warmup_epochs: float = opt(0.5, "linear learning-rate warm-up, in epochs", check=NONNEG)
    augment: Optional[Union[bool, str]] = _stage_augment()

    @property
    def needs_teacher(self) -> bool:
        return True

    def check(self) -> None:
        _warmup_fits(self)


SPEEDUP = Check(lambda v: v >= 1 and v < float("inf"), "a finite speed-up >= 1 (times faster)", minimum=1)
_TARGETS = {"structured": ("remove_channels", "target_flops", "target_params", "target_latency",
                           "target_speedup"),
            "easiedge": ("remove_filters", "target_flops"),
            "unstructured": ("sparsity", "target_nonzero")}


@dataclass
class PruneStage(StageConfig):
    """Prune filters (structured; EasiEdge ADMM, Yu et al. 2021) or single weights (Han et al. 2015)."""

    kind: ClassVar[str] = "prune"
    compresses: ClassVar[bool] = True
    aliases: ClassVar[dict[str, str]] = {"ratio": "remove_channels", "target_filters": "remove_filters"}
    method: Literal["structured", "easiedge", "unstructured"] = opt("structured", "pruning algorithm")
    criterion: str = opt("l1", "importance criterion (registry edgeslim.prune.IMPORTANCES)")
    planner: str = opt("global", "one global ranking or per-layer ratios", choices=_planners)
    remove_channels: Optional[float] = opt(None, "structured: fraction of channels removed",
                                           check=FRACTION_REMOVED)
    target_flops: Optional[float] = opt(None, "fraction of FLOPs kept", check=FRACTION_KEPT)
    target_params: Optional[float] = opt(None, "structured: fraction of parameters kept", check=FRACTION_KEPT)
    target_latency: Optional[float] = opt(None, "structured: milliseconds per inference at the example "
                                          "batch, measured on --runtime with --threads", check=POSITIVE)
    target_speedup: Optional[float] = opt(None, "structured: times faster than the unpruned model, "
                                          "measured on --runtime with --threads", check=SPEEDUP)
    runtime: str = opt("onnxruntime", "latency targets: the runtime deployed to (openvino: pip install "
                       "openvino)", choices=_runtimes)
    threads: int = opt(1, "latency targets: CPU threads of the runtime", check=INT_GE1)
    remove_filters: Optional[float] = opt(None, "easiedge: fraction of filters removed",
                                          check=FILTERS_REMOVED)
    sparsity: Optional[float] = opt(None, "unstructured: fraction of weights zeroed", check=FRACTION_REMOVED)
    target_nonzero: Optional[int] = opt(None, "unstructured: how many weights stay non-zero (a count, "
                                        "instead of sparsity)", check=INT_GE1)
    scope: Literal["global", "layer"] = opt("global", "unstructured: one global threshold or per layer")
    steps: int = opt(1, "reach the target in this many prune (+ fine-tune) steps", check=INT_GE1)
    round_to: int = opt(1, "keep channel counts multiples of this (e.g. 8)", check=INT_GE1)
    ignore: list[str] = opt(help="structured: module paths left unpruned", factory=list)
    min_channels: int = opt(1, "structured: fewest channels a layer keeps", check=INT_GE1)
    protect_first: bool = opt(True, "structured: never prune the input layer's channels")
    on_unsupported: Literal["error", "lock"] = opt("error", "structured: an op the graph cannot "
                                                   "prune through fails, or locks its channels")
    on_unreachable: Literal["error", "fastest"] = opt(
        "error", "latency targets: when even the fastest model measured misses the target, fail, or "
        "keep that model with a warning (its measured latency is recorded)")
    finetune: Literal["none", "plain", "kd"] = opt("plain", "fine-tuning after each step")
    finetune_epochs: int = opt(1, "fine-tuning epochs per step", check=INT_GE0)
    finetune_lr: float = opt(0.01, "fine-tuning learning rate", check=LR)
    admm_epochs: int = opt(2, "easiedge: ADMM epochs", check=INT_GE0)
    rho: Union[float, Literal["auto"]] = opt("auto", "easiedge: ADMM penalty weight, or auto (as admm_prune: "
                                             "(1 - momentum) / (lr * steps of one W-step))", check=RHO_OR_AUTO)

    def check(self) -> None:
        targets = _TARGETS[self.method]
        if sum(getattr(self, t) is not None for t in targets) != 1:
            raise ConfigError(f"method {self.method!r} needs exactly one of {', '.join(targets)}")


@dataclass
class FinetuneStage(StageConfig):
    """Train the current model again, alone (plain) or taught by the teacher (kd)."""

    kind: ClassVar[str] = "finetune"
    teacher_hint: ClassVar[str] = ("with mode kd needs an earlier compression stage (its input model "
                                   "becomes the teacher)")
    mode: Literal["plain", "kd"] = opt("plain", "cross-entropy alone, or knowledge distillation")
    epochs: int = opt(1, "passes over the training set", check=INT_GE0)
    lr: float = opt(0.01, "learning rate", check=LR)
    T: float = opt(4.0, "kd: distillation temperature", check=TEMPERATURE)

    @property
    def needs_teacher(self) -> bool:
        return self.mode == "kd"


@dataclass
class MergeStage(StageConfig):
    """Fold BN and merge linear chains exactly, or DeepRebirth streamline merging (Li et al. 2018)."""

    kind: ClassVar[str] = "merge"
    compresses: ClassVar[bool] = True
    aliases: ClassVar[dict[str, str]] = {"rebirth_steps": "steps"}
    mode: Literal["exact", "streamline"] = opt("exact", "exact merges, or trained streamline merging")
    steps: int = opt(200, "streamline: optimisation steps per reborn layer", check=INT_GE0)
    retrain: Literal["plain", "kd"] = opt("plain", "retraining after merging: on labels (plain), or "
                                          "taught by the run's teacher (kd: the model before the "
                                          "first compression stage)")
    retrain_epochs: int = opt(0, "retraining epochs after merging", check=INT_GE0)
    lr: float = opt(0.01, "retraining learning rate", check=LR)


@dataclass
class QuantizeStage(StageConfig):
    """int8 post-training static quantization (writes model.int8.onnx)."""

    kind: ClassVar[str] = "quantize"
    quantizes: ClassVar[bool] = True
    backend: str = opt("onnxruntime", "quantization backend (registry QUANT_BACKENDS)", choices=_backends)
    calib_batches: int = opt(4, "calibration batches", check=INT_GE1)


@dataclass
class ExportStage(StageConfig):
    """ONNX export with an onnxruntime parity check (writes model.onnx and deploy.md)."""

    kind: ClassVar[str] = "export"
    final: ClassVar[bool] = True
    opset: int = opt(17, "ONNX opset", check=OPSET)
    tol: float = opt(1e-4, "largest accepted |onnxruntime - torch| difference", check=POSITIVE)
    openvino: bool = opt(False, "also write an OpenVINO IR (model.xml/.bin), checked the same way "
                                "(needs pip install openvino)")


@dataclass
class ProfileStage(StageConfig):
    """Per-layer latency and channel counts of the model (for the report)."""

    kind: ClassVar[str] = "profile"
    final: ClassVar[bool] = True
    threads: int = opt(1, "CPU threads while timing", check=INT_GE1)
    runs: int = opt(50, "timed runs per layer", check=INT_GE1)


STAGE_CONFIG_TYPES: tuple[type[StageConfig], ...] = (
    TrainStage, LoadStage, LightenStage, DistillStage, PruneStage, FinetuneStage, MergeStage,
    QuantizeStage, ExportStage, ProfileStage)
