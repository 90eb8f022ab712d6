"""The spine end to end: real trainers, real processes, what was actually consumed.

Each case runs `tests/scripts/train_consumed.py` (SFTTrainer / GRPOTrainer on the tiny LLaVA, Trainer on the tiny
Llama); the selection callback switches the plan at train begin from uniform to `WEIGHTS`, and every rank records
the ids its collator (or GRPO reward function) received.
"""

import collections
import subprocess
import sys

import pytest
from helpers import SCRIPTS, read_json, run_distributed

from mixwise import Mixture, MixtureSampler, Plan, RepeatMixtureSampler
from mixwise.toy import make_source

WEIGHTS = {"count": 3.0, "colour": 1.0, "spatial": 0.0, "ocr": 0.0}
pytestmark = pytest.mark.slow


def expected_ids(out_dir, fmt="sft", grpo=None):
    """The id stream the plan in `out_dir/run/selection.json` prescribes (epoch 0)."""
    mixture = Mixture({f: make_source(f, 12, seed=1, fmt=fmt) for f in WEIGHTS}, budget=32, seed=5, validate=False)
    mixture.set_plan(Plan.load(out_dir / "run"))
    if grpo:
        sampler = RepeatMixtureSampler(mixture, seed=5, **grpo)
    else:
        sampler = MixtureSampler(mixture, seed=5)
    ids = mixture.dataset["id"]
    return mixture, [ids[i] for i in sampler]


def interleave(a, b, size):
    """accelerate hands global batch k to rank k % 2: undo that."""
    out = []
    for k in range(0, max(len(a), len(b)), size):
        out += a[k : k + size] + b[k : k + size]
    return out


def check_split_scoring(r0, r1, total):
    assert r0["world"] == r1["world"] == 2
    assert r0["scored"] and r1["scored"] and not set(r0["scored"]) & set(r1["scored"])
    assert sorted(r0["scored"] + r1["scored"]) == list(range(total))
    assert r0["plan_counts"] == r1["plan_counts"] == {"count": 24, "colour": 8, "spatial": 0, "ocr": 0}


def test_sft_two_processes_consume_exactly_the_new_plan(tiny_llava_path, tmp_path):
    run_distributed("train_consumed.py", ["sft", str(tiny_llava_path), str(tmp_path)])
    r0, r1 = read_json(tmp_path / "rank0.json"), read_json(tmp_path / "rank1.json")
    check_split_scoring(r0, r1, total=48)
    _, expected = expected_ids(tmp_path)
    assert len(r0["consumed"]) == len(r1["consumed"]) == 16
    assert interleave(r0["consumed"], r1["consumed"], 2) == expected
    sources = collections.Counter(i.split("/")[0] for i in r0["consumed"] + r1["consumed"])
    assert sources == {"count": 24, "colour": 8}
    assert "mixwise/weight/count" in r0["log_keys"]
    manifest = read_json(tmp_path / "run" / "selection.json")
    assert manifest["method"] == "split_test" and manifest["sources"]["count"]["count"] == 24


def test_grpo_two_processes_keep_groups_and_skip_zero_weight_sources(tiny_llava_path, tmp_path):
    run_distributed("train_consumed.py", ["grpo", str(tiny_llava_path), str(tmp_path)])
    r0, r1 = read_json(tmp_path / "rank0.json"), read_json(tmp_path / "rank1.json")
    check_split_scoring(r0, r1, total=48)
    # world 2, per-device batch 2, num_generations 2 -> 2 unique prompts per generation batch of 4
    _, expected = expected_ids(tmp_path, fmt="rl", grpo={"mini_repeat_count": 2, "batch_size": 2, "repeat_count": 1})
    got = interleave([i for call in r0["consumed"] for i in call], [i for call in r1["consumed"] for i in call], 2)
    assert got == expected
    for k in range(0, len(got), 2):  # every reward group is one prompt, num_generations times
        assert got[k] == got[k + 1]
    drawn = {i.split("/")[0] for i in got}
    assert drawn == {"count", "colour"}  # spatial and ocr have weight 0: never drawn


def test_plain_trainer_text_model_and_resume_mid_epoch(tiny_llama_path, tmp_path):
    script = str(SCRIPTS / "train_consumed.py")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    base = [sys.executable, script, "trainer", str(tiny_llama_path)]
    env_kwargs = dict(check=True, capture_output=True, text=True, timeout=600)
    subprocess.run(base + [str(full), "--epochs", "2", "--save_steps", "20"], **env_kwargs)
    a = read_json(full / "rank0.json")
    assert a["global_step"] == 32 and len(a["consumed"]) == 64
    _, expected = expected_ids(full)
    assert a["consumed"][:32] == expected
    assert a["consumed"][32:] != expected and sorted(a["consumed"][32:]) == sorted(expected)  # epoch 2: new order
    assert "mixwise/weight/count" in a["log_keys"]

    # step 20 is in the middle of the second epoch (16 steps per epoch)
    ckpt = full / "run" / "checkpoint-20"
    assert (ckpt / "selection.json").exists()
    subprocess.run(base + [str(resumed), "--epochs", "2", "--resume", str(ckpt)], **env_kwargs)
    b = read_json(resumed / "rank0.json")
    assert b["scored"] == []  # the plan came from the checkpoint, not from selecting again
    assert b["consumed"] == a["consumed"][40:]


def test_sft_text_model_consumes_the_plan(tiny_llama_path, tmp_path):
    # SFTTrainer tokenizes a text dataset in its constructor; the mixture still lines up row for row
    subprocess.run(
        [sys.executable, str(SCRIPTS / "train_consumed.py"), "sft_text", str(tiny_llama_path), str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    r = read_json(tmp_path / "rank0.json")
    _, expected = expected_ids(tmp_path)
    assert r["consumed"] == expected and r["world"] == 1
