"""Data-parallel training across processes launched by ``torchrun``.

When ``WORLD_SIZE > 1`` is in the environment the Trainer joins the process
group (``gloo`` on CPU, ``nccl`` on CUDA), wraps the model in
``DistributedDataParallel`` and feeds every rank a disjoint share of each batch.

How batches are sharded: every rank iterates the *same* loader in the same
order (``set_epoch``-seeded shuffling makes this hold for ``TensorLoader`` and
for plain ``DataLoader`` s, see ``engine.set_loader_epoch``) and keeps slice
``rank`` of ``tensor_split(world_size)`` of each global batch. This works for
any iterable of ``(x, y)`` batches with no sampler surgery, and DDP's gradient
averaging over equal slices equals the gradient of the full batch, so the
learning rate needs no rescaling. A batch with fewer samples than ranks is
skipped on *all* ranks (they must stay in lock-step). The cost is that every
rank loads the full batch; for heavy ``DataLoader`` pipelines pass a loader
whose sampler is a ``DistributedSampler`` instead: it is detected and used
as-is (no slicing), and its ``set_epoch`` is called every epoch.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files and shows progress."""
        return self.rank == 0


def env_info() -> DistInfo:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as set by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    return DistInfo(rank=rank, world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", rank)))


def setup(info: DistInfo, device: torch.device) -> None:
    """Join the default process group once per process (no-op when not distributed)."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    atexit.register(_cleanup)


def _cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


class RankShards:
    """Iterate a loader of global batches, yielding this rank's slice of each.

    Args:
        loader: iterable of global ``(x, y)`` batches, identical on every rank.
        info: this rank's place in the job.
        skip_small: drop batches with fewer samples than ranks (training: every
            rank must run the same number of backward passes). Evaluation keeps
            them, so a rank may get an empty slice and every sample counts once.
    """

    def __init__(self, loader: Iterable[Any], info: DistInfo, skip_small: bool = True) -> None:
        self.loader = loader
        self.info = info
        self.skip_small = skip_small

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        world, rank = self.info.world_size, self.info.rank
        for x, y in self.loader:
            if self.skip_small and len(y) < world:  # identical on every rank: all skip it
                continue
            yield x.tensor_split(world)[rank], y.tensor_split(world)[rank]


def shard(loader: Iterable[Any], info: DistInfo, *, skip_small: bool = True) -> Iterable[Any]:
    """This rank's view of ``loader`` (the loader itself when not distributed)."""
    if not info.enabled or isinstance(getattr(loader, "sampler", None), DistributedSampler):
        return loader
    return RankShards(loader, info, skip_small)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op when not distributed); returns ``t``."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_grads(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average gradients of parameters outside DDP (e.g. loss-hook adapters)."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(info.world_size)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj_rank0, obj_rank1, ...]`` on every rank (``[obj]`` when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
