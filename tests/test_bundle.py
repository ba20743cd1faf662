"""``edgeslim.save`` / ``edgeslim.load``: exact round trips, no pickling, and a clear
``CheckpointError`` for every way a file can be wrong (missing, edited weights, a
manifest from another architecture, a graph that names code)."""
from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import edgeslim
import nets
from edgeslim.modelinfo import info
from edgeslim.errors import CheckpointError
from edgeslim.models import create_model
from edgeslim.profile import count_params
from nets import example_input, randomize_bn_


def _zoo(name: str, **kwargs) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = randomize_bn_(create_model(name, **kwargs)).eval()
    return model, torch.randn(2, *model.default_input_size)


def _manifest(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["edgeslim"])


def _rewrite(src: Path, dst: Path, manifest: dict, tensors: dict | None = None) -> Path:
    """A file with ``src``'s weights (or ``tensors``) and the given manifest."""
    save_file(tensors if tensors is not None else load_file(str(src)), str(dst),
              metadata={"edgeslim": json.dumps(manifest)})
    return dst


def _same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.fixture()
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unpickling during the test fails it."""
    import torch._dynamo  # noqa: F401  (defines pickle.Unpickler subclasses at import: import it first)

    def forbidden(*args, **kwargs):
        raise AssertionError("edgeslim.load must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)


@pytest.mark.parametrize("name,kwargs", [("resnet20", {"width_mult": 0.25}), ("vgg11", {"width_mult": 0.25}),
                                         ("mobilenetv2", {"width_mult": 0.25}),
                                         ("densenet_cifar", {"growth_rate": 4, "block_config": (2, 2, 2)})])
def test_pruned_zoo_model_round_trips(name: str, kwargs: dict, tmp_path: Path, no_pickle) -> None:
    model, x = _zoo(name, **kwargs)
    pruned = edgeslim.prune(model, x[:1], ratio=0.5)
    path = edgeslim.save(pruned, tmp_path / "m.safetensors")
    loaded = edgeslim.load(path)
    _same(pruned, loaded, x)
    assert info(loaded).plans == info(pruned).plans
    assert info(loaded).arch.name == name
    assert _manifest(path)["arch"]["zoo"] == name


def test_unpruned_zoo_model_round_trips(tmp_path: Path, no_pickle) -> None:
    model, x = _zoo("lenet5")
    path = edgeslim.save(model, tmp_path / "m.safetensors")
    _same(model, edgeslim.load(path), x)
    manifest = _manifest(path)
    assert manifest["arch"]["zoo"] == "lenet5" and manifest["replacements"] == []  # nothing changed


def test_plain_sequential_round_trips(tmp_path: Path, no_pickle) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, groups=16, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    randomize_bn_(model).eval()
    x = example_input(2)
    _same(model, edgeslim.load(edgeslim.save(model, tmp_path / "plain.safetensors")), x)
    pruned = edgeslim.prune(model, x, ratio=0.5, protect_first=False)
    assert pruned[0].out_channels < 16
    path = edgeslim.save(pruned, tmp_path / "pruned.safetensors")
    assert "spec" in _manifest(path)["arch"]
    _same(pruned, edgeslim.load(path), x)


@pytest.mark.parametrize("name", ["resnet_basic", "densenet", "senet", "split", "slicing", "timm_style"])
def test_pruned_custom_model_round_trips(name: str, tmp_path: Path, no_pickle) -> None:
    """A torchvision-style model that is neither from the zoo nor plain torch.nn is saved as
    its traced graph (data, not code)."""
    model = randomize_bn_(nets.NETS[name]()).eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.4)
    path = edgeslim.save(pruned, tmp_path / "m.safetensors")
    loaded = edgeslim.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert count_params(loaded) == count_params(pruned)


def test_file_is_safetensors_only(tmp_path: Path) -> None:
    """The file is an 8-byte header length, a JSON header, and raw tensor bytes: no room for a
    pickle anywhere."""
    model, x = _zoo("resnet20", width_mult=0.25)
    path = edgeslim.save(edgeslim.prune(model, x[:1], ratio=0.3), tmp_path / "m.safetensors")
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    assert 8 + n + max(ends) == len(data)
    assert set(header["__metadata__"]) == {"edgeslim"}
    assert not data.startswith(b"\x80") and b"PK\x03\x04" not in data[:8 + n]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(CheckpointError, match=str(path).replace("\\", "\\\\")):
        edgeslim.load(path)


def test_edited_weights_are_detected(tmp_path: Path) -> None:
    model, x = _zoo("resnet20", width_mult=0.25)
    path = edgeslim.save(edgeslim.prune(model, x[:1], ratio=0.3), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    i = 8 + n + (len(data) - 8 - n) // 2  # a byte in the middle of the weights
    data[i] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        edgeslim.load(path)


@pytest.mark.parametrize("junk", [b"", b"not a safetensors file", b"\x80\x04K\x01."])
def test_junk_files_are_rejected(junk: bytes, tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(junk)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        edgeslim.load(path)


def test_safetensors_without_manifest_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not an edgeslim model file"):
        edgeslim.load(path)


@pytest.mark.parametrize("arch", [
    {"zoo": "resnet32", "kwargs": {"width_mult": 0.25}},  # other keys
    {"zoo": "resnet20", "kwargs": {"width_mult": 0.5}},  # same keys, other shapes
    {"zoo": "vgg11", "kwargs": {}},
    {"zoo": "no_such_model", "kwargs": {}},
    {"zoo": "resnet20", "kwargs": {"no_such_argument": 1}},
    {"spec": {"type": "Linear", "args": {"in_features": 3, "out_features": 2}}},
    {"something": "else"},
])
def test_manifest_of_another_architecture_is_rejected(arch: dict, tmp_path: Path) -> None:
    model, x = _zoo("resnet20", width_mult=0.25)
    src = edgeslim.save(edgeslim.prune(model, x[:1], ratio=0.3), tmp_path / "m.safetensors")
    manifest = _manifest(src) | {"arch": arch, "replacements": []}
    with pytest.raises(CheckpointError, match="other.safetensors"):
        edgeslim.load(_rewrite(src, tmp_path / "other.safetensors", manifest))


def test_replacement_that_is_not_a_torch_layer_is_rejected(tmp_path: Path) -> None:
    model, x = _zoo("resnet20", width_mult=0.25)
    src = edgeslim.save(edgeslim.prune(model, x[:1], ratio=0.3), tmp_path / "m.safetensors")
    manifest = _manifest(src)
    path, spec = manifest["replacements"][0]
    manifest["replacements"][0] = [path, {"type": "Module", "args": {}} | {"type": "os.system"}]
    with pytest.raises(CheckpointError, match="not a torch.nn layer"):
        edgeslim.load(_rewrite(src, tmp_path / "evil.safetensors", manifest))
    manifest["replacements"][0] = ["no.such.layer", spec]
    with pytest.raises(CheckpointError, match="evil2.safetensors"):
        edgeslim.load(_rewrite(src, tmp_path / "evil2.safetensors", manifest))


def _graph_file(tmp_path: Path) -> tuple[Path, dict]:
    model = randomize_bn_(nets.SENet()).eval()
    src = edgeslim.save(model, tmp_path / "graph.safetensors")
    manifest = _manifest(src)
    assert "fx" in manifest["arch"]
    return src, manifest


def _node(op: str, name: str, target: str, args: list, kwargs: list | None = None) -> dict:
    return {"op": op, "name": name, "target": target, "args": {"tuple": args},
            "kwargs": {"dict": kwargs or []}}


def test_saved_graph_cannot_inject_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Node names/targets become Python source inside torch.fx: a file must not smuggle code
    through them, nor call eval/exec/open, nor write files with torch.save."""
    src, manifest = _graph_file(tmp_path)
    x = example_input(1)
    evil = [
        lambda nodes: nodes[0].update(target="x=print('INJECTED')"),
        lambda nodes: nodes[0].update(name="x):print('INJECTED');(x"),
        lambda nodes: nodes[1].update(kwargs={"dict": [["inplace=print('INJECTED')", False]]}),
        lambda nodes: nodes.insert(1, _node("call_function", "e", "builtins:eval", ["print('INJECTED')"])),
        lambda nodes: nodes.insert(1, _node("call_function", "e", "builtins:exec", ["print('INJECTED')"])),
        lambda nodes: nodes.insert(1, _node("call_function", "e", "builtins:open", ["/tmp/x", "w"])),
        lambda nodes: nodes.insert(1, _node("call_function", "e", "operator:call", [{"node": "x"}])),
        lambda nodes: nodes.insert(1, _node("call_function", "e", "torch:save", [{"node": "x"}, "/tmp/x"])),
        lambda nodes: nodes.insert(1, _node("call_function", "e", "builtins:getattr",
                                            [{"node": "x"}, "__class__"])),
        lambda nodes: nodes.insert(1, _node("call_method", "e", "__reduce_ex__", [{"node": "x"}, 2])),
        lambda nodes: nodes.insert(1, _node("get_attr", "e", "__class__", [])),
    ]
    for i, edit in enumerate(evil):
        bad = json.loads(json.dumps(manifest))
        edit(bad["arch"]["fx"]["nodes"])
        path = _rewrite(src, tmp_path / f"evil{i}.safetensors", bad)
        with pytest.raises(CheckpointError):
            edgeslim.load(path)(x)
    assert "INJECTED" not in capsys.readouterr().out


def test_import_architectures_need_permission(tmp_path: Path) -> None:
    model = randomize_bn_(nets.resnet_basic()).eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.4)
    arch = {"import": "nets:resnet_basic", "kwargs": {}}
    path = edgeslim.save(pruned, tmp_path / "m.safetensors", arch=arch)
    with pytest.raises(CheckpointError, match="allow_import=True"):
        edgeslim.load(path)
    _same(pruned, edgeslim.load(path, allow_import=True), x)
    _same(pruned, edgeslim.load(path, factory=nets.resnet_basic), x)


def test_save_is_atomic_and_overwrites(tmp_path: Path) -> None:
    model, x = _zoo("lenet5")
    path = tmp_path / "m.safetensors"
    edgeslim.save(model, path)
    pruned = edgeslim.prune(model, x[:1], ratio=0.5)
    edgeslim.save(pruned, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    _same(pruned, edgeslim.load(path), x)


class _DashedNames(nn.Module):
    """torchvision's RegNet names blocks ``block1-0``: not identifiers, but valid module paths."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential()
        self.trunk.add_module("block1-0", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
        self.trunk.add_module("block1-1", nn.Conv2d(8, 8, 3, padding=1))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_module_paths_that_are_not_identifiers_round_trip(tmp_path: Path, no_pickle) -> None:
    model = randomize_bn_(_DashedNames()).eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.5)
    path = edgeslim.save(pruned, tmp_path / "m.safetensors")
    assert "fx" in _manifest(path)["arch"]
    _same(pruned, edgeslim.load(path), x)


def test_timm_style_layers_prune_save_and_reload_from_the_users_instance(tmp_path: Path, no_pickle) -> None:
    """Layers that subclass torch.nn ones (BatchNormAct2d, Conv2dSame, ScaledStdConv2d), a frozen
    BatchNorm and torchvision's stochastic_depth: pruned, exact counts, ONNX parity; the file
    cannot hold their classes, so load(path) says how, and load(path, model=unpruned) rebuilds."""
    from edgeslim.profile import count_flops

    model = randomize_bn_(nets.TimmLayersNet()).eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.5, protect_first=False)
    assert pruned.stem.out_channels < 16 and pruned(x).shape == (2, 10)
    assert pruned.bn1.num_features == pruned.bn1.act.num_parameters == pruned.stem.out_channels
    assert pruned.conv2.gain.shape[0] == pruned.conv2.out_channels == pruned.bn2.weight.numel()
    assert count_params(pruned) == nets.analytic_params(pruned)
    assert count_flops(pruned, x)[1] == nets.analytic_macs(pruned, x)
    assert edgeslim.export_onnx(pruned, x, tmp_path / "m.onnx") < 1e-4
    path = edgeslim.save(pruned, tmp_path / "m.safetensors")
    assert "instance" in _manifest(path)["arch"]
    with pytest.raises(CheckpointError, match=r"model=<the unpruned model"):
        edgeslim.load(path)
    again = edgeslim.load(path, model=nets.TimmLayersNet())
    _same(pruned, again, x)


def test_load_with_model_replays_plans_on_any_saved_model(tmp_path: Path, no_pickle) -> None:
    model = randomize_bn_(nets.resnet_basic()).eval()
    x = example_input(2)
    pruned = edgeslim.prune(model, x, ratio=0.4, steps=2)
    path = edgeslim.save(pruned, tmp_path / "m.safetensors")
    _same(pruned, edgeslim.load(path, model=nets.resnet_basic()), x)
    zoo, xz = _zoo("resnet20", width_mult=0.25)
    path = edgeslim.save(edgeslim.prune(zoo, xz[:1], ratio=0.5), tmp_path / "z.safetensors")
    _same(edgeslim.load(path), edgeslim.load(path, model=create_model("resnet20", width_mult=0.25)), xz)
    with pytest.raises(CheckpointError, match="cannot replay pruning step 1|do not fit"):
        edgeslim.load(path, model=create_model("resnet32", width_mult=0.25))
