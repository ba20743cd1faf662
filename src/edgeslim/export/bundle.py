"""``edgeslim.save`` / ``edgeslim.load``: compressed models without pickling.

One ``.safetensors`` file holds the weights; its metadata holds a JSON manifest:
the architecture (zoo name + kwargs, an import path the user names, a plain
torch.nn spec, or for any other traceable model its torch.fx graph as data, see
``fxgraph.py``), the layers that compression replaced (as torch.nn specs, see
``modspec.py``), the pruning plans, and a SHA-256 of the weights. Loading
rebuilds the original architecture, swaps in the replaced layers, and loads the
weights; nothing in the file can name code to run (import paths run only when
the caller passes ``allow_import=True``).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
from pathlib import Path
from typing import Callable

import torch
import torch.fx as fx
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.overrides import TorchFunctionMode

from .. import __version__
from ..errors import CheckpointError, EdgeslimError
from ..modelinfo import Arch, info
from ..graph.trace import symbolic_trace
from ..io import atomic_path
from . import fxgraph, modspec, replay

FORMAT = "edgeslim-bundle/1"


def _weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _arch_of(model: nn.Module, arch: dict | None) -> tuple[dict, nn.Module]:
    """The architecture record, and the module whose weights are stored."""
    if arch is not None:
        return arch, model
    if isinstance(model, fx.GraphModule):
        return _traced_arch(model)  # re-tracing flattens custom container modules into torch.nn leaves
    recorded = info(model).arch
    if recorded is not None:
        return {"zoo": recorded.name, "kwargs": recorded.kwargs}, model
    try:
        return {"spec": modspec.describe(model)}, model
    except TypeError:
        return _traced_arch(model)


def _traced_arch(model: nn.Module) -> tuple[dict, nn.Module]:
    """The model's forward as a stored graph; where that cannot be (not traceable, or it calls
    functions a stored graph may not hold), a record that only the user's own code can build
    it again (``load(path, model=...)``, see ``replay.py``)."""
    try:
        gm = symbolic_trace(model)
        return {"fx": fxgraph.graph_to_json(gm)}, gm
    except (EdgeslimError, TypeError) as exc:
        return replay.instance_arch(model, str(exc).splitlines()[0]), model


def _build_arch(arch: dict, factory: Callable[..., nn.Module] | None, allow_import: bool) -> nn.Module:
    if factory is not None:
        return factory(**arch.get("kwargs", {}))
    if "zoo" in arch:
        from ..models import create_model

        kwargs = dict(arch.get("kwargs", {}))
        return create_model(arch["zoo"], **kwargs)
    if "spec" in arch:
        return modspec.build(arch["spec"])
    if "import" in arch:
        if not allow_import:
            raise CheckpointError(
                f"this model is built by {arch['import']!r}; importing code named in a file is off by "
                "default. Fix: load(path, allow_import=True) if you trust the file, or pass factory=."
            )
        module_name, _, fn_name = arch["import"].partition(":")
        return getattr(importlib.import_module(module_name), fn_name)(**arch.get("kwargs", {}))
    raise CheckpointError(f"manifest architecture has none of the keys zoo/spec/import/fx: {list(arch)}")


def _replacements(ref: nn.Module, cur: nn.Module, prefix: str = "") -> list[list]:
    """Top-down list of [path, spec] for every submodule of ``cur`` that differs from ``ref``."""
    out = []
    ref_children = dict(ref.named_children())
    for name, child in cur.named_children():
        path = f"{prefix}{name}"
        other = ref_children.get(name)
        if other is not None and modspec.same_config(other, child):
            out += _replacements(other, child, path + ".")
            continue
        try:
            out.append([path, modspec.describe(child, path)])
        except TypeError as exc:
            raise CheckpointError(
                f"cannot save: layer {path!r} was changed into something edgeslim cannot rebuild "
                f"({exc}). Deploy it with export_onnx() instead."
            ) from None
    return out


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def save(model: nn.Module, path: str | Path, *, arch: dict | None = None,
         extra: dict | None = None) -> Path:
    """Write ``model`` (pruned, merged, or plain) to one safetensors file.

    Args:
        model: the model; zoo models know their architecture, others need ``arch``.
        path: destination (``.safetensors`` recommended); written atomically.
        arch: ``{"import": "pkg.module:factory", "kwargs": {...}}`` for a model that is
            not from the zoo and not a plain torch.nn tree.
        extra: JSON-serialisable metadata stored alongside (e.g. accuracy).
    """
    arch, source = _arch_of(model, arch)
    replacements: list = []
    if "fx" not in arch and "instance" not in arch:
        allow = "import" in arch  # the caller named the factory, so importing it is their choice
        try:
            replacements = _replacements(_build_arch(arch, None, allow), model)
        except CheckpointError:
            if "import" in arch:
                raise
            arch, source = _traced_arch(model)  # layers were swapped for custom ones: save the graph
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in source.state_dict().items()}
    if "fx" in arch or "instance" in arch:
        ref_keys = set(tensors)
    else:
        ref_keys = set(_apply(_build_arch(arch, None, "import" in arch), replacements).state_dict())
    manifest = {
        "format": FORMAT, "edgeslim_version": __version__, "arch": arch,
        "replacements": replacements, "extra_buffers": sorted(set(tensors) - ref_keys),
        "plans": info(model).plans, "sha256": _weights_digest(tensors),
        "extra": extra or {},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"edgeslim": json.dumps(manifest)})
    return path


def _apply(model: nn.Module, replacements: list[list]) -> nn.Module:
    for path, spec in replacements:
        _set_submodule(model, path, modspec.build(spec))
    return model


def read_manifest(path: str | Path) -> dict:
    """The JSON manifest of a saved model (raises CheckpointError with the fix)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no saved model at {path}: check the path (edgeslim.save writes one file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        manifest = json.loads(meta["edgeslim"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not an edgeslim model file ({type(exc).__name__}: {exc}); it is corrupt or was "
            "written by another tool. Re-create it with edgeslim.save(model, path)."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{path}: unknown format {found!r} (expected {FORMAT}); the file is corrupt "
                              "or was written by another tool. Re-create it with edgeslim.save(model, path).")
    _check_manifest(manifest, path)
    return manifest


# key -> (type it must have, required); anything else in a manifest is ignored
_MANIFEST_KEYS = {"arch": (dict, True), "sha256": (str, True), "replacements": (list, False),
                  "extra_buffers": (list, False), "plans": (list, False), "extra": (dict, False)}


def _check_manifest(manifest: dict, path: str | Path) -> None:
    """The manifest has the keys and types :func:`save` writes (CheckpointError otherwise)."""
    for key, (kind, required) in _MANIFEST_KEYS.items():
        if key not in manifest and not required:
            continue
        if not isinstance(manifest.get(key), kind):
            raise CheckpointError(
                f"{path}: manifest key {key!r} is {'missing' if key not in manifest else 'malformed'} "
                f"(expected a {kind.__name__}); the file is corrupt or was not written by edgeslim. "
                "Re-create it with edgeslim.save(model, path).")
    bad = [r for r in manifest.get("replacements", [])
           if not (isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], dict))]
    bad += [b for b in manifest.get("extra_buffers", []) if not isinstance(b, str)]
    if bad:
        raise CheckpointError(f"{path}: manifest entries {str(bad[:3])[:200]} are malformed; the file is "
                              "corrupt or was not written by edgeslim")


def _rebuild(manifest: dict, tensors: dict[str, torch.Tensor], factory: Callable[..., nn.Module] | None,
             allow_import: bool, path: str | Path) -> nn.Module:
    """The manifest's architecture with its replaced layers; CheckpointError if it cannot be built
    (an edited manifest, an unknown zoo name or argument, a layer path the model lacks)."""
    arch = manifest.get("arch")
    try:
        if "fx" in arch:
            return fxgraph.graph_from_json(arch["fx"], tensors)
        return _apply(_build_arch(arch, factory, allow_import), manifest["replacements"])
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (EdgeslimError, LookupError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: cannot rebuild the architecture its manifest names ({str(arch)[:200]}): "
            f"{type(exc).__name__}: {exc}. The file was edited, or written for another edgeslim "
            "version or model zoo; re-save the model with edgeslim.save."
        ) from None


def _check_fits(model: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Every weight has a place of its shape in ``model``, and every place has a weight."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k}: file {tuple(tensors[k].shape)}, model {tuple(v.shape)}"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: the weights do not fit the architecture in the manifest (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}); the manifest and the weights "
            "come from different models."
        )


# Buffers a model keeps outside its state_dict (non-persistent) are not in the file;
# a manifest may make the architecture allocate at most this many such elements.
MAX_UNSTORED_ELEMENTS = 2 ** 24
_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.eye,
              torch.randint, torch.empty_strided, torch.arange, torch.linspace}


class AllocationBudget(TorchFunctionMode):
    """Refuse (CheckpointError) any tensor factory call that would take the elements created
    so far past ``limit``, *before* it allocates: a crafted manifest asking for a
    200k x 200k Linear fails at once instead of exhausting memory."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__()
        self.left, self.limit, self.what = limit, limit, what

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _FACTORIES:
            self.left -= _elements(func, args, kwargs)
            if self.left < 0:
                raise CheckpointError(
                    f"{self.what}: the architecture in its manifest would allocate more than "
                    f"{self.limit} elements, far beyond the weights the file holds; the file is "
                    "corrupt or hostile (nothing was allocated)")
        return func(*args, **kwargs)


def _elements(func, args: tuple, kwargs: dict) -> int:  # noqa: ANN001
    """Elements a factory call creates, from its arguments alone."""
    if func in (torch.arange, torch.linspace):
        nums = [a for a in args if isinstance(a, (int, float))]
        if func is torch.linspace:
            return int(nums[2]) if len(nums) > 2 else int(kwargs.get("steps", 0))
        lo, hi = (0, nums[0]) if len(nums) == 1 else (nums[0], nums[1]) if nums else (0, 0)
        return max(int(hi - lo), 0)
    if func is torch.eye:
        n = args[0] if args else kwargs.get("n", 0)
        return int(n) * int(args[1] if len(args) > 1 and isinstance(args[1], int) else n)
    size = args[0] if args and isinstance(args[0], (tuple, list, torch.Size)) else kwargs.get("size", args)
    if func in (torch.full, torch.empty_strided) and args:
        size = args[0]
    if func is torch.randint:
        size = next((a for a in args if isinstance(a, (tuple, list, torch.Size))), kwargs.get("size", ()))
    dims = [int(d) for d in size if isinstance(d, int)] if isinstance(size, (tuple, list, torch.Size)) else []
    return math.prod(abs(d) for d in dims)


def _complete(model: nn.Module, manifest: dict, tensors: dict[str, torch.Tensor],
              path: str | Path) -> nn.Module:
    """Add the manifest's extra buffers, then check that the model holds exactly the file's
    weights and allocates little beyond them (run on the meta device before building for real)."""
    for key in manifest.get("extra_buffers", []):
        owner_path, _, name = key.rpartition(".")
        try:
            owner = model.get_submodule(owner_path) if owner_path else model
        except AttributeError:
            owner = None
        taken = owner is None or (hasattr(owner, name) and name not in owner._buffers)
        if key not in tensors or not name.isidentifier() or name.startswith("_") or taken:
            raise CheckpointError(f"{path}: manifest lists an extra buffer {key!r} that is not a free "
                                  "buffer slot of the model or not in the weights; the file is corrupt")
        owner.register_buffer(name, tensors[key])
    _check_fits(model, tensors, path)
    stored = set(model.state_dict())
    unstored = sum(b.numel() for k, b in model.named_buffers() if k not in stored)
    if unstored > MAX_UNSTORED_ELEMENTS:
        raise CheckpointError(f"{path}: the architecture in the manifest allocates {unstored} elements "
                              "that are not in the weights; the file is corrupt or hostile")
    return model


def load(path: str | Path, model: nn.Module | None = None, *,
         factory: Callable[..., nn.Module] | None = None, allow_import: bool = False,
         map_location: str = "cpu") -> nn.Module:
    """Rebuild a model written by :func:`save`; nothing is unpickled, no code named in the
    file is imported or run.

    Args:
        path: the file.
        model: optional: the *unpruned* model, built by your own code (e.g.
            ``timm.create_model("efficientnet_b0")``). The file's pruning plans are replayed
            on a copy of it and its weights loaded. Needed for models whose classes cannot
            be stored as data; works for every file.
        factory, allow_import: for files saved with ``arch={"import": ...}``.
        map_location: where the weights go.

    Raises:
        CheckpointError: missing or corrupt file, weights that do not match the
            architecture, or weights changed after saving (SHA-256 mismatch).
    """
    manifest = read_manifest(path)
    try:
        tensors = load_file(str(path), device=map_location)
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: weights unreadable ({exc}); the file is corrupt") from None
    if _weights_digest({k: v.cpu() for k, v in tensors.items()}) != manifest["sha256"]:
        raise CheckpointError(f"{path}: weights do not match the manifest's SHA-256; the file was "
                              "modified after saving. Re-export it from the original model.")
    if model is not None:
        model = _apply(replay.from_instance(model, manifest, path), manifest.get("replacements", []))
    elif "instance" in manifest["arch"]:
        raise replay.needs_instance(manifest["arch"], path)
    else:
        stored = sum(t.numel() for t in tensors.values())
        # a manifest may name any layer size: building it may allocate about what the file holds
        with AllocationBudget(2 * stored + MAX_UNSTORED_ELEMENTS, what=str(path)):
            model = _rebuild(manifest, tensors, factory, allow_import, path)
    model = _complete(model, manifest, tensors, path)
    model.load_state_dict(tensors)
    record = info(model)
    if "zoo" in manifest["arch"]:
        record.arch = Arch(manifest["arch"]["zoo"], manifest["arch"]["kwargs"])
    record.plans = manifest.get("plans", [])
    return model.eval()
