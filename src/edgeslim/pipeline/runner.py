"""Run a recipe stage by stage into a run directory, resumably.

Layout of RUN_DIR::

    .edgeslim.lock              held (flock) by the run using the directory
    recipe.yaml                 the resolved recipe
    state.json                  completed stages with their metrics and model SHA-256s
    teacher.safetensors         the model before the first compression stage
    stages/NN-kind/model.safetensors, metrics.json, train/ (Trainer checkpoints)
    model.safetensors           the final model (a copy of the last stage's)
    model.onnx, model.int8.onnx, deploy.md, report.md, report.html, *.png

Every stage is seeded with ``recipe.seed + index``, so re-running a stage from
its start gives the same result; training stages also resume mid-stage from
their per-epoch checkpoints.

Every file is written atomically, and in an order that keeps ``state.json``
honest: a stage's model (and the teacher) first, ``state.json`` after, the
final model and the report last. A resumed or re-run run checks each file the
state lists against the SHA-256 recorded for it and redoes what is missing or
changed (see ``rundir.py``).
"""
from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .._core import eval_mode, take_batches
from ..errors import ConfigError, EdgeslimDeprecationWarning, RunDirError
from ..io import atomic_write_json, atomic_write_text, atomic_write_with
from ..registry import RegistryError
from .recipe import SCHEMA_VERSION, Recipe, parse_recipe
from .rundir import (FINAL, STATE, TEACHER, check_file, clean_temp_files, file_sha256, locked, read_state,
                     storage_errors, verified_prefix)
from .stages import STAGES, RunState
from .trained import trained_flags

log = logging.getLogger(__name__)


def _loaders(recipe: Recipe, data_dir: Any, device: str) -> tuple[Any, Any, Any]:
    from ..data import make_loaders

    d = recipe.data
    train, test = make_loaders(d.name, data_dir, batch_size=d.batch_size, device=device,
                               train_subset=d.train_subset, test_subset=d.test_subset,
                               seed=recipe.seed, augment=d.augment)
    calib = take_batches(train, d.calib_batches)
    return train, test, calib


def _initial_model(recipe: Recipe) -> torch.nn.Module:
    from ..export import load
    from ..models import create_model

    if recipe.model.checkpoint:
        return load(recipe.model.checkpoint)
    torch.manual_seed(recipe.seed)  # the same recipe always starts from the same weights
    return create_model(recipe.model.name, num_classes=recipe.model.num_classes, **recipe.model.kwargs)


#: onnxruntime passes of a small model take microseconds: time at least this many
ORT_MIN_RUNS = 200


def measure(state: RunState) -> dict:
    """Accuracy, size and speed of the current model.

    Latency, CPU, 1 thread, batch 1 (the example input), medians: ``latency_ms`` in eager
    PyTorch and ``onnx_latency_ms`` in onnxruntime (CPU execution provider, full graph
    optimisation; None, with a warning, when the model does not export to ONNX);
    ``layer_latency_ms`` per leaf module in eager PyTorch; ``latency_setup`` says how.
    After the run's baseline (see :func:`_baseline_row`), ``vs_baseline`` is the accuracy
    change against it on the same test images, with a confidence interval and McNemar's p
    (:func:`edgeslim.train.paired_accuracy_change`).
    """
    from ..profile import profile
    from ..train import correct_mask, paired_accuracy_change

    model = state.model
    state.correct = correct_mask(model.to(state.device), state.test)
    acc = int(state.correct.sum()) / state.correct.numel()
    prof = profile(model.cpu().eval(), state.example.cpu(), latency=True, threads=1,
                   runs=state.recipe.latency_runs, warmup=5)
    row = {"accuracy": acc} | {k: prof[k] for k in ("params", "nonzero_params", "flops", "macs",
                                                     "bytes", "latency_ms", "latency_p90_ms")}
    row["onnx_latency_ms"] = _onnx_latency(model, state)
    row["latency_setup"] = _latency_setup(state)
    row["layer_latency_ms"] = _layer_latency(model, state)
    row["stored_bytes"] = _stored_bytes(model, row)
    if state.quantized is not None:
        row["int8_accuracy"] = state.quantized.evaluate(state.test)
        row["int8_latency_ms"] = state.quantized.latency(threads=1)
    if state.baseline_correct is not None:
        row["vs_baseline"] = state.baseline | paired_accuracy_change(state.baseline_correct, state.correct)
    return row


def _onnx_latency(model: torch.nn.Module, state: RunState) -> float | None:
    from ..profile.runtimes import measure_latency

    runs = max(ORT_MIN_RUNS, state.recipe.latency_runs)
    try:
        return measure_latency(model.cpu().eval(), state.example.cpu(), runtime="onnxruntime", threads=1,
                               runs=runs, warmup=20)
    except Exception as exc:  # a metric, not a stage: the export stage reports export failures
        log.warning("onnxruntime latency not measured (%s: %s)", type(exc).__name__, exc)
        return None


def _latency_setup(state: RunState) -> dict:
    """How every latency of :func:`measure` is taken, stated in the report beside the numbers."""
    from ..profile.runtimes import cpu_model, get_runtime

    try:
        ort_version = get_runtime("onnxruntime").version()
    except Exception:  # onnxruntime missing: onnx_latency_ms is None anyway
        ort_version = None
    return {"batch": int(state.example.shape[0]), "threads": 1, "runs": state.recipe.latency_runs,
            "onnx_runs": max(ORT_MIN_RUNS, state.recipe.latency_runs), "statistic": "median",
            "onnxruntime_version": ort_version, "torch_version": torch.__version__, "cpu": cpu_model()}


#: per-layer eager timing of each stage's model: about this many seconds at most (3 to 20 passes)
LAYER_TIMING_BUDGET_S = 0.5


def _layer_latency(model: torch.nn.Module, state: RunState) -> dict | None:
    """Eager-PyTorch ms per leaf module (1 thread, the example batch), with a bounded pass count."""
    from ..report import per_layer_latency

    model, x = model.cpu().eval(), state.example.cpu()
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(x)
        runs = int(min(20, max(3, LAYER_TIMING_BUDGET_S / max(time.perf_counter() - t0, 1e-6))))
        return per_layer_latency(model, x, threads=1, runs=runs, warmup=2)
    except Exception as exc:  # a metric, not a stage
        log.warning("per-layer latency not measured (%s: %s)", type(exc).__name__, exc)
        return None


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


def check_inputs(recipe: Recipe) -> None:
    """What parsing cannot check without the model zoo and registries: names and input files.

    Runs before the run directory is touched, so a typo fails in a second, not after hours.
    """
    from ..distill.losses import parse_loss_spec
    from ..models.factory import MODELS
    from ..prune import IMPORTANCES

    if recipe.model.checkpoint:
        if not Path(recipe.model.checkpoint).is_file():
            raise ConfigError(f"model.checkpoint {recipe.model.checkpoint} does not exist; check the path")
    else:
        MODELS.get(recipe.model.name)  # RegistryError naming the closest model
    for i, stage in enumerate(recipe.stages):
        where, cfg = f"stages[{i}].{stage.kind}", stage.config
        try:
            if stage.kind == "load" and not Path(cfg.path).is_file():
                raise ConfigError(f"path {cfg.path} does not exist; check the path")
            if stage.kind == "distill":
                parse_loss_spec(cfg.losses)
            if stage.kind == "prune" and cfg.method != "unstructured":
                IMPORTANCES.get(cfg.criterion)
        except (ConfigError, RegistryError) as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _load_state(run_dir: Path, recipe: Recipe, resume: bool) -> dict:
    """The saved state (verified against the disk), or a fresh one; raises when it may not be used."""
    if not (run_dir / STATE).exists():
        return {"schema_version": SCHEMA_VERSION, "recipe": recipe.to_dict(), "completed": []}
    state = read_state(run_dir)
    _check_same_recipe(run_dir, state, recipe)
    good, problem = verified_prefix(run_dir, state)
    if problem is not None:
        redo = "the run's input model" if good == 0 else f"stage {good} ({state['completed'][good]['stage']})"
        if not resume:
            raise ConfigError(f"{run_dir}: {problem}; pass --resume to redo the run from {redo} on, "
                              "or choose another --out")
        log.warning("%s; redoing the run from %s on", problem, redo)
        del state["completed"][good:]
        if state.get("teacher") and state["teacher"]["stage"] + 1 >= good:
            del state["teacher"]
    if not _finished(state, recipe) and not resume:
        raise ConfigError(f"{run_dir} holds an unfinished run ({max(len(state['completed']) - 1, 0)} of "
                          f"{len(recipe.stages)} stages); pass --resume to continue it or choose another --out")
    return state


def _check_same_recipe(run_dir: Path, state: dict, recipe: Recipe) -> None:
    """Refuse a run directory of another recipe, naming the first key that changed.

    The saved recipe is parsed again by this edgeslim (fields added since take their
    defaults, renamed keys their new names), so a run started by an older version
    resumes; on success the state records the current recipe and schema version.
    """
    new = recipe.to_dict()
    if state["recipe"] != new:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EdgeslimDeprecationWarning)
            try:
                old = parse_recipe(state["recipe"], where=f"{run_dir / STATE} recipe").to_dict()
            except ConfigError as exc:
                raise ConfigError(f"{run_dir} holds a run of a different recipe, which this edgeslim "
                                  f"cannot read ({exc}); choose another --out") from None
        changed = first_difference(old, new)
        if changed is not None:
            key, was, now = changed
            raise ConfigError(f"{run_dir} holds a run of a different recipe: {key} changed from {was!r} to "
                              f"{now!r}. Set it back to resume that run, or choose another --out "
                              "(nothing there is overwritten)")
    state["recipe"], state["schema_version"] = new, SCHEMA_VERSION


_MISSING = "<absent>"


def first_difference(a: Any, b: Any, key: str = "recipe") -> tuple[str, Any, Any] | None:
    """The first dotted key at which plain data ``a`` and ``b`` differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            found = first_difference(a.get(k, _MISSING), b.get(k, _MISSING), f"{key}.{k}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            found = first_difference(a[i] if i < len(a) else _MISSING, b[i] if i < len(b) else _MISSING,
                                     f"{key}[{i}]")
            if found:
                return found
        return None
    return None if a == b else (key, a, b)


def _finished(saved: dict, recipe: Recipe) -> bool:
    return len(saved["completed"]) == len(recipe.stages) + 1  # +1: the input model's row


def run_recipe(recipe: Recipe, run_dir: str | Path, *, data_dir: Any = None, resume: bool = False,
               device: str | None = None, progress: bool = True,
               on_stage: Callable[[int, str, dict], None] | None = None) -> dict:
    """Run (or resume, or re-report) ``recipe`` in ``run_dir``; returns the state dict.

    Nothing in ``run_dir`` is changed before its lock is held and its state is
    found to belong to ``recipe``. A finished run is only re-reported (and its
    final model re-written from the last stage's if that file is missing).

    Raises:
        RunDirError: another run holds ``run_dir``, its disk is full or read-only,
            or its ``state.json`` is corrupt.
        ConfigError: ``run_dir`` holds another recipe, an unfinished or damaged
            run (without ``resume``), or the recipe names a missing file/model.
    """
    run_dir = Path(run_dir)
    check_inputs(recipe)
    device = _resolve_device(device or recipe.device)
    with storage_errors(run_dir), locked(run_dir):
        saved = _load_state(run_dir, recipe, resume)
        clean_temp_files(run_dir)
        _write_recipe(recipe, run_dir / "recipe.yaml")  # only now: the lock is held, the state is ours
        if not _finished(saved, recipe):
            _run_stages(recipe, run_dir, saved, data_dir, device, progress, on_stage)
        _write_final(run_dir, saved)
        write_run_report(run_dir, saved)
        return saved


def _check_fits_data(model: torch.nn.Module, example: torch.Tensor, recipe: Recipe) -> None:
    """The model runs on the dataset's images (one clear error, before any stage, otherwise)."""
    from .._checks import check_model_and_inputs, run_checked

    what = f"recipe {recipe.name!r}: model {recipe.model.name!r} on dataset {recipe.data.name!r}"
    check_model_and_inputs(model, (example,), what)
    with torch.no_grad():
        run_checked(lambda: model.eval()(example), model, (example,), what)


def _start(recipe: Recipe, run_dir: Path, saved: dict, data_dir: Any, device: str,
           progress: bool) -> RunState:
    from ..export import load

    train, test, calib = _loaders(recipe, data_dir, device)
    example = next(iter(test))[0][:1].cpu()
    model = load(run_dir / saved["completed"][-1]["model"]) if saved["completed"] else _initial_model(recipe)
    teacher = load(run_dir / TEACHER) if _has_teacher(run_dir, saved) else None
    _check_fits_data(model, example, recipe)
    state = RunState(recipe, run_dir, device, train, test, calib, example, model,
                     teacher=teacher, progress=progress)
    if not saved["completed"]:
        saved["completed"].append(_record(state, -1, "input", measure(state), 0.0))
        atomic_write_json(run_dir / STATE, saved)
    _restore_baseline(state, saved)
    _restore_quantized(state, saved)
    return state


def _baseline_row(recipe: Recipe) -> int:
    """The row of ``state.json``'s completed list the report's ratios start at: the trained model
    when the recipe starts by training (an untrained input is no baseline), else the input."""
    return 1 if recipe.stages and recipe.stages[0].kind == "train" else 0


def _set_baseline(state: RunState, saved: dict) -> None:
    """After the baseline row is recorded: its correctness mask is the reference of later rows."""
    if len(saved["completed"]) - 1 == _baseline_row(state.recipe):
        state.baseline_correct, state.baseline = state.correct, _baseline_id(saved["completed"][-1])


def _restore_baseline(state: RunState, saved: dict) -> None:
    """The baseline's mask on a resumed run: from the model just measured, or its saved file."""
    from ..export import load
    from ..train import correct_mask

    row = _baseline_row(state.recipe)
    if row == len(saved["completed"]) - 1 and state.correct is not None:
        _set_baseline(state, saved)
    elif row < len(saved["completed"]):
        entry = saved["completed"][row]
        model = load(state.run_dir / entry["model"]).to(state.device)
        state.baseline_correct, state.baseline = correct_mask(model, state.test), _baseline_id(entry)


def _baseline_id(entry: dict) -> dict:
    return {"stage": entry["stage"], "index": entry["index"]}


def _has_teacher(run_dir: Path, saved: dict) -> bool:
    if "teacher" in saved:
        return True
    # a state.json written before stage hashes were recorded: trust the file as before
    legacy = not any("sha256" in e for e in saved["completed"])
    return legacy and len(saved["completed"]) > 1 and (run_dir / TEACHER).exists()


def _run_stages(recipe: Recipe, run_dir: Path, saved: dict, data_dir: Any, device: str, progress: bool,
                on_stage: Callable[[int, str, dict], None] | None) -> None:
    """Run the stages not yet completed. Each stage writes its files first and state.json last,
    so state.json never lists a stage whose model (or the teacher) is not on disk."""
    from ..export import save

    state = _start(recipe, run_dir, saved, data_dir, device, progress)
    for i in range(len(saved["completed"]) - 1, len(recipe.stages)):
        stage = recipe.stages[i]
        state.stage_dir = run_dir / "stages" / f"{i:02d}-{stage.kind}"
        torch.manual_seed(recipe.seed + i)
        t0 = time.perf_counter()
        had_teacher, state.stage_metrics = state.teacher is not None, {}
        STAGES.get(stage.kind)(state, stage.config)
        if state.teacher is not None and not had_teacher:
            save(state.teacher, run_dir / TEACHER)
            saved["teacher"] = {"sha256": file_sha256(run_dir / TEACHER), "stage": i}
        metrics = measure(state) | state.stage_metrics
        collapsed = _collapse_warning(state, i, stage.kind, saved["completed"][-1]["metrics"]["accuracy"],
                                      metrics["accuracy"], stage.config)
        if collapsed is not None:
            log.warning("%s", collapsed)
            metrics["warnings"] = [collapsed]  # the report shows them too
        saved["completed"].append(_record(state, i, stage.kind, metrics, time.perf_counter() - t0))
        atomic_write_json(run_dir / STATE, saved)
        _set_baseline(state, saved)
        if on_stage:
            on_stage(i, stage.kind, saved["completed"][-1]["metrics"])


#: stages that may leave a model at chance accuracy by design (a fresh, untrained student)
_UNTRAINED_BY_DESIGN = frozenset({"lighten"})


def _collapse_warning(state: RunState, index: int, kind: str, before: float | None,
                      after: float | None, config: Any = None) -> str | None:
    """The warning for a stage that took a model from well above chance down to chance (else None).

    Training that diverges without a NaN (every ReLU dead after a too-large step, a
    fine-tuning learning rate or distillation loss scaled too high for a network without
    BN) ends at 1/classes: the run goes on, so the warning says which stage did it. When the
    stage trained by distillation (``config``: a distill stage, or kd fine-tuning / retraining),
    it says that kd needs a lower learning rate than cross-entropy.
    """
    if kind in _UNTRAINED_BY_DESIGN or before is None or after is None or after >= before:
        return None
    classes = _num_classes(state)
    if classes is None or classes < 2:
        return None
    chance = 1.0 / classes  # a collapsed model predicts one class: about 1/classes on balanced data
    low, high = min(1.5 * chance, chance + 0.1), min(3 * chance, chance + 0.5 * (1 - chance))
    if before < high or after > low:
        return None
    return (f"stage {index + 1} ({kind}) left the model at chance accuracy ({100 * after:.2f}%, from "
            f"{100 * before:.2f}%; {classes} classes): its training collapsed (a learning rate too high "
            "for this model, e.g. lr / finetune_lr) or it removed too much at once (prune less per "
            f"step); later stages start from this model{_KD_HINT if _trains_by_kd(kind, config) else ''}")


#: measured on the prune + merge recipe's BN-free merged LeNet-5 after filter pruning, lr 0.05: the
#: kd loss went 10.7 -> 96 in three steps (gradient norm 17 -> 263) and every ReLU died, where
#: cross-entropy at the same lr trained it to 99.2% in one epoch (on 20k images)
_KD_HINT = (". This stage trained by distillation: while the student's logits are far from the "
            "teacher's, the kd loss (KL x T^2) takes much larger steps than cross-entropy at the same "
            "learning rate, so kd usually needs a lower one (halve it, or fine-tune plain)")


def _trains_by_kd(kind: str, config: Any) -> bool:
    if kind == "distill":  # unless its losses have no soft-target term (e.g. "ce:1.0")
        return "kd" in str(getattr(config, "losses", "kd"))
    return any(getattr(config, field, None) == "kd" for field in ("finetune", "mode", "retrain"))


def _num_classes(state: RunState) -> int | None:
    """The model's number of outputs on the example input (None: not a [N, classes] tensor)."""
    param = next(state.model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with eval_mode(state.model, no_grad=True) as model:
        try:
            out = model(state.example.to(device))
        except Exception:  # a model the stage's metrics ran but this call cannot: no warning then
            return None
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def _write_final(run_dir: Path, saved: dict) -> None:
    """``model.safetensors``: a copy of the last stage's model, unless it is already exactly that."""
    last = saved["completed"][-1]
    final, sha = run_dir / FINAL, last.get("sha256")
    if check_file(final, sha) is None:  # without a recorded hash: if it exists
        return
    source = run_dir / last["model"]
    with open(source, "rb") as src:
        atomic_write_with(final, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))
    problem = check_file(final, sha)
    if problem:
        raise RunDirError(f"{problem} right after it was copied from {source}; the disk is failing "
                          "or another program writes there. Choose another --out")


def _record(state: RunState, index: int, kind: str, metrics: dict, wall: float) -> dict:
    from ..export import save

    name = "stages/input" if index < 0 else f"stages/{index:02d}-{kind}"
    path = state.run_dir / name / "model.safetensors"
    save(state.model, path)
    entry = {"index": index, "stage": kind, "model": f"{name}/model.safetensors", "sha256": file_sha256(path),
             "trained": trained_flags(state.recipe)[index + 1],  # the rule: pipeline/trained.py
             "metrics": metrics | {"wall_s": wall}, "artifacts": _jsonable(state.artifacts)}
    atomic_write_json(path.parent / "metrics.json", entry)
    return entry


def _jsonable(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, type(None), dict, list))}


def _restore_quantized(state: RunState, saved: dict) -> None:
    for entry in saved["completed"]:
        name = entry.get("artifacts", {}).get("int8_onnx")
        if name and (state.run_dir / Path(name).name).is_file():
            from ..quant import QuantizedModel

            state.quantized = QuantizedModel(str(state.run_dir / Path(name).name), example_inputs=state.example)


def _write_recipe(recipe: Recipe, path: Path) -> None:
    """The resolved recipe as YAML, written only when it differs from what is there."""
    import yaml

    text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    if not (path.is_file() and path.read_text(encoding="utf-8", errors="replace") == text):
        atomic_write_text(path, text)


def _saved_trained_flags(saved: dict) -> list[bool | None]:
    """:func:`trained_flags` of the saved recipe, one per completed row (None where unknown)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EdgeslimDeprecationWarning)
        try:
            flags: list[bool | None] = list(trained_flags(parse_recipe(saved["recipe"])))
        except ConfigError:
            flags = []
    return flags + [None] * (len(saved["completed"]) - len(flags))


def write_run_report(run_dir: Path, saved: dict) -> dict:
    """(Re)write report.md/html of a run from its state.json contents."""
    from ..report import write_report

    entries = [e if "trained" in e else e | {"trained": flag}  # a state.json from before the flag
               for e, flag in zip(saved["completed"], _saved_trained_flags(saved))]
    if len(entries) > 1 and entries[1]["stage"] == "train":
        entries = entries[1:]  # an untrained input is no baseline: ratios start at the trained model
    rows = [{"stage": e["stage"], "trained": e["trained"], "model_sha256": e.get("sha256")} | e["metrics"]
            for e in entries]
    artifacts: dict = {}
    for e in saved["completed"]:
        artifacts |= e.get("artifacts", {})
    return write_report(run_dir, rows, title=f"edgeslim: {saved['recipe']['name']}",
                        layer_latency=artifacts.get("layer_latency"))
