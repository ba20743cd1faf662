"""A model file is data: loading or running one can never run code, touch files or
allocate without bound (``export/graph_policy.py``, ``export/bundle.py``).

Each known escape route gets a test; a property test then builds random graphs the
way an attacker would (any node, any target, any argument) and checks that every
graph either is refused at load or, when run, only ever computes tensors and plain
values: no module, class, storage, file or function is ever produced.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.fx as fx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

import edgeslim
import nets
from edgeslim.errors import CheckpointError
from edgeslim.export import fxgraph, graph_policy
from test_bundle import _manifest, _node, _rewrite


@pytest.fixture()
def graph_file(tmp_path: Path) -> tuple[Path, dict]:
    model = nets.randomize_bn_(nets.SENet()).eval()
    src = edgeslim.save(model, tmp_path / "graph.safetensors")
    manifest = _manifest(src)
    assert "fx" in manifest["arch"]
    return src, manifest


def _inject(src: Path, manifest: dict, nodes: list[dict], dst: Path, output: str | None = None) -> Path:
    """``manifest``'s graph with ``nodes`` inserted after the input (and, if named, one of
    them returned as the output, so nothing can be dead-code-eliminated)."""
    bad = json.loads(json.dumps(manifest))
    graph_nodes = bad["arch"]["fx"]["nodes"]
    graph_nodes[1:1] = nodes
    if output:
        graph_nodes[-1]["args"] = {"tuple": [{"node": output}]}
    return _rewrite(src, dst, bad)


def _load_and_run(path: Path) -> None:
    edgeslim.load(path)(nets.example_input(1))


def test_device_module_route_to_os_system_is_refused(graph_file, tmp_path: Path) -> None:
    """torch.get_device_module -> getattr os -> getattr system -> max(key=system) ran a shell command."""
    src, manifest = graph_file
    marker = tmp_path / "pwned"
    chain = [
        _node("call_function", "dm", "torch:get_device_module", ["cuda"]),
        _node("call_function", "o", "builtins:getattr", [{"node": "dm"}, "os"]),
        _node("call_function", "s", "builtins:getattr", [{"node": "o"}, "system"]),
        _node("call_function", "r", "builtins:max", [[f"touch {marker}"]], [["key", {"node": "s"}]]),
    ]
    for i in range(len(chain)):
        path = _inject(src, manifest, chain[: i + 1], tmp_path / f"evil{i}.safetensors", output=chain[i]["name"])
        with pytest.raises(CheckpointError, match="does not allow|reads attribute|keywords"):
            _load_and_run(path)
    assert not marker.exists()


def test_each_link_of_the_os_chain_is_refused_on_its_own(graph_file, tmp_path: Path) -> None:
    src, manifest = graph_file
    links = [
        [_node("call_function", "o", "builtins:getattr", [{"node": "x"}, "os"])],  # not a tensor attribute
        [_node("call_function", "r", "builtins:max", [[1, 2]], [["key", {"node": "x"}]])],  # max(key=f) calls f
        [_node("call_function", "o", "builtins:getattr", ["text", "upper"])],  # getattr of a literal
    ]
    for i, nodes in enumerate(links):
        with pytest.raises(CheckpointError):
            _load_and_run(_inject(src, manifest, nodes, tmp_path / f"link{i}.safetensors", output=nodes[-1]["name"]))


def test_file_writer_route_is_refused(graph_file, tmp_path: Path) -> None:
    """torch.PyTorchFileWriter(path) overwrote any file the user can write."""
    src, manifest = graph_file
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    nodes = [_node("call_function", "w", "torch:PyTorchFileWriter", [str(victim)])]
    with pytest.raises(CheckpointError, match="PyTorchFileWriter"):
        _load_and_run(_inject(src, manifest, nodes, tmp_path / "evil.safetensors", output="w"))
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("target", ["torch:load", "torch:save", "torch:from_file", "torch:compile",
                                    "torch:Tensor", "torch:device", "torch:get_device_module",
                                    "torch:UntypedStorage", "torch:classes", "torch:ops",
                                    "builtins:__import__", "builtins:type", "builtins:open",
                                    "builtins:print", "operator:attrgetter", "operator:methodcaller",
                                    "math:sqrt", "os:system"])
def test_only_listed_functions_resolve(target: str) -> None:
    with pytest.raises(CheckpointError):
        fxgraph._resolve(target)


@pytest.mark.parametrize("method", ["storage", "untyped_storage", "numpy", "tolist", "apply_", "map_",
                                    "register_hook", "share_memory_", "data_ptr", "__reduce_ex__",
                                    "backward", "item"])
def test_unlisted_tensor_methods_are_refused(graph_file, tmp_path: Path, method: str) -> None:
    src, manifest = graph_file
    nodes = [_node("call_method", "m", method, [{"node": "x"}])]
    with pytest.raises(CheckpointError):
        _load_and_run(_inject(src, manifest, nodes, tmp_path / "evil.safetensors", output="m"))


def test_methods_on_literals_and_reads_of_submodules_are_refused(graph_file, tmp_path: Path) -> None:
    src, manifest = graph_file
    module = next(iter(manifest["arch"]["fx"]["modules"]))
    cases = [
        [_node("call_method", "m", "split", ["a b"])],                # a str method, not a tensor's
        [_node("get_attr", "g", module, [])],                         # a module, not a stored tensor
        [_node("call_module", "c", "no_such_layer", [{"node": "x"}])],
    ]
    for i, nodes in enumerate(cases):
        with pytest.raises(CheckpointError):
            _load_and_run(_inject(src, manifest, nodes, tmp_path / f"evil{i}.safetensors", output=nodes[-1]["name"]))


@pytest.mark.parametrize("node", [
    _node("call_method", "m", "new_empty", [{"node": "x"}, {"tuple": [2 ** 20, 2 ** 20]}]),
    _node("call_method", "m", "repeat", [{"node": "x"}, 1, 1, 100_000, 100_000]),
    _node("call_method", "m", "expand", [{"node": "x"}, 2 ** 16, 3, 2 ** 16, 32]),
    _node("call_function", "m", "torch.nn.functional:interpolate", [{"node": "x"}],
          [["scale_factor", 10_000.0]]),
    _node("call_function", "m", "torch.nn.functional:pad", [{"node": "x"}, {"tuple": [0, 10 ** 6]}]),
    _node("call_function", "m", "operator:mul", [{"node": "x"}, 10 ** 12]),
])
def test_literal_sizes_are_bounded(graph_file, tmp_path: Path, node: dict) -> None:
    src, manifest = graph_file
    with pytest.raises(CheckpointError, match="literal|scale"):
        edgeslim.load(_inject(src, manifest, [node], tmp_path / "big.safetensors", output="m"))


def test_deep_or_huge_graphs_are_refused(graph_file, tmp_path: Path) -> None:
    src, manifest = graph_file
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(CheckpointError, match="deeper"):
        edgeslim.load(_inject(src, manifest, [_node("call_function", "m", "torch:cat", [deep])],
                              tmp_path / "deep.safetensors", output="m"))
    many = json.loads(json.dumps(manifest))
    many["arch"]["fx"]["nodes"] *= graph_policy.MAX_NODES // len(many["arch"]["fx"]["nodes"]) + 1
    with pytest.raises(CheckpointError, match="nodes"):
        edgeslim.load(_rewrite(src, tmp_path / "many.safetensors", many))


def test_manifest_asking_for_a_huge_layer_fails_before_allocating(tmp_path: Path) -> None:
    """A 200k x 200k Linear (160 GB) or a zoo model at width 64: refused at once."""
    src = edgeslim.save(nn.Sequential(nn.Linear(4, 2)), tmp_path / "small.safetensors")
    manifest = _manifest(src)
    manifest["arch"] = {"spec": {"type": "Sequential", "children": [
        ["0", {"type": "Linear", "args": {"in_features": 200_000, "out_features": 200_000, "bias": True}}]]}}
    with pytest.raises(CheckpointError, match="would allocate more than"):
        edgeslim.load(_rewrite(src, tmp_path / "huge.safetensors", manifest))
    zoo = edgeslim.save(edgeslim.create_model("vgg11", width_mult=0.25), tmp_path / "vgg.safetensors")
    manifest = _manifest(zoo)
    manifest["arch"]["kwargs"]["width_mult"] = 64
    with pytest.raises(CheckpointError, match="would allocate more than"):
        edgeslim.load(_rewrite(zoo, tmp_path / "wide.safetensors", manifest))


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("sha256"), "'sha256' is missing"),
    (lambda m: m.update(sha256=7), "'sha256' is malformed"),
    (lambda m: m.update(arch="lenet5"), "'arch' is malformed"),
    (lambda m: m.update(replacements=[["a"]]), "malformed"),
    (lambda m: m.update(extra_buffers=["forward"]), "extra buffer 'forward'"),
    (lambda m: m.update(extra_buffers=["conv1.__class__"]), "extra buffer"),
    (lambda m: m.update(extra_buffers=[3]), "malformed"),
])
def test_malformed_manifests_are_clear_errors(tmp_path: Path, edit, match: str) -> None:
    src = edgeslim.save(edgeslim.create_model("lenet5"), tmp_path / "m.safetensors")
    manifest = _manifest(src)
    edit(manifest)
    with pytest.raises(CheckpointError, match=match):
        edgeslim.load(_rewrite(src, tmp_path / "bad.safetensors", manifest))


def test_manifest_that_is_a_list_is_a_clear_error(tmp_path: Path) -> None:
    src = edgeslim.save(edgeslim.create_model("lenet5"), tmp_path / "m.safetensors")
    path = tmp_path / "list.safetensors"
    from safetensors.torch import save_file

    save_file(load_file(str(src)), str(path), metadata={"edgeslim": json.dumps([1, 2])})
    with pytest.raises(CheckpointError, match="unknown format"):
        edgeslim.load(path)


# --------------------------------------------------------------------------- #
# property: random hostile graphs never reach anything but tensors and plain values
# --------------------------------------------------------------------------- #
_EVIL_FUNCTIONS = ["torch:get_device_module", "torch:PyTorchFileWriter", "torch:load", "torch:Tensor",
                   "builtins:eval", "builtins:__import__", "builtins:type", "operator:attrgetter",
                   "torch:set_default_device", "torch.nn.functional:_canonical_mask"]
_EVIL_METHODS = ["storage", "untyped_storage", "numpy", "apply_", "register_hook", "__class__", "cuda"]
_LISTED = sorted(f"{m}:{n}" for m, names in graph_policy.FUNCTIONS.items() for n in names)
_SAFE_TYPES = (torch.Tensor, int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout,
               slice, type(Ellipsis))


def _safe(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_safe(v) for v in value)
    return isinstance(value, _SAFE_TYPES)


class _Checking(fx.Interpreter):
    """Runs a loaded graph node by node, asserting every value is a tensor or plain data and
    every method is called on such a value."""

    def run_node(self, n: fx.Node):  # noqa: ANN201
        if n.op == "call_method":
            owner = self.env[n.args[0]] if isinstance(n.args[0], fx.Node) else n.args[0]
            assert _safe(owner), f"method {n.target} called on {type(owner)}"
        out = super().run_node(n)
        assert _safe(out), f"node {n.name} ({n.op} {n.target}) produced a {type(out)}"
        return out


def _literal() -> st.SearchStrategy:
    scalars = st.one_of(st.integers(-3, 5), st.sampled_from([2 ** 40, -(2 ** 20), 10 ** 6]),
                        st.floats(-4, 4, allow_nan=False), st.sampled_from(["os", "system", "shape", "x" * 300]),
                        st.sampled_from([{"dtype": "float32"}, {"device": "cpu"}, None, True]))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.builds(lambda v: {"tuple": v}, st.lists(inner, max_size=3))),
                        max_leaves=6)


@st.composite
def _hostile_graph(draw, base: dict) -> dict:
    nodes = [base["nodes"][0]]
    attrs, modules = base["attrs"], list(base["modules"])
    for i in range(draw(st.integers(1, 8))):
        prev = [n["name"] for n in nodes]
        node_ref = st.sampled_from(prev).map(lambda p: {"node": p})
        arg = st.one_of(node_ref, node_ref, _literal())
        args = draw(st.lists(arg, max_size=3))
        op = draw(st.sampled_from(["call_function", "call_method", "get_attr", "call_module"]))
        if op == "call_function":
            target = draw(st.sampled_from(_LISTED) | st.sampled_from(_EVIL_FUNCTIONS))
        elif op == "call_method":
            target = draw(st.sampled_from(sorted(graph_policy.TENSOR_METHODS)) | st.sampled_from(_EVIL_METHODS))
            args = [draw(node_ref | _literal())] + args
        elif op == "get_attr":
            target, args = draw(st.sampled_from(attrs + modules + ["training", "forward"])), []
        else:
            target = draw(st.sampled_from(modules + [""]))
        kwargs = draw(st.lists(st.tuples(st.sampled_from(["key", "dim", "default", "inplace"]), arg), max_size=1))
        nodes.append({"op": op, "name": f"h{i}", "target": target, "args": {"tuple": args},
                      "kwargs": {"dict": [list(kv) for kv in kwargs]}})
    nodes.append({"op": "output", "name": "output", "target": "output",
                  "args": {"tuple": [{"node": nodes[-1]["name"]}]}, "kwargs": {"dict": []}})
    return {"nodes": nodes, "modules": base["modules"], "attrs": attrs}


def _base_graph() -> tuple[dict, dict]:
    model = nets.randomize_bn_(nets.SENet()).eval()
    gm = fx.symbolic_trace(model)
    spec = fxgraph.graph_to_json(gm)
    return spec, {k: v.detach().clone() for k, v in gm.state_dict().items()}


_BASE, _TENSORS = _base_graph()


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_hostile_graph(_BASE))
def test_random_hostile_graphs_compute_only_on_tensors(spec: dict) -> None:
    cwd = os.listdir(".")
    try:
        gm = fxgraph.graph_from_json(json.loads(json.dumps(spec)), _TENSORS)
    except CheckpointError:
        return
    gm.load_state_dict(_TENSORS, strict=False)
    try:
        _Checking(gm).run(nets.example_input(1)[:, :, :8, :8])
    except AssertionError:
        raise
    except Exception:  # a nonsensical graph may fail to compute; it must not do anything else
        pass
    assert os.listdir(".") == cwd
