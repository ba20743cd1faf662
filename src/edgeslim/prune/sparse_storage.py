"""Compact storage of magnitude-pruned models (Deep Compression style).

Han, Mao & Dally, *Deep Compression: Compressing Deep Neural Networks with
Pruning, Trained Quantization and Huffman Coding*, ICLR 2016, Sec. 2-3:

* a sparse weight tensor is stored as its non-zero values plus the *relative*
  index of each one (the gap to the previous non-zero, flattened order) in
  ``index_bits`` bits (8 or 4). A gap larger than ``2**index_bits`` is bridged
  by filler entries whose value is zero;
* with ``value_bits`` < 32 the values share weights: a per-tensor codebook of
  ``2**value_bits - 1`` centroids found by 1-D k-means with linear
  initialisation (the paper's best init), plus code 0 reserved for an exact
  zero (fillers, and pruned weights in dense-coded tensors). With
  ``value_bits=32`` values are kept bit for bit (the model reloads exactly;
  the one exception is a negative zero, which reloads as +0.0).

Every weight tensor (>= 2 dims, floating point) takes whichever encoding is
smaller: raw, sparse, or (``value_bits`` < 32) dense codes. Everything else
(biases, norm statistics, integer buffers) is stored raw. Huffman coding is not
applied. The file is a single safetensors file - arrays only, never pickle -
whose metadata holds a JSON description of each tensor's encoding; writes are
atomic.
"""
from __future__ import annotations

import copy
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
from torch import Tensor, nn

from edgeslim.errors import CheckpointError, ConfigError
from edgeslim.io import atomic_write_bytes

__all__ = ["save_sparse", "load_sparse", "stored_bytes", "SparseReport", "TensorStorage", "kmeans_codebook"]

FORMAT = "edgeslim-sparse"
VERSION = 1
META_KEY = "edgeslim_sparse"
VALUE_BITS = (32, 8, 4)
INDEX_BITS = (8, 4)
Encoding = Literal["raw", "sparse", "codes"]


@dataclass(frozen=True)
class TensorStorage:
    """How one state-dict tensor was stored and how many payload bytes it takes."""

    name: str
    encoding: Encoding
    shape: tuple[int, ...]
    nnz: int
    bytes: int


@dataclass
class SparseReport:
    """Per-tensor storage of a :func:`save_sparse` file and its total size on disk."""

    path: Path
    file_bytes: int
    dense_fp32_bytes: int
    tensors: list[TensorStorage] = field(default_factory=list)

    @property
    def compression(self) -> float:
        """Dense fp32 size divided by the file size."""
        return self.dense_fp32_bytes / max(self.file_bytes, 1)

    @property
    def header_bytes(self) -> int:
        """File bytes that are not tensor payload (safetensors + JSON header)."""
        return self.file_bytes - sum(t.bytes for t in self.tensors)


# --------------------------------------------------------------------------- bit packing


def _pack(codes: Tensor, bits: int) -> Tensor:
    """Unsigned codes (< 2**bits) to a uint8 array; 4-bit codes go two per byte."""
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    pairs = codes.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def _unpack(packed: Tensor, bits: int, n: int) -> Tensor:
    if bits == 8:
        return packed[:n].long()
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], 1).flatten()[:n].long()


# --------------------------------------------------------------------------- relative indices


def _relative_indices(positions: Tensor, index_bits: int) -> tuple[Tensor, Tensor]:
    """Gap codes for sorted flat ``positions`` and the entry index of each real value.

    Each entry advances the position by ``code + 1``; an entry with code
    ``2**bits - 1`` that is not a real value is a zero filler.
    """
    span = 1 << index_bits
    if positions.numel() == 0:
        return positions.new_zeros(0), positions.new_zeros(0)
    prev = torch.cat([positions.new_tensor([-1]), positions[:-1]])
    gap = positions - prev  # >= 1
    fillers = (gap - 1) // span
    real_at = torch.cumsum(fillers + 1, 0) - 1
    total = int(real_at[-1]) + 1
    codes = torch.full((total,), span - 1, dtype=torch.long)
    codes[real_at] = gap - 1 - fillers * span
    return codes, real_at


def _positions(codes: Tensor) -> Tensor:
    return torch.cumsum(codes + 1, 0) - 1


# --------------------------------------------------------------------------- weight sharing


def kmeans_codebook(values: Tensor, bits: int, iters: int = 30) -> tuple[Tensor, Tensor]:
    """Weight sharing (Deep Compression Sec. 3): codebook and codes for ``values``.

    Returns ``(codebook, codes)`` with ``codebook[0] == 0`` reserved for exact
    zeros and ``codes`` in ``1 .. 2**bits - 1`` for the values. Fewer distinct
    values than centroids are kept exactly; otherwise 1-D k-means from a linear
    initialisation over ``[min, max]``.
    """
    k = (1 << bits) - 1
    v = values.detach().double().flatten()
    if v.numel() == 0:
        return values.new_zeros(1), torch.zeros(0, dtype=torch.long)
    unique = torch.unique(v)
    if unique.numel() <= k:
        centroids = unique
    else:
        centroids = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
        for _ in range(iters):
            assign = _nearest(v, centroids)
            sums = torch.zeros(k, dtype=torch.float64).index_add_(0, assign, v)
            counts = torch.bincount(assign, minlength=k).double()
            centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
    codes = _nearest(v, centroids) + 1
    codebook = torch.cat([centroids.new_zeros(1), centroids]).to(values.dtype)
    return codebook, codes


def _nearest(v: Tensor, sorted_centroids: Tensor) -> Tensor:
    """Index of the nearest centroid for each value (centroids sorted ascending)."""
    mids = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2
    return torch.bucketize(v, mids)


# --------------------------------------------------------------------------- encoders


def _nonzero_mask(t: Tensor) -> Tensor:
    """Entries to store. -0.0 counts as zero (pruning by multiplying with a mask
    makes them) and reloads as +0.0: equal under ``==``, not bitwise."""
    return t != 0


def _encode_sparse(name: str, t: Tensor, value_bits: int, index_bits: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    flat = t.detach().cpu().flatten()
    positions = torch.nonzero(_nonzero_mask(flat)).flatten()
    codes, real_at = _relative_indices(positions, index_bits)
    arrays = {f"{name}::gaps": _pack(codes, index_bits)}
    if value_bits == 32:
        values = torch.zeros(codes.numel(), dtype=flat.dtype)
        values[real_at] = flat[positions]
        arrays[f"{name}::values"] = values
    else:
        codebook, value_codes = kmeans_codebook(flat[positions], value_bits)
        entries = torch.zeros(codes.numel(), dtype=torch.long)
        entries[real_at] = value_codes
        arrays[f"{name}::values"] = _pack(entries, value_bits)
        arrays[f"{name}::codebook"] = codebook
    return arrays, {"enc": "sparse", "n": int(codes.numel()), "nnz": int(positions.numel())}


def _encode_codes(name: str, t: Tensor, value_bits: int, index_bits: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    flat = t.detach().cpu().flatten()
    keep = _nonzero_mask(flat)
    codebook, value_codes = kmeans_codebook(flat[keep], value_bits)
    codes = torch.zeros(flat.numel(), dtype=torch.long)
    codes[keep] = value_codes
    arrays = {f"{name}::values": _pack(codes, value_bits), f"{name}::codebook": codebook}
    return arrays, {"enc": "codes", "n": int(flat.numel()), "nnz": int(keep.sum())}


def _encode_raw(name: str, t: Tensor, value_bits: int, index_bits: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    raw = t.detach().cpu().contiguous()
    nnz = int(_nonzero_mask(raw).sum()) if raw.is_floating_point() else raw.numel()
    return {f"{name}::raw": raw}, {"enc": "raw", "nnz": nnz}


ENCODERS = {"raw": _encode_raw, "sparse": _encode_sparse, "codes": _encode_codes}


def _payload(arrays: dict[str, Tensor]) -> int:
    return sum(a.numel() * a.element_size() for a in arrays.values())


def _encode(name: str, t: Tensor, value_bits: int, index_bits: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The smallest applicable encoding of one tensor."""
    if not t.is_floating_point() or t.dim() < 2:
        options = ["raw"]
    else:
        options = ["raw", "sparse"] if value_bits == 32 else ["sparse", "codes"]
    best = None
    for enc in options:
        arrays, meta = ENCODERS[enc](name, t, value_bits, index_bits)
        if best is None or _payload(arrays) < _payload(best[0]):
            best = (arrays, meta)
    assert best is not None
    best[1].update(shape=list(t.shape), dtype=str(t.dtype).removeprefix("torch."))
    return best


# --------------------------------------------------------------------------- public API


def save_sparse(
    model: nn.Module, path: str | os.PathLike[str], *, value_bits: int = 32, index_bits: int = 8
) -> SparseReport:
    """Write ``model.state_dict()`` compactly to one safetensors file (atomically).

    Args:
        model: the (pruned) network; any state-dict tensors are accepted.
        path: the output file (conventionally ``*.safetensors``).
        value_bits: 32 keeps values exactly; 8 or 4 share weights through a
            per-tensor k-means codebook (lossy, Deep Compression).
        index_bits: bits per relative index, 8 or 4.

    Returns:
        A :class:`SparseReport` with per-tensor payload bytes; ``file_bytes``
        equals the size of the file on disk.
    """
    if value_bits not in VALUE_BITS or index_bits not in INDEX_BITS:
        raise ConfigError(f"save_sparse: value_bits must be one of {VALUE_BITS} and index_bits one of "
                          f"{INDEX_BITS}, got value_bits={value_bits}, index_bits={index_bits}")
    arrays: dict[str, Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    storage: list[TensorStorage] = []
    dense = 0
    for name, tensor in model.state_dict().items():
        tensor_arrays, meta = _encode(name, tensor, value_bits, index_bits)
        arrays.update(tensor_arrays)
        entries[name] = meta
        storage.append(TensorStorage(name, meta["enc"], tuple(tensor.shape), meta["nnz"], _payload(tensor_arrays)))
        dense += tensor.numel() * (4 if tensor.is_floating_point() else tensor.element_size())
    header = {"format": FORMAT, "version": VERSION, "value_bits": value_bits,
              "index_bits": index_bits, "tensors": entries}
    data = safetensors.torch.save(arrays, metadata={META_KEY: json.dumps(header, separators=(",", ":"))})
    atomic_write_bytes(path, data)
    return SparseReport(Path(path), stored_bytes(path), dense, storage)


def stored_bytes(path: str | os.PathLike[str]) -> int:
    """Size of a stored model file in bytes (what it costs on disk)."""
    return os.path.getsize(path)


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON header and arrays of a :func:`save_sparse` file."""
    if not path.is_file():
        raise CheckpointError(f"sparse model file {path} does not exist; write it with save_sparse()")
    data = path.read_bytes()
    try:
        (size,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8:8 + size]).get("__metadata__") or {}
        header = json.loads(meta[META_KEY])
        arrays = safetensors.torch.load(data)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable edgeslim sparse file ({type(exc).__name__}: {exc}); "
                              "re-create it with save_sparse()") from exc
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CheckpointError(f"{path} has format {header.get('format')!r} v{header.get('version')}, "
                              f"expected {FORMAT!r} v{VERSION}")
    return header, arrays


def _decode(name: str, meta: dict[str, Any], arrays: dict[str, Tensor], header: dict[str, Any]) -> Tensor:
    shape, dtype = tuple(meta["shape"]), getattr(torch, meta["dtype"])
    if meta["enc"] == "raw":
        return arrays[f"{name}::raw"]
    values_bits = header["value_bits"]
    if meta["enc"] == "codes":
        codes = _unpack(arrays[f"{name}::values"], values_bits, meta["n"])
        return arrays[f"{name}::codebook"][codes].to(dtype).reshape(shape)
    positions = _positions(_unpack(arrays[f"{name}::gaps"], header["index_bits"], meta["n"]))
    if values_bits == 32:
        values = arrays[f"{name}::values"]
    else:
        values = arrays[f"{name}::codebook"][_unpack(arrays[f"{name}::values"], values_bits, meta["n"])]
    out = torch.zeros(int(torch.tensor(shape).prod()), dtype=dtype)
    out[positions] = values.to(dtype)
    return out.reshape(shape)


def load_sparse(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` with the weights stored by :func:`save_sparse`.

    ``model`` supplies the architecture (it is not modified); the file must hold
    exactly its state-dict keys and shapes. With ``value_bits=32`` the weights
    are restored bit for bit.

    Raises:
        CheckpointError: missing/corrupt file, or keys/shapes that don't match ``model``.
    """
    header, arrays = _read(Path(path))
    state = {name: _decode(name, meta, arrays, header) for name, meta in header["tensors"].items()}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape mismatch {sorted(wrong)[:5]}; "
                              "pass the architecture the file was saved from")
    loaded = copy.deepcopy(model)
    loaded.load_state_dict(state)
    return loaded
