"""EasiEdge ADMM pruning: the projection, convergence of the primal residual, the final
physically pruned model (channel counts, forward, ONNX parity) and exact resume."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import edgeslim
import torch
from torch import nn

from edgeslim.modelinfo import info
from edgeslim.errors import ConfigError
from edgeslim.graph import build_dependency_graph
from edgeslim.prune import Budget, get_importance, plan_removal, prune_channels_
from edgeslim.prune.admm import ADMMState, admm_prune, collect_slabs

TARGET = 0.5


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 4),
    )


def _data(n: int = 256, batch: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1, :4].mean((1, 2)) > 0).long()
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


FAST = dict(admm_iterations=4, admm_epochs=4, rho=1.0, lr=0.02, device="cpu", calib_batches=1)


@pytest.fixture(scope="module")
def pruned():
    """A briefly trained toy net (ADMM starts from a trained model) and its ADMM-pruned copy."""
    from edgeslim.train import TrainConfig, Trainer

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    model, data = _net(), _data()
    Trainer(model, TrainConfig(epochs=10, lr=0.05, progress=False, device="cpu")).fit(data)
    out = admm_prune(model, data[0][0][:2], data, target_filters=TARGET, finetune_epochs=1,
                     val_data=data[:2], **FAST)
    torch.set_num_threads(old)
    return model, out, data


def test_projection_keeps_exactly_k_filters_and_equals_hard_pruning():
    model, data = _net(), _data()
    x = data[0][0]
    graph = build_dependency_graph(model, x[:1], protect_first=True)
    n = len(graph.prunable_classes())
    removed = plan_removal(graph, get_importance("l1")(graph, model), Budget(channels=n // 2))
    state = ADMMState(collect_slabs(graph), rho=1.0)
    Z = state.project([s.param.detach() for s in state.slabs], removed)
    nonzero = set()
    for slab, z in zip(state.slabs, Z):
        rows = z.movedim(slab.dim, 0).reshape(z.shape[slab.dim], -1).abs().sum(1) > 0
        nonzero |= {int(c) for c in slab.classes[rows & slab.prunable]}
    assert len(nonzero) == n - n // 2
    assert not nonzero & set(np.flatnonzero(removed).tolist())
    # Zeroing a filter's variables (conv rows, BN scale and shift) is exactly removing it.
    model.eval()
    with state.weights(Z), torch.no_grad():
        masked = model(x)
    cut = copy.deepcopy(model)
    prune_channels_(cut, build_dependency_graph(cut, x[:1], protect_first=True), removed)
    with torch.no_grad():
        torch.testing.assert_close(cut(x), masked, rtol=1e-5, atol=1e-6)


def test_primal_residual_shrinks(pruned):
    history = [r for r in info(pruned[1]).admm_history if r["stage"] == "admm"]
    assert [r["iteration"] for r in history] == [1, 2, 3, 4]
    primal = [r["primal_residual"] for r in history]
    assert primal[-1] < 0.5 * primal[0]
    assert history[0]["rho"] == 1.0
    for now, nxt in zip(history, history[1:]):  # grows 1.5x unless the accuracy guard held it
        assert nxt["rho"] == pytest.approx(now["rho"] * (1.0 if now["rho_held"] else 1.5))
    assert all(np.isfinite(r["dual_residual"]) and r["dual_residual"] >= 0 for r in history)
    assert {"train_loss", "train_accuracy", "val_accuracy", "val_accuracy_hard"} <= set(history[0])


def test_final_model_has_the_planned_channels_and_exports(pruned, tmp_path):
    from edgeslim.export import export_onnx

    model, out, data = pruned
    x = data[0][0]
    g0 = build_dependency_graph(model, x[:1], protect_first=True)
    n0 = len(g0.prunable_classes())
    g1 = build_dependency_graph(out, x[:1], protect_first=True)
    kept = len(g1.prunable_classes())
    assert kept == n0 - round(TARGET * n0)
    hard = info(out).admm_history[-2]
    assert hard["stage"] == "hard_pruned" and hard["kept_filters"] == kept
    assert out[0].out_channels == model[0].out_channels  # protect_first
    assert out[3].out_channels + out[8].out_features == kept
    assert model[3].out_channels == 12 and model[8].out_features == 16  # original untouched
    assert out(x).shape == model(x).shape
    diff = export_onnx(out, x[:2], tmp_path / "admm.onnx")
    assert diff <= 1e-4
    assert info(out).plans and "groups" in info(out).plans[-1]


@pytest.mark.parametrize("target", [dict(target_flops=0.4), dict(target_params=0.5)])
def test_cost_targets_are_met_in_profiler_units(target: dict):
    """``target_flops``/``target_params`` are fractions of what ``edgeslim.profile`` counts."""
    from edgeslim.profile import count_flops, count_params

    model, data = _net(), _data(64)
    x = data[0][0][:1]
    out = admm_prune(model, x, data, finetune=None, admm_iterations=1, admm_epochs=1, device="cpu",
                     calib_batches=1, **target)
    if "target_flops" in target:
        assert count_flops(out, x)[0] <= 0.4 * count_flops(model, x)[0]
    else:
        assert count_params(out) <= 0.5 * count_params(model)
    assert out(x).shape == (1, 4)


def test_progressive_projection_reaches_the_target_and_stays():
    model, data = _net(), _data(64)
    n0 = len(build_dependency_graph(model, data[0][0][:1], protect_first=True).prunable_classes())
    out = admm_prune(model, data[0][0][:1], data, target_filters=TARGET, progressive=3, finetune=None,
                     **(FAST | dict(admm_iterations=4)))
    kept = [r["kept_filters"] for r in info(out).admm_history if r["stage"] == "admm"]
    final = n0 - round(TARGET * n0)
    assert kept[0] > kept[1] == final and kept[1:] == [final] * 3  # Z0 went 1/3, Z1 2/3, Z2.. all
    assert kept[0] == n0 - round(TARGET * 2 / 3 * n0)


def test_auto_rho_is_one_e_fold_per_w_step():
    """rho="auto": lr * rho * steps / (1 - momentum) = 1 for the W-step's SGD."""
    model, data = _net(), _data(64)  # 2 batches
    out = admm_prune(model, data[0][0][:1], data, target_filters=TARGET, finetune=None, admm_iterations=2,
                     admm_epochs=2, device="cpu", calib_batches=1, lr=0.02, momentum=0.8, accuracy_guard=None)
    rhos = [r["rho"] for r in info(out).admm_history if r["stage"] == "admm"]
    assert rhos == pytest.approx([(1 - 0.8) / (0.02 * 2), 1.5 * (1 - 0.8) / (0.02 * 2)])


def test_accuracy_guard_holds_rho():
    """rho grows by the factor after every W-step that kept the training accuracy within the guard
    of the accuracy before ADMM, and stays where it did not."""
    model, data = _net(), _data(64)
    out = admm_prune(model, data[0][0][:1], data, target_filters=0.75, accuracy_guard=0.0, finetune=None,
                     **(FAST | dict(admm_iterations=4)))
    history = [r for r in info(out).admm_history if r["stage"] == "admm"]
    for now, nxt in zip(history, history[1:]):
        held = now["train_accuracy"] < now["reference_accuracy"]
        assert now["rho_held"] == held
        assert nxt["rho"] == pytest.approx(now["rho"] * (1.0 if held else 1.5))


def test_resume_continues_exactly(tmp_path, monkeypatch):
    import edgeslim.prune.admm as admm

    model, data = _net(), _data(128)
    opts = dict(FAST, admm_iterations=3, admm_epochs=3, finetune_epochs=1, target_filters=TARGET)
    full = admm_prune(model, data[0][0][:2], data, **opts)

    real = admm._iteration

    def crash_in_third(run, k, steps):
        if k == 2:
            raise KeyboardInterrupt
        return real(run, k, steps)

    monkeypatch.setattr(admm, "_iteration", crash_in_third)
    with pytest.raises(KeyboardInterrupt):
        admm_prune(model, data[0][0][:2], data, out_dir=tmp_path, **opts)
    monkeypatch.setattr(admm, "_iteration", real)
    resumed = admm_prune(model, data[0][0][:2], data, out_dir=tmp_path, resume=True, **opts)
    assert [r["iteration"] for r in info(resumed).admm_history if r["stage"] == "admm"] == [1, 2, 3]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (tmp_path / "admm_state.pt").exists() and (tmp_path / "finetune" / "last.pt").exists()


def test_kd_finetune_runs():
    model, data = _net(), _data(64)
    out = admm_prune(model, data[0][0][:2], data, finetune="kd", finetune_epochs=1,
                     admm_iterations=1, admm_epochs=1, device="cpu", calib_batches=1,
                     finetune_options={"T": 2.0})
    assert info(out).admm_history[-1]["stage"] == "finetuned"
    assert out(data[0][0]).shape == (32, 4)


@pytest.mark.parametrize("bad", [dict(target_filters=1.0), dict(target_flops=0.0), dict(rho=0.0),
                                 dict(rho_schedule=[1.0]), dict(lrr=0.1), dict(target_params=1.5),
                                 dict(target_flops=0.5, target_params=0.5), dict(progressive=4),
                                 dict(accuracy_guard=2.0)])
def test_bad_settings_are_config_errors(bad):
    model, data = _net(), _data(32)
    with pytest.raises(ConfigError):
        admm_prune(model, data[0][0][:1], data, admm_iterations=2, **bad)


def test_the_last_support_is_chosen_on_w_not_w_plus_u():
    """A dual that would pull a cut filter back in (huge U) does not change the physical cut:
    the network is pruned where W itself has converged (Pi(W))."""
    import edgeslim.prune.admm as admm

    model, data = _net(), _data(64)
    cfg = admm.ADMMConfig(target_filters=TARGET, criterion="l1", rho=1.0, admm_iterations=2, admm_epochs=2,
                          finetune=None, calib_batches=1)
    run = admm._prepare(cfg, copy.deepcopy(model), data[0][0][:1], data, None, None,
                        admm._train_options({}, lr=0.02, schedule="constant", progress=False), None)
    admm._admm_phase(run, resume=False)
    cut = run.state.removed.clone()
    with torch.no_grad():  # W has converged to Z: the cut filters are zero
        for slab, z in zip(run.state.slabs, run.state.project([s.param for s in run.state.slabs], cut)):
            slab.param.copy_(z)
    c = int(np.flatnonzero(cut.numpy())[0])
    for slab, u in zip(run.state.slabs, run.state.U):  # what W + U would now rank first
        u += 100.0 * slab.rows((slab.classes == c).to(u.dtype))
    with run.state.weights([s.param.detach() + u for s, u in zip(run.state.slabs, run.state.U)]):
        on_w_plus_u = plan_removal(run.graph, get_importance("l1")(run.graph, run.net),
                                   Budget(channels=int(cut.sum())))
    assert not on_w_plus_u[c]  # the dual alone would bring it back
    admm._hard_prune(run, (1, 4))
    assert bool(run.state.removed[c]) and torch.equal(run.state.removed, cut)
    assert run.history[-1]["changed_from_last_z"] == 0


def test_projection_keeps_the_previous_support_unless_the_new_one_is_better():
    from edgeslim.prune.admm import _better_support

    model = _net()
    graph = build_dependency_graph(model, _data(32)[0][0][:1], protect_first=True)
    prunable = np.asarray(graph.prunable_classes())
    scores = np.full(len(graph.class_locked), np.nan)
    scores[prunable] = np.arange(len(prunable), dtype=float)
    a, b = np.zeros_like(scores, dtype=bool), np.zeros_like(scores, dtype=bool)
    a[prunable[:5]] = True  # cuts the least important five
    b[prunable[5:10]] = True
    budget = Budget(channels=5)
    assert _better_support(graph, scores, budget, candidate=b, previous=a) is a
    assert _better_support(graph, scores, budget, candidate=a, previous=b) is a
    assert _better_support(graph, scores, Budget(channels=6), candidate=b, previous=a) is b  # a too small now


def _stair(module: nn.Module, shape: tuple) -> float:
    """0.1 ms a conv/linear + work, output channels padded to 4 (the fake runtime's staircase)."""
    if isinstance(module, nn.Conv2d):
        return 0.1 + 1e-4 * module.in_channels * -(-module.out_channels // 4) * 4 * shape[2] * shape[3]
    if isinstance(module, nn.Linear):
        return 0.1 + 1e-4 * module.in_features * module.out_features
    return 0.0


def test_latency_target_is_met_on_the_fake_runtime(tmp_path, monkeypatch):
    """The projection uses the latency model; the result is measured and meets the target,
    every Z-step's support is predicted within the budget, and the plan is fixed."""
    from edgeslim.profile import CostRuntime

    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path))
    model, data = _net(), _data()
    rt = CostRuntime(_stair)
    x = data[0][0][:1]
    base = rt.time(model, (x,), 1, 1, 0)
    out = admm_prune(model, x, data, target_speedup=1.5, runtime=rt, finetune=None, **FAST)
    info = edgeslim.info(out).latency.to_dict()
    assert info["baseline_ms"] == pytest.approx(base) and info["target_ms"] == pytest.approx(base / 1.5)
    assert info["measured_ms"] <= info["target_ms"] + 1e-9 and info["met"]
    assert info["predicted_ms"] == pytest.approx(info["measured_ms"])  # an additive runtime: exact
    assert rt.time(out, (x,), 1, 1, 0) == pytest.approx(info["measured_ms"])
    widths = [m.out_channels for m in out.modules() if isinstance(m, nn.Conv2d)]
    assert widths[0] == 8 and widths[1] % 4 == 0 and widths[1] < 12  # protected; on the staircase
    assert out(x).shape == (1, 4)


def test_latency_target_errors_like_prune():
    from edgeslim.profile import CostRuntime
    from edgeslim.prune.latency_planner import LatencyTargetError

    model, data = _net(), _data()
    with pytest.raises(ConfigError, match="give one target"):
        admm_prune(model, data[0][0][:1], data, target_speedup=2, target_flops=0.5)
    with pytest.raises(ConfigError, match="target_speedup=0.5 is impossible"):
        admm_prune(model, data[0][0][:1], data, target_speedup=0.5)
    with pytest.raises(LatencyTargetError, match=r"fastest model .* predicted at [0-9.]+ ms"):
        admm_prune(model, data[0][0][:1], data, target_speedup=100, runtime=CostRuntime(_stair),
                   finetune=None, **FAST)
