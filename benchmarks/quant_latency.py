"""fp32 vs int8: latency (1 thread, batch 1, medians) and accuracy on the full test set.

    python benchmarks/quant_latency.py --data-dir ../shared/data                  # LeNet-5 (trains 1 epoch)
    python benchmarks/quant_latency.py --models lenet5 --lenet-checkpoint lenet.safetensors
    python benchmarks/quant_latency.py --models vgg16 --vgg-checkpoint vgg16.safetensors
    python benchmarks/quant_latency.py --models vgg16 --vgg-width 0.25              # random init: latency only

For every model: PyTorch eager fp32, onnxruntime fp32, onnxruntime int8
(``quantize(backend="onnxruntime")``) and PyTorch int8 (``backend="torch"``,
FX graph mode, x86 engine); top-1 accuracy of each on the full test set and
top-1 agreement of each int8 model with fp32. Latencies are medians of
``--runs`` timed passes, and the median again over ``--repeats`` rounds that
interleave the runtimes, so that a burst of load on a shared machine hits all
of them alike. Calibration: ``--calib-batches`` x 128 training images.
Results are merged by model into benchmarks/results/quant_latency.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import edgeslim
from edgeslim.data import make_loaders
from edgeslim.io import atomic_write_json
from edgeslim.errors import DataError
from edgeslim.profile import count_params, measure_latency, ort_latency
from edgeslim.quant import QuantizedModel, quantize
from edgeslim.train import TrainConfig, Trainer, evaluate

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("onnxruntime", "torch")
SETUPS = {  # model -> dataset and the keyword arguments of create_model
    "lenet5": ("mnist", {}),
    "vgg16": ("cifar10", {}),
}


def _model(name: str, args: argparse.Namespace, train: Any) -> tuple[nn.Module, str]:
    """The float model and how it was obtained (checkpoint, trained here, or random)."""
    checkpoint = {"lenet5": args.lenet_checkpoint, "vgg16": args.vgg_checkpoint}[name]
    if checkpoint:
        return edgeslim.load(checkpoint).eval(), f"checkpoint {checkpoint}"
    torch.manual_seed(0)
    kwargs = {"width_mult": args.vgg_width} if name == "vgg16" else {}
    model = edgeslim.create_model(name, **kwargs)
    if name != "lenet5" or train is None:
        return model.eval(), f"random init (width_mult={args.vgg_width}); latency only"
    cfg = TrainConfig(epochs=args.epochs, lr=0.05, device="cpu", progress=False)
    Trainer(model, cfg).fit(train)
    return model.eval(), f"trained {args.epochs} epoch(s) here, lr 0.05, SGD, batch 128"


def _loaders(name: str, data_dir: str | None) -> tuple[Any, Any]:
    try:
        return make_loaders(SETUPS[name][0], data_dir, batch_size=128)
    except DataError as exc:
        print(f"[{name}] no data ({exc}); random calibration, no accuracy")
        return None, None


def _latencies(timers: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    rounds: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(repeats):
        for key, timer in timers.items():
            rounds[key].append(timer())
    return {k: statistics.median(v) for k, v in rounds.items()}


def _agreement(model: nn.Module, qm: QuantizedModel, test: Any) -> float:
    same = total = 0
    for x, _ in test:
        with torch.no_grad():
            same += int((qm(x).argmax(1) == model(x).argmax(1)).sum())
        total += len(x)
    return same / total


def bench(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    train, test = _loaders(name, args.data_dir)
    model, origin = _model(name, args, train)
    example = torch.zeros(1, *model.default_input_size)
    calib = ([b for _, b in zip(range(args.calib_batches), iter(train))] if train is not None
             else torch.randn(128 * args.calib_batches, *model.default_input_size))
    fp32 = work / f"{name}.onnx"
    edgeslim.export_onnx(model, example, fp32)
    int8 = {b: quantize(model, example, calib, backend=b, path=work / f"{name}.{b}.int8.onnx")
            for b in BACKENDS}
    timing = dict(runs=args.runs, warmup=args.runs // 5)
    timers = {
        "eager_fp32": lambda: measure_latency(model, example, **timing)[0],
        "onnxruntime_fp32": lambda: ort_latency(fp32, example, **timing)[0],
        "onnxruntime_int8": lambda: int8["onnxruntime"].latency(example, **timing),
        "torch_int8": lambda: int8["torch"].latency(example, **timing),
        "onnxruntime_int8_from_torch": lambda: ort_latency(int8["torch"].onnx_path, example, **timing)[0],
    }
    arch = edgeslim.info(model).arch
    result: dict[str, Any] = {
        "model": name, "dataset": SETUPS[name][0], "origin": origin,
        "width_mult": arch.kwargs.get("width_mult") if arch is not None else None,
        "params": count_params(model),
        "latency_ms": _latencies(timers, args.repeats),
        "size_bytes": {"onnx_fp32": fp32.stat().st_size} | {
            f"onnx_int8_{b}": qm.size_bytes() for b, qm in int8.items()},
    }
    if test is not None and train is not None and "random" not in origin:
        result["accuracy"] = {"fp32": evaluate(model, test)["accuracy"]} | {
            f"int8_{b}": qm.evaluate(test) for b, qm in int8.items()}
        result["agreement_with_fp32"] = {f"int8_{b}": _agreement(model, qm, test) for b, qm in int8.items()}
        result["test_images"] = len(test.dataset)
    return result


def _write(results: list[dict[str, Any]], args: argparse.Namespace) -> Path:
    path = Path(args.out)
    previous = json.loads(path.read_text()) if path.exists() else {}
    def key(r: dict[str, Any]) -> str:
        return f"{r['model']}@{r.get('width_mult')}"

    by_model = {key(r): r for r in previous.get("results", [])} | {key(r): r for r in results}
    atomic_write_json(path, {
        "setup": {"threads": 1, "batch": 1, "runs": args.runs, "repeats": args.repeats,
                  "calibration_images": 128 * args.calib_batches, "torch": torch.__version__,
                  "onnxruntime": __import__("onnxruntime").__version__,
                  "machine": platform.machine(), "processor": platform.processor() or platform.platform()},
        "results": list(by_model.values()),
    })
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lenet5"], choices=sorted(SETUPS))
    p.add_argument("--data-dir", default=None, help="default $EDGESLIM_DATA")
    p.add_argument("--lenet-checkpoint", default=None, help="a LeNet-5 saved by edgeslim.save")
    p.add_argument("--vgg-checkpoint", default=None, help="a VGG-16 saved by edgeslim.save")
    p.add_argument("--vgg-width", type=float, default=1.0, help="width_mult of a random-init VGG-16")
    p.add_argument("--epochs", type=int, default=1, help="LeNet-5 training epochs without a checkpoint")
    p.add_argument("--calib-batches", type=int, default=2, help="calibration batches of 128 images")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "quant_latency.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeslim-qbench-") as tmp:
        results = [bench(name, args, Path(tmp)) for name in args.models]
    path = _write(results, args)
    print(json.dumps(results, indent=2))
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
