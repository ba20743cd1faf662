"""Recipes: validation errors, a tiny end-to-end run, exact resume, re-run no-op, report files."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from edgeslim.errors import ConfigError
from edgeslim.pipeline import load_recipe, parse_recipe, run_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _tiny(stages: list, **data) -> dict:
    return {"name": "tiny", "model": {"name": "lenet5"}, "device": "cpu", "latency_runs": 3,
            "data": {"name": "mnist", "batch_size": 128, "train_subset": 512, "test_subset": 256,
                     "calib_batches": 2} | data,
            "stages": stages}


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("stages, message", [
    ([{"prunee": {}}], "Did you mean 'prune'"),
    ([{"prune": {"ratoi": 0.5}}], "Did you mean 'ratio'"),
    ([{"prune": {"ratio": 1.5}}], "ratio=1.5"),
    ([{"prune": {"ratio": 0.5, "target_flops": 0.5}}], "exactly one of"),
    ([{"prune": {"method": "unstructured"}}], "sparsity"),
    ([{"prune": {"method": "unstructured", "sparsity": 0.5, "target_nonzero": 100}}], "exactly one of sparsity, "
                                                                                      "target_nonzero"),
    ([{"prune": {"method": "unstructured", "target_nonzero": 0.5}}], "target_nonzero: expected Optional[int]"),
    ([{"train": {"epochs": -1}}], "epochs=-1"),
    ([{"distill": {}}], "needs a teacher"),
    ([{"quantize": {}}, {"prune": {"ratio": 0.3}}], "cannot follow 'quantize'"),
    ([{"lighten": {}}, {"train": {}}], "must come before"),
    ([{"train": {"optimizer": "adam"}}], "optimizer"),
    ([], "stages"),
])
def test_recipe_validation_errors(stages: list, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_recipe(_tiny(stages))


def test_unknown_top_level_key_is_named() -> None:
    data = _tiny([{"train": {}}]) | {"modle": {}}
    with pytest.raises(ConfigError, match="Did you mean 'model'"):
        parse_recipe(data)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_parse(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.stages and recipe.name


def test_missing_recipe_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


# ------------------------------------------------------------------ end to end
STAGES = [{"train": {"epochs": 2, "lr": 0.05}},
          {"prune": {"ratio": 0.4, "steps": 1, "finetune": "plain", "finetune_epochs": 1}},
          {"export": {}}]


def _final(state: dict) -> dict:
    m = state["completed"][-1]["metrics"]
    return {k: m[k] for k in ("accuracy", "params", "flops", "nonzero_params")}


def test_tiny_recipe_end_to_end_and_rerun_is_noop(data_dir: Path, tmp_path: Path) -> None:
    recipe = parse_recipe(_tiny(STAGES))
    out = tmp_path / "run"
    state = run_recipe(recipe, out, data_dir=data_dir, progress=False)
    rows = state["completed"]
    assert [r["stage"] for r in rows] == ["input", "train", "prune", "export"]
    assert rows[1]["metrics"]["accuracy"] > 0.25  # 8 steps of SGD: well above chance (0.10)
    assert rows[2]["metrics"]["params"] < rows[1]["metrics"]["params"]
    assert rows[2]["metrics"]["flops"] < rows[1]["metrics"]["flops"]
    assert all(r["metrics"]["onnx_latency_ms"] > 0 for r in rows)  # onnxruntime, 1 thread, batch 1
    # the paired accuracy change against the trained model (the report's baseline), after it only
    assert "vs_baseline" not in rows[0]["metrics"] and "vs_baseline" not in rows[1]["metrics"]
    for r in rows[2:]:
        v, acc = r["metrics"]["vs_baseline"], r["metrics"]["accuracy"]
        assert (v["stage"], v["index"], v["n"]) == ("train", 0, 256)
        assert v["change_pts"] == pytest.approx(100 * (acc - rows[1]["metrics"]["accuracy"]), abs=1e-9)
        assert v["change_pts"] == pytest.approx(100 * (v["gained"] - v["lost"]) / 256, abs=1e-9)
        assert v["ci_pts"][0] <= v["change_pts"] <= v["ci_pts"][1]
    report = (out / "report.md").read_text()
    assert "## Accuracy against the baseline" in report and "McNemar p" in report
    assert "onnxruntime ms" in report and "onnxruntime ×" in report and "1 thread, batch 1" in report
    for name in ("model.safetensors", "model.onnx", "report.md", "report.html", "deploy.md",
                 "state.json", "recipe.yaml", "teacher.safetensors"):
        assert (out / name).is_file(), name
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text()):
        assert (out / image).is_file(), image
    stamp = (out / "state.json").stat().st_mtime_ns
    again = run_recipe(recipe, out, data_dir=data_dir, progress=False)  # finished: only re-reports
    assert again == json.loads((out / "state.json").read_text())
    assert (out / "state.json").stat().st_mtime_ns == stamp


def _interrupt_at_step(step: int, recipe, out: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``recipe`` into ``out`` until a KeyboardInterrupt at its ``step``-th optimiser step."""
    from edgeslim.train.engine import Trainer

    original, calls = Trainer._optimise, {"n": 0}

    def crash(self, loss):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return original(self, loss)

    monkeypatch.setattr(Trainer, "_optimise", crash)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, out, data_dir=data_dir, progress=False)
    monkeypatch.setattr(Trainer, "_optimise", original)


def test_a_run_resumed_after_its_baseline_compares_with_the_saved_baseline(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted in the prune stage, the resumed process gets the baseline's per-image
    correctness from the saved trained model: the same paired comparison as a straight run."""
    recipe = parse_recipe(_tiny(STAGES))
    straight = run_recipe(recipe, tmp_path / "a", data_dir=data_dir, progress=False)
    _interrupt_at_step(10, recipe, tmp_path / "b", data_dir, monkeypatch)  # train: 8 steps; then prune
    assert [r["stage"] for r in json.loads((tmp_path / "b" / "state.json").read_text())["completed"]] == [
        "input", "train"]
    resumed = run_recipe(recipe, tmp_path / "b", data_dir=data_dir, resume=True, progress=False)
    for a, b in zip(straight["completed"][2:], resumed["completed"][2:], strict=True):
        assert b["metrics"]["vs_baseline"] == a["metrics"]["vs_baseline"]


def test_interrupted_run_resumes_to_the_same_result(data_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = parse_recipe(_tiny(STAGES))
    straight = run_recipe(recipe, tmp_path / "a", data_dir=data_dir, progress=False)
    _interrupt_at_step(6, recipe, tmp_path / "b", data_dir, monkeypatch)  # 4 steps an epoch: in epoch 2
    assert (tmp_path / "b" / "stages" / "00-train" / "train" / "last.pt").is_file()
    with pytest.raises(ConfigError, match="--resume"):
        run_recipe(recipe, tmp_path / "b", data_dir=data_dir, progress=False)
    resumed = run_recipe(recipe, tmp_path / "b", data_dir=data_dir, resume=True, progress=False)
    assert _final(resumed) == _final(straight)
    from edgeslim.export import load

    a, b = load(tmp_path / "a" / "model.safetensors"), load(tmp_path / "b" / "model.safetensors")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_other_recipe_in_same_run_dir_is_refused(data_dir: Path, tmp_path: Path) -> None:
    run_recipe(parse_recipe(_tiny([{"train": {"epochs": 1}}])), tmp_path, data_dir=data_dir, progress=False)
    with pytest.raises(ConfigError, match="different recipe"):
        run_recipe(parse_recipe(_tiny([{"train": {"epochs": 2}}])), tmp_path, data_dir=data_dir,
                   progress=False)


# ------------------------------------------------------------------ bounded recipe files
def _recipe_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_alias_bomb_in_model_kwargs_is_refused_at_once(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 8)]
    text = ("name: bomb\nmodel:\n  name: lenet5\n  kwargs:\n" + "".join(f"    {x}\n" for x in levels)
            + "stages:\n  - train: {}\n")
    assert len(text) < 600
    with pytest.raises(ConfigError, match=r"r\.yaml:\d+:\d+: .*aliases"):
        load_recipe(_recipe_file(tmp_path, text))


def test_duplicate_key_in_recipe_names_key_and_line(tmp_path: Path) -> None:
    path = _recipe_file(tmp_path, "name: d\nstages:\n  - train: {epochs: 1, epochs: 2}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:3:\d+: duplicate key 'epochs'"):
        load_recipe(path)


def test_huge_recipe_file_is_refused_before_parsing(tmp_path: Path) -> None:
    text = "name: big\nstages:\n" + "  - lighten: {}\n" * 70_000  # 1.1 MB
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_recipe(_recipe_file(tmp_path, text))


def test_stage_count_is_capped(tmp_path: Path) -> None:
    ok = load_recipe(_recipe_file(tmp_path, "name: many\nstages:\n" + "  - profile: {}\n" * 1000))
    assert len(ok.stages) == 1000
    with pytest.raises(ConfigError, match="1001 stages; a recipe may have at most 1000"):
        load_recipe(_recipe_file(tmp_path, "name: many\nstages:\n" + "  - profile: {}\n" * 1001))


# ------------------------------------------------------------------ values checked before any stage runs
@pytest.mark.parametrize("stages, top, message", [
    ([{"train": {}}, {"lighten": {}}, {"distill": {"T": 0}}], {}, "stages[2].distill.T=0.0 is invalid"),
    ([{"train": {}}, {"finetune": {"T": -2}}], {}, "stages[1].finetune.T=-2.0"),
    ([{"train": {}}, {"prune": {"ratio": 0.3, "finetune_lr": float("nan")}}], {}, "finetune_lr=nan"),
    ([{"train": {"lr": float("inf")}}], {}, "lr=inf"),
    ([{"train": {}}, {"finetune": {"lr": -1}}], {}, "stages[1].finetune.lr=-1.0"),
    ([{"train": {"lr": 1e30}}], {}, "lr=1e+30 is invalid: it must be a finite number in (0, 10]"),
    ([{"train": {"lr": "1e30"}}], {}, "lr=1e+30"),
    ([{"train": {}}, {"prune": {"ratio": 0.3, "steps": 0}}], {}, "stages[1].prune.steps=0"),
    ([{"train": {}}, {"prune": {"ratio": 0.3, "round_to": 0}}], {}, "stages[1].prune.round_to=0"),
    ([{"train": {"epochs": 1, "warmup_epochs": 2}}], {}, "warmup_epochs=2.0 is longer than epochs=1"),
    ([{"train": {"weight_decay": -0.1}}], {}, "weight_decay=-0.1"),
    ([{"profile": {"runs": 0}}], {}, "profile.runs=0"),
    ([{"load": {}}], {}, "path is empty"),
    ([{"train": {}}], {"seed": -1}, "recipe.seed=-1 is invalid"),
    ([{"train": {}}], {"latency_runs": 0}, "latency_runs=0"),
    ([{"train": {}}], {"name": "../../x"}, "recipe.name='../../x' is invalid"),
    ([{"train": {}}], {"name": ".hidden"}, "name='.hidden'"),
    ([{"train": {}}], {"name": "a/b"}, "name='a/b'"),
    ([{"train": {}}], {"name": ""}, "name=''"),
])
def test_bad_values_fail_at_parse_time(stages: list, top: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_recipe(_tiny(stages) | top)


def test_bad_data_and_model_sizes_fail_at_parse_time() -> None:
    with pytest.raises(ConfigError, match=re.escape("recipe.data.batch_size=0")):
        parse_recipe(_tiny([{"train": {}}], batch_size=0))
    with pytest.raises(ConfigError, match=re.escape("recipe.model.num_classes=0")):
        parse_recipe(_tiny([{"train": {}}]) | {"model": {"name": "lenet5", "num_classes": 0}})


def test_data_augment_takes_a_switch_or_a_policy_name() -> None:
    for value in (True, False, "shift", "crop_flip"):
        assert parse_recipe(_tiny([{"train": {}}]) | {"data": {"name": "mnist", "augment": value}}
                            ).data.augment == value
    with pytest.raises(ConfigError, match=r"augment='shfit' is invalid\. Did you mean 'shift'"):
        parse_recipe(_tiny([{"train": {}}]) | {"data": {"name": "mnist", "augment": "shfit"}})


def test_training_stages_take_their_own_augment() -> None:
    recipe = parse_recipe(_tiny([{"train": {"augment": "shift"}}, {"lighten": {}},
                                 {"distill": {"augment": False}}]))
    assert recipe.stages[0].config.augment == "shift" and recipe.stages[2].config.augment is False
    assert recipe.data.augment is None  # the data's own is untouched
    with pytest.raises(ConfigError, match=r"augment='shfit' is invalid\. Did you mean 'shift'"):
        parse_recipe(_tiny([{"train": {"augment": "shfit"}}]))


def test_plain_names_and_usual_values_still_parse() -> None:
    recipe = parse_recipe(_tiny([{"train": {"lr": 1e-3, "warmup_epochs": 1}},
                                 {"prune": {"ratio": 0.5, "steps": 2, "round_to": 8}}]) | {"name": "kt-v1.2_x"})
    assert recipe.name == "kt-v1.2_x" and recipe.stages[1].config.round_to == 8


# ------------------------------------------------------------------ run directory: lock, state, errors
from tinydata import tiny_recipe  # noqa: E402  (tests/ is on sys.path)

from edgeslim.errors import RunDirError  # noqa: E402


@pytest.fixture(scope="module")
def finished_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    run_recipe(parse_recipe(tiny_recipe(tiny_data)), out, progress=False)
    return out


def _copy_run(finished_run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_stage_augment_applies_to_that_stage_only(tiny_data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeslim.train import Trainer

    seen: list[str] = []
    fit = Trainer.fit

    def spy(self, train_loader, val_loader=None):
        seen.append(train_loader.augment)
        return fit(self, train_loader, val_loader)

    monkeypatch.setattr(Trainer, "fit", spy)
    stages = [{"train": {"epochs": 1, "augment": "shift"}},
              {"prune": {"remove_channels": 0.3, "finetune": "none"}},
              {"distill": {"epochs": 1, "losses": "ce:1.0", "augment": "crop"}},
              {"finetune": {"epochs": 1}}]
    recipe = parse_recipe(tiny_recipe(tiny_data, stages) | {"data": {
        "name": str(tiny_data), "batch_size": 8, "calib_batches": 1, "augment": "flip"}})
    run_recipe(recipe, tmp_path / "run", progress=False)
    assert seen == ["shift", "crop", "flip"]  # train, distill, then the data's own again


def test_second_run_into_a_busy_run_dir_is_refused_and_changes_nothing(tiny_data: Path,
                                                                       tmp_path: Path) -> None:
    out, seen = tmp_path / "run", {}
    other = parse_recipe(tiny_recipe(tiny_data, [{"train": {"epochs": 1}}]))

    def second_run(i: int, kind: str, metrics: dict) -> None:
        if i == 0:
            before = _files(out)
            with pytest.raises(RunDirError) as exc:
                run_recipe(other, out, progress=False)
            seen["message"], seen["unchanged"] = str(exc.value), _files(out) == before

    run_recipe(parse_recipe(tiny_recipe(tiny_data)), out, progress=False, on_stage=second_run)
    assert str(out) in seen["message"] and "another edgeslim run" in seen["message"]
    assert seen["unchanged"]
    assert "epochs: 2" in (out / "recipe.yaml").read_text()  # the first run's recipe, not the other's
    with pytest.raises(ConfigError, match="different recipe"):  # the lock is free again
        run_recipe(other, out, progress=False)


def test_finished_run_whose_final_model_is_missing_writes_it_again(finished_run: Path, tiny_data: Path,
                                                                   tmp_path: Path) -> None:
    run = _copy_run(finished_run, tmp_path)
    (run / "model.safetensors").unlink()
    (run / "report.md").unlink()
    run_recipe(parse_recipe(tiny_recipe(tiny_data)), run, progress=False)
    assert (run / "model.safetensors").read_bytes() == (finished_run / "model.safetensors").read_bytes()
    assert (run / "report.md").is_file()


def test_changed_stage_model_is_not_trusted(finished_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    run = _copy_run(finished_run, tmp_path)
    recipe = parse_recipe(tiny_recipe(tiny_data))
    with open(run / "stages" / "00-train" / "model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    (run / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"00-train/model.safetensors changed since it was written.*--resume"):
        run_recipe(recipe, run, progress=False)
    assert not (run / "model.safetensors").exists()
    run_recipe(recipe, run, resume=True, progress=False)
    assert (run / "model.safetensors").read_bytes() == (finished_run / "model.safetensors").read_bytes()


def test_missing_teacher_is_not_replaced_by_the_current_model(tiny_data: Path, tmp_path: Path) -> None:
    stages = [{"train": {"epochs": 1}}, {"lighten": {}}, {"finetune": {"mode": "kd", "epochs": 1}}]
    recipe = parse_recipe(tiny_recipe(tiny_data, stages))
    run_recipe(recipe, tmp_path / "a", progress=False)
    straight = (tmp_path / "a" / "model.safetensors").read_bytes()
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    del state["completed"][-1]  # as if killed before the kd stage finished ...
    (tmp_path / "a" / "state.json").write_text(json.dumps(state))
    (tmp_path / "a" / "teacher.safetensors").unlink()  # ... and the teacher was lost
    run_recipe(recipe, tmp_path / "a", resume=True, progress=False)
    # lighten was redone, so the kd stage learnt from the trained model again, not from its own input
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == straight


def test_stale_temp_files_are_removed(finished_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    run = _copy_run(finished_run, tmp_path)
    stale = [run / ".model.safetensors.k3j_x9q2.tmp", run / ".model.onnx.abcdefgh.onnx",
             run / "stages" / "00-train" / "train" / ".last.pt.0a1b2c3d.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (run / ".keep").write_text("not ours")
    run_recipe(parse_recipe(tiny_recipe(tiny_data)), run, progress=False)
    assert not any(p.exists() for p in stale) and (run / ".keep").exists()


@pytest.mark.parametrize("text, message", [
    ('{"recipe": {}, "completed": [', "is corrupt (not JSON"),
    ("[]", "is not an edgeslim run state"),
    ('{"recipe": {}, "completed": [{"stage": "x", "model": "../../m", "metrics": {}}]}', "not a file inside"),
])
def test_corrupt_state_json_is_one_clear_error(text: str, message: str, finished_run: Path, tiny_data: Path,
                                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from edgeslim.cli import main

    run = _copy_run(finished_run, tmp_path)
    (run / "state.json").write_text(text)
    (run / "r.yaml").write_text(json.dumps(tiny_recipe(tiny_data)))
    before = _files(run)
    for argv in (["compress", str(run / "r.yaml"), "--out", str(run), "--resume"], ["report", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "state.json" in err and "Traceback" not in err
        assert "choose another --out" in err
    assert _files(run) == before


def test_disk_full_is_one_clear_error_without_partial_files(tiny_data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from edgeslim.export import bundle

    real, calls = bundle.save_file, []

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the train stage's model: half written, then the disk is full
            Path(filename).write_bytes(b"\x00" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(bundle, "save_file", full_disk)
    recipe, out = parse_recipe(tiny_recipe(tiny_data)), tmp_path / "run"
    with pytest.raises(RunDirError, match=r"the disk is full\. Free some space .* --resume"):
        run_recipe(recipe, out, progress=False)
    assert not [p for p in out.rglob(".*") if p.name != ".edgeslim.lock"]  # no temp file left
    assert [e["stage"] for e in json.loads((out / "state.json").read_text())["completed"]] == ["input"]
    monkeypatch.setattr(bundle, "save_file", real)
    run_recipe(recipe, out, resume=True, progress=False)
    assert (out / "model.safetensors").is_file()


def test_read_only_out_is_one_clear_error(tiny_data: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path, *args, **kwargs):  # a read-only mount under ro/ (chmod does not stop root)
        flags = args[0] if args else kwargs.get("flags", 0)
        if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    def refuse_mkdir(path, *args, **kwargs):
        if str(path).startswith(str(ro)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    monkeypatch.setattr(os, "mkdir", refuse_mkdir)
    recipe = parse_recipe(tiny_recipe(tiny_data))
    for out in (ro, ro / "run"):
        with pytest.raises(RunDirError, match="Read-only file system. Choose a --out on a writable disk"):
            run_recipe(recipe, out, progress=False)
    monkeypatch.undo()
    assert list(ro.iterdir()) == []


def test_out_below_a_file_is_one_clear_error(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file")
    with pytest.raises(RunDirError, match="is a file; choose another --out"):
        run_recipe(parse_recipe(tiny_recipe(tiny_data)), tmp_path / "f" / "run", progress=False)


@pytest.mark.parametrize("change, message", [
    ({"model": {"name": "lenet55"}}, "Did you mean 'lenet5'"),
    ({"model": {"name": "lenet5", "checkpoint": "/no/such.safetensors"}}, "does not exist"),
    ({"stages": [{"load": {"path": "/no/such.safetensors"}}]}, "stages[0].load: path /no/such"),
    ({"stages": [{"lighten": {}}, {"distill": {"losses": "kd:0.9,cee:0.1"}}]}, "stages[1].distill"),
    ({"stages": [{"prune": {"ratio": 0.3, "criterion": "l3"}}]}, "stages[0].prune"),
])
def test_names_and_input_files_are_checked_before_the_run_dir_is_made(change: dict, message: str,
                                                                      tiny_data: Path, tmp_path: Path) -> None:
    from edgeslim.registry import RegistryError

    recipe = parse_recipe(tiny_recipe(tiny_data) | change)
    with pytest.raises((ConfigError, RegistryError), match=re.escape(message)):
        run_recipe(recipe, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_onnx_latency_is_none_with_a_warning_when_the_model_does_not_export(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from edgeslim.models import create_model
    from edgeslim.pipeline import runner
    from edgeslim.profile import runtimes

    state = SimpleNamespace(recipe=SimpleNamespace(latency_runs=3), example=torch.randn(1, 1, 28, 28))
    model = create_model("lenet5")
    assert runner._onnx_latency(model, state) > 0

    def no_export(*args, **kwargs):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(runtimes, "measure_latency", no_export)
    with caplog.at_level("WARNING", logger="edgeslim.pipeline.runner"):
        assert runner._onnx_latency(model, state) is None
    assert "onnxruntime latency not measured" in caplog.text and "unsupported op" in caplog.text


@pytest.mark.parametrize("kind, before, after, classes, warned", [
    ("prune", 0.995, 0.101, 10, True),     # fine-tuning killed every ReLU: a constant prediction
    ("distill", 0.98, 0.09, 10, True),
    ("lighten", 0.99, 0.11, 10, False),    # a fresh student is untrained by design
    ("distill", 0.14, 0.11, 10, False),    # the stage after lighten starts at chance
    ("prune", 0.995, 0.90, 10, False),     # a loss, not a collapse
    ("train", 0.95, 0.52, 2, True),        # binary: chance is 0.5
    ("train", 0.70, 0.52, 2, False),
])
def test_a_stage_that_takes_the_model_to_chance_accuracy_is_named_in_a_warning(
        kind: str, before: float, after: float, classes: int, warned: bool) -> None:
    from edgeslim.models import create_model
    from edgeslim.pipeline import runner

    model = create_model("lenet5", num_classes=classes).train()
    state = SimpleNamespace(model=model, example=torch.randn(1, 1, 28, 28), device="cpu")
    message = runner._collapse_warning(state, 2, kind, before, after)
    assert (message is not None and message.startswith(f"stage 3 ({kind}) left the model at chance")) is warned
    assert message is None or ("by distillation" in message) is (kind == "distill")
    assert model.training  # the check ran the model in eval mode and put it back


@pytest.mark.parametrize("kind, config, kd", [
    ("prune", SimpleNamespace(finetune="kd"), True),
    ("prune", SimpleNamespace(finetune="plain"), False),
    ("finetune", SimpleNamespace(mode="kd"), True),
    ("merge", SimpleNamespace(retrain="kd"), True),
    ("merge", SimpleNamespace(retrain="plain"), False),
    ("distill", SimpleNamespace(losses="noisy_kd:0.9,hint:1.0,ce:0.1"), True),
    ("distill", SimpleNamespace(losses="ce:1.0"), False),
    ("train", None, False),
])
def test_a_collapse_under_kd_training_says_kd_needs_a_lower_learning_rate(kind, config, kd) -> None:
    from edgeslim.models import create_model
    from edgeslim.pipeline import runner

    state = SimpleNamespace(model=create_model("lenet5"), example=torch.randn(1, 1, 28, 28), device="cpu")
    message = runner._collapse_warning(state, 2, kind, 0.995, 0.101, config)
    assert message is not None and ("trained by distillation" in message) is kd


def test_a_collapsed_stage_is_logged_recorded_and_shown_in_the_report(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A fine-tune that kills the network (here: the classifier zeroed, a constant prediction)
    is named in the log, in state.json and in report.md; the run still finishes."""
    from edgeslim.pipeline import stages as stage_mod

    get = stage_mod.STAGES.get
    real = get("finetune")

    def collapse(state, cfg):
        real(state, cfg)
        head = [m for m in state.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)

    monkeypatch.setattr(stage_mod.STAGES, "get", lambda kind: stage_mod.StageType(real.config, collapse)
                        if kind == "finetune" else get(kind))
    recipe = parse_recipe(tiny_recipe(tiny_data, stages=[{"train": {"epochs": 3, "lr": 0.05}},
                                                          {"finetune": {"epochs": 1}}]))
    with caplog.at_level("WARNING", logger="edgeslim.pipeline.runner"):
        state = run_recipe(recipe, tmp_path / "run", progress=False)
    before, after = (r["metrics"] for r in state["completed"][1:3])
    assert before["accuracy"] >= 0.75 and after["accuracy"] <= 0.6, (before["accuracy"], after["accuracy"])
    assert "warnings" not in before and after["warnings"][0].startswith("stage 2 (finetune) left the model")
    assert after["warnings"][0] in caplog.text
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Warnings" in report and after["warnings"][0] in report
