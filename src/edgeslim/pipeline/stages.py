"""One handler per recipe stage, registered by its config type: ``@stage(PruneStage) def run(state, cfg)``.

``STAGES`` is the one stage registry: kind name -> (config type, handler). The
config type says the kind (``PruneStage.kind == "prune"``), validates itself and
carries the ordering rules; each handler mutates a ``RunState``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import nn

from ..modelinfo import info
from ..registry import Registry
from . import configs as R

if TYPE_CHECKING:
    from .recipe import Recipe


@dataclass
class RunState:
    """What flows from stage to stage."""

    recipe: Recipe
    run_dir: Path
    device: str
    train: Any
    test: Any
    calib: Any
    example: torch.Tensor
    model: nn.Module
    teacher: Optional[nn.Module] = None
    quantized: Any = None
    artifacts: dict = field(default_factory=dict)
    stage_dir: Path = Path(".")
    progress: bool = True
    #: metrics the running stage reports about itself (reset before each stage, merged into its record)
    stage_metrics: dict = field(default_factory=dict)
    #: per-test-sample correctness of the model last measured, and of the run's baseline (the trained
    #: model the report's ratios start at), for the paired accuracy change (``vs_baseline``)
    correct: Optional[torch.Tensor] = None
    baseline_correct: Optional[torch.Tensor] = None
    baseline: dict = field(default_factory=dict)  # {"stage": kind, "index": its state.json index}

    def train_options(self, **extra: Any) -> dict:
        """TrainConfig fields shared by every training stage."""
        return {"device": self.device, "seed": self.recipe.seed, "progress": self.progress,
                "batch_size": self.recipe.data.batch_size} | extra

    def ensure_teacher(self) -> None:
        """The model before the first compression stage teaches later kd stages."""
        if self.teacher is None:
            self.teacher = copy.deepcopy(self.model).eval()


Handler = Callable[[RunState, Any], None]


@dataclass(frozen=True)
class StageType:
    """A stage kind: its typed config and the handler that runs it."""

    config: type[R.StageConfig]
    handler: Handler

    def __call__(self, state: RunState, cfg: Any) -> None:
        self.handler(state, cfg)


STAGES: Registry[StageType] = Registry("stage")


def stage(config: type[R.StageConfig]) -> Callable[[Handler], Handler]:
    """Register ``handler`` as the one that runs stages of config type ``config`` (kind ``config.kind``)."""
    def deco(handler: Handler) -> Handler:
        STAGES.register(config.kind)(StageType(config, handler))
        return handler

    return deco


@stage(R.TrainStage)
def _train(state: RunState, cfg: R.TrainStage) -> None:
    from ..config import to_dict
    from ..data import with_augment
    from ..train import TrainConfig, Trainer

    fields = to_dict(cfg)
    augment = fields.pop("augment")
    opts = state.train_options(out_dir=str(state.stage_dir / "train"), resume=True, **fields)
    Trainer(state.model, TrainConfig(**opts)).fit(with_augment(state.train, augment), state.test)


@stage(R.LoadStage)
def _load(state: RunState, cfg: R.LoadStage) -> None:
    from ..export import load

    state.model = load(cfg.path)


@stage(R.LightenStage)
def _lighten(state: RunState, cfg: R.LightenStage) -> None:
    from ..transforms.lighten import lighten

    state.ensure_teacher()
    state.model = lighten(state.model.cpu(), state.example.cpu(), cfg)


@stage(R.DistillStage)
def _distill(state: RunState, cfg: R.DistillStage) -> None:
    from ..distill import distill

    opts = state.train_options(out_dir=str(state.stage_dir / "train"), resume=True)
    state.model = distill(state.model, state.teacher, state.train, cfg, val_data=state.test, **opts)


def _finetune_callback(state: RunState, mode: str, epochs: int, lr: float, T: float | None = None) -> Any:
    """``finetune(model, step)`` on labels (plain) or taught by the run's teacher (kd); None for none.

    A weight-pruned model stays sparse: its masks are restored if lost (a resumed run) and
    enforced after every optimiser step, whatever the mode.
    """
    if mode == "none" or epochs == 0:
        return None
    if mode == "plain":
        return _masked_retrain(state, epochs, lr)
    from ..distill import kd_finetune
    from ..prune.unstructured import MaskEnforcer, restore_masks_

    state.ensure_teacher()
    kd = kd_finetune(state.teacher, epochs, state.train, callbacks=[MaskEnforcer()],
                     **state.train_options(lr=lr), **({} if T is None else {"T": T}))

    def run(model: nn.Module, step: int) -> None:
        restore_masks_(model)
        kd(model, step)

    return run


def _prune_structured(state: RunState, cfg: R.PruneStage) -> None:
    from ..prune import prune_

    tune = _finetune_callback(state, cfg.finetune, cfg.finetune_epochs, cfg.finetune_lr)
    # the run's own fine-tuning callback (teacher, device, progress) replaces the config's mode;
    # BNs stay (merge="none"): a later stage may train the model, and folding is the merge stage's
    prune_(state.model, state.example, replace(cfg, finetune="none"), finetune=tune,
           calib_data=state.calib, merge="none")
    plan = latency_plan(state.model)
    if plan is not None and (cfg.target_latency or cfg.target_speedup):  # not an earlier stage's plan
        state.stage_metrics["latency_plan"] = plan


def latency_plan(model: nn.Module) -> dict | None:
    """What the latency planner recorded on ``model`` (None: no latency target was planned).

    The one place that reads the planner's record off a model: runtime, runtime_version,
    threads, batch, baseline/target/predicted/measured ms, per_layer_before_ms/after_ms.
    """
    latency = info(model).latency
    return None if latency is None else latency.to_dict()


def _prune_easiedge(state: RunState, cfg: R.PruneStage) -> None:
    from ..prune.admm import admm_prune

    state.model = admm_prune(
        state.model, state.example, state.train, cfg, val_data=state.test, calib_data=state.calib,
        out_dir=state.stage_dir / "admm", resume=True, **state.train_options())


def _masked_retrain(state: RunState, epochs: int, lr: float) -> Any:
    """A ``retrain(model, step)`` callback on labels that keeps pruned weights at zero."""
    from ..prune.unstructured import MaskEnforcer, restore_masks_
    from ..train import TrainConfig, Trainer

    def retrain(model: nn.Module, step: int) -> None:
        if epochs > 0:
            restore_masks_(model)
            opts = state.train_options(epochs=epochs, lr=lr)
            Trainer(model, TrainConfig(**opts), callbacks=[MaskEnforcer()]).fit(state.train)

    return retrain


def _prune_unstructured(state: RunState, cfg: R.PruneStage) -> None:
    """Han et al. 2015: magnitude pruning in ``steps`` rounds, masked retraining after each."""
    from ..prune.unstructured import iterative_prune_weights

    retrain = _finetune_callback(state, cfg.finetune, cfg.finetune_epochs, cfg.finetune_lr)
    state.model = iterative_prune_weights(state.model, cfg.sparsity, cfg.steps, retrain, scope=cfg.scope,
                                          target_nonzero=cfg.target_nonzero)


@stage(R.PruneStage)
def _prune(state: RunState, cfg: R.PruneStage) -> None:
    state.ensure_teacher()
    {"structured": _prune_structured, "easiedge": _prune_easiedge,
     "unstructured": _prune_unstructured}[cfg.method](state, cfg)


@stage(R.FinetuneStage)
def _finetune(state: RunState, cfg: R.FinetuneStage) -> None:
    tune = _finetune_callback(state, cfg.mode, cfg.epochs, cfg.lr, cfg.T)  # T used to be ignored
    if tune is not None:
        tune(state.model, 0)


@stage(R.MergeStage)
def _merge(state: RunState, cfg: R.MergeStage) -> None:
    from ..prune.unstructured import prune_weights, weight_sparsity
    from ..transforms.fold import fold_batchnorm
    from ..transforms.merge import merge_linear_chains, streamline_merge

    state.ensure_teacher()
    model, x = state.model.cpu().eval(), state.example.cpu()
    nonzero = _nonzero_weights(model)
    sparse = weight_sparsity(model) > 0.5  # a weight-pruned model: keep it sparse through merging
    if cfg.mode == "exact":
        state.model = merge_linear_chains(fold_batchnorm(model, x), x)
    else:
        state.model = streamline_merge(model, x, state.calib, replace(cfg, retrain_epochs=0))  # retrained below
    if sparse:  # merged layers are dense: cut back to the same number of non-zero weights
        total = _nonzero_weights(state.model, count_all=True)
        state.model = prune_weights(state.model, sparsity=max(0.0, 1 - nonzero / total))
    retrain = _finetune_callback(state, cfg.retrain, cfg.retrain_epochs, cfg.lr)
    if retrain is not None:  # a weight-pruned model's masks hold through either mode
        retrain(state.model, 0)


def _nonzero_weights(model: nn.Module, count_all: bool = False) -> int:
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(w.numel() if count_all else int((w != 0).sum()) for w in weights)


@stage(R.QuantizeStage)
def _quantize(state: RunState, cfg: R.QuantizeStage) -> None:
    from ..quant import quantize

    path = state.run_dir / "model.int8.onnx"
    state.quantized = quantize(state.model.cpu().eval(), state.example.cpu(), state.calib, cfg, path=path)
    state.artifacts["int8_onnx"] = str(path)


@stage(R.ExportStage)
def _export(state: RunState, cfg: R.ExportStage) -> None:
    from ..export import export_onnx

    path = state.run_dir / "model.onnx"
    diff = export_onnx(state.model.cpu().eval(), state.example.cpu(), path, tol=cfg.tol, opset=cfg.opset)
    state.artifacts.update(onnx=str(path), onnx_max_abs_diff=diff)
    if cfg.openvino:
        from ..export import export_openvino

        xml = state.run_dir / "model.xml"
        ov_diff = export_openvino(state.model.cpu().eval(), state.example.cpu(), xml, tol=cfg.tol,
                                  opset=cfg.opset)
        state.artifacts.update(openvino_xml=str(xml), openvino_max_abs_diff=ov_diff)
    _write_deploy(state)


def _write_deploy(state: RunState) -> None:
    from ..report import write_deploy_md

    ds = getattr(state.train, "dataset", None)
    write_deploy_md(state.run_dir, tuple(state.example.shape[1:]), getattr(ds, "mean", None),
                    getattr(ds, "std", None), class_names=getattr(ds, "classes", None))


@stage(R.ProfileStage)
def _profile(state: RunState, cfg: R.ProfileStage) -> None:
    from ..report import channels_per_layer, per_layer_latency

    state.artifacts["layer_latency"] = per_layer_latency(state.model.cpu().eval(), state.example.cpu(),
                                                         threads=cfg.threads)
    state.artifacts["channels"] = channels_per_layer(state.model)
