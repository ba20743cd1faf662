"""The `edgeslim` command: listing, errors without tracebacks, and a prune run from flags."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgeslim
from edgeslim.cli import main


def test_models_lists_the_zoo(capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in edgeslim.list_models():
        assert name in out


@pytest.mark.parametrize("argv, message", [
    (["profile", "--model", "resnet57"], "Did you mean 'resnet56'"),
    (["profile", "--model", "lenet5", "--checkpoint", "missing.safetensors"], "missing.safetensors"),
    (["compress", "no-such-recipe.yaml"], "not found"),
    (["report", "."], "not an edgeslim run directory"),
    (["prune", "--ratio", "0.3", "--seed", "-1", "--device", "cpu"], "seed=-1 is invalid"),
    (["train", "--lr", "1e30", "--device", "cpu"], "lr=1e+30 is invalid"),
    (["prune", "--ratio", "0.3", "--round-to", "0", "--device", "cpu"], "round_to=0 is invalid"),
    (["prune", "--ratio", "0.3", "--model", "../../x", "--checkpoint", "m.safetensors"],
     "model.name='../../x' is invalid"),
])
def test_bad_input_gives_one_clear_error(argv: list, message: str, capsys: pytest.CaptureFixture,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_prune_with_impossible_ratio_is_refused(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["prune", "--model", "lenet5", "--ratio", "1.5", "--out", str(tmp_path / "r")]) == 2
    assert "ratio=1.5" in capsys.readouterr().err


def test_profile_and_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = edgeslim.create_model("lenet5")
    edgeslim.save(model, tmp_path / "m.safetensors")
    assert main(["profile", "--model", "lenet5", "--checkpoint", str(tmp_path / "m.safetensors"),
                 "--json", str(tmp_path / "p.json")]) == 0
    assert "latency_ms" in capsys.readouterr().out and (tmp_path / "p.json").is_file()
    assert main(["export", "--checkpoint", str(tmp_path / "m.safetensors"), "--out",
                 str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_prune_from_flags_writes_a_smaller_model(data_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    argv = ["prune", "--model", "lenet5", "--data-dir", str(data_dir), "--train-subset", "256",
            "--test-subset", "128", "--target-flops", "0.5", "--finetune", "none", "--device", "cpu",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "prune" in printed and "report" in printed
    pruned = edgeslim.load(out / "model.safetensors")
    x = torch.randn(1, 1, 28, 28)
    base_flops = edgeslim.profile(edgeslim.create_model("lenet5"), x, latency=False)["flops"]
    assert edgeslim.profile(pruned, x, latency=False)["flops"] <= 0.5 * base_flops * 1.05


def _mnist_with_sums(root: Path) -> list[Path]:
    import hashlib

    from test_data import write_mnist

    write_mnist(root / "mnist", n_train=4, n_test=2, gz=False)
    files = sorted((root / "mnist").iterdir())
    (root / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256(f.read_bytes()).hexdigest()}  ./mnist/{f.name}\n" for f in files))
    return files


def test_data_check_verifies_sha256sums(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _mnist_with_sums(tmp_path)
    assert main(["data", "check", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sha256 4 file(s) ok" in out and str(tmp_path / "SHA256SUMS") in out
    assert "train      4 images" in out


def test_data_check_fails_on_a_changed_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = _mnist_with_sums(tmp_path)
    bad = next(f for f in files if f.name.startswith("t10k-images"))
    raw = bytearray(bad.read_bytes())
    raw[-1] ^= 0xFF  # still a valid IDX file: only the hash can tell
    bad.write_bytes(bytes(raw))
    assert main(["data", "check", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: expected sha256" in err and ", got " in err and "Traceback" not in err


def test_data_check_on_a_file_says_it_is_not_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    afile = tmp_path / "data.zip"
    afile.write_bytes(b"x")
    assert main(["data", "check", "--dataset", "mnist", "--data-dir", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err


def test_data_check_real_data(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    if not (data_dir / "SHA256SUMS").is_file():
        pytest.skip(f"no SHA256SUMS in {data_dir}")
    assert main(["data", "check", "--dataset", "mnist", "--data-dir", str(data_dir)]) == 0
    assert "sha256 4 file(s) ok" in capsys.readouterr().out


def test_train_with_absurd_lr_is_refused_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from test_data import write_mnist

    write_mnist(tmp_path / "mnist", n_train=8, n_test=4)
    argv = ["train", "--model", "lenet5", "--data-dir", str(tmp_path), "--epochs", "1",
            "--lr", "1e30", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "lr=1e+30 is" in err and "now 0" not in err and "Traceback" not in err  # refused before training


@pytest.mark.parametrize("text, message", [
    ("ratio: 0.5\nratio: 0.6\n", "duplicate key 'ratio'"),
    ("- 0.5\n", "must hold a mapping"),
])
def test_bad_config_file_gives_one_clear_error(text: str, message: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "c.yaml").write_text(text)
    argv = ["prune", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_recipe_name_cannot_escape_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "r.yaml").write_text("name: ../../escaped\nstages:\n  - train: {}\n")
    monkeypatch.chdir(work)
    assert main(["compress", "r.yaml", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "name='../../escaped' is invalid" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in work.iterdir()) == ["r.yaml"]


def test_python_dash_m_edgeslim_runs_the_cli() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edgeslim", "--help"], capture_output=True, text=True,
                         check=True)
    assert "usage: edgeslim" in out.stdout and "compress" in out.stdout


def test_prune_on_data_the_model_does_not_fit_is_one_clear_error(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """vgg11 wants 3x32x32 images; a folder of 1x28x28 ones used to end in a RuntimeError traceback."""
    from tinydata import make_image_folder

    data = make_image_folder(tmp_path / "data")
    argv = ["prune", "--model", "vgg11", "--width-mult", "0.25", "--dataset", str(data), "--ratio", "0.3",
            "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not run on the example input(s) of shape (1, 1, 28, 28)" in err and "Traceback" not in err
