"""Fine-tuning a weight-pruned model keeps it sparse, and kd fine-tuning of weight pruning distils."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from tinydata import tiny_recipe

import edgeslim.distill
from edgeslim.models import create_model
from edgeslim.pipeline import parse_recipe, run_recipe
from edgeslim.prune.unstructured import MASK, prune_weights, restore_masks_, weight_sparsity


def _rows(state: dict) -> dict:
    return {r["stage"]: r["metrics"] for r in state["completed"]}


def _included_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_kd_finetune_of_weight_pruning_distils_and_keeps_exact_sparsity(tiny_data: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = edgeslim.distill.kd_finetune

    def spy(teacher, epochs, data, **opts):
        calls.append((epochs, opts.get("callbacks")))
        return real(teacher, epochs, data, **opts)

    monkeypatch.setattr(edgeslim.distill, "kd_finetune", spy)
    stages = [{"train": {"epochs": 1, "lr": 0.05}},
              {"prune": {"method": "unstructured", "sparsity": 0.8, "steps": 2, "finetune": "kd",
                         "finetune_epochs": 1, "finetune_lr": 0.05}}]
    run_recipe(parse_recipe(tiny_recipe(tiny_data, stages)), tmp_path / "run", progress=False)
    assert len(calls) == 1 and calls[0][0] == 1 and calls[0][1]  # one kd callback, with the mask enforcer
    final = edgeslim.load(tmp_path / "run" / "model.safetensors")
    total = _included_weights(final)
    assert weight_sparsity(final) == pytest.approx(0.8, abs=1.5 / total)


@pytest.mark.parametrize("mode", ["plain", "kd"])
def test_finetune_stage_after_weight_pruning_keeps_every_zero(mode: str, tiny_data: Path, tmp_path: Path) -> None:
    stages = [{"train": {"epochs": 1, "lr": 0.05}},
              {"prune": {"method": "unstructured", "sparsity": 0.8, "finetune": "none"}},
              {"finetune": {"mode": mode, "epochs": 1, "lr": 0.05}}]
    state = run_recipe(parse_recipe(tiny_recipe(tiny_data, stages)), tmp_path / "run", progress=False)
    rows = _rows(state)
    assert rows["finetune"]["nonzero_params"] < rows["train"]["params"] / 4  # biases are not pruned
    pruned = edgeslim.load(tmp_path / "run" / "stages" / "01-prune" / "model.safetensors")
    final = edgeslim.load(tmp_path / "run" / "model.safetensors")
    for (name, a), b in zip(pruned.state_dict().items(), final.state_dict().values()):
        if name.endswith("weight"):
            assert torch.equal(a == 0, b == 0), name  # the same zeros, not just as many
            assert (b == 0).float().mean() >= 0.5, name
    assert not torch.equal(pruned.state_dict()["features.0.weight"], final.state_dict()["features.0.weight"])


def test_restore_masks_rebuilds_lost_masks_from_the_zeros_of_a_pruned_model() -> None:
    torch.manual_seed(0)
    pruned = prune_weights(create_model("lenet5"), sparsity=0.8)
    loaded = create_model("lenet5")
    loaded.load_state_dict(pruned.state_dict())  # masks are not saved
    assert not any(MASK in m._buffers for m in loaded.modules())
    assert restore_masks_(loaded) == 5
    for a, b in zip(pruned.modules(), loaded.modules()):
        if MASK in a._buffers:
            assert torch.equal(a._buffers[MASK], b._buffers[MASK])
    assert restore_masks_(loaded) == 0  # masks of the right shape are kept
    assert restore_masks_(create_model("lenet5")) == 0  # a dense model gets none
    conv = loaded.features[0]
    conv.weight = nn.Parameter(conv.weight.detach()[:3].clone())  # sliced since it was masked
    assert restore_masks_(loaded) == 1
    assert torch.equal(conv._buffers[MASK], conv.weight != 0)
