"""One surface: stage registry by config type, deprecated names, versioned run state."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from tinydata import tiny_recipe

from edgeslim.errors import ConfigError, EdgeslimDeprecationWarning
from edgeslim.pipeline import parse_recipe, run_recipe
from edgeslim.pipeline.configs import STAGE_CONFIG_TYPES, MergeStage, PruneStage
from edgeslim.pipeline.stages import STAGES


def test_one_registry_maps_each_kind_to_its_config_and_handler() -> None:
    assert sorted(STAGES.names()) == sorted(c.kind for c in STAGE_CONFIG_TYPES)
    for cls in STAGE_CONFIG_TYPES:
        assert STAGES.get(cls.kind).config is cls and callable(STAGES.get(cls.kind).handler)


def test_configs_validate_themselves_however_built() -> None:
    with pytest.raises(ConfigError, match=re.escape("steps=0 is invalid")):
        PruneStage(remove_channels=0.3, steps=0)
    with pytest.raises(ConfigError, match="exactly one of"):
        PruneStage()
    with pytest.raises(ConfigError, match="Did you mean 'adamw'"):
        parse_recipe(tiny_recipe(Path("d"), [{"train": {"optimizer": "adamx"}}]))


@pytest.mark.parametrize("old, new, value", [("ratio", "remove_channels", 0.3),
                                             ("target_filters", "remove_filters", 0.5)])
def test_old_target_names_are_deprecated_aliases(old: str, new: str, value: float) -> None:
    method = "easiedge" if new == "remove_filters" else "structured"
    with pytest.warns(EdgeslimDeprecationWarning, match=f"{old} is deprecated; call it '{new}'"):
        recipe = parse_recipe(tiny_recipe(Path("d"), [{"prune": {"method": method, old: value}}]))
    assert getattr(recipe.stages[0].config, new) == value
    with pytest.raises(ConfigError, match=f"both '{old}' and its new name '{new}'"):
        parse_recipe(tiny_recipe(Path("d"), [{"prune": {"method": method, old: value, new: value}}]))


def test_rebirth_steps_is_now_steps() -> None:
    with pytest.warns(EdgeslimDeprecationWarning):
        recipe = parse_recipe(tiny_recipe(Path("d"), [{"merge": {"mode": "streamline", "rebirth_steps": 7}}]))
    assert recipe.stages[0].config == MergeStage(mode="streamline", steps=7)


STAGES_1 = [{"train": {"epochs": 1}}, {"prune": {"remove_channels": 0.3, "finetune": "none"}}]


def test_run_of_an_older_edgeslim_resumes_and_a_changed_value_is_named(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_recipe(parse_recipe(tiny_recipe(tiny_data, STAGES_1)), out, progress=False)
    state = json.loads((out / "state.json").read_text())
    assert state["schema_version"] == 2
    # what an edgeslim before the schema version wrote: old key names, no newer fields
    del state["schema_version"]
    prune = state["recipe"]["stages"][1]["prune"]
    prune["ratio"] = prune.pop("remove_channels")
    for newer in ("ignore", "min_channels", "protect_first", "on_unsupported"):
        del prune[newer]
    (out / "state.json").write_text(json.dumps(state))
    again = run_recipe(parse_recipe(tiny_recipe(tiny_data, STAGES_1)), out, progress=False)
    assert again["schema_version"] == 2 and len(again["completed"]) == 3
    changed = [STAGES_1[0], {"prune": {"remove_channels": 0.4, "finetune": "none"}}]
    with pytest.raises(ConfigError, match=re.escape("recipe.stages[1].prune.remove_channels changed from "
                                                    "0.3 to 0.4")):
        run_recipe(parse_recipe(tiny_recipe(tiny_data, changed)), out, progress=False)


# ------------------------------------------------------------------ schema and CLI flags: one set of names
import yaml  # noqa: E402
from schemacheck import KNOWN, errors, keywords  # noqa: E402

from edgeslim.cli import build_parser, main  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def schema() -> dict:
    from edgeslim.schema import recipe_schema

    return json.loads(json.dumps(recipe_schema()))  # exactly what `edgeslim schema` prints


def test_schema_command_prints_draft_2020_12_json(capsys: pytest.CaptureFixture, schema: dict) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == schema and printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert keywords(printed) <= KNOWN  # the checker below understands every keyword used
    for cls in STAGE_CONFIG_TYPES:
        d = printed["$defs"][cls.kind]
        assert d["type"] == "object" and d["additionalProperties"] is False
        assert {f.name for f in dataclasses.fields(cls)} <= set(d["properties"])


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate_against_the_schema(path: Path, schema: dict) -> None:
    assert errors(yaml.safe_load(path.read_text()), schema, schema) == []


def test_schema_rejects_what_the_parser_rejects(schema: dict) -> None:
    good = tiny_recipe(Path("d"), [{"train": {"epochs": 1}}, "export"])
    assert errors(good, schema, schema) == []
    for bad in ([{"train": {"epochz": 1}}], [{"trian": {}}], [{"train": {"epochs": -1}}],
                [{"prune": {"method": "nope"}}], [{"train": {"optimizer": "adam"}}], []):
        assert errors(tiny_recipe(Path("d"), bad), schema, schema), bad


def _flags(parser: object, command: str) -> set[str]:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[attr-defined]
    return {s for a in sub._actions for s in a.option_strings}


def test_each_stage_property_is_a_flag_of_its_command(schema: dict) -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    shared = [k for k in schema["$defs"] if k in commands]
    assert {"train", "prune", "lighten", "distill", "merge", "profile", "export"} <= set(shared)
    for kind in shared:
        flags = _flags(parser, kind)
        for prop in schema["$defs"][kind]["properties"]:
            assert "--" + prop.replace("_", "-") in flags, (kind, prop)


@pytest.mark.parametrize("given, expected", [(None, "auto"), ("auto", "auto"), (0.3, 0.3), ("1e-3", 1e-3)])
def test_easiedge_rho_defaults_to_auto_like_admm_prune_and_numbers_still_parse(given: object,
                                                                              expected: object) -> None:
    import inspect

    from edgeslim.prune.admm import admm_prune

    body = {"method": "easiedge", "remove_filters": 0.5} | ({} if given is None else {"rho": given})
    assert parse_recipe(tiny_recipe(Path("d"), [{"prune": body}])).stages[0].config.rho == expected
    assert PruneStage(remove_filters=0.5, method="easiedge").rho == inspect.signature(admm_prune).parameters["rho"].default


@pytest.mark.parametrize("bad", ["fast", 0, -1.0, True, float("nan")])
def test_easiedge_rho_rejects_what_is_neither_auto_nor_a_positive_number(bad: object) -> None:
    with pytest.raises(ConfigError, match="rho"):
        parse_recipe(tiny_recipe(Path("d"), [{"prune": {"method": "easiedge", "remove_filters": 0.5, "rho": bad}}]))


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("0.25", 0.25)])
def test_easiedge_rho_flag_takes_auto_or_a_number(value: str, expected: object) -> None:
    from edgeslim.cli import _stage_config

    args = build_parser().parse_args(["prune", "--method", "easiedge", "--remove-filters", "0.5", "--rho", value])
    assert _stage_config("prune", args).rho == expected
    default = build_parser().parse_args(["prune", "--method", "easiedge", "--remove-filters", "0.5"])
    assert _stage_config("prune", default).rho == "auto"


def test_easiedge_rho_schema_takes_auto_or_a_number(schema: dict) -> None:
    for rho, ok in (("auto", True), (0.3, True), ("fast", False), (2e6, False)):
        recipe = tiny_recipe(Path("d"), [{"prune": {"method": "easiedge", "remove_filters": 0.5, "rho": rho}}])
        assert (errors(recipe, schema, schema) == []) is ok, rho


def test_the_easiedge_stage_hands_rho_to_admm_prune(tiny_data: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeslim.prune.admm as admm

    seen = []
    from edgeslim.stage_args import easiedge_keywords

    def fake(model, example, train, config=None, **kw):  # the handler passes its stage config
        seen.append(kw.get("rho", easiedge_keywords(config)["rho"] if config is not None else None))
        return model

    monkeypatch.setattr(admm, "admm_prune", fake)
    for stage in ({}, {"rho": 0.5}):
        body = {"method": "easiedge", "remove_filters": 0.5, "admm_epochs": 1} | stage
        run_recipe(parse_recipe(tiny_recipe(tiny_data, [{"prune": body}])), tmp_path / str(len(seen)),
                   progress=False)
    assert seen == ["auto", 0.5]
