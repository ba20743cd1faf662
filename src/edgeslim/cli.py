"""The ``edgeslim`` command: one subcommand per stage, plus ``compress`` for recipes.

Stage subcommands (train, prune, lighten, distill, merge) build a one-stage
recipe and run it into ``--out`` like ``compress`` does, so each of them gets
the same checkpoints, ``--resume``, metrics table and report for free.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .cliargs import add_config_flags, config_fields, deprecated_flag
from .errors import ConfigError, EdgeslimDeprecationWarning, EdgeslimError
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
    p.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist, kmnist, cifar10, "
                   "cifar10-gray28 (derived), or an image-folder path")
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
    p.add_argument("--model-width-mult", type=float, default=None, help="zoo width multiplier")
    if not any(a.dest == "cfg_width_mult" for a in p._actions):  # lighten's --width-mult is the student's
        deprecated_flag(p, "--width-mult", "--model-width-mult", dest="model_width_mult", type=float)


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="run directory (default: runs/<command>-<model>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-progress", action="store_true")


def _recipe_base(args: argparse.Namespace, name: str) -> dict:
    kwargs = {} if args.model_width_mult is None else {"width_mult": args.model_width_mult}
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
    return _run(args, "train", [{"train": _with_config(args, config_fields(args))}])


@command("prune")
def _prune(args: argparse.Namespace) -> int:
    return _run(args, "prune", [{"prune": _with_config(args, config_fields(args))}])


@command("lighten")
def _lighten(args: argparse.Namespace) -> int:
    return _run(args, "lighten", [{"lighten": _with_config(args, config_fields(args))}])


@command("distill")
def _distill(args: argparse.Namespace) -> int:
    if args.student != "lighten":
        raise EdgeslimError("--student: only 'lighten' (build the student from the teacher) is "
                            "supported from the command line; use edgeslim.distill() for other students")
    stages = [{"lighten": {}}, {"distill": _with_config(args, config_fields(args))}]
    args.checkpoint = args.teacher
    return _run(args, "distill", stages)


@command("merge")
def _merge(args: argparse.Namespace) -> int:
    return _run(args, "merge", [{"merge": _with_config(args, config_fields(args))}])


@command("schema")
def _schema(args: argparse.Namespace) -> int:
    import json

    from .schema import recipe_schema

    print(json.dumps(recipe_schema(), indent=2))
    return 0


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


def _stage_config(kind: str, args: argparse.Namespace) -> Any:
    from .pipeline.recipe import parse_stage

    return parse_stage(kind, config_fields(args), where=f"edgeslim {kind}").config


def _load_model(args: argparse.Namespace) -> Any:
    from .export import load
    from .models import create_model

    if args.checkpoint:
        return load(args.checkpoint)
    kwargs = {} if args.model_width_mult is None else {"width_mult": args.model_width_mult}
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

    cfg = _stage_config("profile", args)
    model = _load_model(args)
    with _input_flags_hint():
        result = profile(model, _example(model, args), latency=True, threads=cfg.threads, runs=cfg.runs,
                         onnx=args.onnx)
    print(format_table([result]))
    if args.json:
        from .io import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


@command("export")
def _export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    cfg = _stage_config("export", args)
    model = _load_model(args)
    with _input_flags_hint():
        diff = export_onnx(model, _example(model, args), args.out, tol=cfg.tol, opset=cfg.opset)
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
    _stage_parsers(sub)
    c = sub.add_parser("compress", help="run a YAML recipe end to end")
    c.add_argument("recipe")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    _run_args(c)
    r = sub.add_parser("report", help="regenerate report.md/html of a run directory")
    r.add_argument("run_dir")
    sub.add_parser("schema", help="print the JSON Schema of recipes (for editors and validators)")
    _simple_parsers(sub)
    return p


#: Stage commands: name -> (help, what the command adds to the stage's own flags)
_STAGE_HELP = {
    "train": "train a zoo model",
    "prune": "structured (filter), EasiEdge (ADMM) or unstructured pruning",
    "lighten": "build a depthwise-separable, GAP-head student",
    "distill": "multi-level knowledge distillation (the student is built by lighten)",
    "merge": "BN folding / exact merges, or DeepRebirth streamline merging",
}


def _stage_parser(sub: Any, kind: str) -> argparse.ArgumentParser:
    from .pipeline.recipe import stage_types

    t = sub.add_parser(kind, help=_STAGE_HELP[kind])
    t.add_argument("--config", help=f"YAML with {kind}-stage fields (flags override)")
    add_config_flags(t, stage_types()[kind])
    _model_args(t, default="vgg16" if kind == "lighten" else "lenet5"), _data_args(t), _run_args(t)
    return t


def _stage_parsers(sub: Any) -> None:
    for kind in _STAGE_HELP:
        t = _stage_parser(sub, kind)
        _DEPRECATED_FLAGS.get(kind, lambda t: None)(t)


def _prune_flags(t: argparse.ArgumentParser) -> None:
    deprecated_flag(t, "--unstructured", "--method unstructured", dest="cfg_method", value="unstructured")


def _lighten_flags(t: argparse.ArgumentParser) -> None:
    deprecated_flag(t, "--student-width", "--width-mult", dest="cfg_width_mult", type=float)
    deprecated_flag(t, "--convert-first", "--no-keep-first-conv", dest="cfg_keep_first_conv", value=False)


def _distill_flags(t: argparse.ArgumentParser) -> None:
    t.add_argument("--teacher", required=True, help="teacher weights (model.safetensors)")
    t.add_argument("--student", default="lighten", help="'lighten': build it from the teacher")
    deprecated_flag(t, "--loss", "--losses", dest="cfg_losses")


def _merge_flags(t: argparse.ArgumentParser) -> None:
    deprecated_flag(t, "--exact", "--mode exact", dest="cfg_mode", value="exact")
    deprecated_flag(t, "--streamline", "--mode streamline", dest="cfg_mode", value="streamline")


_DEPRECATED_FLAGS = {"prune": _prune_flags, "lighten": _lighten_flags, "distill": _distill_flags,
                     "merge": _merge_flags}


def _simple_parsers(sub: Any) -> None:
    from .pipeline.recipe import stage_types

    e = sub.add_parser("eval", help="accuracy of a model on a test set")
    _model_args(e), _data_args(e)
    for name, helptext in (("profile", "params, FLOPs, bytes, latency"), ("export", "ONNX export with parity check")):
        t = sub.add_parser(name, help=helptext)
        _model_args(t)
        t.add_argument("--batch-size", type=int, default=1)
        t.add_argument("--input-size", default=None, help="C,H,W (default: the model's)")
        add_config_flags(t, stage_types()[name])
        if name == "profile":
            t.add_argument("--onnx", action="store_true", help="also time onnxruntime")
            t.add_argument("--json", default=None, help="write the result as JSON here")
        else:
            t.add_argument("--out", default="model.onnx")


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: Any = None) -> None:
    print(f"edgeslim: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("always", EdgeslimDeprecationWarning)
        warnings.showwarning = _show_warning  # one line, no source excerpt; restored on exit
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
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
    except BrokenPipeError:
        # `edgeslim schema | head`: the reader left; say nothing more (Python's documented recipe:
        # point stdout at devnull so the interpreter's final flush does not raise again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
