"""Run a recipe stage by stage into a run directory, resumably.

Layout of RUN_DIR::

    recipe.yaml                 the resolved recipe
    state.json                  completed stages with their metrics (written atomically)
    teacher.safetensors         the model before the first compression stage
    stages/NN-kind/model.safetensors, metrics.json, train/ (Trainer checkpoints)
    model.safetensors           the final model (edgeslim.save format)
    model.onnx, model.int8.onnx, deploy.md, report.md, report.html, *.png

Every stage is seeded with ``recipe.seed + index``, so re-running a stage from
its start gives the same result; training stages also resume mid-stage from
their per-epoch checkpoints.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..io import atomic_write_json
from .recipe import Recipe
from .stages import STAGES, RunState

STATE = "state.json"


def _loaders(recipe: Recipe, data_dir: Any, device: str) -> tuple[Any, Any, Any]:
    from ..data import make_loaders

    d = recipe.data
    train, test = make_loaders(d.name, data_dir, batch_size=d.batch_size, device=device,
                               train_subset=d.train_subset, test_subset=d.test_subset,
                               seed=recipe.seed, augment=d.augment)
    calib = [b for _, b in zip(range(d.calib_batches), train)]
    return train, test, calib


def _initial_model(recipe: Recipe) -> torch.nn.Module:
    from ..export import load
    from ..models import create_model

    if recipe.model.checkpoint:
        return load(recipe.model.checkpoint)
    torch.manual_seed(recipe.seed)  # the same recipe always starts from the same weights
    return create_model(recipe.model.name, num_classes=recipe.model.num_classes, **recipe.model.kwargs)


def measure(state: RunState) -> dict:
    """Accuracy, size and speed of the current model (CPU latency: 1 thread, batch 1)."""
    from ..profile import profile
    from ..train import evaluate

    model = state.model
    acc = evaluate(model.to(state.device), state.test)["accuracy"]
    prof = profile(model.cpu().eval(), state.example.cpu(), latency=True, threads=1,
                   runs=state.recipe.latency_runs, warmup=5)
    row = {"accuracy": acc} | {k: prof[k] for k in ("params", "nonzero_params", "flops", "macs",
                                                     "bytes", "latency_ms", "latency_p90_ms")}
    row["stored_bytes"] = _stored_bytes(model, row)
    if state.quantized is not None:
        row["int8_accuracy"] = state.quantized.evaluate(state.test)
        row["int8_latency_ms"] = state.quantized.latency(threads=1)
    return row


def _stored_bytes(model: torch.nn.Module, row: dict) -> int:
    """Bytes as stored: compact sparse format (Han et al. 2016) when most weights are zero."""
    if row["nonzero_params"] > 0.5 * row["params"]:
        return row["bytes"]
    import tempfile

    from ..prune.sparse_storage import save_sparse

    with tempfile.TemporaryDirectory() as tmp:
        return int(save_sparse(model, Path(tmp) / "sparse.safetensors").file_bytes)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no GPU; use --device cpu")
    return device


def _load_state(run_dir: Path, recipe: Recipe, resume: bool) -> dict:
    path = run_dir / STATE
    if not path.exists():
        return {"recipe": recipe.to_dict(), "completed": []}
    state = json.loads(path.read_text())
    if state.get("recipe") != recipe.to_dict():
        raise ConfigError(f"{run_dir} holds a run of a different recipe; choose another --out "
                          "(nothing there is overwritten)")
    done = _finished(state, recipe)
    if not done and not resume:
        raise ConfigError(f"{run_dir} holds an unfinished run ({max(len(state['completed']) - 1, 0)} of "
                          f"{len(recipe.stages)} stages); pass --resume to continue it or choose another --out")
    return state


def _finished(saved: dict, recipe: Recipe) -> bool:
    return len(saved["completed"]) == len(recipe.stages) + 1  # +1: the input model's row


def run_recipe(recipe: Recipe, run_dir: str | Path, *, data_dir: Any = None, resume: bool = False,
               device: str | None = None, progress: bool = True,
               on_stage: Callable[[int, str, dict], None] | None = None) -> dict:
    """Run (or resume, or re-report) ``recipe`` in ``run_dir``; returns the state dict."""
    from ..export import load, save

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = _load_state(run_dir, recipe, resume)
    device = _resolve_device(device or recipe.device)
    save_yaml_dict(recipe, run_dir / "recipe.yaml")
    if _finished(saved, recipe):
        write_run_report(run_dir, saved)
        return saved
    train, test, calib = _loaders(recipe, data_dir, device)
    example = next(iter(test))[0][:1].cpu()
    model = load(run_dir / saved["completed"][-1]["model"]) if saved["completed"] else _initial_model(recipe)
    teacher_path = run_dir / "teacher.safetensors"
    state = RunState(recipe, run_dir, device, train, test, calib, example, model,
                     teacher=load(teacher_path) if teacher_path.exists() else None, progress=progress)
    if not saved["completed"]:
        saved["completed"].append(_record(state, -1, "input", measure(state), 0.0))
    _restore_quantized(state, saved)
    for i in range(len(saved["completed"]) - 1, len(recipe.stages)):
        stage = recipe.stages[i]
        state.stage_dir = run_dir / "stages" / f"{i:02d}-{stage.kind}"
        torch.manual_seed(recipe.seed + i)
        t0 = time.perf_counter()
        had_teacher = state.teacher is not None
        STAGES.get(stage.kind)(state, stage.config)
        if state.teacher is not None and not had_teacher:
            save(state.teacher, teacher_path)
        saved["completed"].append(_record(state, i, stage.kind, measure(state), time.perf_counter() - t0))
        atomic_write_json(run_dir / STATE, saved)
        if on_stage:
            on_stage(i, stage.kind, saved["completed"][-1]["metrics"])
    save(state.model, run_dir / "model.safetensors")
    write_run_report(run_dir, saved)
    return saved


def _record(state: RunState, index: int, kind: str, metrics: dict, wall: float) -> dict:
    from ..export import save

    name = "stages/input" if index < 0 else f"stages/{index:02d}-{kind}"
    path = state.run_dir / name / "model.safetensors"
    save(state.model, path)
    entry = {"index": index, "stage": kind, "model": str(path.relative_to(state.run_dir)),
             "metrics": metrics | {"wall_s": wall}, "artifacts": _jsonable(state.artifacts)}
    atomic_write_json(path.parent / "metrics.json", entry)
    if index < 0:
        atomic_write_json(state.run_dir / STATE, {"recipe": state.recipe.to_dict(), "completed": [entry]})
    return entry


def _jsonable(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, type(None), dict, list))}


def _restore_quantized(state: RunState, saved: dict) -> None:
    for entry in saved["completed"]:
        path = entry.get("artifacts", {}).get("int8_onnx")
        if path and Path(path).exists():
            from ..quant import QuantizedModel

            state.quantized = QuantizedModel(path, example_inputs=state.example)


def save_yaml_dict(recipe: Recipe, path: Path) -> None:
    from ..io import atomic_write_text
    import yaml

    atomic_write_text(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))


def write_run_report(run_dir: Path, saved: dict) -> dict:
    """(Re)write report.md/html of a run from its state.json contents."""
    from ..report import write_report

    entries = saved["completed"]
    if len(entries) > 1 and entries[1]["stage"] == "train":
        entries = entries[1:]  # an untrained input is no baseline: ratios start at the trained model
    rows = [{"stage": e["stage"]} | e["metrics"] for e in entries]
    artifacts: dict = {}
    for e in saved["completed"]:
        artifacts |= e.get("artifacts", {})
    return write_report(run_dir, rows, title=f"edgeslim: {saved['recipe']['name']}",
                        layer_latency=artifacts.get("layer_latency"))
