"""The whole recipe configuration is checked before anything is loaded or built (issue 13, item 15), and the
shipped recipes are listed, copied and run by name."""

from __future__ import annotations

import json

import pytest
import yaml

from mixwise.cli import main
from mixwise.recipes import last_complete_checkpoint, list_recipes, recipe_path, resolve_resume


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({"method": "dataprophtet"}, "method", "unknown selection method 'dataprophtet'"),
        ({"method": "dataprophet", "selector_kwargs": {"subsampel": 8}}, "selector_kwargs", "subsampel"),
        ({"method": "icons", "selector_kwargs": {"proj_dimm": 8}}, "selector_kwargs", "proj_dimm"),
        ({"method": "cadc", "selector_kwargs": {"warmup": {"rr": 4}}}, "selector_kwargs", "rr"),
        ({"budget": 12.5}, "budget", "whole number"),
        ({"budget": -3}, "budget", "positive"),
        ({"validate": "sometimes"}, "validate", "raise or skip"),
        ({"target_metrics": {"count": "f1"}}, "target_metrics", "unknown metric 'f1'"),
        ({"resume_from_checkpoint": "nowhere/checkpoint-8"}, "resume_from_checkpoint", "not a checkpoint"),
    ],
)
def test_a_bad_recipe_field_fails_before_anything_is_loaded(tmp_path, overrides, field, message):
    """A recipe YAML with one bad field: the error names the field, and nothing was built or loaded."""
    config = yaml.safe_load(open(recipe_path("sft_uniform")).read())
    out = tmp_path / "run"
    config.update(overrides, output_dir=str(out))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=message) as err:
        main(["sft", "--config", str(tmp_path / "recipe.yaml")])
    assert f"recipe field `{field}`" in str(err.value)
    assert not out.exists()  # no base model written, no data made, nothing loaded


def test_a_bad_field_on_the_command_line_too(tmp_path):
    with pytest.raises(ValueError, match="recipe field `selector_kwargs`: dataprophet: .*subsampel"):
        main(["sft", "--config", "sft_dataprophet", "--output_dir", str(tmp_path / "r"), "--selector_kwargs",
              json.dumps({"subsampel": 8})])  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_grpo_reward_function_checked_first(tmp_path):
    with pytest.raises(ValueError, match="recipe field `reward_funcs`.*no_such_reward"):
        main(["grpo", "--config", "grpo_uniform", "--output_dir", str(tmp_path / "g"), "--reward_funcs",
              "mixwise.rewards.no_such_reward"])  # fmt: skip
    assert not (tmp_path / "g").exists()


def test_resume_resolves_the_last_complete_checkpoint(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):  # checkpoint-6: a save cut short by a crash
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert resolve_resume("true", tmp_path) == resolve_resume(True, tmp_path) == str(tmp_path / "checkpoint-4")
    assert resolve_resume("false", tmp_path) is None and resolve_resume(None, tmp_path) is None
    assert resolve_resume(str(tmp_path / "checkpoint-2"), tmp_path) == str(tmp_path / "checkpoint-2")
    with pytest.raises(ValueError, match="unfinished save"):
        resolve_resume(str(tmp_path / "checkpoint-6"), tmp_path)
    with pytest.raises(ValueError, match="has none"):
        resolve_resume("true", tmp_path / "empty")


def test_recipes_are_shipped_listed_and_copied(tmp_path, capsys):
    names = [r.name for r in list_recipes()]
    for name in ("sft_uniform", "sft_dataprophet", "sft_icons", "sft_cadc", "grpo_uniform", "grpo_dataprophet",
                 "mmgen", "accelerate/fsdp", "accelerate/cpu_2proc"):  # fmt: skip
        assert name in names
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert "sft_icons" in listed and "mixwise sft --config sft_icons.yaml" in listed
    assert main(["recipes", "copy", "sft_icons", "--out", str(tmp_path)]) == 0
    copied = tmp_path / "sft_icons.yaml"
    assert copied.read_text() == open(recipe_path("sft_icons")).read()
    assert yaml.safe_load(copied.read_text())["method"] == "icons"
    assert main(["recipes", "copy", "sft_icons", "--out", str(tmp_path)]) == 2  # exists: not overwritten
    assert main(["recipes", "copy", "no_such_recipe"]) == 2
    assert main(["recipes", "copy", "accelerate/fsdp", "--out", str(tmp_path / "fsdp.yaml")]) == 0
    fsdp = yaml.safe_load((tmp_path / "fsdp.yaml").read_text())
    assert fsdp["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_wheel_ships_the_recipes():
    """The recipes are package data (pyproject's package-data globs cover every shipped file)."""
    from pathlib import Path

    import tomllib

    from mixwise.recipes.shipped import CONFIG_DIR

    data = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["mixwise.recipes"]
    shipped = {str(p.relative_to(CONFIG_DIR).parent) for p in Path(CONFIG_DIR).rglob("*.yaml")}
    assert {f"configs/{d}/*.yaml".replace("/./", "/") for d in shipped} <= set(globs)


@pytest.mark.parametrize("name", [r.name for r in list_recipes() if r.name.startswith("accelerate/")])
def test_accelerate_configs_load_with_accelerates_own_classes(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(recipe_path(name))
    if name == "accelerate/fsdp":
        # FULL_STATE_DICT: Trainer.save_model() gathers and writes model.safetensors (SHARDED_STATE_DICT writes none)
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, state_dict_type=config.fsdp_config["fsdp_state_dict_type"]
        )
        assert plugin.state_dict_type.name == "FULL_STATE_DICT"


def test_a_row_the_collator_would_reject_is_named_before_the_model_loads(tmp_path, monkeypatch):
    """A pool row with two images but one placeholder: the recipe's validation (with the processor) names it, and
    no model is ever loaded."""
    from mixwise.toy import make_source

    ds = make_source("count", 6, seed=3)
    rows = ds.to_list()
    rows[2]["images"] = rows[2]["images"] * 2
    bad = type(ds).from_list(rows, features=ds.features)
    bad.save_to_disk(str(tmp_path / "count"))
    make_source("colour", 6, seed=3).save_to_disk(str(tmp_path / "colour"))
    loaded = []
    import transformers

    original = transformers.PreTrainedModel.from_pretrained.__func__
    monkeypatch.setattr(
        transformers.PreTrainedModel,
        "from_pretrained",
        classmethod(lambda cls, *a, **k: loaded.append(cls) or original(cls, *a, **k)),
    )
    with pytest.raises(ValueError, match=r"source 'count', row 2, field 'images'"):
        main(["sft", "--config", "sft_uniform", "--output_dir", str(tmp_path / "r"), "--sources",
              str(tmp_path / "count"), str(tmp_path / "colour"), "--budget", "4"])  # fmt: skip
    assert loaded == []


def test_the_same_source_twice_is_refused(tmp_path):
    from mixwise.toy import make_source

    make_source("count", 6, seed=3).save_to_disk(str(tmp_path / "count"))
    with pytest.raises(ValueError, match="given twice"):
        main(["sft", "--config", "sft_uniform", "--output_dir", str(tmp_path / "r"), "--sources",
              str(tmp_path / "count"), str(tmp_path / "count"), "--budget", "4"])  # fmt: skip
