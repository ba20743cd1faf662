"""``edgeslim.info(model)``: one typed record per model, filled in by every transform, copied with
the model, kept by save/load, and invisible to state_dict, torch.fx and ONNX."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import edgeslim
from edgeslim.errors import EdgeslimError
from edgeslim.modelinfo import Arch, LatencyResult, LightenReport, ModelInfo, SparsityResult, info
from edgeslim.models import create_model
from edgeslim.transforms.fold import FoldedPair, FoldReport, fold_batchnorm
from edgeslim.transforms.merge import MergeRecord, MergeReport, merge_linear_chains, remove_identities
from nets import randomize_bn_


def _lenet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = randomize_bn_(create_model("lenet5")).eval()
    return model, torch.randn(1, *model.default_input_size)


def test_info_is_the_public_accessor_and_attaches_one_record() -> None:
    model = nn.Linear(2, 2)
    record = edgeslim.info(model)
    assert isinstance(record, ModelInfo) and edgeslim.info(model) is record
    assert record == ModelInfo() and "info" in edgeslim.__all__ and "ModelInfo" in edgeslim.__all__


def test_create_model_records_a_typed_arch_that_rebuilds_the_model() -> None:
    model = create_model("resnet20", width_mult=0.5)
    arch = info(model).arch
    assert isinstance(arch, Arch) and arch.name == "resnet20" and arch.kwargs["width_mult"] == 0.5
    rebuilt = create_model(arch.name, **arch.kwargs)
    assert info(rebuilt).arch == arch and rebuilt.state_dict().keys() == model.state_dict().keys()


def test_deepcopy_copies_the_info_and_the_copies_are_independent() -> None:
    model, x = _lenet()
    pruned = edgeslim.prune(model, x, ratio=0.3)
    twin = copy.deepcopy(pruned)
    assert info(twin) == info(pruned) and info(twin) is not info(pruned)
    info(twin).plans.append({"groups": {}})
    assert len(info(twin).plans) == len(info(pruned).plans) + 1


def test_info_never_reaches_state_dict_modules_or_a_trace() -> None:
    model, x = _lenet()
    keys = set(model.state_dict())
    pruned_keys_before = set(copy.deepcopy(model).state_dict())
    info(model).plans.append({"groups": {}})
    assert set(model.state_dict()) == keys == pruned_keys_before
    assert all(not isinstance(m, ModelInfo) for m in model.modules())
    gm = torch.fx.symbolic_trace(model)
    assert torch.equal(gm(x), model(x))
    assert not any("info" in str(node.target) for node in gm.graph.nodes)


def test_info_does_not_change_the_onnx_graph(tmp_path: Path) -> None:
    model, x = _lenet()
    info(model).plans.append({"groups": {"conv1": [0]}})
    edgeslim.export_onnx(model, x, tmp_path / "m.onnx")  # parity with onnxruntime checked inside
    onnx = pytest.importorskip("onnx")
    initializers = {i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    assert not any("info" in name for name in initializers)


def test_save_load_keeps_arch_and_plans_in_the_unchanged_file_format(tmp_path: Path) -> None:
    model, x = _lenet()
    pruned = edgeslim.prune(model, x, ratio=0.3)
    path = edgeslim.save(pruned, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        manifest = json.loads(f.metadata()["edgeslim"])
    # the manifest keys files written before ModelInfo use: old files load as before
    assert manifest["arch"] == {"zoo": "lenet5", "kwargs": info(pruned).arch.kwargs}
    assert manifest["plans"] == info(pruned).plans
    loaded = edgeslim.load(path)
    assert info(loaded).arch == info(pruned).arch and info(loaded).plans == info(pruned).plans


def test_each_transform_records_its_typed_result() -> None:
    model, x = _lenet()
    assert isinstance(info(fold_batchnorm(model, x)).fold, FoldReport)
    assert all(isinstance(p, FoldedPair) for p in info(fold_batchnorm(model, x)).fold.folded)
    lean = remove_identities(nn.Sequential(nn.Linear(4, 4), nn.Dropout(), nn.Linear(4, 2)))
    assert info(lean).removed_identities == ["1"]
    merged = merge_linear_chains(lean, torch.randn(1, 4))
    assert [type(r) for r in info(merged).linear_merges] == [MergeRecord]
    streamlined = edgeslim.streamline_merge(model, x, None, rebirth=False)
    assert isinstance(info(streamlined).merge, MergeReport)
    assert info(streamlined).arch == info(model).arch  # provenance carried into the GraphModule
    student = edgeslim.lighten(model, x)
    assert isinstance(info(student).lighten, LightenReport) and info(student).lighten.options
    sparse = edgeslim.prune_weights(model, 0.5)
    assert info(sparse).sparsity == SparsityResult(0.5, "global", info(sparse).sparsity.layers)
    assert info(sparse).sparsity.layers and info(model).sparsity is None  # the input is untouched


def test_latency_result_names_an_unknown_field() -> None:
    values = dict(runtime="torch", runtime_version="2", threads=1, batch=1, origin_ms=2.0,
                  baseline_ms=2.0, target_ms=1.0, predicted_ms=1.0, measured_ms=1.0)
    assert LatencyResult.from_dict(values).to_dict()["measured_ms"] == 1.0
    with pytest.raises(EdgeslimError, match="no field.*'speed'"):
        LatencyResult.from_dict(values | {"speed": 3})
