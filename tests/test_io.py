"""Atomic writes never leave a partial file; checkpoints load only safely."""
from __future__ import annotations

import json
import os
import pickle
import re
import stat

import pytest
import torch

from edgeslim.errors import CheckpointError
from edgeslim.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    safe_torch_load,
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bytes_text_json_round_trip(tmp_path) -> None:
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01edge")
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    atomic_write_json(tmp_path / "m.json", {"acc": 0.5, "groups": {"3": [0, 2]}})
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01edge"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "m.json").read_text()) == {"acc": 0.5, "groups": {"3": [0, 2]}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.json", "t.txt"]  # no temp files


def test_new_files_get_normal_permissions_and_replacements_keep_theirs(tmp_path) -> None:
    path = tmp_path / "x.bin"
    atomic_write_bytes(path, b"1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    os.chmod(path, 0o640)
    atomic_write_bytes(path, b"2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_torch_round_trip(tmp_path) -> None:
    state = {"w": torch.randn(3, 4), "epoch": 7, "names": ["a", "b"]}
    path = atomic_torch_save(state, tmp_path / "ckpt.pt")
    loaded = safe_torch_load(path)
    assert torch.equal(loaded["w"], state["w"])
    assert loaded["epoch"] == 7 and loaded["names"] == ["a", "b"]


def test_missing_checkpoint(tmp_path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=re.escape("nope.pt")) as info:
        safe_torch_load(path)
    assert "does not exist" in str(info.value)


def test_corrupt_checkpoint(tmp_path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape("bad.pt")):
        safe_torch_load(path)


def test_truncated_checkpoint(tmp_path) -> None:
    path = atomic_torch_save({"w": torch.randn(100, 100)}, tmp_path / "cut.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        safe_torch_load(path)


class _Custom:  # an arbitrary class: weights_only loading must refuse it
    pass


def test_pickled_object_is_refused(tmp_path) -> None:
    path = tmp_path / "obj.pt"
    torch.save({"obj": _Custom()}, path)
    with pytest.raises(CheckpointError, match=re.escape("obj.pt")):
        safe_torch_load(path)


def test_failed_torch_save_keeps_the_old_file(tmp_path) -> None:
    path = atomic_torch_save({"w": torch.ones(2)}, tmp_path / "last.pt")
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):
        atomic_torch_save({"w": torch.zeros(2), "fn": lambda: 0}, path)  # lambdas don't pickle
    assert path.read_bytes() == before
    assert torch.equal(safe_torch_load(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_failed_json_write_keeps_the_old_file(tmp_path) -> None:
    path = atomic_write_json(tmp_path / "m.json", {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def _torch_refusals(tmp_path) -> list:
    """Checkpoints that weights_only=True refuses: a class, a function, a raw GLOBAL opcode."""
    torch.save({"obj": _Custom()}, tmp_path / "class.pt")
    torch.save({"fn": os.system}, tmp_path / "func.pt")
    (tmp_path / "raw.pt").write_bytes(b"\x80\x02cos\nsystem\nq\x00.")  # legacy pickle of os.system
    return [tmp_path / "class.pt", tmp_path / "func.pt", tmp_path / "raw.pt"]


def test_refused_objects_never_advise_weights_only_false(tmp_path) -> None:
    for path in _torch_refusals(tmp_path):
        with pytest.raises(CheckpointError) as info:
            safe_torch_load(path)
        msg = str(info.value)
        assert str(path) in msg and "refuses to load" in msg and "Re-create" in msg
        assert "weights_only" not in msg and "trust" not in msg and "\x1b[" not in msg
        assert "add_safe_globals" not in msg
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_refusal_names_the_refused_object(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"_Custom"):
        safe_torch_load(_torch_refusals(tmp_path)[0])
