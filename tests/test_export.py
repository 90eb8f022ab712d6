"""`mixwise export`: the plan's rows for any trainer — and TRL's own CLI trains exactly them. `Plan.to_trl_mixture`
refuses every plan that fractions cannot express."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import datasets
import pytest
import yaml
from helpers import ROOT, SCRIPTS

from mixwise import Mixture, Plan
from mixwise.cli import main
from mixwise.export import export_plan, plan_rows
from mixwise.toy import make_source

SIZES = {"count": 8, "colour": 8, "ocr": 8}


@pytest.fixture(scope="module")
def toy_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    paths = {}
    for name in SIZES:
        make_source(name, SIZES[name], split="train", seed=3).save_to_disk(str(root / name))
        paths[name] = str(root / name)
    return paths


def sources(paths):
    return {n: datasets.load_from_disk(p) for n, p in paths.items()}


# -- to_trl_mixture ---------------------------------------------------------------------------------------------------


def test_trl_mixture_only_for_plans_fractions_express(tmp_path):
    whole = Plan.from_weights({"a": 10, "b": 20, "c": 0}, {"a": 10, "b": 20, "c": 5}, 30)
    mix = whole.to_trl_mixture(paths={"a": "data/a"})
    assert mix == [
        {"path": "data/a", "split": "train", "fraction": round(1 / 3, 8)},
        {"path": "b", "split": "train", "fraction": round(2 / 3, 8)},
    ]
    # TRL's own loader on these fractions trains on exactly the plan: whole sources, 10 + 20 rows
    from trl import DatasetMixtureConfig, get_dataset
    from trl.scripts.utils import DatasetConfig

    for n, size in {"a": 10, "b": 20}.items():
        datasets.DatasetDict(train=datasets.Dataset.from_dict({"x": [f"{n}{i}" for i in range(size)]})).save_to_disk(
            str(tmp_path / n)
        )
    entries = [DatasetConfig(**{**m, "path": str(tmp_path / n)}) for m, n in zip(mix, "ab")]
    trained = get_dataset(DatasetMixtureConfig(datasets=entries))["train"]["x"]
    assert collections.Counter(x[0] for x in trained) == {"a": 10, "b": 20}

    sizes = {"a": 10, "b": 10}
    for plan, why in [
        (Plan.from_weights({"a": 1, "b": 3}, sizes, 8), "random subset"),  # 2 of 10, 6 of 10
        (Plan.from_weights({"a": 1, "b": 1}, sizes, 30), "repeats"),  # 15 > 10
        (Plan.from_rows({"a": [3, 1], "b": [0]}, sizes), "per-sample"),
        (Plan.staged([Plan.uniform(sizes, 20), Plan.uniform(sizes, 20)]), "staged"),
    ]:
        with pytest.raises(ValueError, match=why) as err:
            plan.to_trl_mixture()
        assert "mixwise export" in str(err.value)


# -- the export ---------------------------------------------------------------------------------------------------------


def test_export_writes_exactly_the_plans_rows_with_provenance(tmp_path, toy_dirs):
    plan = Plan.from_weights({"count": 1, "colour": 3, "ocr": 2}, SIZES, 18, method="fixed_weights", seed=5)
    assert plan.counts == {"count": 3, "colour": 9, "ocr": 6} and plan.sources["colour"].repeated
    plan.save(tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--sources", *toy_dirs.values(), "--out", str(tmp_path / "x")]) == 0
    out = tmp_path / "x"
    exported = datasets.load_dataset(str(out), split="train")  # what TRL's `datasets:` entry does
    mixture = Mixture(sources(toy_dirs), budget=18, plan=plan, seed=5, validate=False)
    expected = [mixture.locate(int(i)) for i in mixture.indices(epoch=0, seed=5)]  # the sampler's first epoch
    assert list(zip(exported["source"], exported["source_row"])) == expected
    assert exported["position"] == list(range(18)) and set(exported["stage"]) == {0}
    pool = sources(toy_dirs)
    for row in exported.select(range(5)):
        assert row["messages"] == pool[row["source"]][row["source_row"]]["messages"]
    card = (out / "README.md").read_text()
    for text in ("fixed_weights", "18 rows", "seed: 5", "| colour | 0.5000 | 9 | 8 | yes |", "trl sft --config"):
        assert text in card, text
    config = yaml.safe_load((out / "trl_sft.yaml").read_text())
    assert config["datasets"] == [{"path": str(out.resolve()), "split": "train"}]
    assert config["train_sampling_strategy"] == "sequential" and config["num_train_epochs"] == 1
    assert Plan.load(out) == plan
    with pytest.raises(FileExistsError):
        export_plan(tmp_path / "run", sources(toy_dirs), out)


def test_staged_plan_exports_stage_after_stage(toy_dirs):
    stages = [
        Plan.from_weights({"count": 1, "colour": 0, "ocr": 0}, SIZES, 4, extra={"capability": "counting"}),
        Plan.from_weights({"count": 0, "colour": 1, "ocr": 1}, SIZES, 6, extra={"capability": "reading"}),
    ]
    plan = Plan.staged(stages, method="cadc")
    mixture = Mixture(sources(toy_dirs), budget=10, seed=0, validate=False)
    rows = plan_rows(mixture, plan)
    assert rows["stage"] == [0] * 4 + [1] * 6
    assert set(rows["source"][:4]) == {"count"} and set(rows["source"][4:]) == {"colour", "ocr"}


def test_export_refuses_sources_that_do_not_match(tmp_path, toy_dirs):
    plan = Plan.uniform(SIZES, 6)
    with pytest.raises(ValueError, match="do not match the plan"):
        export_plan(plan, {"count": sources(toy_dirs)["count"]}, tmp_path / "x")
    other = {**sources(toy_dirs), "ocr": sources(toy_dirs)["ocr"].select(range(5))}
    with pytest.raises(ValueError, match="ocr"):
        export_plan(plan, other, tmp_path / "y")


@pytest.mark.slow
def test_trl_sft_cli_trains_exactly_the_exported_rows(tmp_path, toy_dirs, tiny_llava_path):
    """TRL's own `trl sft` on the exported YAML: the rows its training sampler yields are the plan's, once each,
    in the plan's order — counted per source against the plan."""
    plan = Plan.from_weights({"count": 1, "colour": 3, "ocr": 2}, SIZES, 18, method="fixed_weights", seed=1)
    out = tmp_path / "export"
    export_plan(plan, sources(toy_dirs), out, model=str(tiny_llava_path))
    record = tmp_path / "rows.jsonl"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(SCRIPTS / "trl_rows"), os.environ.get("PYTHONPATH", "")]),
        MIXWISE_TRL_ROWS=str(record),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    trl = os.path.join(os.path.dirname(sys.executable), "trl")
    cmd = [trl, "sft", "--config", str(out / "trl_sft.yaml"), "--output_dir", str(tmp_path / "trained")]
    cmd += ["--per_device_train_batch_size", "4", "--use_cpu", "true", "--bf16", "false", "--report_to", "none"]
    cmd += ["--save_strategy", "no", "--max_length", "null", "--gradient_checkpointing", "false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert (tmp_path / "trained" / "model.safetensors").exists()
    indices = [i for line in record.read_text().splitlines() for i in json.loads(line)]
    exported = datasets.load_from_disk(str(out))["train"]
    assert indices == list(range(18))  # every row once, in the plan's order
    consumed = collections.Counter(exported[i]["source"] for i in indices)
    assert consumed == plan.counts == {"count": 3, "colour": 9, "ocr": 6}
