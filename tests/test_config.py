"""Typed dataclass configs: round trips, strict keys, type and Literal checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from edgeslim.config import apply_overrides, from_dict, load_yaml, save_yaml, to_dict
from edgeslim.errors import ConfigError
from edgeslim.train import TrainConfig


@dataclass
class Inner:
    depth: int = 3
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    ratio: float = 0.5
    flag: bool = False
    maybe: Optional[int] = None
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    pair: tuple[int, str] = (1, "x")
    many: tuple[float, ...] = ()
    table: dict[str, float] = field(default_factory=dict)
    where: Path = Path("out")
    inner: Inner = field(default_factory=Inner)


def full_outer() -> Outer:
    return Outer(
        name="run",
        ratio=0.25,
        flag=True,
        maybe=7,
        sizes=[4, 5, 6],
        pair=(9, "y"),
        many=(0.5, 1.5),
        table={"a": 1.0, "b": 2.5},
        where=Path("some/dir"),
        inner=Inner(depth=5, kind="b"),
    )


def test_round_trip_through_dict_and_yaml(tmp_path: Path) -> None:
    obj = full_outer()
    assert from_dict(Outer, to_dict(obj)) == obj
    path = tmp_path / "cfg.yaml"
    save_yaml(obj, path)
    assert load_yaml(path, Outer) == obj
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.yaml"]  # no temp file left


def test_train_config_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, optimizer="adamw", milestones=(1, 2), grad_clip=1.0, out_dir="x")
    save_yaml(cfg, tmp_path / "t.yaml")
    assert load_yaml(tmp_path / "t.yaml", TrainConfig) == cfg


def test_unknown_key_names_closest_and_valid_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(TrainConfig, {"lr": 0.1, "epochz": 3}, where="recipe.yaml")
    msg = str(exc.value)
    assert "recipe.yaml" in msg and "'epochz'" in msg
    assert "Did you mean 'epochs'?" in msg
    assert "warmup_epochs" in msg  # the list of valid keys


def test_unknown_nested_key_reports_path() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Outer, {"name": "n", "inner": {"dept": 2}}, where="f.yaml")
    msg = str(exc.value)
    assert "f.yaml.inner" in msg and "Did you mean 'depth'?" in msg


def test_bad_literal_value_suggests() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(TrainConfig, {"optimizer": "adam"})
    msg = str(exc.value)
    assert "optimizer" in msg and "Did you mean 'adamw'?" in msg and "'sgd'" in msg


def test_direct_construction_checks_literals_too() -> None:
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="cosin")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data, key",
    [
        ({"name": "n", "sizes": [1, "two"]}, "sizes[1]"),
        ({"name": 3}, "name"),
        ({"name": "n", "flag": "yes"}, "flag"),
        ({"name": "n", "maybe": 1.5}, "maybe"),
        ({"name": "n", "inner": 4}, "inner"),
        ({"name": "n", "pair": [1, 2, 3]}, "pair"),
        ({"name": "n", "ratio": "half"}, "ratio"),
    ],
)
def test_type_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Outer, data, where="cfg")
    assert f"cfg.{key}" in str(exc.value)


def test_bool_is_not_an_int_but_int_is_a_float() -> None:
    with pytest.raises(ConfigError, match="epochs"):
        from_dict(TrainConfig, {"epochs": True})
    cfg = from_dict(TrainConfig, {"lr": 1, "weight_decay": "1e-4"})  # YAML 1.1 reads 1e-4 as str
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert cfg.weight_decay == pytest.approx(1e-4)


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match="missing required key.*name"):
        from_dict(Outer, {})


def test_post_init_error_is_prefixed_with_location() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(TrainConfig, {"lr": -1.0}, where="r.yaml")
    assert str(exc.value).startswith("r.yaml: ") and "lr" in str(exc.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nlr: [0.1\nseed: 2\n")
    with pytest.raises(ConfigError) as exc:
        load_yaml(path, TrainConfig)
    msg = str(exc.value)
    assert str(path) in msg and "YAML syntax error" in msg
    assert f"{path}:3:" in msg  # the unclosed list is detected on line 3


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "nope.yaml", TrainConfig)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(tmp_path / "list.yaml", TrainConfig)
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml", TrainConfig) == TrainConfig()


def test_apply_overrides() -> None:
    base = full_outer()
    new = apply_overrides(
        base, {"ratio": "0.75", "inner.depth": 9, "sizes": "[7, 8]", "maybe": None, "flag": "false"}
    )
    assert new.ratio == 0.75 and new.inner.depth == 9 and new.sizes == [7, 8]
    assert new.maybe == 7  # None = "flag not given" is skipped by default
    assert new.flag is False
    assert base.ratio == 0.25  # the original is untouched
    assert apply_overrides(base, {"maybe": None}, skip_none=False).maybe is None


def test_apply_overrides_errors() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'ratio'"):
        apply_overrides(full_outer(), {"ratoi": 1.0})
    with pytest.raises(ConfigError, match=r"inner\.depth"):
        apply_overrides(full_outer(), {"inner.depth": "deep"})
    with pytest.raises(ConfigError, match="lr"):
        apply_overrides(TrainConfig(), {"lr": 0.0})  # __post_init__ re-validates


# --------------------------------------------------------------------------- #
# bounded, strict YAML (edgeslim.yamlsafe)
# --------------------------------------------------------------------------- #
def _alias_bomb(levels: int = 7) -> str:
    """A few hundred bytes whose aliases expand to 9**levels values."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_uses_the_c_loader_where_available() -> None:
    import yaml

    from edgeslim.yamlsafe import StrictLoader

    assert issubclass(StrictLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def test_yaml_duplicate_key_is_refused_with_key_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("epochs: 3\nlr: 0.1\nepochs: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_yaml(path, TrainConfig)
    msg = str(exc.value)
    assert f"{path}:3:" in msg and "duplicate key 'epochs'" in msg and "line 1" in msg


def test_yaml_alias_expansion_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text("name: n\ntable: {}\n" + "sizes: &s [1, 2]\n" + _alias_bomb())
    assert path.stat().st_size < 600
    with pytest.raises(ConfigError, match=r"aliases .*expanded"):
        load_yaml(path, Outer)


def test_yaml_self_referencing_anchor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("name: n\nsizes: &s [1, *s]\n")
    with pytest.raises(ConfigError, match="alias .* to itself"):
        load_yaml(path, Outer)


def test_yaml_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("name: n\ntable: &t {a: 1.0, b: 2.0}\ninner: {<<: {depth: 4, kind: a}, depth: 6}\n")
    obj = load_yaml(path, Outer)
    assert obj.table == {"a": 1.0, "b": 2.0} and obj.inner == Inner(depth=6, kind="a")


def test_yaml_file_size_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: n\nsizes: [" + "1, " * ((1 << 20) // 3) + "1]\n")  # 1 MiB + a few bytes
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_yaml(path, Outer)


def test_cli_override_strings_use_the_strict_loader() -> None:
    assert apply_overrides(full_outer(), {"table": "{a: 1.0, b: 2.0}"}).table == {"a": 1.0, "b": 2.0}
    with pytest.raises(ConfigError, match="table"):  # not silently {"a": 2.0}
        apply_overrides(full_outer(), {"table": "{a: 1.0, a: 2.0}"})
