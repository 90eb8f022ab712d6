"""Smoke test of `benchmarks/selection_quality.py --tiny`: every stage runs end to end (its figures at this size are
noise and are not asserted; the README's come from the default size)."""

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow


def test_selection_quality_tiny_runs_every_stage(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "selection_quality.py"), "--tiny"]
    cmd += ["--out", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    summary = results["summary"]
    assert set(summary) == {"gate", "targeted", "multi", "grpo", "goals"}
    for target, gate in summary["gate"].items():
        # a target whose oracle does not clear random gets diagnostics only, no trained selector figures
        arms = summary["targeted"][target]["arms"]
        assert summary["targeted"][target]["gate_passed"] == gate["passed"]
        if not gate["passed"]:
            assert all("accuracy" not in arm for arm in arms.values())
        assert {"random", "uniform"} <= set(arms)
        for arm in arms.values():
            assert 0.0 <= arm["diagnostics"]["target_share"][0] <= 1.0
    assert {"uniform", "DataProphet (default)"} <= set(summary["grpo"])
    assert summary["goals"] and all({"goal", "figure", "met"} <= set(g) for g in summary["goals"])
    assert "Seeds [0]" in (tmp_path / "out" / "results.md").read_text()
