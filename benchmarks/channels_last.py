"""Training steps in NHWC (``TrainConfig(channels_last="auto")``, the default) against NCHW on CPU.

For each model: ``Trainer.fit`` for one epoch of ``--steps`` synthetic batches (batch 128, SGD),
once with ``channels_last=False`` and once with ``"auto"``, alternating over ``--rounds`` rounds so
load on a shared machine hits both alike; the median step time of each and their ratio.
``dsnet`` is the README main job's student (``create_model("dsnet", in_channels=1)``: 1x28x28).

Distillation (``KD_STUDENTS``): the same, with a ``Distiller`` (kd + ce) from the 431K ``lenet5_caffe``
as the loss, in three arms: NCHW, ``"auto"`` with the teacher left in NCHW (as before the Trainer
told the distiller its format), and ``"auto"`` with the teacher in NHWC too. ``pm_student`` is the
shape the prune + merge recipe distils in its weight-pruning stage (merged and filter-pruned
``lenet5_caffe``: two stride-2 6x6 convs of 16 channels, 256-96-10).

Run:  PYTHONPATH=src python benchmarks/channels_last.py [--threads 2] [--rounds 5]
Writes benchmarks/results/channels_last.json.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from edgeslim.distill import Distiller
from edgeslim.io import atomic_write_json
from edgeslim.models import create_model
from edgeslim.profile.runtimes import cpu_model
from edgeslim.train import TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results" / "channels_last.json"
#: row name -> (zoo name, create_model keywords, input shape, steps per epoch)
MODELS = {"dsnet": ("dsnet", {"in_channels": 1}, (1, 28, 28), 40), "lenet5": ("lenet5", {}, (1, 28, 28), 40),
          "lenet5_caffe": ("lenet5_caffe", {}, (1, 28, 28), 20), "resnet20": ("resnet20", {}, (3, 32, 32), 6),
          "vgg16x0.25": ("vgg16", {"width_mult": 0.25}, (3, 32, 32), 10)}


def epoch_ms_per_step(name: str, channels_last: object, steps: int, seed: int = 0) -> tuple[float, bool]:
    zoo, kw, shape, _ = MODELS[name]
    torch.manual_seed(seed)
    model = create_model(zoo, **kw)
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(128, *shape, generator=g), torch.randint(0, 10, (128,), generator=g)) for _ in range(steps)]
    seen: list = []
    probe = type("Probe", (), {"on_step_end": lambda self, t: seen.append(t._nhwc)})()
    cfg = TrainConfig(epochs=1, lr=0.01, device="cpu", progress=False, channels_last=channels_last)
    t0 = time.perf_counter()
    Trainer(model, cfg, callbacks=[probe]).fit(data)
    return (time.perf_counter() - t0) / steps * 1e3, bool(seen and all(seen))


KD_STUDENTS = ("pm_student", "lenet5")
KD_ARMS = ("nchw", "auto_teacher_nchw", "auto")


class _TeacherKeepsFormat(Distiller):
    """The distiller as it was before ``set_memory_format``: the teacher stays NCHW."""

    def set_memory_format(self, channels_last: bool) -> None:
        pass


def _kd_student(name: str) -> nn.Module:
    if name == "lenet5":
        return create_model("lenet5")
    return nn.Sequential(nn.Conv2d(1, 16, 6, stride=2), nn.ReLU(), nn.Conv2d(16, 16, 6, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(256, 96), nn.ReLU(), nn.Linear(96, 10))


def kd_ms_per_step(name: str, arm: str, steps: int, seed: int = 0) -> float:
    torch.manual_seed(seed)
    student, teacher = _kd_student(name), create_model("lenet5_caffe").eval()
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g))
            for _ in range(steps)]
    hook = (_TeacherKeepsFormat if arm == "auto_teacher_nchw" else Distiller)(student, teacher, "kd:0.5,ce:0.5")
    cfg = TrainConfig(epochs=1, lr=0.01, device="cpu", progress=False,
                      channels_last=False if arm == "nchw" else "auto")
    t0 = time.perf_counter()
    Trainer(student, cfg, loss=hook).fit(data)
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--kd-students", nargs="*", default=list(KD_STUDENTS), choices=list(KD_STUDENTS))
    ap.add_argument("--kd-steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for name in args.models:
        steps = MODELS[name][3]
        epoch_ms_per_step(name, "auto", 2)  # warm-up: kernels, allocator
        nchw, nhwc, used = [], [], []
        for _ in range(args.rounds):
            nchw.append(epoch_ms_per_step(name, False, steps)[0])
            ms, on = epoch_ms_per_step(name, "auto", steps)
            nhwc.append(ms)
            used.append(on)
        a, b = statistics.median(nchw), statistics.median(nhwc)
        rows[name] = {"steps": steps, "nchw_ms_per_step": a, "auto_ms_per_step": b, "speedup": a / b,
                      "auto_chose_nhwc": all(used), "nchw_all": nchw, "auto_all": nhwc}
        print(f"{name:14s} NCHW {a:8.2f} ms/step  auto {b:8.2f} ms/step  {a / b:.2f}x  (auto NHWC: {all(used)})")
    kd_rows = {}
    for name in args.kd_students:
        kd_ms_per_step(name, "auto", 2)  # warm-up
        times: dict[str, list[float]] = {arm: [] for arm in KD_ARMS}
        for _ in range(args.rounds):
            for arm in KD_ARMS:
                times[arm].append(kd_ms_per_step(name, arm, args.kd_steps))
        med = {arm: statistics.median(v) for arm, v in times.items()}
        kd_rows[name] = {"steps": args.kd_steps, **{f"{arm}_ms_per_step": m for arm, m in med.items()},
                         "speedup_auto_vs_nchw": med["nchw"] / med["auto"],
                         "speedup_teacher_nhwc_vs_nchw": med["auto_teacher_nchw"] / med["auto"],
                         **{f"{arm}_all": v for arm, v in times.items()}}
        print(f"kd {name:11s} NCHW {med['nchw']:8.2f}  auto, teacher NCHW {med['auto_teacher_nchw']:8.2f}  "
              f"auto {med['auto']:8.2f} ms/step  ({med['auto_teacher_nchw'] / med['auto']:.2f}x from the "
              f"teacher's format, {med['nchw'] / med['auto']:.2f}x in all)")
    atomic_write_json(args.out, {
        "what": "Trainer.fit, one epoch of synthetic batches (batch 128, SGD), channels_last=False vs 'auto', "
                "alternating rounds, median ms per step (fit set-up included); kd_from_lenet5_caffe: the same with a "
                "Distiller (kd:0.5,ce:0.5) from lenet5_caffe, arms nchw / auto with the teacher left NCHW / auto",
        "threads": args.threads, "rounds": args.rounds, "torch": torch.__version__,
        "cpu": cpu_model(), "machine": platform.machine(), "models": rows,
        "kd_from_lenet5_caffe": kd_rows}, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
