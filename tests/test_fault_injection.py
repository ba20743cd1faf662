"""Fault injection: SIGKILL a real ``edgeslim compress`` at each write point, then resume.

Each case runs the command in a child process under ``tests/crashpoint.py``,
which kills it at one point (mid-training, mid-write of a checkpoint, between a
stage's model and state.json, while writing the final model or the report).
Afterwards state.json may only list stages whose files are on disk with the
recorded hash; a re-run without ``--resume`` either finishes what is missing or
asks for ``--resume``, never "succeeds" without the final model; and ``--resume``
gives a final model equal, tensor by tensor, to an uninterrupted run's.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tinydata import make_image_folder, tiny_recipe

import edgeslim
from edgeslim.cli import main
from edgeslim.pipeline.rundir import check_file

CRASHPOINT = Path(__file__).with_name("crashpoint.py")
SRC = Path(edgeslim.__file__).resolve().parents[1]

#: (kill point, what it simulates); recipe: input -> train (2 epochs x 4 steps) -> prune (+1 epoch)
POINTS = [
    ("step:6", "mid-training, epoch 2"),
    ("before:stages/00-train/train/last.pt:2", "writing the epoch-2 training checkpoint"),
    ("after:stages/00-train/model.safetensors:1", "train stage's model written, state.json not yet"),
    ("before:state.json:2", "writing state.json after the train stage"),
    ("after:teacher.safetensors:1", "teacher written, prune stage not recorded"),
    ("before:stages/01-prune/model.safetensors:1", "writing the prune stage's model"),
    ("before:model.safetensors:1", "writing the final model"),
    ("before:report.md:1", "writing the report"),
]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fault")
    data = make_image_folder(root / "data")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(data)))
    return path


@pytest.fixture(scope="module")
def straight(recipe_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final weights of an uninterrupted run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["compress", str(recipe_file), "--out", str(out), "--no-progress"]) == 0
    return edgeslim.load(out / "model.safetensors").state_dict()


def _child(point: str, recipe_file: Path, out: Path, **popen) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
                        "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(CRASHPOINT), point, "--", "compress", str(recipe_file), "--out", str(out),
            "--no-progress"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _assert_state_is_honest(out: Path) -> None:
    """Every stage state.json lists has its model on disk, byte for byte as recorded."""
    if not (out / "state.json").exists():
        return
    state = json.loads((out / "state.json").read_text())
    for entry in state["completed"]:
        assert check_file(out / entry["model"], entry["sha256"]) is None, entry["model"]
    if "teacher" in state:
        assert check_file(out / "teacher.safetensors", state["teacher"]["sha256"]) is None


def _assert_same_weights(path: Path, expected: dict) -> None:
    got = edgeslim.load(path).state_dict()
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.slow
@pytest.mark.parametrize("point", [p for p, _ in POINTS], ids=[why for _, why in POINTS])
def test_killed_run_resumes_to_the_uninterrupted_result(point: str, recipe_file: Path, straight: dict,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    child = _child(point, recipe_file, out)
    _, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, err  # the kill point was reached
    _assert_state_is_honest(out)
    if (out / "model.safetensors").exists():  # written atomically: complete or absent
        _assert_same_weights(out / "model.safetensors", straight)

    rc = main(["compress", str(recipe_file), "--out", str(out), "--no-progress"])  # no --resume
    printed = capsys.readouterr()
    if rc == 0:  # a finished run: what was missing was made again
        assert (out / "model.safetensors").is_file() and (out / "report.md").is_file()
    else:
        assert rc == 2 and "--resume" in printed.err and "Traceback" not in printed.err
        assert "model:" not in printed.out

    assert main(["compress", str(recipe_file), "--out", str(out), "--no-progress", "--resume"]) == 0
    _assert_same_weights(out / "model.safetensors", straight)
    _assert_state_is_honest(out)
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert not [p.name for p in out.rglob("*.tmp")]  # half-written temp files were cleaned up


def test_lock_is_held_while_running_and_freed_when_killed(recipe_file: Path, straight: dict,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    child = _child("hold:state.json:2", recipe_file, out, stdin=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == "holding"  # paused mid-run, lock held
        recipe_yaml = (out / "recipe.yaml").read_text()
        other = tmp_path / "other.yaml"
        other.write_text(recipe_file.read_text().replace("epochs: 2", "epochs: 1"))
        assert main(["compress", str(other), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use: another edgeslim run (pid {child.pid})" in err
        assert (out / "recipe.yaml").read_text() == recipe_yaml
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert main(["compress", str(recipe_file), "--out", str(out), "--no-progress", "--resume"]) == 0
    _assert_same_weights(out / "model.safetensors", straight)
