"""CIFAR-10 tables: EasiEdge vs global L1 / Taylor, KD vs plain fine-tuning, the knowledge-transfer pipeline.

    python benchmarks/cifar_tables.py --data-dir ../shared/data                       # reduced CPU setting
    python benchmarks/cifar_tables.py --scale gpu --device cuda --data-dir ../shared/data
    python benchmarks/cifar_tables.py --scale gpu --smoke --device cpu --data-dir ../shared/data

Three tables (issue 14, items 4 and 5), each row a model with its test accuracy (0-1), parameters,
FLOPs (batch 1), conv filters (sum of conv output channels) and measured onnxruntime latency
(``edgeslim.measure_latency``: CPU execution provider, 1 thread, batch 1, median):

(a) ``prune``: EasiEdge (``edgeslim.admm_prune``: ADMM + information gain (TBAA), the ADMM settings of
    ``benchmarks/easiedge.py``) against global L1 and global Taylor iterative pruning
    (``edgeslim.prune``, one ranking over all layers by importance alone, plain fine-tuning) at the
    EasiEdge paper's protocol: ``REMOVE`` = 80% of the prunable filters removed. Every method starts
    from the same trained model and gets the same post-training budget (``budget_epochs``: EasiEdge
    spends ``admm_epochs`` of it in ADMM W-steps, the rest fine-tuning; the baselines reach the target
    in ``steps`` prune/fine-tune steps). Equal filter counts, not equal FLOPs (the FLOPs column shows
    where each landed; ``benchmarks/easiedge.py`` has the FLOPs-matched comparison).
(b) ``kd_finetune``: the global-L1 pruned model of (a) recovered by plain cross-entropy fine-tuning
    (the same row as (a)'s ``global_l1``) against knowledge distillation from the unpruned model
    (``finetune="kd"``, ``kd:0.9,ce:0.1``, T = 4; Liu, Zhang, Chen 2020), at equal epochs.
(c) ``knowledge_transfer``: Chen et al. 2020's pipeline end to end: the teacher of (a), a lightweight
    student (``edgeslim.lighten``: depthwise-separable convs, GAP + linear head), multi-level
    distillation (``noisy_kd:0.9,hint:1.0,ce:0.1``, noisy soft logits + FitNets hints + labels), then
    global iterative L1 pruning to ``kt_target_flops`` of the student's FLOPs with KD fine-tuning from
    the teacher (``edgeslim.distill.kd_finetune``). The control row ``student_ce`` trains the same
    student (the same lighten warm start) with cross-entropy alone for the same epochs.

Scales (every reduction is in ``SCALES`` and in the JSON's ``config``):

``cpu`` (default; reduced, one seed, 1 training thread): VGG-16 at width x0.25 (0.92M params,
  40M FLOPs) for all three tables and ResNet-20 (full width) for table (a); teachers trained on seeded
  subsets of the training set (15,000 images for VGG, 10,000 for ResNet-20) for 10 / 6 epochs, a
  post-training budget of 4 epochs, the knowledge-transfer student distilled for 10 epochs; tested on
  all 10,000 test images. Measured: 3005 s (50 min) for all 14 rows with one training thread, niced,
  on 2 x86 cores shared with other jobs (``total_s`` and each row's ``wall_s`` in the JSON); rows
  finish one by one, so a cut-short run resumes.
``gpu`` (full-width models, the full training set, AMP (bf16 autocast), channels_last, cudnn
  benchmark; data decoded once and kept on the GPU as uint8, cropped and flipped there by
  ``edgeslim.data.TensorLoader``): VGG-16 for (a)-(c), ResNet-56 for (a)-(b), ResNet-110 for (b).
  The schedules are shortened to fit 10 minutes of one H200: 30 / 25 / 10 teacher epochs (the full
  schedules are 160+ epochs: ``--epoch-mult 5`` gives them on a longer lease). Planned time (an
  ESTIMATE, not measured -- no GPU was lent when this was written): VGG-16 ~3 s, ResNet-56 ~4 s,
  ResNet-110 ~8 s per epoch at batch 256, so teachers ~265 s, the pruning rows ~150 s, the
  knowledge-transfer rows ~110 s, plus ~30 s start-up; ``--budget-s`` (default 570 s on ``gpu``)
  stops before a row once that much time has gone, and a rerun continues.

Resumable: every finished row is written at once (atomically) to the JSON (``--out``, default
``benchmarks/results/cifar_tables_<scale>.json``); trained teachers and students are saved
(``edgeslim.save``) in ``--work-dir`` (default ``runs/cifar_tables_<scale>``) and teachers
checkpoint every epoch, so a rerun with the same ``--out`` skips finished rows and reuses them.
A rerun whose settings differ from the JSON's is refused (pass another ``--out`` or ``--fresh``).
``--smoke``: a few dozen images, 1 epoch, 2 ADMM iterations (checks the code path, not the numbers; its
JSON goes to the work dir unless ``--out`` is given).
"""
from __future__ import annotations

import argparse
import copy
import logging
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import edgeslim
from edgeslim.data import TensorLoader, load_dataset
from edgeslim.distill import distill, kd_finetune
from edgeslim.io import atomic_write_json
from edgeslim.profile import format_table, profile
from edgeslim.profile.runtimes import cpu_model
from edgeslim.train import TrainConfig, Trainer, evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from easiedge import ADMM, _timed  # noqa: E402  (the ADMM settings of the matched-cost benchmark)

RESULTS = Path(__file__).resolve().parent / "results"
REMOVE = 0.8  # fraction of the prunable filters removed in tables (a) and (b): the EasiEdge paper's 80%
KD_LOSSES = "kd:0.9,ce:0.1"  # Hinton KD (tables b, c)
MULTILEVEL = "noisy_kd:0.9,hint:1.0,ce:0.1"  # Chen et al. 2020 multi-level transfer (table c)
T = 4.0

PRUNE_ROWS = ("unpruned", "global_l1", "global_taylor", "easiedge")
KT_ROWS = ("teacher", "student_multilevel", "student_multilevel_pruned")


def _jobs(*groups: tuple[str, str, tuple[str, ...]]) -> list[tuple[str, str, str]]:
    """``(table, model, rows)`` groups -> ``(table, model, row)`` jobs, in order."""
    return [(table, model, r) for table, model, rows in groups for r in rows]


# Per scale: the models (zoo name + kwargs, teacher schedule), the tables and their schedules.
SCALES: dict[str, dict[str, Any]] = {
    "cpu": dict(
        device="cpu", amp=False, channels_last=False, batch_size=128, threads=1, budget_s=None,
        models={"vgg16_w0.25": dict(arch="vgg16", kwargs={"width_mult": 0.25}, epochs=10, lr=0.05,
                                    train_subset=15000),
                "resnet20": dict(arch="resnet20", kwargs={}, epochs=6, lr=0.05, train_subset=10000)},
        prune=dict(budget_epochs=4, steps=2, admm_epochs=2, admm_iterations=8, finetune_lr=0.01),
        kt=dict(epochs=10, lr=0.05, warmup_epochs=0.5, target_flops=0.5, steps=2, finetune_epochs=1),
        # (table, model, rows) in run order: the most wanted rows first
        jobs=_jobs(("prune", "vgg16_w0.25", PRUNE_ROWS), ("kd_finetune", "vgg16_w0.25", ("plain", "kd")),
                   ("knowledge_transfer", "vgg16_w0.25", KT_ROWS), ("prune", "resnet20", PRUNE_ROWS),
                   ("knowledge_transfer", "vgg16_w0.25", ("student_ce",))),
    ),
    "gpu": dict(
        device="cuda", amp=True, channels_last=True, batch_size=256, threads=None, budget_s=570.0,
        models={"vgg16": dict(arch="vgg16", kwargs={}, epochs=30, lr=0.1, train_subset=None),
                "resnet56": dict(arch="resnet56", kwargs={}, epochs=25, lr=0.1, train_subset=None),
                "resnet110": dict(arch="resnet110", kwargs={}, epochs=10, lr=0.1, train_subset=None)},
        prune=dict(budget_epochs=8, steps=2, admm_epochs=4, admm_iterations=10, finetune_lr=0.01),
        kt=dict(epochs=20, lr=0.05, warmup_epochs=1.0, target_flops=0.5, steps=2, finetune_epochs=2),
        jobs=_jobs(("prune", "vgg16", PRUNE_ROWS), ("kd_finetune", "vgg16", ("plain", "kd")),
                   ("knowledge_transfer", "vgg16", KT_ROWS), ("prune", "resnet56", PRUNE_ROWS),
                   ("kd_finetune", "resnet56", ("plain", "kd")),
                   ("kd_finetune", "resnet110", ("unpruned", "plain", "kd")),
                   ("knowledge_transfer", "vgg16", ("student_ce",))),
    ),
}
# --smoke: tiny data and one epoch everywhere (the code path, not the numbers)
SMOKE = dict(train_subset=64, test_subset=64, epochs=1, budget_epochs=2, steps=2, admm_epochs=1,
             admm_iterations=2, kt_epochs=1, finetune_epochs=1, latency_runs=3, calib_batches=1)
# Rows that are the same computation under two names (no second run).
SAME_AS = {("kd_finetune", "plain"): ("prune", "global_l1"), ("kd_finetune", "unpruned"): ("prune", "unpruned"),
           ("knowledge_transfer", "teacher"): ("prune", "unpruned")}
# Settings added after runs were started, with the value those runs had.
ADDED_SETTINGS = {"dataset": "cifar10"}
COLUMNS = ("model", "row", "accuracy", "params", "flops", "conv_filters", "onnx_latency_ms", "epochs", "wall_s")


# ------------------------------------------------------------------ settings
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="cpu", choices=sorted(SCALES))
    p.add_argument("--smoke", action="store_true", help="tiny data, 1 epoch: a quick check of the code path")
    p.add_argument("--data-dir", default=None, help="folder with cifar10/ (else $EDGESLIM_DATA)")
    p.add_argument("--dataset", default="cifar10", help="cifar10, or a class-per-folder image set of 32x32 "
                   "RGB images with 10 classes (tests)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the scale's)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/...)")
    p.add_argument("--work-dir", type=Path, default=None, help="trained models and checkpoints")
    p.add_argument("--epoch-mult", type=float, default=1.0, help="multiply every epoch count (full schedules)")
    p.add_argument("--budget-s", type=float, default=None, help="stop before a row once this much time has gone")
    p.add_argument("--only", default="", help="comma-separated tables to run (prune,kd_finetune,knowledge_transfer)")
    p.add_argument("--latency-runs", type=int, default=200)
    p.add_argument("--calib-batches", type=int, default=4, help="batches for Taylor / information gain")
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="discard the rows of an existing --out")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The run's full settings (JSON-able): the scale's preset with --smoke / --epoch-mult applied."""
    cfg = copy.deepcopy(SCALES[args.scale])
    cfg["device"] = args.device or cfg["device"]
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--scale gpu needs CUDA; for a CPU smoke test pass --smoke --device cpu")
    cfg |= dict(scale=args.scale, dataset=args.dataset, smoke=args.smoke, seed=args.seed, latency_runs=args.latency_runs,
                calib_batches=args.calib_batches, test_subset=args.test_subset, epoch_mult=args.epoch_mult,
                remove_filters=REMOVE, kd_losses=KD_LOSSES, multilevel_losses=MULTILEVEL, T=T, admm=ADMM)
    if args.budget_s is not None:
        cfg["budget_s"] = args.budget_s
    only = {t.strip() for t in args.only.split(",") if t.strip()}
    if only:
        cfg["jobs"] = [j for j in cfg["jobs"] if j[0] in only]
    m = args.epoch_mult

    def scaled(e: float) -> int:
        return max(1, round(e * m))

    for spec in cfg["models"].values():
        spec["epochs"] = scaled(spec["epochs"])
    for key in ("budget_epochs", "admm_epochs"):
        cfg["prune"][key] = scaled(cfg["prune"][key])
    cfg["kt"]["epochs"] = scaled(cfg["kt"]["epochs"])
    cfg["kt"]["finetune_epochs"] = scaled(cfg["kt"]["finetune_epochs"])
    if args.smoke:
        s = SMOKE
        for spec in cfg["models"].values():
            spec |= dict(epochs=s["epochs"], train_subset=s["train_subset"])
        cfg["prune"] |= {k: s[k] for k in ("budget_epochs", "steps", "admm_epochs", "admm_iterations")}
        cfg["kt"] |= dict(epochs=s["kt_epochs"], finetune_epochs=s["finetune_epochs"], warmup_epochs=0.0)
        cfg |= dict(test_subset=s["test_subset"], latency_runs=s["latency_runs"],
                    calib_batches=s["calib_batches"], batch_size=32)
    pr = cfg["prune"]
    if pr["budget_epochs"] % pr["steps"] or not 0 < pr["admm_epochs"] < pr["budget_epochs"]:
        raise SystemExit(f"prune schedule {pr}: budget_epochs must be a multiple of steps and exceed admm_epochs")
    return cfg


# ------------------------------------------------------------------ data, models
class Bench:
    """The settings, the data (decoded once) and the models trained so far."""

    def __init__(self, cfg: dict[str, Any], data_dir: str | None, work: Path) -> None:
        self.cfg, self.work, self.device = cfg, work, cfg["device"]
        train = load_dataset(cfg["dataset"], data_dir, "train")
        test = replace(load_dataset(cfg["dataset"], data_dir, "test"), mean=train.mean, std=train.std)
        if cfg["test_subset"]:
            test = test.subset(cfg["test_subset"], cfg["seed"])
        self._train_set, self._loaders = train, {}
        self.test = TensorLoader(test, 512 if self.device == "cuda" else 256, device=self.device)
        self.example = torch.randn(1, *train.input_shape)
        self.models: dict[str, nn.Module] = {}

    def train(self, model: str) -> TensorLoader:
        """The (seeded subset of the) training set of ``model``, on the device, augmented there."""
        n = self.cfg["models"][model]["train_subset"]
        if n not in self._loaders:
            data = self._train_set.subset(n, self.cfg["seed"]) if n else self._train_set
            self._loaders[n] = TensorLoader(data, self.cfg["batch_size"], shuffle=True, augment=True,
                                            device=self.device, seed=self.cfg["seed"])
        return self._loaders[n]

    def calib(self, model: str) -> list:
        loader = self.train(model)
        return [b for _, b in zip(range(self.cfg["calib_batches"]), loader)]

    def options(self, **extra: Any) -> dict[str, Any]:
        """TrainConfig fields every training here shares."""
        c = self.cfg
        return dict(device=self.device, amp=c["amp"], channels_last=c["channels_last"], seed=c["seed"],
                    batch_size=c["batch_size"], progress=False) | extra

    def cached(self, name: str, build: Callable[[], nn.Module]) -> nn.Module:
        """``build()``, saved to the work dir; a later run loads it instead."""
        if name not in self.models:
            path = self.work / f"{name.replace('/', '__')}.safetensors"
            if path.exists():
                model = edgeslim.load(path)
                print(f"  loaded {path}", flush=True)
            else:
                model = build().cpu()
                edgeslim.save(model, path)
            self.models[name] = model.to(self.device).eval()
        return self.models[name]

    def teacher(self, model: str) -> nn.Module:
        """The unpruned model, trained from scratch with cross-entropy (checkpointed every epoch)."""
        def build() -> nn.Module:
            spec = self.cfg["models"][model]
            torch.manual_seed(self.cfg["seed"])
            net = edgeslim.create_model(spec["arch"], num_classes=10, **spec["kwargs"])
            cfg = TrainConfig(epochs=spec["epochs"], lr=spec["lr"], warmup_epochs=min(1.0, spec["epochs"]),
                              out_dir=str(self.work / f"teacher_{model}"), resume=True, **self.options())
            print(f"  training {model} ({spec['epochs']} epochs, {len(self.train(model).dataset)} images)",
                  flush=True)
            Trainer(net, cfg, callbacks=[EpochPrinter(model)]).fit(self.train(model))
            return net
        return self.cached(f"teacher_{model}", build)


class EpochPrinter:
    """Trainer callback: one progress line per epoch."""

    def __init__(self, what: str) -> None:
        self.what, self.t0 = what, time.perf_counter()

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict) -> None:
        print(f"    {self.what} epoch {epoch + 1}/{trainer.cfg.epochs}: loss {metrics['train_loss']:.3f} "
              f"train acc {metrics['train_accuracy']:.3f} ({metrics['epoch_time_s']:.0f} s)", flush=True)


def conv_filters(model: nn.Module) -> int:
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def measure(bench: Bench, model: nn.Module) -> dict[str, Any]:
    """Test accuracy, size and onnxruntime latency (CPU, 1 thread, batch 1) of ``model``."""
    cpu = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    size = profile(cpu, bench.example, latency=False, memory=False)
    latency = edgeslim.measure_latency(cpu, bench.example, runtime="onnxruntime", threads=1,
                                       runs=bench.cfg["latency_runs"], warmup=10)
    return dict(accuracy=evaluate(model, bench.test)["accuracy"], params=size["params"], flops=size["flops"],
                conv_filters=conv_filters(cpu), onnx_latency_ms=latency)


# ------------------------------------------------------------------ rows
ROWS: dict[str, Callable[[Bench, str], tuple[nn.Module, dict]]] = {}


def row(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        ROWS[name] = fn
        return fn
    return deco


@row("unpruned")
def _unpruned(bench: Bench, model: str) -> tuple[nn.Module, dict]:
    return bench.teacher(model), {"epochs": bench.cfg["models"][model]["epochs"]}


def _iterative(bench: Bench, model: str, criterion: str, finetune: str) -> tuple[nn.Module, dict]:
    base, pr = bench.teacher(model), bench.cfg["prune"]
    out = edgeslim.prune(base, bench.example.to(bench.device), criterion=criterion, planner="global",
                         ratio=REMOVE, steps=pr["steps"], finetune=finetune, train_data=bench.train(model),
                         calib_data=bench.calib(model), finetune_epochs=pr["budget_epochs"] // pr["steps"],
                         finetune_options=bench.options(lr=pr["finetune_lr"]), cost_aware=False)
    return out, {"epochs": pr["budget_epochs"], "finetune": finetune}


@row("global_l1")
def _global_l1(bench: Bench, model: str) -> tuple[nn.Module, dict]:
    return _iterative(bench, model, "l1", "plain")


@row("global_taylor")
def _global_taylor(bench: Bench, model: str) -> tuple[nn.Module, dict]:
    return _iterative(bench, model, "taylor", "plain")


@row("kd")
def _kd(bench: Bench, model: str) -> tuple[nn.Module, dict]:
    """Global L1 as ``global_l1``, recovered by distillation from the unpruned model."""
    return _iterative(bench, model, "l1", "kd")


@row("easiedge")
def _easiedge(bench: Bench, model: str) -> tuple[nn.Module, dict]:
    pr = bench.cfg["prune"]
    finetune_epochs = pr["budget_epochs"] - pr["admm_epochs"]
    out = edgeslim.admm_prune(
        bench.teacher(model), bench.example.to(bench.device), bench.train(model), target_filters=REMOVE,
        criterion="information_gain_taylor", admm_epochs=pr["admm_epochs"],
        admm_iterations=pr["admm_iterations"], finetune_epochs=finetune_epochs, calib_data=bench.calib(model),
        calib_batches=bench.cfg["calib_batches"], **ADMM,
        **bench.options(lr=pr["finetune_lr"]))
    return out, {"epochs": pr["budget_epochs"], "admm_epochs": pr["admm_epochs"],
                 "finetune_epochs": finetune_epochs}


def _student(bench: Bench, model: str, losses: str) -> nn.Module:
    """``lighten(teacher)`` (seeded), trained by ``distill`` with ``losses`` from the teacher."""
    teacher, kt = bench.teacher(model), bench.cfg["kt"]
    torch.manual_seed(bench.cfg["seed"])
    student = edgeslim.lighten(teacher.cpu().eval(), bench.example, head="gap_linear").to(bench.device)
    teacher.to(bench.device)
    distill(student, teacher, bench.train(model), losses=losses, epochs=kt["epochs"], T=T,
            callbacks=[EpochPrinter(f"student {losses}")],
            **bench.options(lr=kt["lr"], warmup_epochs=kt["warmup_epochs"]))
    return student


@row("student_multilevel")
def _student_multilevel(bench: Bench, model: str) -> tuple[nn.Module, dict]:
    student = bench.cached(f"student_multilevel_{model}", lambda: _student(bench, model, MULTILEVEL))
    return student, {"epochs": bench.cfg["kt"]["epochs"], "losses": MULTILEVEL}


@row("student_ce")
def _student_ce(bench: Bench, model: str) -> tuple[nn.Module, dict]:
    """Control: the same lighten student, cross-entropy alone (``distill`` with ``ce:1.0``)."""
    return _student(bench, model, "ce:1.0"), {"epochs": bench.cfg["kt"]["epochs"], "losses": "ce:1.0"}


@row("student_multilevel_pruned")
def _student_pruned(bench: Bench, model: str) -> tuple[nn.Module, dict]:
    student, _ = _student_multilevel(bench, model)
    kt = bench.cfg["kt"]
    finetune = kd_finetune(bench.teacher(model), kt["finetune_epochs"], bench.train(model), losses=KD_LOSSES,
                           T=T, **bench.options(lr=bench.cfg["prune"]["finetune_lr"]))
    out = edgeslim.prune(student, bench.example.to(bench.device), criterion="l1", planner="global",
                         target_flops=kt["target_flops"], steps=kt["steps"], finetune=finetune)
    return out, {"epochs": kt["steps"] * kt["finetune_epochs"], "target_flops_of_student": kt["target_flops"]}


# ------------------------------------------------------------------ the run
def load_results(path: Path, cfg: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """The rows of an earlier run with the same settings (or a fresh result)."""
    import json

    settings = {k: v for k, v in cfg.items() if k not in ("jobs", "budget_s")}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as stored
    if path.exists() and not fresh:
        old = json.loads(path.read_text())
        for name, value in ADDED_SETTINGS.items():  # a run started before the setting existed
            old.get("config", {}).setdefault(name, value)
        if old.get("config") != settings:
            raise SystemExit(f"{path} holds a run with other settings; pass another --out or --fresh")
        print(f"resuming {path}: {len(old['rows'])} rows done", flush=True)
        return old
    return {"config": settings, "rows": {}, "sessions": []}


def check_work_dir(work: Path, settings: dict[str, Any], fresh: bool) -> None:
    """The cached models in ``work`` must come from these settings (``--fresh``: empty it if not)."""
    import json
    import shutil

    marker = work / "settings.json"
    if marker.exists() and json.loads(marker.read_text()) != settings:
        if not fresh:
            raise SystemExit(f"{work} holds models trained with other settings; pass another --work-dir "
                             "or --fresh (which empties it)")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, settings)


def key(table: str, model: str, name: str) -> str:
    return f"{table}/{model}/{name}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = resolve(args)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if cfg["device"] == "cuda":
        torch.backends.cudnn.benchmark = True
    suffix = "_smoke" if args.smoke else ""
    work = args.work_dir or Path("runs") / f"cifar_tables_{args.scale}{suffix}"
    # a smoke run's numbers mean nothing: its JSON stays in the work dir unless --out says otherwise
    out = args.out or (work / "results.json" if args.smoke else RESULTS / f"cifar_tables_{args.scale}.json")
    result = load_results(out, cfg, args.fresh)
    check_work_dir(work, result["config"], args.fresh)
    start = time.perf_counter()
    bench = Bench(cfg, args.data_dir, work)
    print(f"data ready ({time.perf_counter() - start:.0f} s); device {bench.device}", flush=True)
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "rows": [],
               "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
               "cpu": cpu_model(), "threads": torch.get_num_threads(),
               "gpu": torch.cuda.get_device_name() if bench.device == "cuda" else None}
    result["sessions"].append(session)
    for table, model, name in cfg["jobs"]:
        k = key(table, model, name)
        if k in result["rows"]:
            continue
        same = SAME_AS.get((table, name))
        if same and key(same[0], model, same[1]) in result["rows"]:
            result["rows"][k] = result["rows"][key(same[0], model, same[1])] | {"table": table, "row": name,
                                                                               "same_as": key(same[0], model, same[1])}
            atomic_write_json(out, result)
            continue
        elapsed = time.perf_counter() - start
        if cfg["budget_s"] is not None and elapsed > cfg["budget_s"]:
            print(f"time budget ({cfg['budget_s']:.0f} s) spent after {elapsed:.0f} s: stopping before {k}; "
                  "rerun with the same --out to continue", flush=True)
            break
        print(f"[{elapsed:5.0f} s] {k}", flush=True)
        fn = ROWS[same[1] if same else name]
        (trained, extra), seconds = _timed(lambda: fn(bench, model), bench.device)
        entry = {"table": table, "model": model, "row": name} | measure(bench, trained) | extra
        entry["wall_s"] = round(seconds, 1)
        result["rows"][k] = entry
        session["rows"].append(k)
        session["wall_s"] = round(time.perf_counter() - start, 1)
        result["total_s"] = round(sum(s.get("wall_s", 0.0) for s in result["sessions"]), 1)
        atomic_write_json(out, result)
        print(f"  {k}: acc {entry['accuracy']:.4f} params {entry['params']} flops {entry['flops']} "
              f"onnx {entry['onnx_latency_ms']:.3f} ms ({seconds:.0f} s)", flush=True)
    session["wall_s"] = round(time.perf_counter() - start, 1)
    result["total_s"] = round(sum(s.get("wall_s", 0.0) for s in result["sessions"]), 1)
    result["complete"] = all(key(*j) in result["rows"] for j in cfg["jobs"])
    atomic_write_json(out, result)
    print_tables(result)
    print(f"wrote {out} (this session {session['wall_s']:.0f} s, all sessions {result['total_s']:.0f} s)")
    return result


def print_tables(result: dict[str, Any]) -> None:
    for table in ("prune", "kd_finetune", "knowledge_transfer"):
        rows = [r for r in result["rows"].values() if r["table"] == table]
        if rows:
            print(f"\n({table})")
            print(format_table([{c: r.get(c) for c in COLUMNS} for r in rows]))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run(parse_args(argv))


if __name__ == "__main__":
    main()
