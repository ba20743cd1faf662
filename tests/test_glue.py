"""Every recipe stage handler and every CLI command, on a tiny image folder (no real data needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn
from tinydata import tiny_recipe

from edgeslim.cli import main
from edgeslim.pipeline import parse_recipe, run_recipe
from edgeslim.pipeline.stages import STAGES


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    run_recipe(parse_recipe(tiny_recipe(tiny_data, [{"train": {"epochs": 1}}])), out, progress=False)
    return out / "model.safetensors"


RECIPES = {
    "kt": [{"train": {"epochs": 1}}, {"lighten": {"width_mult": 1.0}}, {"distill": {"epochs": 1}},
           {"finetune": {"mode": "kd", "epochs": 1}}, {"finetune": {"mode": "plain", "epochs": 1}},
           {"prune": {"remove_channels": 0.3, "finetune": "kd"}}, {"merge": {"mode": "exact"}},
           "export", {"profile": {"runs": 2}}],
    "hybrid": [{"load": {"path": "TRAINED"}}, {"prune": {"method": "unstructured", "sparsity": 0.5}},
               {"merge": {"mode": "streamline", "steps": 3, "retrain_epochs": 1}},
               {"quantize": {"calib_batches": 1}}, "export", "profile"],
    "easiedge": [{"prune": {"method": "easiedge", "criterion": "l1", "remove_filters": 0.3,
                            "admm_epochs": 1, "finetune_epochs": 1}}],
}


def test_the_recipes_below_cover_every_stage_handler() -> None:
    kinds = {next(iter(s)) if isinstance(s, dict) else s for stages in RECIPES.values() for s in stages}
    assert kinds == set(STAGES.names())


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_stage_handlers_run_on_tiny_data(name: str, tiny_data: Path, trained: Path, tmp_path: Path) -> None:
    stages = json.loads(json.dumps(RECIPES[name]).replace("TRAINED", str(trained)))
    state = run_recipe(parse_recipe(tiny_recipe(tiny_data, stages)), tmp_path / "run", progress=False)
    assert [e["stage"] for e in state["completed"]] == ["input"] + [
        next(iter(s)) if isinstance(s, dict) else s for s in stages]
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "report.md").is_file()
    if "quantize" in str(stages):
        assert (tmp_path / "run" / "model.int8.onnx").is_file()


def _common(tiny_data: Path, out: Path) -> list[str]:
    return ["--dataset", str(tiny_data), "--num-classes", "2", "--batch-size", "8", "--device", "cpu",
            "--out", str(out), "--no-progress"]


@pytest.mark.parametrize("argv", [
    ["train", "--epochs", "1", "--optimizer", "adamw", "--lr", "0.001", "--schedule", "constant"],
    ["prune", "--remove-channels", "0.3", "--finetune", "none", "--round-to", "2"],
    ["prune", "--method", "unstructured", "--sparsity", "0.5", "--finetune-epochs", "0"],
    ["prune", "--method", "unstructured", "--target-nonzero", "3000", "--steps", "2", "--finetune-epochs", "0"],
    ["lighten", "--model", "lenet5", "--width-mult", "1.0", "--no-keep-first-conv"],
    ["distill", "--teacher", "TRAINED", "--losses", "kd:0.9,ce:0.1", "--epochs", "1"],
    ["merge", "--mode", "streamline", "--steps", "2"],
    ["merge", "--mode", "exact", "--checkpoint", "TRAINED"],
])
def test_stage_commands_run_on_tiny_data(argv: list, tiny_data: Path, trained: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    argv = [str(trained) if a == "TRAINED" else a for a in argv]
    assert main(argv + _common(tiny_data, tmp_path / "run")) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file() and "accuracy" in capsys.readouterr().out


def test_weight_pruning_to_a_count_keeps_that_many_weights_through_the_run(
        tiny_data: Path, trained: Path, tmp_path: Path) -> None:
    from edgeslim import load

    stages = [{"load": {"path": str(trained)}},
              {"prune": {"method": "unstructured", "target_nonzero": 2500, "steps": 2, "finetune": "kd",
                         "finetune_epochs": 1}}, "export"]
    state = run_recipe(parse_recipe(tiny_recipe(tiny_data, stages)), tmp_path / "run", progress=False)
    model = load(tmp_path / "run" / "model.safetensors")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sum(int((m.weight != 0).sum()) for m in layers) == 2500  # retraining revived none
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    assert state["completed"][-1]["metrics"]["nonzero_params"] == nonzero < 2500 + 300  # weights + biases


def test_merge_retrains_by_kd_when_asked_and_a_sparse_model_stays_sparse(
        tiny_data: Path, trained: Path, tmp_path: Path) -> None:
    import torch
    from edgeslim import load

    def merged(retrain: str, epochs: int) -> nn.Module:
        stages = [{"load": {"path": str(trained)}},
                  {"prune": {"method": "unstructured", "sparsity": 0.8, "finetune": "none"}},
                  {"merge": {"mode": "streamline", "steps": 2, "retrain": retrain, "retrain_epochs": epochs}}]
        out = tmp_path / f"{retrain}{epochs}"
        run_recipe(parse_recipe(tiny_recipe(tiny_data, stages)), out, progress=False)
        return load(out / "model.safetensors")

    def nonzero(model: nn.Module) -> list[int]:
        return [int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    untrained, plain, kd = merged("plain", 0), merged("plain", 1), merged("kd", 1)
    assert nonzero(plain) == nonzero(kd) == nonzero(untrained)  # retraining revived no weight
    a, b = plain.state_dict(), kd.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # kd is another objective


@pytest.mark.parametrize("old, new", [
    (["lighten", "--model", "lenet5", "--student-width", "0.5", "--convert-first"],
     ["lighten", "--model", "lenet5", "--width-mult", "0.5", "--no-keep-first-conv"]),
    (["merge", "--streamline", "--rebirth-steps", "2"], ["merge", "--mode", "streamline", "--steps", "2"]),
    (["prune", "--unstructured", "--sparsity", "0.5"], ["prune", "--method", "unstructured", "--sparsity", "0.5"]),
    (["distill", "--teacher", "T", "--loss", "kd:1"], ["distill", "--teacher", "T", "--losses", "kd:1"]),
    (["train", "--width-mult", "0.5"], ["train", "--model-width-mult", "0.5"]),
])
def test_old_flags_warn_and_mean_the_new_ones(old: list, new: list, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeslim.cli as cli

    seen: list = []
    monkeypatch.setattr(cli, "_run", lambda args, name, stages: seen.append((vars(args).get(
        "model_width_mult"), stages)) or 0)
    assert main(old) == 0 and main(new) == 0
    assert "is deprecated" in capsys.readouterr().err
    (mw_old, st_old), (mw_new, st_new) = seen
    assert mw_old == mw_new
    rename = {"rebirth_steps": "steps"}
    assert [{k: {rename.get(a, a): v for a, v in b.items()} for k, b in s.items()} for s in st_old] == st_new


def test_compress_report_eval_profile_export_on_tiny_data(tiny_data: Path, trained: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_data, [{"load": {"path": str(trained)}}, "profile"])))
    run = tmp_path / "run"
    assert main(["compress", str(recipe), "--out", str(run), "--no-progress"]) == 0
    assert main(["report", str(run)]) == 0 and "report" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(trained), "--dataset", str(tiny_data), "--batch-size", "8"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["profile", "--checkpoint", str(trained), "--runs", "2", "--threads", "1"]) == 0
    assert main(["export", "--checkpoint", str(trained), "--opset", "17", "--tol", "1e-3",
                 "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").is_file()
    assert main(["profile", "--checkpoint", str(trained), "--runs", "0"]) == 2
    assert "runs=0 is invalid" in capsys.readouterr().err
