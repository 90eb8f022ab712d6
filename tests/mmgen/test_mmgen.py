"""MM-GEN end to end: the pipeline, its output schema, the CLI and recipe, and crash recovery of a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import datasets
import numpy as np
import pytest
from helpers import ROOT, SCRIPTS

from mixwise.cli import main
from mixwise.mixture import Mixture
from mixwise.mmgen import (
    PROVENANCE_COLUMNS,
    GenerationLog,
    LocalVLMGenerator,
    features,
    load_pool,
    run_mmgen,
    run_pipeline,
)
from mixwise.mmgen.config import GenerateConfig
from mixwise.mmgen.server import ChatServer, ModelBackend
from mixwise.recipes import recipe_path
from mixwise.toy import make_source

sys.path.insert(0, str(SCRIPTS))
import mmgen_models  # noqa: E402  (tests/scripts helper: the tiny LLaVA taught to answer with JSON)

COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "black"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _small(out, **overrides) -> GenerateConfig:
    cfg = dict(
        out=str(out),
        reference_size=24,
        keywords=COLOURS,
        pool=["toy:colour", "toy:shape"],
        pool_size=24,
        num_images=10,
        pairs_per_image=3,
    )
    cfg.update(overrides)
    return GenerateConfig(**cfg)


def test_pipeline_output_joins_a_pool_and_matches_its_images(tmp_path, tiny_llava):
    cfg = _small(tmp_path / "run")
    result = run_mmgen(cfg, progress=False)
    ds = result.dataset
    assert ds.features == features()
    assert set(PROVENANCE_COLUMNS) <= set(ds.column_names) and set(ds["generator"]) == {"toy-rules"}
    # images per subgroup: exactly the shares' allocation, and every candidate annotated once
    per_subgroup = Counter(it.subgroup for it in result.items)
    assert {g: per_subgroup.get(g, 0) for g in COLOURS} == result.partition.counts(10)
    assert sum(per_subgroup.values()) == 10 and len({it.image_id for it in result.items}) == 10
    # every row carries the image its provenance names
    pool = load_pool(cfg.pool, cfg.pool_split, cfg.pool_size, cfg.seed)
    for row in ds:
        expected = pool.load(pool.ids.index(row["image_id"]))
        assert np.array_equal(np.asarray(row["images"][0]), np.asarray(expected))
        assert row["messages"][0]["content"][0] == {"type": "image", "text": None}
        assert row["source"] == "mmgen" and row["id"].startswith("mmgen/")
    # the filter kept the middle of the deduplicated rows and counted the rest
    report = json.loads((tmp_path / "run" / "filter_report.json").read_text())
    assert report["total"] == len(result.unfiltered) == 30
    assert report["kept"] == len(ds) and report["kept"] + sum(report["by_reason"].values()) == 30
    left = 30 - report["by_reason"].get("near duplicate", 0)
    assert len(ds) == left - 2 * (left // 4)  # the default tails: a quarter each of the deduplicated rows
    saved = datasets.load_from_disk(str(tmp_path / "run" / "dataset"))
    assert saved["id"] == ds["id"]
    # it joins a pool of toy sources as is
    toy = make_source("colour", 6, "train")
    joined = datasets.concatenate_datasets([toy, ds])
    assert len(joined) == 6 + len(ds) and joined[0]["subgroup"] is None
    mixture = Mixture({"colour": toy, "mmgen": ds}, budget=8, seed=0)
    assert mixture.sizes == {"colour": 6, "mmgen": len(ds)}
    # rerunning does not generate again and gives the same dataset
    lines = (tmp_path / "run" / "generations.jsonl").read_text().splitlines()
    again = run_mmgen(cfg, progress=False)
    assert again.generation.already_done == 10 and again.generation.generated == 0
    assert (tmp_path / "run" / "generations.jsonl").read_text().splitlines() == lines
    assert again.dataset["id"] == ds["id"]


def test_output_can_be_scored_per_sample_by_dataprophet(tmp_path, tiny_llava):
    from mixwise.dataprophet import DataProphet

    result = run_mmgen(_small(tmp_path / "run", num_images=4, no_filter=True), progress=False)
    model, processor = tiny_llava
    scores = DataProphet(subsample=None, progress=False).score_instances(
        {"mmgen": result.dataset}, {"colour": make_source("colour", 8, "validation")}, model, processor
    )
    assert len(scores.rows) == len(result.dataset) == 12 and np.isfinite(scores.combined).all()


def test_local_vlm_generator_through_the_pipeline(tmp_path, json_llava_path, tiny_llava):
    from mixwise.mmgen import load_reference

    cfg = _small(tmp_path / "run", num_images=6, pairs_per_image=2)
    gen = LocalVLMGenerator(str(json_llava_path), max_new_tokens=64, batch_size=3)
    pool = load_pool(cfg.pool, cfg.pool_split, cfg.pool_size)
    model, processor = tiny_llava
    result = run_pipeline(
        load_reference(cfg), pool, gen, cfg.out, cfg, model=model, processor=processor, progress=False
    )
    assert len(result.unfiltered) == 12 and result.generation_report.rejected == {}
    assert set(result.unfiltered["generator"]) == {gen.name}
    answers = {(m[0]["content"][1]["text"], m[1]["content"][0]["text"]) for m in result.unfiltered["messages"]}
    assert answers == {(p["Q"], p["A"]) for p in mmgen_models.PAIRS}
    assert len(result.dataset) == 12 - 2 * 3  # the default tails drop a quarter each


def test_cli_runs_the_recipe_unedited(tmp_path, capsys):
    assert main(["generate", "--config", recipe_path("mmgen"), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "subgroup\tshare\timages" in out and "kept" in out
    summary = json.loads((tmp_path / "r" / "report.json").read_text())
    assert summary["config"]["generator"] == "toy" and summary["items"] == 24
    assert sum(g["images"] for g in summary["subgroups"].values()) == 24
    assert summary["pairs_kept"] == len(datasets.load_from_disk(str(tmp_path / "r" / "dataset"))) > 0
    for name in ("partition.json", "generation_report.json", "filter_report.json", "generations.jsonl"):
        assert (tmp_path / "r" / name).exists()


class _HoldAfter:
    """Server backend wrapper: answers the first `k` requests, then holds the rest until `release` is set."""

    def __init__(self, inner, k: int):
        self.inner, self.k, self.name = inner, k, inner.name
        self.calls = 0
        self.release = threading.Event()
        self._lock = threading.Lock()

    def complete(self, *args):
        with self._lock:
            self.calls += 1
            held = self.calls > self.k
        if held:
            self.release.wait()
        return self.inner.complete(*args)


def test_sigkill_mid_generation_then_restart_completes_without_duplicates(tmp_path, json_llava_path):
    backend = _HoldAfter(ModelBackend(str(json_llava_path)), k=4)
    out = tmp_path / "run"
    log = out / "generations.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    with ChatServer(backend) as server:
        cmd = [
            sys.executable, "-m", "mixwise.cli", "generate", "--out", str(out),
            "--reference_size", "24", "--keywords", "red", "green", "blue",
            "--pool", "toy:colour", "--pool_size", "30", "--num_images", "10", "--pairs_per_image", "2",
            "--generator", "openai", "--base_url", server.url + "/v1", "--generator_model", "json-llava",
            "--concurrency", "2", "--max_new_tokens", "64", "--no_filter", "true",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for _ in range(3000):  # bounded: wait until the four answered requests are on disk
                if proc.poll() is not None:
                    pytest.fail(f"generate exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
                if log.exists() and len(GenerationLog.read(log)[0]) >= 4:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("generation never wrote four records")
            for _ in range(3000):  # bounded: the client is now waiting on held requests
                if backend.calls >= 5 or proc.poll() is not None:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            backend.release.set()  # never leave server threads waiting
        assert proc.returncode == -signal.SIGKILL
        records, bad = GenerationLog.read(log)
        assert len(records) == 4 and bad == 0
        assert not (out / "dataset").exists()
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    records, bad = GenerationLog.read(log)
    keys = [(r["image_id"], r["prompt_id"]) for r in records]
    assert bad == 0 and len(records) == 10 and len(set(keys)) == 10
    assert all(r["status"] == "ok" for r in records)
    report = json.loads((out / "generation_report.json").read_text())
    assert report["run"]["already_done"] == 4 and report["run"]["generated"] == 6
    assert report["log"]["duplicate_ok_records"] == 0 and report["parsed"] == 10
    ds = datasets.load_from_disk(str(out / "dataset"))
    # 2 pairs per image, less what a short (repaired) answer of the tiny generator lacks — counted, not lost
    assert len(ds) == report["pairs"] == sum(g["pairs"] for g in report["per_subgroup"].values())
    assert 2 * 10 - 2 * report["short_items"] <= len(ds) <= 20 and len(set(ds["id"])) == len(ds)
