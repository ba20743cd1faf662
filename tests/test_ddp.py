"""Two-process DDP on CPU (gloo): ranks agree, only rank 0 writes, sharding is exact.

Each worker sets the variables ``torchrun`` would set (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT), so the Trainer takes its real distributed path.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from edgeslim.train import TrainConfig, Trainer
from edgeslim.train.distributed import DistInfo, shard

WORLD = 2
EPOCHS = 2


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, 96, 16)]  # split 8/8 across ranks


def _val() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _data()[0]
    return _data() + [(x[:1], y[:1])]  # a 1-sample batch: one rank evaluates it, the other nothing


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 2))


def _cfg(out_dir: Path) -> TrainConfig:
    return TrainConfig(epochs=EPOCHS, lr=0.1, warmup_epochs=1, device="cpu", progress=False,
                       out_dir=str(out_dir), seed=3)


def _worker(rank: int, port: int, root: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = _model()
    seen: list[torch.Tensor] = []

    def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(x[:, 0].clone())  # which samples this rank trained on
        logits = m(x)
        return nn.functional.cross_entropy(logits, y), logits

    history = Trainer(model, _cfg(Path(root) / f"rank{rank}"), loss=loss).fit(_data(), _val())
    # test artefact next to (not inside) the run folders
    result = {"state": model.state_dict(), "history": history, "seen": torch.cat(seen)}
    torch.save(result, Path(root) / f"result{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    # the single-process reference run goes first: it also warms the lazy imports
    # (torch.optim pulls in torch._dynamo) that forked workers then inherit
    single = _model()
    history = Trainer(single, _cfg(root / "single")).fit(_data(), _val())
    torch.save({"state": single.state_dict(), "history": history}, root / "single.pt")
    # fork (where available) skips re-importing torch in each worker: seconds instead of tens
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(_free_port(), str(root)), nprocs=WORLD, start_method=method)
    return root


def test_ranks_end_with_identical_weights(ddp_run: Path) -> None:
    r0 = torch.load(ddp_run / "result0.pt", weights_only=True)
    r1 = torch.load(ddp_run / "result1.pt", weights_only=True)
    assert r0["state"].keys() == r1["state"].keys()
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    timing = {"images_per_s", "epoch_time_s"}
    for a, b in zip(r0["history"], r1["history"]):  # metrics are reduced over ranks
        assert {k: v for k, v in a.items() if k not in timing} == {
            k: v for k, v in b.items() if k not in timing
        }


def test_only_rank0_writes(ddp_run: Path) -> None:
    assert sorted(p.name for p in (ddp_run / "rank0").iterdir()) == ["last.pt", "metrics.jsonl"]
    assert not (ddp_run / "rank1").exists()
    ckpt = torch.load(ddp_run / "rank0" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == WORLD and len(ckpt["rng"]) == WORLD


def test_sharded_run_matches_single_process(ddp_run: Path) -> None:
    """Averaging gradients of equal half-batches equals the full-batch gradient."""
    ref = torch.load(ddp_run / "single.pt", weights_only=True)
    hist = ref["history"]
    r0 = torch.load(ddp_run / "result0.pt", weights_only=True)
    for k, v in ref["state"].items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-5, atol=1e-6)
    for a, b in zip(hist, r0["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["train_accuracy"] == a["train_accuracy"]
        assert b["val_accuracy"] == a["val_accuracy"]  # val shards cover every sample once
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)


def test_rank_shards_are_disjoint_and_skip_tiny_batches() -> None:
    batches = [(torch.arange(5), torch.arange(5)), (torch.arange(1), torch.arange(1))]
    parts = [list(shard(batches, DistInfo(rank=r, world_size=3))) for r in range(3)]
    assert all(len(p) == 1 for p in parts)  # the 1-sample batch is skipped on every rank
    got = torch.cat([p[0][1] for p in parts])
    assert torch.equal(got, torch.arange(5))  # disjoint slices covering the batch, in order
    assert shard(batches, DistInfo()) is batches
    # evaluation keeps tiny batches: rank 0 gets the sample, the others an empty slice
    keep = [list(shard(batches, DistInfo(rank=r, world_size=3), skip_small=False)) for r in range(3)]
    assert [len(k[1][1]) for k in keep] == [1, 0, 0]


def test_each_rank_trains_on_a_disjoint_half(ddp_run: Path) -> None:
    seen = [torch.load(ddp_run / f"result{r}.pt", weights_only=True)["seen"] for r in range(WORLD)]
    full = torch.cat([x[:, 0] for x, _ in _data()])
    assert [len(s) for s in seen] == [len(full) * EPOCHS // WORLD] * WORLD
    for epoch in range(EPOCHS):  # the two halves of every epoch form the data set exactly
        n = len(full) // WORLD
        both = torch.cat([s[epoch * n : (epoch + 1) * n] for s in seen])
        assert torch.equal(both.sort().values, full.sort().values)
