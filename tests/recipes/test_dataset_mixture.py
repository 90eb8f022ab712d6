"""A recipe's pool given as TRL's own `datasets:` entries (`trl.DatasetMixtureConfig`), loaded as `trl sft` loads
them; their `fraction`s are the mixture's fixed weights, and the run trains on exactly the allocation."""

from __future__ import annotations

import json

import datasets
import pytest
import yaml

from mixwise import Plan
from mixwise.cli import main
from mixwise.recipes import recipe_path
from mixwise.toy import make_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_trl_datasets_entries_are_the_pool(tmp_path):
    entries = []
    for name, fraction in (("count", 3), ("ocr", 1)):
        datasets.DatasetDict(train=make_source(name, 10, split="train", seed=2)).save_to_disk(str(tmp_path / name))
        entries.append({"path": str(tmp_path / name), "split": "train", "fraction": fraction})
    config = yaml.safe_load(open(recipe_path("sft_uniform")).read())
    out = tmp_path / "run"
    config.update(datasets=entries, budget=8, output_dir=str(out), per_device_train_batch_size=4, report=False)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config))
    assert main(["sft", "--config", str(tmp_path / "recipe.yaml")]) == 0
    plan = Plan.load(out)
    assert plan.method == "fixed_weights" and plan.counts == {"count": 6, "ocr": 2}
    assert json.loads((out / "consumed.json").read_text())["consumed"] == {"count": 6, "ocr": 2}


def test_sources_and_datasets_together_are_refused(tmp_path):
    config = yaml.safe_load(open(recipe_path("sft_uniform")).read())
    config.update(
        datasets=[{"path": str(tmp_path / "x")}], sources=[str(tmp_path / "y")], output_dir=str(tmp_path / "r")
    )
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="`sources` and `datasets`"):
        main(["sft", "--config", str(tmp_path / "recipe.yaml")])
    assert not (tmp_path / "r").exists()  # refused before anything was built
