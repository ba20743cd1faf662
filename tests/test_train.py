"""The training engine: fit/evaluate, schedules, exact resume, NaN handling, hooks."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgeslim.errors import CheckpointError, ConfigError, EdgeslimError
from edgeslim.train import (
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
    Trainer,
    evaluate,
    lr_multiplier,
)
from edgeslim.options import MAX_LR
from edgeslim.train.config import OptimizerName, ScheduleName


# --------------------------------------------------------------------------- data / models
def blobs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well-separated Gaussian blobs in 8-D: learnable to ~100% in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + 2.5 * (2 * y[:, None].float() - 1)
    return x, y


def batches(x: torch.Tensor, y: torch.Tensor, bs: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)]


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))


class EpochShuffled:
    """A TensorLoader stand-in: in-memory batches, shuffled per ``set_epoch``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bs: int = 32) -> None:
        self.x, self.y, self.bs, self.epoch = x, y, bs, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.bs)

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(100 + self.epoch))
        for i in range(0, len(order), self.bs):
            idx = order[i : i + self.bs]
            yield self.x[idx], self.y[idx]


def cfg(**kw: Any) -> TrainConfig:
    base = dict(epochs=3, lr=0.05, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- fit / evaluate
def test_fit_learns_and_reports_metrics(tmp_path: Path) -> None:
    x, y = blobs()
    data = batches(x, y)
    model = mlp()
    history = Trainer(model, cfg(epochs=4, out_dir=str(tmp_path))).fit(data, data)
    assert [m["epoch"] for m in history] == [0, 1, 2, 3]
    keys = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
            "images_per_s", "epoch_time_s"}
    assert all(keys <= set(m) for m in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.95  # separable blobs
    # val metrics are exactly what evaluate() reports for the final model
    final = evaluate(model, data)
    assert final["n"] == 256
    assert final["accuracy"] == pytest.approx(history[-1]["val_accuracy"], abs=0)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == history
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "metrics.jsonl"]


def test_evaluate_matches_manual_and_restores_mode() -> None:
    x, y = blobs(100)
    model = mlp(dropout=0.5).train()
    res = evaluate(model, batches(x, y, 30))
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert res["n"] == 100
    assert res["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item(), abs=1e-12)
    assert res["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_evaluate_leaves_a_frozen_submodule_in_eval_mode() -> None:
    x, y = blobs(40)
    model = mlp(dropout=0.5).train()
    frozen = model[0]
    frozen.eval()  # e.g. a BatchNorm a user froze for fine-tuning
    evaluate(model, batches(x, y, 20))
    assert model.training and not frozen.training
    assert all(m.training for m in model.modules() if m is not frozen and m is not model)


def test_zero_epochs_changes_nothing() -> None:
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = blobs(64)
    assert Trainer(model, cfg(epochs=0)).fit(batches(x, y)) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- optimisers / schedules
def test_registries_match_config_literals() -> None:
    # the registries are the one source of valid names: TrainConfig and the recipe stage accept
    # exactly the registered ones, including one registered later (no Literal copy to update)
    from edgeslim.pipeline.configs import TrainStage

    assert OptimizerName is str and ScheduleName is str
    for name in OPTIMIZERS.names():
        assert cfg(optimizer=name).optimizer == name and TrainStage(optimizer=name).optimizer == name
    for name in SCHEDULES.names():
        assert cfg(schedule=name).schedule == name and TrainStage(schedule=name).schedule == name
    OPTIMIZERS.register("sgd_plain_test")(lambda params, c: torch.optim.SGD(params, lr=c.lr))
    try:
        assert cfg(optimizer="sgd_plain_test").optimizer == "sgd_plain_test"
        assert TrainStage(optimizer="sgd_plain_test").optimizer == "sgd_plain_test"
    finally:
        OPTIMIZERS._items.pop("sgd_plain_test")
    for bad in ({"optimizer": "sgd_plain_test"}, {"schedule": "cosin"}):
        with pytest.raises(ConfigError):
            cfg(**bad)
        with pytest.raises(ConfigError):
            TrainStage(**bad)


def test_warmup_then_cosine() -> None:
    c = cfg(epochs=10, warmup_epochs=2, schedule="cosine")
    f = lr_multiplier(c, steps_per_epoch=5)  # 10 warm-up steps, 50 total
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(10) == pytest.approx(1.0)
    after = [f(s) for s in range(10, 50)]
    assert all(a > b for a, b in zip(after, after[1:]))  # strictly decreasing
    assert f(30) == pytest.approx(0.5)  # half-way through the cosine span
    assert 0 < f(49) < 0.01


def test_step_and_constant_schedules() -> None:
    f = lr_multiplier(cfg(epochs=6, schedule="step", milestones=(2, 4), gamma=0.1), 3)
    assert [f(s) for s in (0, 5, 6, 11, 12, 17)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    g = lr_multiplier(cfg(epochs=8, schedule="step"), 1)  # default milestones: 50%, 75%
    assert [g(s) for s in (3, 4, 5, 6)] == pytest.approx([1, 0.1, 0.1, 0.01])
    h = lr_multiplier(cfg(schedule="constant"), 7)
    assert {h(s) for s in range(21)} == {1.0}


def test_scheduler_steps_per_iteration() -> None:
    x, y = blobs(64)
    seen: list[float] = []

    class Record:
        def on_step_end(self, trainer: Trainer) -> None:
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    Trainer(mlp(), cfg(epochs=2, lr=0.4, warmup_epochs=1, schedule="constant"),
            callbacks=[Record()]).fit(batches(x, y, 16))
    # lr after step s is the lr of step s+1: warm-up 0.2, 0.3, 0.4 then constant
    assert seen == pytest.approx([0.2, 0.3, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4])


def test_adamw_and_grad_clip_bound_the_update() -> None:
    x, y = blobs(32)
    x = x * 100  # huge gradients
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    c = cfg(epochs=1, optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0,
            schedule="constant", grad_clip=0.01)
    Trainer(model, c).fit([(x, y)])
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert 0 < step.norm().item() <= 0.01 * (1 + 1e-5)
    hist = Trainer(mlp(), cfg(epochs=2, optimizer="adamw", lr=1e-2)).fit(batches(*blobs()))
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_config_validation_messages() -> None:
    with pytest.raises(ConfigError, match=r"TrainConfig\.lr"):
        TrainConfig(lr=0.0)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        TrainConfig(epochs=2, warmup_epochs=3)
    with pytest.raises(ConfigError, match="milestones"):
        TrainConfig(milestones=(5, 2))
    with pytest.raises(ConfigError, match="Did you mean 'adamw'"):
        TrainConfig(optimizer="adam")  # type: ignore[arg-type]


@pytest.mark.parametrize("lr", [1e30, 1e4, float("inf"), float("nan"), -0.1, True, "0.1"])
def test_absurd_or_non_numeric_lr_is_refused(lr: Any) -> None:
    with pytest.raises(ConfigError, match=r"TrainConfig\.lr") as exc:
        TrainConfig(lr=lr)
    if isinstance(lr, float) and lr > MAX_LR and math.isfinite(lr):
        assert "(0, 10]" in str(exc.value) and "1e-3" in str(exc.value)


def test_lr_from_yaml_string_is_validated() -> None:
    from edgeslim.config import from_dict

    with pytest.raises(ConfigError, match=r"lr=1e\+30 is invalid: it must be a finite number in \(0, 10\]"):
        from_dict(TrainConfig, {"lr": "1e30"})  # YAML 1.1 reads `lr: 1e30` as a string
    assert from_dict(TrainConfig, {"lr": "1e1"}).lr == MAX_LR  # the limit itself is allowed


@pytest.mark.parametrize("lr", [20.0, 1e3, 0.0])
def test_train_config_and_stages_share_one_lr_rule_and_message(lr: float) -> None:
    """TrainConfig used to allow lr <= 1e3 while recipe stages allowed <= 10."""
    from edgeslim.pipeline.configs import FinetuneStage, TrainStage

    messages = []
    for build in (lambda: TrainConfig(lr=lr), lambda: TrainStage(lr=lr), lambda: FinetuneStage(lr=lr)):
        with pytest.raises(ConfigError) as exc:
            build()
        messages.append(str(exc.value).removeprefix("TrainConfig."))
    assert len(set(messages)) == 1 and messages[0].startswith(f"lr={lr!r} is invalid")
    assert TrainConfig(lr=MAX_LR).lr == TrainStage(lr=MAX_LR).lr == MAX_LR


# --------------------------------------------------------------------------- resume
def _dataloader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


@pytest.mark.parametrize("make_loader", [_dataloader, EpochShuffled], ids=["DataLoader", "set_epoch"])
def test_resume_is_exact(tmp_path: Path, make_loader: Any) -> None:
    x, y = blobs()
    # dropout + momentum + warm-up/cosine: every piece of state matters
    kw = dict(epochs=3, warmup_epochs=1, seed=7, lr=0.1)
    straight = mlp(dropout=0.3)
    hist = Trainer(straight, cfg(out_dir=str(tmp_path / "a"), **kw)).fit(make_loader(x, y))

    class Crash(Exception):
        pass

    class CrashInThirdEpoch:  # an interrupted run: same config, killed during epoch 3
        def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
            if epoch == 2:
                raise Crash

    with pytest.raises(Crash):
        Trainer(mlp(dropout=0.3), cfg(out_dir=str(tmp_path / "b"), **kw),
                callbacks=[CrashInThirdEpoch()]).fit(make_loader(x, y))
    resumed = mlp(seed=123, dropout=0.3)  # different init: the checkpoint must overwrite it
    hist_b = Trainer(resumed, cfg(out_dir=str(tmp_path / "b"), resume=True, **kw)).fit(make_loader(x, y))

    sa, sb = straight.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert len(hist_b) == 3
    for a, b in zip(hist, hist_b):
        assert (a["train_loss"], a["train_accuracy"], a["lr"]) == (b["train_loss"], b["train_accuracy"], b["lr"])
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    x, y = blobs(64)
    hist = Trainer(mlp(), cfg(epochs=1, out_dir=str(tmp_path), resume=True)).fit(batches(x, y))
    assert len(hist) == 1 and (tmp_path / "last.pt").is_file()


def test_resume_with_hook_module_state(tmp_path: Path) -> None:
    x, y = blobs()

    class TempScaled(nn.Module):
        """Loss hook with a learnable temperature (stands in for distillation adapters)."""

        def __init__(self) -> None:
            super().__init__()
            self.log_t = nn.Parameter(torch.zeros(()))
            self.modes: list[bool] = []

        def forward(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor):
            self.modes.append(self.training)
            logits = model(xb) / self.log_t.exp()
            return nn.functional.cross_entropy(logits, yb), logits

    hook = TempScaled()
    Trainer(mlp(), cfg(epochs=2, out_dir=str(tmp_path)), loss=hook).fit(batches(x, y))
    assert hook.log_t.item() != 0.0  # its parameter joined the optimiser
    assert all(hook.modes)  # train mode during training steps
    fresh = TempScaled()
    Trainer(mlp(), cfg(epochs=2, out_dir=str(tmp_path), resume=True), loss=fresh).fit(batches(x, y))
    assert torch.equal(fresh.log_t, hook.log_t)  # restored from last.pt, no further epoch ran
    assert fresh.modes == []


def test_foreign_and_corrupt_checkpoints(tmp_path: Path) -> None:
    x, y = blobs(64)
    data = batches(x, y)
    ckpt = tmp_path / "last.pt"
    torch.save({"weights": torch.zeros(2)}, ckpt)
    with pytest.raises(CheckpointError, match="not an edgeslim training checkpoint") as exc:
        Trainer(mlp(), cfg(out_dir=str(tmp_path), resume=True)).fit(data)
    assert str(ckpt) in str(exc.value) and "resume=False" in str(exc.value)

    ckpt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=str(ckpt)):
        Trainer(mlp(), cfg(out_dir=str(tmp_path), resume=True)).fit(data)

    ckpt.unlink()
    Trainer(mlp(), cfg(epochs=1, out_dir=str(tmp_path))).fit(data)
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(CheckpointError, match="does not fit this model") as exc:
        Trainer(other, cfg(out_dir=str(tmp_path), resume=True)).fit(data)
    assert str(ckpt) in str(exc.value)


class _Stranger:  # not a tensor/container: weights_only loading refuses it
    pass


def test_resume_from_checkpoint_with_objects_never_advises_unsafe_loading(tmp_path: Path) -> None:
    torch.save({"format": "edgeslim.train.checkpoint/1", "model": _Stranger()}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError) as exc:
        Trainer(mlp(), cfg(out_dir=str(tmp_path), resume=True)).fit(batches(*blobs(64)))
    msg = str(exc.value)
    assert str(tmp_path / "last.pt") in msg and "refuses to load" in msg and "Re-create" in msg
    assert "weights_only" not in msg and "trust" not in msg


# --------------------------------------------------------------------------- NaN handling
def test_nan_loss_raises_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    x, y = blobs(128)
    poison = {"on": False}

    def hook(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor):
        logits = model(xb)
        loss = nn.functional.cross_entropy(logits, yb)
        return (loss * float("nan") if poison["on"] else loss), logits

    class PoisonSecondEpoch:
        def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
            poison["on"] = epoch == 1

    ckpt = tmp_path / "last.pt"
    trainer = Trainer(mlp(), cfg(epochs=3, out_dir=str(tmp_path)), loss=hook,
                      callbacks=[PoisonSecondEpoch()])
    snapshot: dict[str, bytes] = {}

    class Snap:
        def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
            if epoch == 1:
                snapshot["bytes"] = ckpt.read_bytes()

    trainer.callbacks.append(Snap())
    with pytest.raises(EdgeslimError) as exc:
        trainer.fit(batches(x, y))
    msg = str(exc.value)
    assert "nan" in msg and "epoch 2" in msg and "learning rate" in msg and str(ckpt) in msg
    assert ckpt.read_bytes() == snapshot["bytes"]
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_nan_message_gives_the_configured_lr_not_the_decayed_one() -> None:
    """With a 1-epoch cosine schedule the lr is 0 after the last step; the message must not say 0."""
    x, y = blobs(64)

    def hook(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor):
        logits = model(xb)
        return nn.functional.cross_entropy(logits, yb) * float("inf"), logits

    with pytest.raises(EdgeslimError) as exc:
        Trainer(mlp(), cfg(epochs=1, lr=0.05, schedule="cosine"), loss=hook).fit(batches(x, y))
    msg = str(exc.value)
    assert "lr=0.05" in msg and "now 0" not in msg and "lower learning rate" in msg


# --------------------------------------------------------------------------- callbacks / options
def test_callbacks_order_and_early_stop() -> None:
    events: list[str] = []

    class Log:
        def on_train_start(self, t: Trainer) -> None:
            events.append("start")

        def on_epoch_start(self, t: Trainer, epoch: int) -> None:
            events.append(f"e{epoch}")

        def on_step_end(self, t: Trainer) -> None:
            events.append("s")

        def on_epoch_end(self, t: Trainer, epoch: int, metrics: dict) -> None:
            events.append(f"end{epoch}:{metrics['epoch']}")
            t.should_stop = epoch == 1

    x, y = blobs(64)
    hist = Trainer(mlp(), cfg(epochs=5), callbacks=[Log(), object()]).fit(batches(x, y))
    assert len(hist) == 2
    assert events == ["start", "e0", "s", "s", "end0:0", "e1", "s", "s", "end1:1"]


class TinyCNN(nn.Sequential):
    def __init__(self, in_channels: int = 1) -> None:
        torch.manual_seed(0)
        super().__init__(
            nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
        )


def test_channels_last_and_cpu_bf16_amp() -> None:
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 2, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    model = TinyCNN(in_channels=2)  # 2 input channels: a 1-channel weight is NHWC and NCHW at once
    formats: list = []
    record = SimpleNamespace(on_step_end=lambda t: formats.append(
        t.model[0].weight.is_contiguous(memory_format=torch.channels_last)))
    hist = Trainer(model, cfg(epochs=1, channels_last=True, amp=True), callbacks=[record]).fit(data, data)
    assert formats == [True] * 3  # trained in NHWC ...
    assert model[0].weight.is_contiguous()  # ... and handed back in NCHW
    assert math.isfinite(hist[0]["train_loss"]) and math.isfinite(hist[0]["val_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not .half()


class ViewCNN(nn.Module):
    """Flattens with .view, which NHWC strides refuse: channels_last="auto" must keep NCHW."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.size(0), -1))


def _fit_formats(model: nn.Module, channels_last: object, data: list) -> tuple[list, list]:
    seen: list = []
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    record = SimpleNamespace(on_step_end=lambda t: seen.append(
        first.weight.dim() == 4 and first.weight.is_contiguous(memory_format=torch.channels_last)))
    Trainer(model, cfg(epochs=2, channels_last=channels_last), callbacks=[record]).fit(data)
    return seen, [p.detach().clone() for p in model.parameters()]


def test_channels_last_auto_trains_a_cnn_in_nhwc_and_falls_back_where_a_model_needs_nchw() -> None:
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 2, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    assert TrainConfig().channels_last == "auto"
    # a CNN: NHWC at every step, the same weights as channels_last=True, handed back in NCHW
    auto_cnn, forced_cnn = TinyCNN(in_channels=2), TinyCNN(in_channels=2)
    seen, auto_w = _fit_formats(auto_cnn, "auto", data)
    seen_forced, forced_w = _fit_formats(forced_cnn, True, data)
    assert seen == seen_forced == [True] * 6
    assert all(torch.equal(a, b) for a, b in zip(auto_w, forced_w))
    assert all(p.is_contiguous() for p in auto_cnn.parameters())
    # .view after a conv: the probe fails on NHWC, so it trains in NCHW exactly as channels_last=False
    seen, auto_w = _fit_formats(ViewCNN(), "auto", data)
    seen_off, off_w = _fit_formats(ViewCNN(), False, data)
    assert seen == seen_off == [False] * 6
    assert all(torch.equal(a, b) for a, b in zip(auto_w, off_w))
    # no 4-D weights: nothing to convert
    x, y = blobs(32)
    seen, _ = _fit_formats(mlp(), "auto", batches(x, y))
    assert not any(seen)
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="channels_last"):
            TrainConfig(channels_last=bad)


class TrainViewCNN(nn.Module):
    """Runs NHWC in eval mode, but its training-only auxiliary head .view()s a conv output (after
    dropout and a BN have run), as auxiliary heads of some classic CNNs do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.drop, self.conv, self.bn = nn.Dropout(0.3), nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc, self.aux = nn.Linear(4, 3), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(self.drop(x))))
        out = self.fc(y.mean((2, 3)))
        if self.training:
            out = out + self.aux(y.view(y.size(0), -1))
        return out


def test_channels_last_auto_falls_back_when_only_the_training_step_needs_nchw() -> None:
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 2, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    with pytest.raises(RuntimeError, match="view"):  # the pattern: training mode refuses NHWC
        TrainViewCNN().train()(data[0][0].contiguous(memory_format=torch.channels_last))
    auto, off = TrainViewCNN(), TrainViewCNN()
    seen, auto_w = _fit_formats(auto, "auto", data)
    seen_off, off_w = _fit_formats(off, False, data)
    assert seen == seen_off == [False] * 6
    # the failed NHWC step left nothing behind: BN statistics and dropout masks as channels_last=False
    assert all(torch.equal(a, b) for a, b in zip(auto_w, off_w))
    assert all(torch.equal(a, b) for a, b in zip(auto.buffers(), off.buffers()))
    assert auto.bn.num_batches_tracked.item() == 6


def test_no_out_dir_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    x, y = blobs(64)
    Trainer(mlp(), cfg(epochs=1)).fit(batches(x, y))
    assert list(tmp_path.iterdir()) == []


def test_dataloader_order_depends_only_on_seed_and_epoch() -> None:
    from edgeslim.train.engine import set_loader_epoch

    x, y = torch.arange(40).float()[:, None], torch.arange(40)
    orders = []
    for noise in (0, 5):
        torch.manual_seed(noise)  # unrelated global RNG use must not matter
        loader = _dataloader(x, y)
        set_loader_epoch(loader, 3, seed=1)
        orders.append(torch.cat([b[1] for b in loader]))
    assert torch.equal(orders[0], orders[1])
    set_loader_epoch(loader, 4, seed=1)
    assert not torch.equal(torch.cat([b[1] for b in loader]), orders[0])


def test_progress_bar_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from edgeslim.train.progress import NullProgress, RichProgress, make_progress

    assert isinstance(make_progress(True), NullProgress)  # pytest's stderr is not a TTY
    bar = RichProgress()
    bar.start(0, 2, total=10)
    bar.update(5, images_per_s=1234.0, loss=0.5)
    bar.finish("epoch 1: summary line")
    bar.close()
    assert "epoch 1: summary line" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Trainer(mlp(), TrainConfig(device="cuda"))


def test_weights_ruined_by_the_last_step_are_caught_before_checkpointing(tmp_path: Path) -> None:
    """One batch per epoch: the loss is computed before the step that ruins the weights, so
    only a check of the weights sees it (the old loop saved a NaN model and returned)."""
    x, y = blobs(32)

    class Ruin:
        def on_step_end(self, trainer: Trainer) -> None:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(EdgeslimError, match=r"model weights became NaN/inf in epoch 1") as exc:
        Trainer(mlp(), cfg(epochs=1, out_dir=str(tmp_path)), callbacks=[Ruin()]).fit(batches(x, y))
    assert "no checkpoint was written" in str(exc.value) and "lr=0.05" in str(exc.value)
    assert not (tmp_path / "last.pt").exists()
