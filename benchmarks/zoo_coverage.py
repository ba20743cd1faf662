"""Which real torchvision and timm CNNs edgeslim (and Torch-Pruning) can prune, side by side.

torchvision does not load beside the pinned CPU torch 2.13.0, so this benchmark
runs in its own virtual environment (the torch 2.14.1 wheel is large: about 7
minutes to install)::

    python3 -m venv /tmp/venv-zoo
    /tmp/venv-zoo/bin/pip install torch==2.14.1 torchvision==0.29.1 timm torch-pruning==1.6.1 \\
        onnx onnxruntime onnxscript safetensors pyyaml rich matplotlib pillow numpy
    /tmp/venv-zoo/bin/pip install --no-deps -e .
    /tmp/venv-zoo/bin/python benchmarks/zoo_coverage.py [--models resnet50 timm/mixnet_s ...]

Every model is built with random weights (nothing is downloaded), pruned to 50%
of its FLOPs by edgeslim (``edgeslim.prune(m, x, target_flops=0.5)``, global L1,
224x224 input) and by Torch-Pruning (``MagnitudePruner``, global L1, channel
ratio 0.3, classifier ignored; it has no FLOPs target, so its FLOPs kept are
reported as they come). Each (model, tool) runs in its own process with a time
limit, on one thread. Reported: success, the first line of the error, FLOPs
kept, output shape unchanged, save/load round trip (edgeslim), ONNX parity
against onnxruntime, analyse+prune seconds. Writes
``benchmarks/results/zoo_coverage.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

TORCHVISION = ["alexnet", "vgg16_bn", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2",
               "densenet121", "squeezenet1_0", "googlenet", "inception_v3", "mobilenet_v2",
               "mobilenet_v3_large", "mnasnet1_0", "shufflenet_v2_x1_0", "efficientnet_b0",
               "efficientnet_v2_s", "regnet_y_400mf", "regnet_x_400mf", "convnext_tiny"]
TIMM = ["resnet50", "resnet50d", "seresnext26d_32x4d", "skresnet18", "ecaresnet26t", "regnetx_002",
        "regnety_008", "efficientnet_b0", "tf_efficientnetv2_b0", "mobilenetv3_large_100",
        "mobilenetv4_conv_small", "ghostnet_100", "rexnet_100", "mixnet_s", "tinynet_a", "lcnet_050",
        "convnext_atto", "cspresnet50", "cspdarknet53", "dla34", "res2net50_26w_4s", "resnest14d",
        "dpn68", "repvgg_a0", "mobileone_s0", "hrnet_w18_small", "inception_v3", "xception41",
        "densenet121", "selecsls42b", "nf_resnet26", "resnetv2_50x1_bit", "efficientvit_b0",
        "fastvit_t8", "hgnetv2_b0", "ese_vovnet19b_dw"]
DEFAULT = TORCHVISION + [f"timm/{m}" for m in TIMM]


def build(name: str):
    import torch

    torch.manual_seed(0)
    if name.startswith("timm/"):
        import timm

        return timm.create_model(name[5:], pretrained=False, num_classes=1000).eval()
    import torchvision

    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def prune_edgeslim(model, x):
    import edgeslim

    return edgeslim.prune(model, x, target_flops=0.5)


def prune_torch_pruning(model, x):
    import torch
    import torch_pruning as tp

    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       global_pruning=True, pruning_ratio=0.3, ignored_layers=head)
    pruner.step()
    return model


def run_one(name: str, tool: str) -> dict:
    """Prune one model with one tool and check what a user would check."""
    import torch

    import edgeslim
    from edgeslim.profile import count_flops

    torch.set_num_threads(1)
    model = build(name)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        y0 = model(x)
    flops0 = count_flops(model, x)[0]
    row = {"model": name, "tool": tool}
    t0 = time.perf_counter()
    pruned = (prune_edgeslim if tool == "edgeslim" else prune_torch_pruning)(copy.deepcopy(model), x)
    row["prune_s"] = round(time.perf_counter() - t0, 3)
    with torch.no_grad():
        y1 = pruned.eval()(x)
    row["shape_ok"] = tuple(y1.shape) == tuple(y0.shape)
    row["flops_kept"] = round(count_flops(pruned, x)[0] / flops0, 4)
    with tempfile.TemporaryDirectory() as tmp:
        if tool == "edgeslim":
            try:
                path = edgeslim.save(pruned, Path(tmp) / "m.safetensors")
                from edgeslim.export.bundle import read_manifest

                from_data = "instance" not in read_manifest(path)["arch"]
                # a model whose classes cannot be stored as data is rebuilt from the user's instance
                loaded = edgeslim.load(path) if from_data else edgeslim.load(path, model=build(name))
                row["load_from"] = "file" if from_data else "model="
                with torch.no_grad():
                    row["save_load"] = bool(torch.allclose(loaded.eval()(x), y1, atol=1e-4, rtol=1e-4))
            except Exception as exc:  # reported, not fatal: the row says what failed
                row["save_load"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        try:
            row["onnx_max_diff"] = float(edgeslim.export_onnx(pruned, x, Path(tmp) / "m.onnx"))
        except Exception as exc:
            row["onnx_max_diff"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return row


def _child(name: str, tool: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--tool", tool]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": name, "tool": tool, "ok": False, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1]) | {"ok": True}
    err = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    return {"model": name, "tool": tool, "ok": False, "error": (err[-1] if err else "crashed")[:300]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=DEFAULT)
    ap.add_argument("--tools", nargs="*", default=["edgeslim", "torch_pruning"])
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", type=Path, default=RESULTS / "zoo_coverage.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--tool", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.tool)))
        return
    rows = []
    for name in args.models:
        for tool in args.tools:
            rows.append(_child(name, tool, args.timeout))
            r = rows[-1]
            status = (f"ok  flops {r['flops_kept']:.2f}  {r['prune_s']:.2f}s  save/load {r.get('save_load', '-')}  "
                      f"onnx {r['onnx_max_diff']}" if r["ok"] else f"FAIL {r['error']}")
            print(f"{name:32s} {tool:14s} {status}", flush=True)
    summary = {tool: f"{sum(r['ok'] for r in rows if r['tool'] == tool)}/{len(args.models)}" for tool in args.tools}
    print("pruned:", summary)
    from edgeslim.io import atomic_write_json

    atomic_write_json(args.out, {"summary": summary, "rows": rows,
                                 "setup": "random weights, 224x224, 1 thread, target_flops=0.5 (edgeslim), "
                                          "pruning_ratio=0.3 global L1 (Torch-Pruning)"})


if __name__ == "__main__":
    main()
