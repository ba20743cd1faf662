"""The ``edgeslim`` command: one subcommand per stage, plus ``compress`` for recipes.

Stage subcommands (train, prune, lighten, distill, merge) build a one-stage
recipe and run it into ``--out`` like ``compress`` does, so each of them gets
the same checkpoints, ``--resume``, metrics table and report for free.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import ConfigError, EdgeslimError
from .registry import RegistryError

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def deco(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return deco


# ---------------------------------------------------------------------------- shared options
def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist", help="mnist, cifar10, or an image-folder path")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $EDGESLIM_DATA)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-subset", type=int, default=None, help="train on N random images")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on N random images")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)


def _model_args(p: argparse.ArgumentParser, default: str | None = "lenet5") -> None:
    p.add_argument("--model", default=default, help="zoo model name (see `edgeslim models`)")
    p.add_argument("--checkpoint", default=None, help="weights written by edgeslim (model.safetensors)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--width-mult", type=float, default=None, help="zoo width multiplier")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="run directory (default: runs/<command>-<model>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-progress", action="store_true")


def _recipe_base(args: argparse.Namespace, name: str) -> dict:
    kwargs = {} if args.width_mult is None else {"width_mult": args.width_mult}
    return {
        "name": name,
        "model": {"name": args.model, "num_classes": args.num_classes, "kwargs": kwargs,
                  "checkpoint": args.checkpoint},
        "data": {"name": args.dataset, "batch_size": args.batch_size, "train_subset": args.train_subset,
                 "test_subset": args.test_subset},
        "device": args.device, "seed": args.seed,
    }


def _run(args: argparse.Namespace, name: str, stages: list[dict]) -> int:
    from .pipeline import parse_recipe

    recipe = parse_recipe(_recipe_base(args, name) | {"stages": stages}, where=f"edgeslim {name}")
    out = Path(args.out or f"runs/{name}-{args.model}")
    return _execute(recipe, out, args)


def _execute(recipe: Any, out: Path, args: argparse.Namespace) -> int:
    from .pipeline import run_recipe
    from .profile.summary import format_table

    saved = run_recipe(recipe, out, data_dir=getattr(args, "data_dir", None), resume=args.resume,
                       device=None if getattr(args, "device", None) in (None, "auto") else args.device,
                       progress=not args.no_progress,
                       on_stage=lambda i, kind, m: print(f"stage {i + 1}/{len(recipe.stages)} {kind}: "
                                                         f"accuracy {m['accuracy']:.4f}", flush=True))
    rows = [{"stage": e["stage"]} | e["metrics"] for e in saved["completed"]]
    print(format_table(rows))
    print(f"\nmodel: {out / 'model.safetensors'}\nreport: {out / 'report.md'} ({out / 'report.html'})")
    return 0


def _with_config(args: argparse.Namespace, fields: dict) -> dict:
    """Stage config from --config YAML (if given) overridden by explicit flags."""
    from . import yamlsafe

    base: Any = {}
    if getattr(args, "config", None):
        base = yamlsafe.read(args.config, what="--config file") or {}
        if not isinstance(base, dict):
            raise EdgeslimError(f"--config file {args.config} must hold a mapping of stage fields "
                                f"(e.g. 'lr: 0.01'), not a {type(base).__name__}")
    return base | {k: v for k, v in fields.items() if v is not None}


# ---------------------------------------------------------------------------- commands
@command("models")
def _models(args: argparse.Namespace) -> int:
    from .models import create_model, list_models
    from .profile import count_params

    for name in list_models():
        m = create_model(name)
        print(f"{name:16s} {count_params(m):>12,} params  input {tuple(m.default_input_size)}")
    return 0


def _checksum_line(name: str, report: Any) -> str:
    if not report.sums_files:
        return f"{name:8s} sha256 not checked: no SHA256SUMS in the data folder or the dataset's"
    where = ", ".join(str(s) for s in report.sums_files)
    line = f"{name:8s} sha256 {len(report.ok)} file(s) ok ({where})"
    if report.unlisted:
        line += f"; not listed there: {', '.join(p.name for p in report.unlisted)}"
    return line


@command("data")
def _data(args: argparse.Namespace) -> int:
    from .data import load_dataset, verify_dataset_checksums

    names = ["mnist", "cifar10"] if args.dataset == "all" else [args.dataset]
    for name in names:
        # before loading: a hash mismatch says more than the decoder's error would
        print(_checksum_line(name, verify_dataset_checksums(name, args.data_dir)))
        for split in ("train", "test"):
            ds = load_dataset(name, args.data_dir, split)
            print(f"{name:8s} {split:5s} {len(ds):6d} images {tuple(ds.images.shape[1:])} "
                  f"{len(ds.classes)} classes  ok")
    return 0


@command("train")
def _train(args: argparse.Namespace) -> int:
    fields = {"epochs": args.epochs, "lr": args.lr, "optimizer": args.optimizer,
              "weight_decay": args.weight_decay, "schedule": args.schedule,
              "warmup_epochs": args.warmup_epochs, "label_smoothing": args.label_smoothing}
    return _run(args, "train", [{"train": _with_config(args, fields)}])


@command("prune")
def _prune(args: argparse.Namespace) -> int:
    fields = {"method": args.method, "criterion": args.criterion, "planner": args.planner,
              "ratio": args.ratio, "target_flops": args.target_flops, "target_params": args.target_params,
              "target_filters": args.target_filters, "sparsity": args.sparsity, "scope": args.scope,
              "steps": args.steps, "round_to": args.round_to, "finetune": args.finetune,
              "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr,
              "admm_epochs": args.admm_epochs, "rho": args.rho}
    if args.unstructured:
        fields["method"] = "unstructured"
    return _run(args, "prune", [{"prune": _with_config(args, fields)}])


@command("lighten")
def _lighten(args: argparse.Namespace) -> int:
    return _run(args, "lighten", [{"lighten": {"width_mult": args.student_width,
                                               "keep_first_conv": not args.convert_first,
                                               "head": args.head}}])


@command("distill")
def _distill(args: argparse.Namespace) -> int:
    if args.student != "lighten":
        raise EdgeslimError("--student: only 'lighten' (build the student from the teacher) is "
                            "supported from the command line; use edgeslim.distill() for other students")
    stages = [{"lighten": {}},
              {"distill": {"losses": args.loss, "T": args.T, "epochs": args.epochs, "lr": args.lr}}]
    args.checkpoint = args.teacher
    return _run(args, "distill", stages)


@command("merge")
def _merge(args: argparse.Namespace) -> int:
    mode = "streamline" if args.streamline else "exact"
    return _run(args, "merge", [{"merge": {"mode": mode, "retrain_epochs": args.retrain_epochs}}])


@command("compress")
def _compress(args: argparse.Namespace) -> int:
    from .pipeline import load_recipe

    recipe = load_recipe(args.recipe)
    if args.device:
        recipe.device = args.device
    out = Path(args.out or f"runs/{recipe.name}")
    return _execute(recipe, out, args)


@command("report")
def _report(args: argparse.Namespace) -> int:
    from .pipeline.rundir import read_state, storage_errors
    from .pipeline.runner import write_run_report as write

    run_dir = Path(args.run_dir)
    if not (run_dir / "state.json").is_file():
        raise EdgeslimError(f"{args.run_dir} has no state.json: not an edgeslim run directory")
    with storage_errors(run_dir):
        paths = write(run_dir, read_state(run_dir))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _load_model(args: argparse.Namespace) -> Any:
    from .export import load
    from .models import create_model

    if args.checkpoint:
        return load(args.checkpoint)
    kwargs = {} if args.width_mult is None else {"width_mult": args.width_mult}
    return create_model(args.model, num_classes=args.num_classes, **kwargs)


def _example(model: Any, args: argparse.Namespace) -> Any:
    import torch

    size = getattr(model, "default_input_size", None)
    if args.input_size:
        try:
            size = tuple(int(s) for s in args.input_size.split(","))
        except ValueError:
            size = ()
        if not size or min(size) < 1:
            raise ConfigError(f"--input-size {args.input_size!r}: give the per-sample shape as "
                              "positive integers separated by commas, e.g. --input-size 3,32,32")
    if size is None:
        raise EdgeslimError("this model has no default input size; pass --input-size C,H,W")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be >= 1")
    return torch.randn(args.batch_size, *size)


@contextlib.contextmanager
def _input_flags_hint() -> Iterator[None]:
    """Point an input that does not fit the model at the flags that set it."""
    from ._checks import InputMismatchError

    try:
        yield
    except InputMismatchError as exc:
        raise InputMismatchError(f"{exc} (on the command line: --input-size C,H,W and "
                                 "--batch-size N; models with several inputs need the Python API)") from exc


@command("eval")
def _eval(args: argparse.Namespace) -> int:
    from .data import make_loaders
    from .train import evaluate

    model = _load_model(args)
    _, test = make_loaders(args.dataset, args.data_dir, batch_size=args.batch_size,
                           test_subset=args.test_subset)
    result = evaluate(model, test)
    print(f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  ({result['n']} images)")
    return 0


@command("profile")
def _profile(args: argparse.Namespace) -> int:
    from .profile import profile
    from .profile.summary import format_table

    model = _load_model(args)
    with _input_flags_hint():
        result = profile(model, _example(model, args), latency=True, threads=args.threads, onnx=args.onnx)
    print(format_table([result]))
    if args.json:
        from .io import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


@command("export")
def _export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    model = _load_model(args)
    with _input_flags_hint():
        diff = export_onnx(model, _example(model, args), args.out)
    print(f"wrote {args.out}; onnxruntime max abs difference {diff:.2e}")
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeslim", description="Make CNNs small and fast for edge devices.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model zoo")
    d = sub.add_parser("data", help="check that datasets load (and match any SHA256SUMS)")
    d.add_argument("action", choices=["check"])
    d.add_argument("--dataset", default="all")
    d.add_argument("--data-dir", default=None)
    _train_parser(sub)
    _prune_parser(sub)
    _lighten_parser(sub)
    _distill_parser(sub)
    _merge_parser(sub)
    c = sub.add_parser("compress", help="run a YAML recipe end to end")
    c.add_argument("recipe")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    _run_args(c)
    r = sub.add_parser("report", help="regenerate report.md/html of a run directory")
    r.add_argument("run_dir")
    _simple_parsers(sub)
    return p


def _train_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train a zoo model")
    _model_args(t), _data_args(t), _run_args(t)
    t.add_argument("--config", help="YAML with train-stage fields (flags override)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--optimizer", choices=["sgd", "adamw"])
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--schedule", choices=["cosine", "step", "constant"])
    t.add_argument("--warmup-epochs", type=float)
    t.add_argument("--label-smoothing", type=float)


def _prune_parser(sub: Any) -> None:
    t = sub.add_parser("prune", help="structured (filter), EasiEdge (ADMM) or unstructured pruning")
    _model_args(t), _data_args(t), _run_args(t)
    t.add_argument("--config", help="YAML with prune-stage fields (flags override)")
    t.add_argument("--method", choices=["structured", "easiedge", "unstructured"])
    t.add_argument("--unstructured", action="store_true", help="same as --method unstructured")
    t.add_argument("--criterion")
    t.add_argument("--planner", choices=["global", "layerwise"])
    t.add_argument("--ratio", type=float, help="fraction of channels removed")
    t.add_argument("--target-flops", type=float, help="fraction of FLOPs kept")
    t.add_argument("--target-params", type=float, help="fraction of parameters kept")
    t.add_argument("--target-filters", type=float, help="EasiEdge: fraction of filters removed")
    t.add_argument("--sparsity", type=float, help="unstructured: fraction of weights zeroed")
    t.add_argument("--scope", choices=["global", "layer"])
    t.add_argument("--steps", type=int)
    t.add_argument("--round-to", type=int)
    t.add_argument("--finetune", choices=["none", "plain", "kd"])
    t.add_argument("--finetune-epochs", type=int)
    t.add_argument("--finetune-lr", type=float)
    t.add_argument("--admm-epochs", type=int)
    t.add_argument("--rho", type=float)


def _lighten_parser(sub: Any) -> None:
    t = sub.add_parser("lighten", help="build a depthwise-separable, GAP-head student")
    _model_args(t, default="vgg16"), _data_args(t), _run_args(t)
    t.add_argument("--student-width", type=float, default=1.0)
    t.add_argument("--convert-first", action="store_true", help="also convert the first conv")
    t.add_argument("--head", default="gap_linear", choices=["gap_linear", "conv", "keep"])


def _distill_parser(sub: Any) -> None:
    t = sub.add_parser("distill", help="multi-level knowledge distillation")
    _model_args(t), _data_args(t), _run_args(t)
    t.add_argument("--teacher", required=True, help="teacher weights (model.safetensors)")
    t.add_argument("--student", default="lighten", help="'lighten': build it from the teacher")
    t.add_argument("--loss", default="kd:0.9,ce:0.1", help="weighted losses, e.g. kd:0.9,hint:1.0")
    t.add_argument("--T", type=float, default=4.0)
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--lr", type=float, default=0.05)


def _merge_parser(sub: Any) -> None:
    t = sub.add_parser("merge", help="BN folding / exact merges, or DeepRebirth streamline merging")
    _model_args(t), _data_args(t), _run_args(t)
    g = t.add_mutually_exclusive_group()
    g.add_argument("--exact", action="store_true", default=True)
    g.add_argument("--streamline", action="store_true")
    t.add_argument("--retrain-epochs", type=int, default=0)


def _simple_parsers(sub: Any) -> None:
    e = sub.add_parser("eval", help="accuracy of a model on a test set")
    _model_args(e), _data_args(e)
    for name, helptext in (("profile", "params, FLOPs, bytes, latency"), ("export", "ONNX export with parity check")):
        t = sub.add_parser(name, help=helptext)
        _model_args(t)
        t.add_argument("--batch-size", type=int, default=1)
        t.add_argument("--input-size", default=None, help="C,H,W (default: the model's)")
        if name == "profile":
            t.add_argument("--threads", type=int, default=1)
            t.add_argument("--onnx", action="store_true", help="also time onnxruntime")
            t.add_argument("--json", default=None, help="write the result as JSON here")
        else:
            t.add_argument("--out", default="model.onnx")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except (EdgeslimError, RegistryError) as exc:
        print(f"edgeslim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished stages and epoch checkpoints are kept (re-run with --resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
