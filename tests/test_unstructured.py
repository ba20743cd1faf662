"""Magnitude weight pruning, the mask callback, and compact sparse storage."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from edgeslim.errors import CheckpointError, ConfigError
from edgeslim.modelinfo import info as edgeslim_info
from edgeslim.prune.sparse_storage import load_sparse, save_sparse, stored_bytes
from edgeslim.prune.unstructured import (
    MaskEnforcer,
    iterative_prune_weights,
    prune_weights,
    sparsity_schedule,
    weight_sparsity,
)


def lenet_like() -> nn.Module:
    """LeNet-5 shaped (about 61k weights) for 28x28 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def pruned_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.95])
def test_global_pruning_hits_the_exact_count_and_cuts_the_smallest(sparsity: float) -> None:
    torch.manual_seed(0)
    model = lenet_like()
    pruned = prune_weights(model, sparsity, "global")
    layers = pruned_layers(pruned)
    total = sum(m.weight.numel() for m in layers)
    assert sum(zeros(m.weight) for m in layers) == round(sparsity * total)
    with torch.no_grad():
        kept = torch.cat([m.weight[m.weight_mask].abs() for m in layers])
        cut = torch.cat([o.weight[~p.weight_mask].abs() for o, p in zip(pruned_layers(model), layers)])
    if cut.numel():
        assert float(cut.max()) <= float(kept.min())  # one global magnitude threshold
    assert all(zeros(m.weight) == int((~m.weight_mask).sum()) for m in layers)


@pytest.mark.parametrize("sparsity", [0.3, 0.8])
def test_layer_pruning_hits_the_exact_count_per_layer(sparsity: float) -> None:
    torch.manual_seed(0)
    pruned = prune_weights(lenet_like(), sparsity, "layer")
    for m in pruned_layers(pruned):
        assert zeros(m.weight) == round(sparsity * m.weight.numel())
        assert float(m.weight.detach()[~m.weight_mask].abs().sum()) == 0.0


def test_prune_leaves_input_and_state_dict_keys_alone() -> None:
    model = lenet_like()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_weights(model, 0.7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(pruned.state_dict()) == set(before)  # masks are non-persistent buffers
    lenet_like().load_state_dict(pruned.state_dict())  # loads into the plain architecture


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_invalid_sparsity_is_a_config_error(bad: float) -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        prune_weights(lenet_like(), bad)


def test_invalid_scope_and_empty_include_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="scope"):
        prune_weights(lenet_like(), 0.5, "everything")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Conv3d"):
        prune_weights(lenet_like(), 0.5, include=(nn.Conv3d,))


class _FakeTrainer:
    def __init__(self, model: nn.Module) -> None:
        self.model = model


def test_mask_enforcer_keeps_pruned_weights_at_zero_during_training() -> None:
    torch.manual_seed(0)
    model = prune_weights(lenet_like(), 0.9)
    enforcer, trainer = MaskEnforcer(), _FakeTrainer(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    enforcer.on_train_start(trainer)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        revived = sum(int((m.weight[~m.weight_mask] != 0).sum()) for m in pruned_layers(model))
        assert revived > 0  # the optimiser alone would revive pruned weights...
        enforcer.on_step_end(trainer)
        assert weight_sparsity(model) == pytest.approx(0.9, abs=1e-4)  # ...the callback undoes it


def test_iterative_pruning_raises_sparsity_gradually_and_ends_exact() -> None:
    torch.manual_seed(0)
    seen: list[tuple[int, float]] = []

    def retrain(model: nn.Module, step: int) -> None:
        seen.append((step, weight_sparsity(model)))
        with torch.no_grad():
            for m in pruned_layers(model):
                m.weight.add_(0.01)  # a careless retrain that touches pruned weights

    schedule = sparsity_schedule(0.9, 3, "cubic")
    assert schedule[-1] == 0.9 and all(a < b for a, b in zip(schedule, schedule[1:]))
    final = iterative_prune_weights(lenet_like(), 0.9, 3, retrain)
    assert [s for s, _ in seen] == [0, 1, 2]
    assert [sp for _, sp in seen] == pytest.approx(schedule, abs=1e-4)
    total = sum(m.weight.numel() for m in pruned_layers(final))
    assert sum(zeros(m.weight) for m in pruned_layers(final)) == round(0.9 * total)


@pytest.mark.parametrize("kept", [1, 777, 6000, 61470])
def test_target_nonzero_keeps_exactly_that_many_weights_globally(kept: int) -> None:
    torch.manual_seed(0)
    model = lenet_like()
    layers = pruned_layers(model)
    total = sum(m.weight.numel() for m in layers)
    assert kept <= total
    pruned = prune_weights(model, target_nonzero=kept)
    assert sum(m.weight.numel() - zeros(m.weight) for m in pruned_layers(pruned)) == kept
    same = prune_weights(model, (total - kept) / total)  # the fraction it stands for
    assert all(torch.equal(a.weight_mask, b.weight_mask) for a, b in zip(pruned_layers(pruned), pruned_layers(same)))
    assert edgeslim_info(pruned).sparsity.sparsity == pytest.approx(1 - kept / total)


def test_target_nonzero_per_layer_is_within_one_weight_a_layer() -> None:
    torch.manual_seed(0)
    pruned = prune_weights(lenet_like(), scope="layer", target_nonzero=5000)
    layers = pruned_layers(pruned)
    assert abs(sum(m.weight.numel() - zeros(m.weight) for m in layers) - 5000) <= len(layers)


@pytest.mark.parametrize("bad", [0, -3, 61471, 5.5, "100", True])
def test_target_nonzero_outside_the_model_is_a_config_error_naming_the_count(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"target_nonzero must be a whole number of weights in \[1, 61470\]"):
        prune_weights(lenet_like(), target_nonzero=bad)  # type: ignore[arg-type]


def test_iterative_pruning_to_a_count_ends_exact_and_needs_exactly_one_target() -> None:
    torch.manual_seed(0)
    seen: list[int] = []

    def retrain(model: nn.Module, step: int) -> None:
        seen.append(sum(m.weight.numel() - zeros(m.weight) for m in pruned_layers(model)))

    final = iterative_prune_weights(lenet_like(), None, 3, retrain, target_nonzero=2000)
    assert len(seen) == 3 and seen[0] > seen[1] > seen[2] == 2000
    assert sum(m.weight.numel() - zeros(m.weight) for m in pruned_layers(final)) == 2000
    for sparsity, kept in ((None, None), (0.9, 2000)):
        with pytest.raises(ConfigError, match="exactly one of sparsity"):
            iterative_prune_weights(lenet_like(), sparsity, 3, None, target_nonzero=kept)


# --------------------------------------------------------------------------- storage


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


@pytest.mark.parametrize("index_bits", [8, 4])
def test_sparse_round_trip_is_bitwise_and_size_is_the_file_size(tmp_path, index_bits: int) -> None:
    torch.manual_seed(0)
    model = prune_weights(lenet_like(), 0.9)
    path = tmp_path / "m.safetensors"
    report = save_sparse(model, path, value_bits=32, index_bits=index_bits)
    assert report.file_bytes == stored_bytes(path) == os.path.getsize(path)
    assert sum(t.bytes for t in report.tensors) + report.header_bytes == report.file_bytes
    loaded = load_sparse(path, lenet_like())
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(bits(a), bits(b)), k
    assert path.read_bytes()[:8] and b"pickle" not in path.read_bytes()


def test_95_percent_sparse_lenet_stores_at_least_10x_smaller(tmp_path) -> None:
    torch.manual_seed(0)
    model = prune_weights(lenet_like(), 0.95)
    dense = sum(p.numel() * 4 for p in model.state_dict().values())
    report = save_sparse(model, tmp_path / "m.safetensors")
    assert report.dense_fp32_bytes == dense
    assert dense / stored_bytes(tmp_path / "m.safetensors") >= 10
    encodings = {t.name: t.encoding for t in report.tensors}
    assert encodings["7.weight"] == "sparse" and encodings["7.bias"] == "raw"


def test_8bit_weight_sharing_keeps_zeros_and_bounds_the_error(tmp_path) -> None:
    torch.manual_seed(0)
    model = prune_weights(lenet_like(), 0.9)
    r32 = save_sparse(model, tmp_path / "a.safetensors")
    r8 = save_sparse(model, tmp_path / "b.safetensors", value_bits=8, index_bits=4)
    assert r8.file_bytes < r32.file_bytes
    loaded = load_sparse(tmp_path / "b.safetensors", lenet_like())
    for orig_layer, new_layer in zip(pruned_layers(model), pruned_layers(loaded)):
        orig, new = orig_layer.weight.detach(), new_layer.weight.detach()
        assert torch.equal(orig == 0, new == 0)  # pruned stay pruned, kept stay non-zero
        assert torch.unique(new[new != 0]).numel() <= 255  # shared weights
        spread = float(orig.max() - orig.min())
        assert float((orig - new).abs().max()) <= spread / 100
        assert torch.equal(orig_layer.bias, new_layer.bias)  # biases are stored raw


def test_long_gaps_use_filler_entries(tmp_path) -> None:
    layer = nn.Linear(100, 50)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight.view(-1)[[3, 4, 700, 4999]] = torch.tensor([1.5, -2.0, 0.25, 3.0])
    for index_bits in (8, 4):
        save_sparse(layer, tmp_path / "l.safetensors", index_bits=index_bits)
        loaded = load_sparse(tmp_path / "l.safetensors", nn.Linear(100, 50))
        assert torch.equal(loaded.weight, layer.weight)


def test_load_sparse_errors_are_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_sparse(tmp_path / "missing.safetensors", lenet_like())
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_sparse(tmp_path / "junk.safetensors", lenet_like())
    save_sparse(nn.Linear(4, 2), tmp_path / "small.safetensors")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_sparse(tmp_path / "small.safetensors", lenet_like())
    with pytest.raises(ConfigError, match="value_bits"):
        save_sparse(lenet_like(), tmp_path / "x.safetensors", value_bits=16)


def test_mask_enforcer_as_trainer_callback() -> None:
    from edgeslim.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = prune_weights(lenet_like(), 0.8, "layer")
    batches = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(3)]
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1, momentum=0.9, device="cpu", progress=False)
    Trainer(model, cfg, callbacks=[MaskEnforcer()]).fit(batches)
    for m in pruned_layers(model):
        assert zeros(m.weight) == round(0.8 * m.weight.numel())
