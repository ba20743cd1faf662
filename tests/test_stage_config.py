"""``prune``/``prune_``/``admm_prune`` take the recipe's ``PruneStage`` config (one surface): the
config and the keywords it stands for give the same pruned model; a keyword beside the config
must agree with it or be Python-only."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import edgeslim
from edgeslim.errors import ConfigError
from edgeslim.modelinfo import info
from edgeslim.models import create_model
from edgeslim.pipeline.configs import PruneStage
from edgeslim.prune import prune_
from edgeslim.prune.admm import admm_prune
from nets import randomize_bn_


def _lenet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = randomize_bn_(create_model("lenet5")).eval()
    return model, torch.randn(1, *model.default_input_size)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("stage,keywords", [
    (dict(remove_channels=0.3), dict(ratio=0.3)),
    (dict(target_flops=0.5, planner="layerwise"), dict(target_flops=0.5, planner="layerwise")),
    (dict(target_params=0.6, criterion="l2", round_to=2, ignore=["features.3"]),
     dict(target_params=0.6, criterion="l2", round_to=2, ignore=("features.3",))),
])
def test_config_and_keywords_give_identical_plans(stage: dict, keywords: dict) -> None:
    model, x = _lenet()
    config = PruneStage(**stage, finetune="none")
    by_keywords = edgeslim.prune(model, x, **keywords)
    for by_config in (edgeslim.prune(model, x, config), edgeslim.prune(model, x, config=config)):
        assert info(by_config).plans == info(by_keywords).plans and info(by_config).plans[-1]["groups"]
        assert _same_weights(by_config, by_keywords)
    in_place = prune_(_lenet()[0], x, config)
    assert info(in_place).plans == info(by_keywords).plans


def test_signature_shows_config_after_the_positional_arguments() -> None:
    assert list(inspect.signature(edgeslim.prune).parameters)[:3] == ["model", "example_inputs", "config"]
    assert list(inspect.signature(admm_prune).parameters)[:4] == ["model", "example_inputs", "train_data",
                                                                  "config"]
    assert "ratio" in inspect.signature(edgeslim.prune).parameters  # the keyword names stay


def test_agreeing_and_python_only_keywords_are_accepted_beside_the_config() -> None:
    model, x = _lenet()
    config = PruneStage(remove_channels=0.3, finetune="none")
    calls = []
    pruned = edgeslim.prune(model, x, config, ratio=0.3, ignore=[], finetune=lambda m, step: calls.append(step))
    assert calls == [1] and info(pruned).plans == info(edgeslim.prune(model, x, ratio=0.3)).plans


@pytest.mark.parametrize("keywords,named", [
    (dict(ratio=0.4), "ratio=0.4"), (dict(target_flops=0.5), "target_flops=0.5"),
    (dict(criterion="l2"), "criterion='l2'"), (dict(finetune_options={"lr": 0.1}), "finetune_options['lr']=0.1"),
])
def test_a_contradicting_keyword_is_refused_by_name(keywords: dict, named: str) -> None:
    model, x = _lenet()
    with pytest.raises(ConfigError, match=r"contradicts the config") as raised:
        edgeslim.prune(model, x, PruneStage(remove_channels=0.3, finetune="none"), **keywords)
    assert named in str(raised.value)


def test_a_callable_finetune_needs_the_configs_finetune_none() -> None:
    model, x = _lenet()
    with pytest.raises(ConfigError, match="needs finetune='none' in the config"):
        edgeslim.prune(model, x, PruneStage(remove_channels=0.3), finetune=lambda m, step: None)


def test_a_config_for_another_method_or_type_is_refused() -> None:
    model, x = _lenet()
    with pytest.raises(ConfigError, match="method='easiedge'.*edgeslim.admm_prune"):
        edgeslim.prune(model, x, PruneStage(method="easiedge", remove_filters=0.5))
    with pytest.raises(ConfigError, match="method='structured'.*edgeslim.prune"):
        admm_prune(model, x, [], PruneStage(remove_channels=0.5))
    with pytest.raises(ConfigError, match="must be an edgeslim.pipeline.configs.PruneStage"):
        edgeslim.prune(model, x, {"remove_channels": 0.3})
    with pytest.raises(TypeError, match="config twice"):
        edgeslim.prune(model, x, PruneStage(remove_channels=0.3), config=PruneStage(remove_channels=0.3))


def test_admm_prune_config_equals_its_keywords() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(2)]
    common = dict(admm_iterations=2, device="cpu", calib_batches=1, progress=False)
    config = PruneStage(method="easiedge", remove_filters=0.5, criterion="l1", rho=1.0, admm_epochs=1,
                        finetune="none", finetune_lr=0.02)
    a = admm_prune(model, data[0][0][:1], data, config, **common)
    b = admm_prune(model, data[0][0][:1], data, target_filters=0.5, criterion="l1", rho=1.0, admm_epochs=1,
                   finetune_epochs=0, lr=0.02, **common)
    assert info(a).plans == info(b).plans and _same_weights(a, b)
    with pytest.raises(ConfigError, match="target_filters=0.3 contradicts"):
        admm_prune(model, data[0][0][:1], data, config, target_filters=0.3, **common)
