"""Exact merges and DeepRebirth streamline merging."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.modelinfo import info
from edgeslim.errors import ConfigError
from edgeslim.transforms.merge import (
    MergeReport,
    merge_branches,
    merge_linear_chains,
    remove_identities,
    streamline_merge,
)
from edgeslim.transforms.rebirth import PoolSpec, reborn_conv

TOL = 1e-5


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    a.eval()
    b.eval()
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def count(model: nn.Module, *types: type) -> int:
    return sum(isinstance(m, types) for m in model.modules())


def randomize_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


# --------------------------------------------------------------------------- identities


def test_remove_identities_keeps_outputs_and_state_dict_keys() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.ReLU(), nn.Identity(), nn.Linear(8, 3)).eval()
    lean = remove_identities(model)
    assert count(lean, nn.Dropout, nn.Identity) == 0
    assert len(lean) == 3
    assert set(lean.state_dict()) == set(model.state_dict())  # "0.*" and "4.*" keep their names
    x = torch.randn(5, 8)
    assert max_diff(model, lean, x) == 0.0
    assert info(lean).removed_identities == ["1", "3"]


# --------------------------------------------------------------------------- linear chains


class Chains(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.drop = nn.Dropout2d(0.2)
        self.point = nn.Conv2d(6, 5, 1)  # conv -> (dropout) -> 1x1: mergeable
        self.point2 = nn.Conv2d(5, 6, 1, bias=False)
        self.conv_pad = nn.Conv2d(6, 4, 3, padding=1)  # bias-free 1x1 -> zero-padded conv: mergeable
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 32), nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_pad(self.point2(torch.relu(self.point(self.drop(self.conv3(x))))))
        return self.fc3(self.fc2(self.fc1(y.flatten(1))))


def test_merge_linear_chains_is_exact() -> None:
    torch.manual_seed(0)
    model = Chains().eval()
    x = torch.randn(3, 4, 8, 8)
    merged = merge_linear_chains(model, x)
    pairs = {rec.inputs for rec in info(merged).linear_merges}
    assert ("conv3", "point") in pairs and ("point2", "conv_pad") in pairs
    assert ("fc1", "fc2") in pairs or ("fc2", "fc3") in pairs
    assert sum(isinstance(m, nn.Linear) for m in merged.modules()) == 1  # fc1..fc3 -> one Linear
    assert count(merged, nn.Conv2d) == 2
    assert max_diff(model, merged, x) <= TOL


def test_padded_conv_after_biased_1x1_is_not_merged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1)).eval()
    x = torch.randn(2, 3, 6, 6)
    merged = merge_linear_chains(model, x)
    assert info(merged).linear_merges == []  # the zero padding ring would see the bias
    model[0].bias.data.zero_()
    merged = merge_linear_chains(model, x)
    assert len(info(merged).linear_merges) == 1
    assert max_diff(model, merged, x) <= TOL


def test_reflect_padding_commutes_with_a_biased_1x1_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")).eval()
    x = torch.randn(2, 3, 6, 6)
    merged = merge_linear_chains(model, x)
    assert len(info(merged).linear_merges) == 1
    assert max_diff(model, merged, x) <= TOL


def test_bottleneck_kept_unless_asked_then_merged_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 4), nn.Linear(4, 64)).eval()
    x = torch.randn(3, 64)
    assert info(merge_linear_chains(model, x)).linear_merges == []
    merged = merge_linear_chains(model, x, only_if_cheaper=False)
    assert len(info(merged).linear_merges) == 1
    assert max_diff(model, merged, x) <= TOL


def test_grouped_conv_then_pointwise_merges_when_forced() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(2, 4, 7, 7)
    merged = merge_linear_chains(model, x, only_if_cheaper=False)
    assert merged[0].groups == 1 and merged[0].out_channels == 2
    assert max_diff(model, merged, x) <= TOL


# --------------------------------------------------------------------------- branches


class TwoBranch(nn.Module):
    """Inception-like: parallel convs concatenated, and parallel convs summed."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 3, 3, padding=1)
        self.b = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.p = nn.MaxPool2d(3, stride=1, padding=1)
        self.c = nn.Conv2d(12, 6, 1)
        self.d = nn.Conv2d(12, 6, 1, bias=False)
        self.e = nn.Conv2d(12, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x), self.p(x)], dim=1)
        return self.c(y) + (self.d(y) + self.e(y))


def test_merge_branches_concat_and_sum_are_exact() -> None:
    torch.manual_seed(0)
    model = TwoBranch().eval()
    x = torch.randn(2, 4, 9, 9)
    merged = merge_branches(model, x)
    kinds = [r.kind for r in info(merged).branch_merges]
    assert kinds.count("branch_concat") == 1 and kinds.count("branch_sum") == 2
    assert count(merged, nn.Conv2d) == 2
    assert max_diff(model, merged, x) <= TOL


# --------------------------------------------------------------------------- rebirth geometry


@pytest.mark.parametrize(
    "k,s,p,d,pool,size",
    [(5, 1, 2, 1, 2, 28), (3, 1, 1, 1, 2, 15), (3, 2, 1, 1, 2, 17), (5, 1, 0, 2, 3, 20), (3, 1, 0, 1, 4, 31)],
)
def test_reborn_conv_matches_pooled_shape_and_is_exact_for_avgpool(k, s, p, d, pool, size) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, k, stride=s, padding=p, dilation=d)
    block = nn.Sequential(conv, nn.AvgPool2d(pool))
    new = reborn_conv(conv, None, PoolSpec("avg", (pool, pool), (pool, pool)), "mean")
    assert new.stride == (s * pool, s * pool)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert new(x).shape == block(x).shape
        assert float((new(x) - block(x)).abs().max()) <= TOL


# --------------------------------------------------------------------------- streamline merge


def lenet_like() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10),
    )


def pool_nodes(gm: torch.fx.GraphModule) -> int:
    pools = (nn.MaxPool2d, nn.AvgPool2d)
    return sum(n.op == "call_module" and isinstance(gm.get_submodule(n.target), pools) for n in gm.graph.nodes)


@pytest.mark.parametrize("include_exact", [True, False])
def test_streamline_merge_lenet_rebirth(include_exact: bool) -> None:
    torch.manual_seed(0)
    model = randomize_bn(lenet_like())
    x = torch.randn(24, 1, 16, 16)
    merged, report = streamline_merge(model, x[:2], x, steps=20, lr=3e-3, include_exact=include_exact,
                                      return_report=True)
    assert isinstance(report, MergeReport) and info(merged).merge is report
    # Without the exact stage the BN is absorbed by the rebirth of its block instead of folded.
    assert report.count("fold_bn") == int(include_exact) and report.count("rebirth") == 2
    assert pool_nodes(merged) == 0 and count(merged, nn.BatchNorm2d) == 0
    assert count(merged, nn.Dropout) == int(not include_exact)
    assert [m.stride for m in merged.modules() if isinstance(m, nn.Conv2d)] == [(2, 2), (2, 2)]
    with torch.no_grad():
        assert merged(x).shape == model(x).shape
    for rec in report.records:
        if rec.kind == "rebirth":
            assert len(rec.history) == 20
            assert rec.mse_final < rec.mse_init  # training reduced the block MSE
            assert sum(rec.history[-5:]) < sum(rec.history[:5])
    assert "rebirth" in report.summary() and report.to_dict()["records"]


def test_streamline_merged_model_trains() -> None:
    torch.manual_seed(0)
    model = randomize_bn(lenet_like())
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))
    merged = streamline_merge(model, x[:2], [(x, y)], steps=5)
    merged.train()
    opt = torch.optim.SGD(merged.parameters(), lr=0.05)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(merged(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


class Net(nn.Module):
    """Residual block, two-branch concat, functional conv->avgpool; all exactly mergeable."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.res, self.res_bn = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.br1, self.br2 = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
        self.down = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.stem(x)))
        y = F.relu(y + self.res_bn(self.res(y)))
        y = torch.cat([self.br1(y), self.br2(y)], 1)
        return self.head(F.avg_pool2d(self.down(y), 2))


def test_streamline_exact_stage_is_exact_and_exports(tmp_path) -> None:
    from edgeslim.export import export_onnx

    torch.manual_seed(0)
    model = randomize_bn(Net())
    x = torch.randn(4, 3, 8, 8)
    merged, report = streamline_merge(model, x, x, rebirth=False, return_report=True)
    assert {r.kind for r in report.records} >= {"fold_bn", "branch_concat", "pool_exact", "identity"}
    assert all(r.exact for r in report.records)
    assert count(merged, nn.BatchNorm2d, nn.Dropout) == 0
    assert max_diff(model, merged, x) <= TOL
    assert export_onnx(merged, x, tmp_path / "merged.onnx", tol=1e-4) <= 1e-4


def test_streamline_rebirth_model_exports_to_onnx(tmp_path) -> None:
    from edgeslim.export import export_onnx

    torch.manual_seed(0)
    model = randomize_bn(lenet_like())
    x = torch.randn(16, 1, 16, 16)
    merged = streamline_merge(model, x[:2], (x, torch.zeros(16)), steps=3)
    assert export_onnx(merged, x[:4], tmp_path / "reborn.onnx", tol=1e-4) <= 1e-4


def test_streamline_merge_rejects_bad_settings_and_leaves_input_alone() -> None:
    model = randomize_bn(lenet_like())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 16, 16)
    with pytest.raises(ConfigError):
        streamline_merge(model, x, x, steps=-1)
    with pytest.raises(ConfigError, match="no batches"):
        streamline_merge(model, x, [], steps=1)
    streamline_merge(model, x, x, steps=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert count(model, nn.BatchNorm2d) == 1
