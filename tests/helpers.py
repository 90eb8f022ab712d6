"""Small shared helpers for the tests (no fixtures here: those live in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def text_sources(sizes: dict[str, int]) -> dict[str, datasets.Dataset]:
    """Text-only RL-format sources with an `id` column, `{name: size}`."""
    return {
        name: datasets.Dataset.from_dict(
            {
                "id": [f"{name}/{i}" for i in range(n)],
                "prompt": [f"question {i} of {name}" for i in range(n)],
                "answer": [str(i) for i in range(n)],
            }
        )
        for name, n in sizes.items()
    }


def run_distributed(script: str, args: list[str], nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `tests/scripts/<script>` with torchrun on `nproc` CPU processes (gloo); raise with the output on error."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--standalone",
        str(SCRIPTS / script),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def tree_diff(a, b) -> list[str]:
    """Files whose bytes differ between two directory trees (or that exist on one side only)."""
    import filecmp

    cmp = filecmp.dircmp(a, b)
    out = [os.path.join(a, n) for n in cmp.left_only + cmp.right_only]
    for name in cmp.common_files:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            if fa.read() != fb.read():
                out.append(os.path.join(a, name))
    for sub in cmp.common_dirs:
        out += tree_diff(os.path.join(a, sub), os.path.join(b, sub))
    return out
