"""The model zoo: every registered model builds, runs, trains, exports and rebuilds."""
from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch import nn

from edgeslim.modelinfo import info
from edgeslim.errors import ConfigError
from edgeslim.export import export_onnx
from edgeslim.models import MODELS, create_model, list_models
from edgeslim.registry import RegistryError

ALL_MODELS = list_models()
# Small-but-real variants keep the per-model tests fast on 2 CPU cores.
SMALL_ARGS = {"width_mult": 0.25, "growth_rate": 4}


def small_kwargs(name: str) -> dict:
    params = inspect.signature(MODELS.get(name)).parameters
    return {k: v for k, v in SMALL_ARGS.items() if k in params}


def calibrate_bn_(model: nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """Random BN affine terms and running statistics measured on ``x``, as in a trained model.

    Random running statistics would not match the activations and make deep
    residual nets blow up; measured ones keep every BN output normalised.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.weight.data = torch.rand(m.num_features, generator=gen) + 0.5
        m.bias.data = (torch.rand(m.num_features, generator=gen) - 0.5) * 0.2
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass gives the batch statistics
    model.train()
    with torch.no_grad():
        model(x)
    for m in norms:
        m.momentum = 0.1


def test_registry_lists_the_zoo() -> None:
    expected = {"lenet5", "lenet5_caffe", "vgg11", "vgg13", "vgg16", "vgg19", "resnet20", "resnet32",
                "resnet56", "resnet110", "mobilenetv2", "densenet_cifar"}
    assert expected <= set(ALL_MODELS)
    assert list_models("resnet*") == ["resnet110", "resnet20", "resnet32", "resnet56"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_small_model_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **small_kwargs(name))
    x = torch.randn(2, *model.default_input_size)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([1, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_small_model_onnx_parity(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(name, **small_kwargs(name))
    x = torch.randn(2, *model.default_input_size)
    calibrate_bn_(model, torch.randn(8, *model.default_input_size))
    diff = export_onnx(model, x, tmp_path / f"{name}.onnx", tol=1e-4)
    assert 0.0 <= diff <= 1e-4
    assert (tmp_path / f"{name}.onnx").stat().st_size > 0


@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_width_forward_shape(name: str) -> None:
    model = create_model(name).eval()
    assert len(model.default_input_size) == 3
    with torch.inference_mode():
        out = model(torch.randn(1, *model.default_input_size))
    assert out.shape == (1, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_arch_record_rebuilds_the_same_model(name: str) -> None:
    model = create_model(name, num_classes=5, **small_kwargs(name))
    arch = json.loads(json.dumps(info(model).arch.to_dict()))
    assert arch["name"] == name and arch["kwargs"]["num_classes"] == 5
    assert set(arch["kwargs"]) == set(inspect.signature(MODELS.get(name)).parameters)
    rebuilt = create_model(arch["name"], **arch["kwargs"])
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert info(rebuilt).arch.to_dict() == arch


@pytest.mark.parametrize("name", ALL_MODELS)
def test_in_channels(name: str) -> None:
    model = create_model(name, in_channels=2, **small_kwargs(name))
    assert model.default_input_size[0] == 2
    assert model(torch.randn(2, *model.default_input_size)).shape == (2, 10)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(RegistryError) as raised:
        create_model("resnet21")
    message = str(raised.value)
    assert "resnet20" in message and "vgg16" in message and "densenet_cifar" in message


def test_unknown_argument_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="width_mult"):
        create_model("densenet_cifar", width_mult=2.0)


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def count_params_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("input_size", [28, 32])
def test_lenet5_input_sizes(input_size: int) -> None:
    model = create_model("lenet5", input_size=input_size)
    assert model.features[0].padding == ((2, 2) if input_size == 28 else (0, 0))
    assert model.classifier[0].in_features == 16 * 5 * 5
    assert model(torch.randn(2, 1, input_size, input_size)).shape == (2, 10)
    assert count_params_of(model) == (25 * 6 + 6) + (6 * 25 * 16 + 16) + (400 * 120 + 120) \
        + (120 * 84 + 84) + (84 * 10 + 10)


def test_lenet5_caffe_is_the_431k_network_of_the_pruning_papers() -> None:
    model = create_model("lenet5_caffe")
    assert [m.out_channels for m in _convs(model)] == [20, 50]
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [500, 10]
    assert model.classifier[0].in_features == 50 * 4 * 4
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert count_params_of(model) == (25 * 20 + 20) + (20 * 25 * 50 + 50) + (800 * 500 + 500) \
        + (500 * 10 + 10) == 431_080
    assert [m.out_channels for m in _convs(create_model("lenet5_caffe", width_mult=0.5))] == [10, 25]
    with pytest.raises(ValueError, match="input_size >= 16"):
        create_model("lenet5_caffe", input_size=12)


def test_lenet5_width_mult_scales_every_hidden_width() -> None:
    wide = create_model("lenet5", width_mult=2.0)
    assert [m.out_channels for m in _convs(wide)] == [12, 32]
    assert [m.out_features for m in wide.modules() if isinstance(m, nn.Linear)] == [240, 168, 10]
    assert wide.classifier[0].in_features == 32 * 5 * 5
    assert wide(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert [m.out_channels for m in _convs(create_model("lenet5", width_mult=1 / 3))] == [2, 5]


@pytest.mark.parametrize("depth", [20, 32, 56, 110])
def test_resnet_depth_and_option_b_shortcuts(depth: int) -> None:
    model = create_model(f"resnet{depth}")
    convs = _convs(model)
    projections = [c for c in convs if c.kernel_size == (1, 1)]
    # depth = 1 stem conv + 2 convs per block + 1 fc; plus 2 projection shortcuts
    assert len(convs) - len(projections) + 1 == depth
    assert [(c.in_channels, c.out_channels, c.stride) for c in projections] == [
        (16, 32, (2, 2)), (32, 64, (2, 2))]


def test_vgg16_structure_and_width() -> None:
    model = create_model("vgg16")
    convs = _convs(model)
    assert len(convs) == 13
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert [type(m) for m in model.classifier] == [nn.Linear]
    assert model.classifier[0].in_features == 512
    narrow = create_model("vgg16", width_mult=0.5, classifier="mlp")
    assert [c.out_channels for c in _convs(narrow)][:3] == [32, 32, 64]
    assert [type(m) for m in narrow.classifier] == [nn.Linear, nn.ReLU, nn.Linear]


def test_mobilenetv2_depthwise_and_cifar_strides() -> None:
    model = create_model("mobilenetv2").eval()
    depthwise = [c for c in _convs(model) if c.groups > 1]
    assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    with torch.inference_mode():
        feats = model.features(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 1280, 4, 4)  # 8x downsampling on CIFAR


def test_densenet_concatenates_channels() -> None:
    growth, layers = 12, 6
    model = create_model("densenet_cifar", growth_rate=growth, block_config=[layers] * 3)
    channels = 2 * growth
    for _ in range(2):  # two blocks followed by a transition halving the channels
        channels = (channels + layers * growth) // 2
    assert model.classifier.in_features == channels + layers * growth
    block = model.features[0]
    x = torch.randn(1, 2 * growth, 8, 8)
    assert block(x).shape == (1, 2 * growth + layers * growth, 8, 8)
    assert torch.equal(block[0](x)[:, : 2 * growth], x)  # the input passes through the concat


def test_dsnet_default_shape_and_folded_size() -> None:
    """The default DSNet: 16-wide 3x3 patch stem + two stride-1 separable blocks at 9x9 + a 2x2
    grid head; 1,226 parameters once BN folds (1/50.3 of LeNet-5)."""
    from edgeslim.transforms.fold import fold_batchnorm

    torch.manual_seed(0)
    model = create_model("dsnet").eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16] * 6
    assert [c.stride[0] for c in convs] == [3, 1, 1, 1, 1, 1]
    assert [c.kernel_size[0] for c in convs] == [3, 3, 1, 3, 1, 2]
    x = torch.randn(3, 1, 28, 28)
    folded = fold_batchnorm(model, x)
    assert model.features(torch.randn(1, 1, 28, 28)).shape == (1, 16, 9, 9)
    assert sum(p.numel() for p in folded.parameters()) == 1226
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    rgb = create_model("dsnet", in_channels=3, input_size=32, num_classes=5).eval()
    assert rgb(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert rgb.default_input_size == (3, 32, 32)
    gap = fold_batchnorm(create_model("dsnet", head="gap").eval(), x)
    assert sum(p.numel() for p in gap.parameters()) == 1162


@pytest.mark.parametrize("size, stem, grid, cells", [
    (28, 3, 2, [(0, 5), (4, 9)]),   # 9x9 map: two overlapping 5-wide windows
    (28, 3, 3, [(0, 3), (3, 6), (6, 9)]),
    (32, 3, 2, [(0, 5), (5, 10)]),  # 10x10: it divides
    (28, 4, 2, [(0, 4), (3, 7)]),   # 7x7
])
def test_dsnet_grid_head_pools_the_cells_adaptive_pooling_would(size, stem, grid, cells) -> None:
    """The gdconv head averages exactly the cells of AdaptiveAvgPool2d(grid), then weighs each
    cell per channel; here with one-hot weights, so every output is one cell's mean."""
    torch.manual_seed(0)
    model = create_model("dsnet", input_size=size, stem_stride=stem, head_grid=grid).eval()
    pool, weigh = model.pool
    feats = torch.randn(2, 16, size // stem, size // stem)
    pooled = pool(feats)
    assert pooled.shape == (2, 16, grid, grid)
    for i, (a, b) in enumerate(cells):
        for j, (c, d) in enumerate(cells):
            torch.testing.assert_close(pooled[:, :, i, j], feats[:, :, a:b, c:d].mean((2, 3)))
    torch.testing.assert_close(pooled, nn.AdaptiveAvgPool2d(grid)(feats))
    with torch.no_grad():
        weigh.weight.zero_()
        weigh.weight[:, 0, grid - 1, 0] = 1.0  # bottom-left cell
    torch.testing.assert_close(weigh(pooled)[:, :, 0, 0], pooled[:, :, grid - 1, 0])


def test_dsnet_grid_head_exports_to_plain_onnx_pooling(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from edgeslim.export import export_onnx

    torch.manual_seed(0)
    model = create_model("dsnet").eval()
    x = torch.randn(1, 1, 28, 28)
    export_onnx(model, x, tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "AveragePool" in ops and "GatherND" not in ops
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"widths": [16, 16], "strides": [1, 2]}, "one stride"),
    ({"kernel_sizes": [3]}, "kernel size"),
    ({"stem_stride": 0}, "stem_stride"),
    ({"widths": [16, 0, 16]}, "positive"),
    ({"head": "gmp"}, "head must be 'gap' or 'gdconv'"),
    ({"head_grid": 10}, r"head_grid must be in \[1, 9\]"),
])
def test_dsnet_rejects_inconsistent_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("dsnet", **kwargs)
