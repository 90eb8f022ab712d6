"""A work dir written before the package was split into `signals/` and one package per method is reused as it is:
same datastore paths and identities, same signal cache keys, nothing recomputed, the same results
(`tests/fixtures/store-v0.1.0`, written by mixwise 0.1.0 at commit 26523b8)."""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pytest
from helpers import ROOT

from mixwise import Mixture
from mixwise.dataprophet import DataProphet
from mixwise.icons import ICONSConfig, run_icons
from mixwise.testing import build_tiny_llava

FIXTURE = ROOT / "tests" / "fixtures" / "store-v0.1.0"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def old_work(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "work")
    work = tmp_path / "work"
    pool = {n: datasets.load_from_disk(str(work / "data" / n)) for n in ("count", "colour")}
    target = datasets.load_from_disk(str(work / "data" / "target-count"))
    return work, pool, target, json.loads((work / "expected.json").read_text())


def test_icons_reuses_the_old_datastores(old_work):
    work, pool, target, expected = old_work
    model, processor = build_tiny_llava(seed=0)
    chunks = []
    cfg = ICONSConfig(
        work_dir=str(work / "icons-work"), proj_dim=32, chunk_size=4, batch_size=4, progress=False, device="cpu",
        preset="paper",  # 0.1.0's aggregation, so that its selection is the reference
    )  # fmt: skip
    result = run_icons(
        Mixture(pool, budget=6),
        {"count": target},
        6,
        config=cfg,
        model=model,
        processing_class=processor,
        model_id="fixture-tiny-llava",
        on_chunk=lambda event, c: chunks.append((event, c)),
    )
    assert chunks == []  # every chunk of every store was found done: nothing recomputed
    stores = sorted(p.name for p in (work / "icons-work" / "features" / "live-temporary-lora").iterdir())
    assert stores == ["pool-971306a41a", "target-count-d562bfdcb3"]  # the old identities, hence the old paths
    assert result.rows_per_source() == expected["icons_rows"]
    np.testing.assert_array_equal(result.influence.scores, np.asarray(expected["icons_scores"], dtype=np.float32))


def test_dataprophet_reads_the_old_signal_cache(old_work):
    work, pool, target, expected = old_work
    model, processor = build_tiny_llava(seed=0)
    before = sorted(p.name for p in (work / "dataprophet-cache").iterdir())
    selector = DataProphet(subsample=None, n_clusters=2, cache_dir=str(work / "dataprophet-cache"), progress=False)
    result = selector.score(pool, {"count": target}, model, processor, model_id="fixture-tiny-llava")
    assert result.computed == [] and len(result.cached) == 9  # 3 datasets x (nll, text, image), all from disk
    assert sorted(p.name for p in (work / "dataprophet-cache").iterdir()) == before
    metric = result.metric().to_dict()
    for s, row in expected["dataprophet_metric"].items():
        for t, value in row.items():
            assert metric[s][t] == pytest.approx(value, rel=1e-12)
