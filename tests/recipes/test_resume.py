"""A recipe run killed for real (SIGKILL) mid-run resumes exactly: for a full fine-tune SFT, a LoRA SFT and GRPO,
resuming from an explicit checkpoint path and with `--resume_from_checkpoint true` ends with the weights of an
uninterrupted run, every planned row trained on once (none repeated, none skipped), and `consumed.json` counting
the whole run across the resume."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, SCRIPTS
from safetensors.torch import load_file

from mixwise import Plan

pytestmark = pytest.mark.slow

KINDS = {
    "full-sft": ("sft", ["--budget", "24", "--per_device_train_batch_size", "2"]),
    "peft-sft": ("sft", ["--budget", "24", "--per_device_train_batch_size", "2", "--use_peft", "true"]),
    "full-grpo": (
        "grpo",
        [
            "--budget",
            "12",
            "--per_device_train_batch_size",
            "4",
            "--num_generations",
            "4",
            "--reward_funcs",
            "recipe_rewards.length_reward",
        ],  # a reward that varies, so GRPO moves the weights
    ),  # fmt: skip
}
COMMON = [
    "--toy_families", "count", "colour", "ocr",
    "--toy_n_train", "8", "--toy_n_target", "2", "--probe_rows", "1", "--metric_rows", "1",
    "--record_rows", "true", "--save_strategy", "steps", "--save_steps", "3", "--logging_steps", "3",
    "--learning_rate", "5e-3",
]  # fmt: skip


def command(kind: str, out, *extra: str) -> list[str]:
    recipe, args = KINDS[kind]
    config = f"{recipe}_uniform"
    return [
        sys.executable,
        "-m",
        "mixwise.cli",
        recipe,
        "--config",
        config,
        "--output_dir",
        str(out),
        *COMMON,
        *args,
        *extra,
    ]


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONPATH=path)


def run(kind: str, out, *extra: str) -> dict:
    proc = subprocess.run(command(kind, out, *extra), env=env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads((out / "consumed.json").read_text())


def run_and_kill(kind: str, out, after_step: int) -> None:
    """Start the run and SIGKILL it as soon as the checkpoint of `after_step` is complete (its consumed.json,
    written after the Trainer's own files, exists)."""
    marker = out / f"checkpoint-{after_step}" / "consumed.json"
    proc = subprocess.Popen(command(kind, out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.time() + 300
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before checkpoint-{after_step}: {proc.stderr.read()[-4000:]!r}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint within 300 s")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "consumed.json").exists()  # killed before the end


def weights(out) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (out / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(out / name))


@pytest.mark.parametrize("kind", list(KINDS))
def test_killed_recipe_resumes_exactly(tmp_path, kind):
    reference = run(kind, tmp_path / "reference")
    killed = tmp_path / "killed"
    run_and_kill(kind, killed, after_step=3)
    by_path, by_true = tmp_path / "by-path", tmp_path / "by-true"
    shutil.copytree(killed, by_path)
    shutil.copytree(killed, by_true)
    resumed = {
        "path": run(kind, by_path, "--resume_from_checkpoint", str(by_path / "checkpoint-3")),
        "true": run(kind, by_true, "--resume_from_checkpoint", "true"),
    }
    plan = Plan.load(tmp_path / "reference")
    planned_rows = collections.Counter((n, int(r)) for n, rows in plan.resolve()[0].items() for r in rows)
    repeats = 4 if KINDS[kind][0] == "grpo" else 1  # GRPO collates every prompt num_generations times
    expected = weights(tmp_path / "reference")
    for how, result in resumed.items():
        out = by_path if how == "path" else by_true
        assert (
            result["resumed_from"].endswith("checkpoint-3")
            if how == "path"
            else "checkpoint-" in result["resumed_from"]
        )
        # consumed.json covers the whole run: the rows before the kill (from the checkpoint) and after the resume
        assert result["consumed"] == reference["consumed"] == {n: repeats * c for n, c in plan.counts.items() if c}
        trained = collections.Counter((n, int(r)) for n, r in result["rows"])
        assert trained == collections.Counter({row: repeats * k for row, k in planned_rows.items()}), how
        assert Plan.load(out).sources == plan.sources  # the plan saved in the checkpoint, reused
        got = weights(out)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=f"{how}: {key}")
    base = load_file(str(tmp_path / "reference" / "base_model" / "model.safetensors"))
    if kind != "peft-sft":  # the fine-tune moved the weights, so equality above is not the base model's
        assert any(not torch.equal(base[k], expected[k]) for k in expected if k in base)


def test_resume_true_without_a_checkpoint_is_refused_before_loading(tmp_path):
    proc = subprocess.run(
        command("full-sft", tmp_path / "empty", "--resume_from_checkpoint", "true"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    assert "resume_from_checkpoint" in proc.stderr and "has none" in proc.stderr
    assert not (tmp_path / "empty" / "base_model").exists()  # nothing was built or loaded
