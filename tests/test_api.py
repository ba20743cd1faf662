"""The public API: every promised name resolves, is callable, and has the promised signature."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import edgeslim

PROMISED = {  # name -> parameters the issues promise (acceptance checks call exactly these)
    "create_model": ["name", "num_classes"],
    "list_models": [],
    "profile": ["model", "example_inputs", "latency", "threads"],
    "export_onnx": ["model", "example_inputs", "path"],
    "prune": ["model", "example_inputs", "criterion", "planner", "ratio", "target_flops", "target_params",
              "target_latency", "target_speedup", "runtime", "threads", "steps", "finetune", "ignore",
              "round_to"],
    "prune_": ["model", "example_inputs", "criterion", "planner", "ratio", "target_flops",
               "target_latency", "target_speedup", "runtime", "threads"],
    "measure_latency": ["model", "example_inputs", "runtime", "threads"],
    "save": ["model", "path"],
    "load": ["path"],
    "lighten": ["model", "example_inputs"],
    "distill": ["student", "teacher", "train_data", "losses", "epochs"],
    "admm_prune": ["model", "example_inputs", "train_data", "target_filters", "criterion", "rho",
                   "admm_epochs", "finetune_epochs", "finetune"],
    "fold_batchnorm": ["model", "example_inputs"],
    "prune_weights": ["model", "sparsity", "scope"],
    "streamline_merge": ["model", "example_inputs", "calib_data"],
    "quantize": ["model", "example_inputs", "calib_data"],
}


@pytest.mark.parametrize("name", sorted(PROMISED))
def test_public_name_has_the_promised_signature(name: str) -> None:
    fn = getattr(edgeslim, name)
    assert callable(fn)
    params = inspect.signature(fn).parameters
    missing = [p for p in PROMISED[name] if p not in params]
    assert not missing, f"edgeslim.{name} lacks {missing}"


@pytest.mark.parametrize("name", ["prune", "profile", "distill"])
def test_subpackage_import_keeps_the_function_callable(name: str) -> None:
    # importing edgeslim.prune.* binds the package as edgeslim.prune; it must still be the function
    __import__(f"edgeslim.{name}")
    assert callable(getattr(edgeslim, name))


def test_import_does_not_initialise_cuda() -> None:
    code = "import edgeslim, torch; edgeslim.create_model('lenet5'); print(torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_names_stay_functions_after_every_submodule_is_imported() -> None:
    # a subpackage or submodule that shares a public name must not shadow the function
    code = ("import pkgutil, importlib, edgeslim\n"
            "for m in pkgutil.walk_packages(edgeslim.__path__, 'edgeslim.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = [n for n in edgeslim.__all__ if n != '__version__' and not callable(getattr(edgeslim, n))]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
