"""``edgeslim._core``: the one tap mechanism (outputs and inputs), the name hints and batch taking
that distillation, pruning criteria, BN folding and the recipe parser share."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeslim._core import FeatureTaps, closest, did_you_mean, resolve_module, take_batches
from edgeslim.distill import taps as distill_taps
from edgeslim.errors import ConfigError


def _twice() -> nn.Module:
    """A module whose ``shared`` layer is called twice per forward."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(3, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.shared(self.shared(x)))

    torch.manual_seed(0)
    return Twice()


def test_distillation_taps_are_the_core_taps() -> None:
    assert distill_taps.FeatureTaps is FeatureTaps and distill_taps.resolve_module is resolve_module


def test_taps_record_inputs_and_outputs_first_or_last_call() -> None:
    model, x = _twice(), torch.randn(4, 3)
    with FeatureTaps(model, ["shared", "head"], inputs=True) as last:
        out = model(x)
    with FeatureTaps(model, ["shared"], inputs=True, outputs=False, keep="first") as first:
        model(x)
    assert last.calls == {"shared": 2, "head": 1} and first.calls == {"shared": 2}
    assert torch.equal(first.inputs["shared"][0], x) and not first.outputs
    inner = model.shared(x)
    assert torch.allclose(last.inputs["shared"][0], inner)  # the second call's input
    assert torch.allclose(last["shared"], model.shared(inner)) and torch.allclose(last["head"], out)
    assert not model.shared._forward_hooks and not model.head._forward_hooks  # removed on exit


def test_retain_grad_taps_give_each_output_its_gradient() -> None:
    model, x = _twice(), torch.randn(4, 3)
    model.shared.requires_grad_(False)  # a frozen layer's output needs no grad: made a leaf that does
    with FeatureTaps(model, ["shared", "head"], retain_grad=True) as taps:
        model(x).sum().backward()
    assert taps["head"].grad is not None and torch.equal(taps["head"].grad, torch.ones(4, 2))
    assert taps["shared"].grad is not None
    with pytest.raises(ValueError, match="keep='middle'"):
        FeatureTaps(model, ["head"], keep="middle")


def test_unknown_paths_and_names_get_one_hint_format() -> None:
    model = _twice()
    with pytest.raises(ConfigError, match="has no submodule 'shard'. Did you mean 'shared'?"):
        FeatureTaps(model, ["shard"])
    assert did_you_mean("adamm", ["sgd", "adamw"]) == " Did you mean 'adamw'?"
    assert did_you_mean("zzz", ["sgd"]) == "" and closest("zzz", ["sgd"]) == []
    assert closest("lenet55", ["lenet5", "vgg11"]) == ["lenet5"]


def test_take_batches_draws_no_batch_beyond_n() -> None:
    drawn = []

    def loader():
        for i in range(10):
            drawn.append(i)
            yield i

    assert take_batches(loader(), 3) == [0, 1, 2] and drawn == [0, 1, 2]
    assert take_batches(iter(range(4)), None) == [0, 1, 2, 3]
