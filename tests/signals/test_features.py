"""The feature pipeline on N processes equals one process: the warm-up trains once (in a single-process child of the
main process), so the checkpoints, datastores and selection are the same for 1, 2 and 3 processes — from the trainer
callback, from `mixwise select` and from the recipes — and the training run consumes exactly the plan's rows."""

import collections
import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT, SCRIPTS, read_json, run_distributed, tree_diff

from mixwise import Plan
from mixwise.recipes.shipped import recipe_path

pytestmark = pytest.mark.slow
sys.path.insert(0, str(SCRIPTS))
import icons_warmup_train as script  # noqa: E402


def test_warmup_in_the_callback_is_the_same_for_one_two_and_three_processes(tiny_llava_path, tmp_path):
    runs = {}
    for n in (1, 2, 3):
        run_distributed("icons_warmup_train.py", ["callback", str(tiny_llava_path), str(tmp_path / f"n{n}")], n)
        runs[n] = [read_json(tmp_path / f"n{n}" / f"rank{r}.json") for r in range(n)]
    warm = read_json(tmp_path / "n1" / "work" / "warmup" / "warmup.json")
    assert len(warm["rows"]) == 5 and [c["step"] for c in warm["checkpoints"]] == [2]  # 5 rows, batch 4: 2 steps
    for n in (2, 3):
        assert read_json(tmp_path / f"n{n}" / "work" / "warmup" / "warmup.json")["checkpoints"] == warm["checkpoints"]
        assert not (tmp_path / f"n{n}" / "work" / "warmup" / "job").exists()  # the child's job was cleaned up
        assert tree_diff(tmp_path / "n1" / "work" / "features", tmp_path / f"n{n}" / "work" / "features") == []
    plan = runs[1][0]["rows"]
    assert sum(len(r) for r in plan.values()) == script.BUDGET
    for n, ranks in runs.items():
        assert all(r["world"] == n and r["rows"] == plan for r in ranks)  # the same selection on every rank
        # exactly the plan's rows over all ranks (7 rows: 2 + 2 on 2 ranks, 2 + 1 + 2 + ... on 3): none repeated
        consumed = collections.Counter(i for r in ranks for i in r["consumed"])
        expected = collections.Counter(f"{s}/train/{row}" for s, rows in plan.items() for row in rows)
        assert consumed == expected, n
        assert len({r["global_step"] for r in ranks}) == 1


def test_warmup_from_the_cli_is_the_same_for_one_and_three_processes(tiny_llava_path, tmp_path):
    data = tmp_path / "data"
    for f, ds in script.pool().items():
        ds.save_to_disk(str(data / "pool" / f))
    for f, ds in script.targets().items():
        ds.save_to_disk(str(data / "targets" / f))
    for n in (1, 3):
        run_distributed("icons_warmup_train.py", ["cli", str(tiny_llava_path), str(tmp_path / f"n{n}"), str(data)], n)
    assert tree_diff(tmp_path / "n1" / "work" / "features", tmp_path / "n3" / "work" / "features") == []
    one, three = (Plan.load(tmp_path / f"n{n}" / "select") for n in (1, 3))
    assert {n: s.rows for n, s in one.sources.items()} == {n: s.rows for n, s in three.sources.items()}
    assert one.budget == three.budget == script.BUDGET


def launch_recipe(model, out, nproc: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    cmd += [recipe_path("accelerate/cpu_2proc"), "--num_processes", str(nproc)]
    cmd += [str(ROOT / "recipes" / "sft.py"), "--config", recipe_path("sft_icons")]
    cmd += [
        "--model_name_or_path",
        str(model),
        "--output_dir",
        str(out),
        "--toy_families",
        "count",
        "colour",
        "ocr",
        "--toy_n_train",
        "8",
    ]
    cmd += ["--toy_n_target", "4", "--probe_rows", "2", "--report", "false", "--per_device_train_batch_size", "2"]
    kwargs = {"run_warmup": True, "warmup_preset": "tiny", "proj_dim": 32, "work_dir": str(out / "icons")}
    cmd += ["--selector_kwargs", json.dumps(kwargs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return read_json(out / "consumed.json")


def test_icons_recipe_is_the_same_for_one_and_two_processes(tiny_llava_path, tmp_path):
    one, two = launch_recipe(tiny_llava_path, tmp_path / "n1", 1), launch_recipe(tiny_llava_path, tmp_path / "n2", 2)
    assert tree_diff(tmp_path / "n1" / "icons" / "features", tmp_path / "n2" / "icons" / "features") == []
    plans = [Plan.load(tmp_path / n) for n in ("n1", "n2")]
    assert {n: s.rows for n, s in plans[0].sources.items()} == {n: s.rows for n, s in plans[1].sources.items()}
    assert plans[0].budget == 5  # 20% of 24 rows; 2 processes x batch 2: the last 5 rows split as 2 + 1 and 1 + 1
    for result, plan in zip((one, two), plans):
        assert result["planned"] == plan.counts
        assert result["consumed"] == {n: c for n, c in plan.counts.items() if c}  # summed over the ranks
