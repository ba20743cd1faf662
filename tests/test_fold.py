"""BN folding: exact in eval mode, only where a BN directly follows its layer."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgeslim.modelinfo import info
from edgeslim.errors import UnsupportedModelError
from edgeslim.transforms.fold import fold_batchnorm

TOL = 1e-5


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters, then eval()."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.2)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=gen))
                m.bias.data.copy_(torch.randn(n, generator=gen))
    return model.eval()


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


CASES = {
    "conv_bn_relu": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
                     (2, 3, 12, 12)),
    "conv_no_bias": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)), (2, 3, 12, 12)),
    "grouped": (lambda: nn.Sequential(nn.Conv2d(8, 12, 3, groups=4, stride=2), nn.BatchNorm2d(12)), (2, 8, 13, 13)),
    "depthwise": (lambda: nn.Sequential(nn.Conv2d(6, 6, 3, groups=6, padding=1, bias=False), nn.BatchNorm2d(6),
                                        nn.ReLU6(), nn.Conv2d(6, 10, 1, bias=False), nn.BatchNorm2d(10)), (2, 6, 9, 9)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(4, 6, 5, dilation=2), nn.BatchNorm1d(6)), (3, 4, 30)),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)), (2, 2, 6, 6, 6)),
    "linear_bn": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                        nn.Linear(16, 5, bias=False), nn.BatchNorm1d(5, affine=False)), (4, 3, 4, 4)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fold_is_exact_and_removes_every_bn(name: str) -> None:
    build, shape = CASES[name]
    torch.manual_seed(0)
    model = randomize_bn(build())
    x = torch.randn(shape)
    n_bn = count_bn(model)
    folded = fold_batchnorm(model, x)
    assert count_bn(folded) == 0
    assert len(info(folded).fold.folded) == n_bn
    assert max_diff(model, folded, x) <= TOL
    assert count_bn(model) == n_bn  # the input model is untouched


class Residual(nn.Module):
    """conv-bn-relu-conv-bn + skip, plus a conv whose output feeds a BN *and* the add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv3, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        z = self.conv3(x)
        return torch.relu(y + x) + self.bn3(z) + z  # conv3's output has two users


def test_fold_residual_skips_a_layer_output_with_two_users() -> None:
    torch.manual_seed(0)
    model = randomize_bn(Residual())
    x = torch.randn(2, 4, 8, 8)
    folded = fold_batchnorm(model, x)
    assert {p.bn for p in info(folded).fold.folded} == {"bn1", "bn2"}
    assert isinstance(folded.bn3, nn.BatchNorm2d)  # not foldable: conv3 output is used twice
    assert [bn for bn, _ in info(folded).fold.skipped] == ["bn3"]
    assert max_diff(model, folded, x) <= TOL


class SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.conv(x)


def test_shared_conv_is_not_folded() -> None:
    model = randomize_bn(SharedConv())
    x = torch.randn(2, 3, 6, 6)
    folded = fold_batchnorm(model, x)
    assert info(folded).fold.folded == []
    assert max_diff(model, folded, x) <= TOL


def test_bn1d_over_linear_on_3d_input_is_not_folded() -> None:
    # BatchNorm1d normalises dim 1 (3 steps); the Linear's 4 features are the last dim.
    model = randomize_bn(nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(3)))
    x = torch.randn(5, 3, 8)
    folded = fold_batchnorm(model, x)
    assert info(folded).fold.folded == [] and count_bn(folded) == 1
    assert max_diff(model, folded, x) <= TOL


class Untraceable(nn.Module):
    """Data-dependent control flow at the top; traceable Sequential inside."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if y.mean() > 10:  # fx can't trace this
            y = y * 2
        return self.bn(self.conv(y))


def test_untraceable_model_strict_raises_and_lenient_folds_what_is_provable() -> None:
    torch.manual_seed(0)
    model = randomize_bn(Untraceable())
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedModelError, match="bn"):
        fold_batchnorm(model, x)
    with pytest.warns(UserWarning, match="strict=False"):
        folded = fold_batchnorm(model, x, strict=False)
    assert [(p.layer, p.bn) for p in info(folded).fold.folded] == [("block.0", "block.1")]
    assert isinstance(folded.bn, nn.BatchNorm2d)
    assert max_diff(model, folded, x) <= TOL


def test_folded_model_keeps_train_flag_and_trains() -> None:
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2)))
    x = torch.randn(4, 3, 6, 6)
    model(x)  # materialise the lazy layer
    model.train()
    folded = fold_batchnorm(model, x)
    assert folded.training
    loss = folded(x).pow(2).mean()
    loss.backward()
    assert folded[0].bias.grad is not None  # the bias added by folding is a trainable parameter


def test_folded_model_exports_to_onnx_with_parity(tmp_path) -> None:
    from edgeslim.export import export_onnx

    torch.manual_seed(0)
    model = randomize_bn(CASES["depthwise"][0]())
    x = torch.randn(2, 6, 9, 9)
    folded = fold_batchnorm(model, x)
    diff = export_onnx(folded, x, tmp_path / "folded.onnx", tol=1e-4)
    assert diff <= 1e-4
    assert (tmp_path / "folded.onnx").is_file()
