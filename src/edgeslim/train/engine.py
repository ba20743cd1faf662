"""The training loop every stage of edgeslim uses: ``Trainer.fit``.

One loop serves plain training, fine-tuning after pruning (a callback
re-applies masks after each step), distillation (a loss hook that runs the
teacher and owns trainable adapters) and ADMM (a loss hook adding the
proximal term). The loop is kept lean: per-step statistics stay on the device
and are read back only every ``SYNC_EVERY`` steps, so CUDA runs stay
asynchronous and the CPU cost over a hand-written loop is a few small ops.

Determinism: a fresh run seeds torch/numpy/random from ``cfg.seed`` (plus the
rank); every epoch re-seeds the loader's shuffling from ``(seed, epoch)``; the
checkpoint stores every RNG state. Hence ``resume=True`` after epoch ``k``
reproduces the uninterrupted run bit for bit (on deterministic kernels).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import RandomSampler

from edgeslim._core import eval_mode
from edgeslim.config import to_dict
from edgeslim.errors import CheckpointError, ConfigError, DataError, EdgeslimError
from edgeslim.io import atomic_write_text
from edgeslim.train import distributed as ddp
from edgeslim.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from edgeslim.train.config import TYPICAL_LR, TrainConfig
from edgeslim.train.metrics import SYNC_EVERY, RunningStats, eval_sums
from edgeslim.train.optim import build_optimizer, build_scheduler
from edgeslim.train.progress import make_progress

log = logging.getLogger("edgeslim.train")

LossHook = Callable[[nn.Module, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
CHECKPOINT_NAME = "last.pt"
METRICS_NAME = "metrics.jsonl"


class CrossEntropyHook:
    """Default loss hook: cross-entropy with label smoothing (Szegedy et al., 2016)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def resolve_device(name: str, info: ddp.DistInfo) -> torch.device:
    """``"auto"`` -> CUDA when available; under DDP on CUDA, the rank's local GPU."""
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ConfigError("TrainConfig.device='cuda' but CUDA is not available; use 'auto' or 'cpu'")
    if name == "cpu" or not cuda:
        return torch.device("cpu")
    if info.enabled:
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device("cuda")


def set_loader_epoch(loader: Any, epoch: int, seed: int) -> None:
    """Make the loader's shuffling a function of ``(seed, epoch)`` only.

    ``TensorLoader`` (or anything with ``set_epoch``) and ``DistributedSampler``
    are told the epoch. A plain ``DataLoader`` with a ``RandomSampler`` gets
    its sampler's generator (created if absent) re-seeded from
    ``(seed, epoch)`` -- this mutates that sampler, by design.
    """
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
        return
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    elif isinstance(sampler, RandomSampler):
        if sampler.generator is None:
            sampler.generator = torch.Generator()
        sampler.generator.manual_seed(seed * 1_000_003 + epoch)


def _num_batches(loader: Any) -> int:
    try:
        return len(loader)
    except TypeError:
        raise DataError(
            f"the training loader ({type(loader).__name__}) has no len(); the per-step "
            "learning-rate schedule needs the number of batches. Pass a TensorLoader, a "
            "DataLoader or a list of (x, y) batches"
        ) from None


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _first_line(exc: BaseException) -> str:
    """An exception's first line for a log message (its type when it has no text)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _nonfinite_error(what: str, epoch: int, steps: str, lr: float, ckpt: Path | None) -> EdgeslimError:
    """``lr`` is the configured peak rate: the scheduled one may have decayed to 0 by now."""
    saved = ckpt is not None and ckpt.exists()
    kept = f"the last good checkpoint {ckpt} was left unchanged" if saved else "no checkpoint was written"
    return EdgeslimError(
        f"{what} in epoch {epoch + 1}, {steps}; {kept}. Try a lower learning rate "
        f"(configured lr={lr:.3g}; {TYPICAL_LR}), warm-up (warmup_epochs), gradient clipping "
        "(grad_clip), amp=False, or check the inputs for NaN/inf"
    )


# --------------------------------------------------------------------------- #
# Trainer
# --------------------------------------------------------------------------- #
class Trainer:
    """Train a classifier with one lean, resumable, optionally distributed loop.

    Args:
        model: the network (moved to the configured device).
        cfg: training settings; default ``TrainConfig()``.
        loss: loss hook ``loss(model, x, y) -> (loss, logits)``; default
            cross-entropy with ``cfg.label_smoothing``. A hook that is an
            ``nn.Module`` is moved to the device, put in train/eval mode with
            the model, its trainable parameters join the optimiser and its
            ``state_dict`` is checkpointed. (A hook holding a frozen teacher
            should keep it in eval mode by overriding ``train()``.)
        callbacks: objects with any of ``on_train_start(trainer)``,
            ``on_epoch_start(trainer, epoch)``, ``on_step_end(trainer)`` (after
            ``optimizer.step()``) and ``on_epoch_end(trainer, epoch, metrics)``.
            Setting ``trainer.should_stop = True`` ends training after the epoch.

    Attributes:
        model, optimizer, scheduler, loss_hook, cfg, device, dist, epoch,
        step (optimiser steps so far), history (per-epoch metric dicts).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig | None = None,
        loss: LossHook | None = None,
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.cfg = cfg if cfg is not None else TrainConfig()
        self.dist = ddp.env_info()
        self.device = resolve_device(self.cfg.device, self.dist)
        ddp.setup(self.dist, self.device)
        # NHWC while training (True; "auto" decides on the first batch of each fit, None until then)
        self._nhwc: bool | None = self._format_setting()
        fmt = torch.channels_last if self._nhwc else torch.preserve_format
        self.model = model.to(self.device, memory_format=fmt)
        self.loss_hook = loss if loss is not None else CrossEntropyHook(self.cfg.label_smoothing)
        if isinstance(self.loss_hook, nn.Module):
            self.loss_hook.to(self.device)
        self.callbacks = list(callbacks)
        self._hook_params = self._extra_hook_params()
        params = [p for p in self.model.parameters() if p.requires_grad] + self._hook_params
        self.optimizer = build_optimizer(params, self.cfg)
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.forward_model = ddp.wrap_model(self.model, self.dist, self.device)
        if self.cfg.compile:
            self.forward_model = torch.compile(self.forward_model)
        if self.cfg.amp and self.device.type == "cpu":
            log.info("amp=True on CPU: bf16 autocast; it is faster only on CPUs with AMX/AVX512-BF16")
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.should_stop = False
        self.out_dir = Path(self.cfg.out_dir) if self.cfg.out_dir else None

    # ----------------------------------------------------------------- setup
    def _extra_hook_params(self) -> list[nn.Parameter]:
        if not isinstance(self.loss_hook, nn.Module):
            return []
        own = {id(p) for p in self.model.parameters()}
        return [p for p in self.loss_hook.parameters() if p.requires_grad and id(p) not in own]

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / CHECKPOINT_NAME if self.out_dir else None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.cfg.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, event, None)
            if fn is not None:
                fn(self, *args)

    def _set_mode(self, train: bool) -> None:
        self.model.train(train)
        if isinstance(self.loss_hook, nn.Module):
            self.loss_hook.train(train)

    # ------------------------------------------------------------------- fit
    def fit(self, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None) -> list[dict[str, Any]]:
        """Train for ``cfg.epochs`` epochs (continuing a checkpoint if ``cfg.resume``).

        Args:
            train_loader: iterable of ``(x, y)`` batches with ``len()``.
            val_loader: optional iterable of ``(x, y)`` batches, evaluated each epoch.

        Returns:
            Per-epoch metric dicts (including epochs restored from a checkpoint):
            ``epoch`` (0-based), ``train_loss``, ``train_accuracy``, ``lr``,
            ``images_per_s`` (training throughput over all ranks),
            ``epoch_time_s``, and ``val_loss``/``val_accuracy`` with a val loader.

        Raises:
            EdgeslimError: the loss became NaN/inf (the last checkpoint is kept).
            CheckpointError: ``resume`` met a foreign or corrupt ``last.pt``.
        """
        steps = _num_batches(train_loader)
        if self._nhwc:
            self._set_format(True)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, steps)
        start = self._begin()
        was_training = self.model.training
        show = self.cfg.progress and self.dist.is_main
        progress = make_progress(show)
        self._emit("on_train_start")
        try:
            for epoch in range(start, self.cfg.epochs):
                metrics = self._run_epoch(train_loader, val_loader, epoch, progress)
                self.history.append(metrics)
                self._emit("on_epoch_end", epoch, metrics)
                self._write_files()
                if self.should_stop:
                    break
        finally:
            progress.close()
            self.model.train(was_training)
            self._hand_back_format()
        return self.history

    def _format_setting(self) -> bool | None:
        """True / False from the config; None for "auto" (decided on the first batch; not under DDP)."""
        if self.cfg.channels_last == "auto":
            return None if not self.dist.enabled else False
        return bool(self.cfg.channels_last)

    def _choose_format(self, x: torch.Tensor) -> bool:
        """``channels_last="auto"``: NHWC if the model has 4-D weights and runs an NHWC batch.

        The probe is one eval-mode, no-grad forward of two samples, so it changes no running
        statistics; a model whose forward needs NCHW strides (``.view`` after a conv) keeps NCHW.
        """
        use = x.dim() == 4 and any(p.dim() == 4 for p in self.model.parameters())
        if use:
            self._set_format(True)
            try:
                with eval_mode(self.model, no_grad=True), self._autocast():
                    self.model(x[:2].contiguous(memory_format=torch.channels_last))
            except RuntimeError as exc:
                self._set_format(False)
                use = False
                log.info("channels_last='auto': training in NCHW, the model fails on NHWC input (%s)",
                         _first_line(exc))
        self._nhwc = use
        return use

    def _set_format(self, nhwc: bool) -> None:
        """The model in NHWC (channels_last) or NCHW, and the loss hook told through its
        ``set_memory_format(channels_last: bool)`` where it has one (a distiller's teacher
        then runs in the student's format instead of converting every batch)."""
        self.model.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        follow = getattr(self.loss_hook, "set_memory_format", None)
        if callable(follow):
            follow(nhwc)

    def _hand_back_format(self) -> None:
        """The model leaves ``fit`` in NCHW if it trained in NHWC; the next fit decides anew."""
        if self._nhwc:
            self._set_format(False)
        self._nhwc = self._format_setting()

    def _begin(self) -> int:
        """Restore ``last.pt`` when resuming, else seed a fresh run; first epoch to run."""
        path = self.checkpoint_path
        if self.cfg.resume and path is not None and path.exists():
            return self._restore(path)
        if self.cfg.resume:
            log.info("resume=True but no checkpoint at %s; starting a fresh run", path)
        _seed_everything(self.cfg.seed + self.dist.rank)
        self.history, self.step = [], 0
        return 0

    def _run_epoch(
        self, loader: Iterable[Any], val_loader: Iterable[Any] | None, epoch: int, progress: Any
    ) -> dict[str, Any]:
        self.epoch = epoch
        self._emit("on_epoch_start", epoch)
        set_loader_epoch(loader, epoch, self.cfg.seed)
        t0 = time.perf_counter()
        self._set_mode(True)
        progress.start(epoch, self.cfg.epochs, _num_batches(loader))
        loss_sum, correct, n = self._train_epoch(ddp.shard(loader, self.dist), epoch, progress)
        train_time = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(n, 1),
            "train_accuracy": correct / max(n, 1),
            "lr": self._last_step_lr(),
            "images_per_s": n / max(train_time, 1e-9),
        }
        if val_loader is not None:
            set_loader_epoch(val_loader, 0, self.cfg.seed)
            metrics.update(self._validate(val_loader))
        metrics["epoch_time_s"] = time.perf_counter() - t0
        progress.finish(self._summary(metrics))
        return metrics

    def _train_epoch(self, batches: Iterable[Any], epoch: int, progress: Any) -> tuple[float, float, int]:
        """One pass; returns global ``(loss_sum, correct, n)`` summed over ranks."""
        dev, cl = self.device, self._nhwc
        step_cbs = [cb.on_step_end for cb in self.callbacks if hasattr(cb, "on_step_end")]
        stats = RunningStats(dev)
        synced, t0 = 0, time.perf_counter()
        total = _num_batches(batches)
        for i, (x, y) in enumerate(batches):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if cl is None:
                cl = self._choose_format(x)
                loss, logits = self._first_auto_step(x, y) if cl else self._step(x, y)
                cl = self._nhwc
            else:
                loss, logits = self._step(x, y)
            for fn in step_cbs:
                fn(self)
            stats.add(loss, logits, y)
            if (i + 1) % SYNC_EVERY == 0 or i + 1 == total:
                stats.fold()
                global_sum = self._check_finite(stats.loss_sum, epoch, synced + 1, i + 1, total)
                synced = i + 1
                seen = stats.n * self.dist.world_size
                progress.update(i + 1, seen / (time.perf_counter() - t0), global_sum / seen)
        stats.fold()
        loss_total, correct_total, n_total = ddp.all_reduce_sum(stats.as_tensor(), self.dist).tolist()
        if not math.isfinite(loss_total):
            raise self._diverged(f"training loss became {loss_total}", epoch, synced + 1, total, total)
        self._check_finite_weights(epoch, total)
        return loss_total, correct_total, int(n_total)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a batch, in the format chosen for this fit; (loss, logits)."""
        if self._nhwc and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            loss, logits = self.loss_hook(self.forward_model, x, y)
        self._optimise(loss)
        return loss, logits

    def _first_auto_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first step after ``channels_last="auto"`` chose NHWC from its eval-mode probe.

        A training forward or backward can still refuse NHWC strides (a branch that runs only in
        training and calls ``.view`` on a conv output, as auxiliary heads do): then the step is
        taken again in NCHW, from the buffers (BN statistics) and random state it started from, so
        the fit is the one ``channels_last=False`` gives. An error that NCHW raises too is the
        user's to see.
        """
        modules = [self.model] + ([self.loss_hook] if isinstance(self.loss_hook, nn.Module) else [])
        buffers = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
        rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        try:
            return self._step(x, y)
        except RuntimeError as exc:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            torch.random.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            self.optimizer.zero_grad(set_to_none=True)
            self._set_format(False)
            self._nhwc = False
            log.info("channels_last='auto': training in NCHW, the model's training step fails on NHWC input (%s)",
                     _first_line(exc))
            return self._step(x, y)

    def _diverged(self, what: str, epoch: int, first: int, last: int, total: int) -> EdgeslimError:
        steps = f"between steps {first} and {last} of {total}"
        return _nonfinite_error(what, epoch, steps, self.cfg.lr, self.checkpoint_path)

    def _check_finite_weights(self, epoch: int, total: int) -> None:
        """The loss only shows a step's damage one step later: check the weights the last
        step left (one device sync per epoch), before they are checkpointed."""
        params = [p.detach() for g in self.optimizer.param_groups for p in g["params"]]
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise _nonfinite_error(
                "model weights became NaN/inf", epoch, f"at its last step ({total} of {total})",
                self.cfg.lr, self.checkpoint_path,
            )

    def _optimise(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self._hook_params:
            ddp.average_grads(self._hook_params, self.dist)
        if self.cfg.grad_clip is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.optimizer.step()
        assert self.scheduler is not None
        self.scheduler.step()
        self.step += 1

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, first: int, last: int, total: int) -> float:
        """Raise on a NaN/inf running loss (on every rank at once); returns the global sum."""
        probe = loss_sum.detach().clone()
        value = ddp.all_reduce_sum(probe, self.dist).item()
        if not math.isfinite(value):
            raise self._diverged(f"training loss became {value}", epoch, first, last, total)
        return value

    def _last_step_lr(self) -> float:
        """Learning rate of the epoch's last optimiser step (the schedule has moved on)."""
        sched = self.scheduler
        if sched is None or self.step == 0:
            return self._lr()
        return float(sched.base_lrs[0] * sched.lr_lambdas[0](self.step - 1))

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _validate(self, loader: Iterable[Any]) -> dict[str, float]:
        was_training = self.model.training
        self._set_mode(False)
        try:
            with torch.inference_mode():
                batches = ddp.shard(loader, self.dist, skip_small=False)
                sums = eval_sums(self.model, batches, self.device)
        finally:
            self._set_mode(was_training)
        loss_sum, correct, n = ddp.all_reduce_sum(sums, self.dist).tolist()
        if n == 0:
            raise DataError("the validation loader yielded no samples; check the dataset/subset size")
        return {"val_loss": loss_sum / n, "val_accuracy": correct / n}

    @staticmethod
    def _summary(m: dict[str, Any]) -> str:
        text = (
            f"epoch {m['epoch'] + 1}: loss {m['train_loss']:.4f} acc {m['train_accuracy']:.4f}"
        )
        if "val_accuracy" in m:
            text += f" | val loss {m['val_loss']:.4f} acc {m['val_accuracy']:.4f}"
        return text + f" | lr {m['lr']:.3g} | {m['images_per_s']:,.0f} img/s | {m['epoch_time_s']:.1f}s"

    # ----------------------------------------------------------- checkpoints
    def _write_files(self) -> None:
        """Checkpoint (every rank contributes its RNG state) then metrics; rank 0 writes."""
        rngs = ddp.gather_objects(capture_rng(), self.dist)
        if not self.dist.is_main or self.out_dir is None:
            return
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "loss_hook": self.loss_hook.state_dict() if isinstance(self.loss_hook, nn.Module) else None,
            "rng": rngs,
            "world_size": self.dist.world_size,
            "config": to_dict(self.cfg),
            "history": self.history,
        }
        save_checkpoint(state, self.out_dir / CHECKPOINT_NAME)
        # rewritten whole (atomically) from the history stored in the checkpoint, so a crash
        # between the two writes can never leave duplicated or missing lines
        lines = "".join(json.dumps(m) + "\n" for m in self.history)
        atomic_write_text(self.out_dir / METRICS_NAME, lines)

    def _restore(self, path: Path) -> int:
        state = load_checkpoint(path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if isinstance(self.loss_hook, nn.Module) and state.get("loss_hook") is not None:
                self.loss_hook.load_state_dict(state["loss_hook"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"{path} does not fit this model/optimiser/loss hook ({first}); it was written "
                "by a different run. Delete it, use another out_dir, or set resume=False"
            ) from None
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        restore_rng(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0])
        self._warn_config_drift(state.get("config") or {})
        self.history, self.step = list(state["history"]), int(state["step"])
        log.info("resumed from %s after epoch %d", path, state["epoch"] + 1)
        return int(state["epoch"]) + 1

    def _warn_config_drift(self, saved: dict[str, Any]) -> None:
        ignore = {"resume", "progress", "out_dir", "epochs", "device"}
        now = to_dict(self.cfg)
        changed = sorted(k for k in now if k not in ignore and k in saved and saved[k] != now[k])
        if changed:
            log.warning("resuming with settings that differ from the checkpoint: %s", ", ".join(changed))
