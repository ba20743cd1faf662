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


# --- the other methods: lighten, distill, streamline_merge, quantize take their stage configs ---

def _tiny_loader(n: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g))
            for _ in range(n // 8)]


def test_lighten_config_and_keywords_build_the_same_student() -> None:
    from edgeslim.pipeline.configs import LightenStage

    model, x = _lenet()
    config = LightenStage(width_mult=0.5, head="gap_linear", exclude=["features.0"])
    by_keywords = edgeslim.lighten(model, x, width_mult=0.5, head="gap_linear", exclude=("features.0",))
    torch.manual_seed(1)
    by_config = edgeslim.lighten(model, x, config)
    assert [tuple(p.shape) for p in by_config.parameters()] == [tuple(p.shape) for p in by_keywords.parameters()]
    assert info(by_config).lighten == info(by_keywords).lighten
    with pytest.raises(ConfigError, match="width_mult=1.0 contradicts the config, which gives 0.5"):
        edgeslim.lighten(model, x, config, width_mult=1.0)
    with pytest.raises(ConfigError, match="must be an edgeslim.pipeline.configs.LightenStage"):
        edgeslim.lighten(model, x, PruneStage(remove_channels=0.3))


def test_distill_config_and_keywords_train_identically() -> None:
    from edgeslim.pipeline.configs import DistillStage

    teacher, x = _lenet()
    config = DistillStage(losses="kd:0.5,ce:0.5", T=2.0, epochs=1, lr=0.01, warmup_epochs=0.0)
    students = []
    for how in ("config", "keywords"):
        torch.manual_seed(3)
        student = create_model("lenet5", width_mult=0.5)
        if how == "config":
            students.append(edgeslim.distill(student, teacher, _tiny_loader(), config, device="cpu",
                                             progress=False))
        else:
            students.append(edgeslim.distill(student, teacher, _tiny_loader(), losses="kd:0.5,ce:0.5", T=2.0,
                                             epochs=1, lr=0.01, warmup_epochs=0.0, optimizer="sgd",
                                             weight_decay=5e-4, device="cpu", progress=False))
    assert _same_weights(*students)
    assert signature_names(edgeslim.distill)[:4] == ["student", "teacher", "train_data", "config"]


def signature_names(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_streamline_merge_takes_a_streamline_config_and_refuses_what_it_cannot_run() -> None:
    from edgeslim.pipeline.configs import MergeStage

    model, x = _lenet()
    calib = _tiny_loader()
    torch.manual_seed(0)
    by_config = edgeslim.streamline_merge(model, x, calib, MergeStage(mode="streamline", steps=2))
    torch.manual_seed(0)
    by_keywords = edgeslim.streamline_merge(model, x, calib, steps=2)
    assert _same_weights(by_config, by_keywords)
    with pytest.raises(ConfigError, match="mode='exact'"):
        edgeslim.streamline_merge(model, x, calib, MergeStage(mode="exact"))
    with pytest.raises(ConfigError, match="retrain_epochs=2"):
        edgeslim.streamline_merge(model, x, calib, MergeStage(mode="streamline", retrain_epochs=2))


def test_quantize_config_maps_calib_batches_to_num_batches() -> None:
    from edgeslim.pipeline.configs import QuantizeStage
    from edgeslim.stage_args import quantize_keywords

    assert quantize_keywords(QuantizeStage(calib_batches=3)) == {"backend": "onnxruntime", "num_batches": 3}
    assert signature_names(edgeslim.quantize)[:4] == ["model", "example_inputs", "calib_data", "config"]
    model, x = _lenet()
    with pytest.raises(ConfigError, match="num_batches=5 contradicts the config, which gives 3"):
        edgeslim.quantize(model, x, _tiny_loader(), QuantizeStage(calib_batches=3), num_batches=5)
