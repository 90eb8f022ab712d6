"""ICONS end to end: transform, CLI (with warm-up), trainer callback with SFTTrainer, 1 vs 2 processes, bad input."""

import copy
import filecmp
import json
import os

import numpy as np
import pytest
import torch
from helpers import read_json, run_distributed
from PIL import Image

from mixwise import Mixture, Plan, attach, select_mixture
from mixwise.icons import ICONS, ICONSConfig
from mixwise.icons.aggregation import aggregate
from mixwise.icons.selector import answer_labels
from mixwise.registry import SELECTORS
from mixwise.signals.datastore import Datastore
from mixwise.signals.warmup import WarmupConfig, WarmupResult, run_warmup
from mixwise.sources import DataError
from mixwise.testing import cpu_trainer_kwargs
from mixwise.toy import make_source

POOL = {"count": 8, "colour": 6, "ocr": 8}  # the same pool as tests/scripts/icons_select.py


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pool_sources():
    return {f: make_source(f, n, seed=1) for f, n in POOL.items()}


def target_sets():
    count = make_source("count", 4, split="validation", seed=2)
    count = count.add_column("subtask", ["small", "small", "big", "big"])
    return {"count": count, "ocr": make_source("ocr", 3, split="validation", seed=2)}


@pytest.fixture(scope="module")
def warm(tiny_llava_path, tmp_path_factory):
    """One LESS-shaped warm-up (2 epochs -> 2 checkpoints) for the module."""
    out = tmp_path_factory.mktemp("icons") / "warmup"
    mixture = Mixture(pool_sources(), budget=6)
    run_warmup(str(tiny_llava_path), None, mixture.dataset, str(out), WarmupConfig.tiny("less"), progress=False)
    return str(out)


def checkpoint_names(warm):
    return [os.path.basename(c.path) for c in WarmupResult.load(warm).checkpoints]


def icons(tiny_llava_path, warm, work, **kw):
    base = dict(
        model_path=str(tiny_llava_path),
        warmup_dir=warm,
        work_dir=str(work),
        proj_dim=48,
        chunk_size=4,
        batch_size=4,
        checkpoints="last",
        subtask_column={"count": "subtask"},
        progress=False,
        device="cpu",
    )
    return ICONS(**{**base, **kw})


def test_select_mixture_end_to_end(tiny_llava_path, warm, tmp_path):
    selector = icons(tiny_llava_path, warm, tmp_path / "work", preset="paper")
    subset, plan = select_mixture(pool_sources(), selector, budget=6, targets=target_sets(), model_id="tiny")
    assert len(subset) == 6 and set(subset["source"]) <= set(POOL)
    assert plan.method == "icons" and plan.budget == 6
    assert all(sp.rows is not None for sp in plan.sources.values())
    result = selector.result
    scores = result.influence.scores
    assert scores.shape == (22, 2) and result.influence.tasks == ["count", "ocr"]
    assert result.influence.subtasks == {"count": ["big", "small"]}
    # the plan is the vote over the score matrix (p_vote = p_select = 6/22), rows mapped back to their sources
    expected = aggregate(scores, 6, "vote", p_vote=6 / 22)
    assert result.selection.order.tolist() == expected.order.tolist()
    assert result.summary()["dedup"] is None and result.summary()["coverage"] is None
    # the default preset: the same features (stores reused), duplicates counted once, coverage floor
    default = icons(tiny_llava_path, warm, tmp_path / "work", answer_subtasks=False)
    select_mixture(pool_sources(), default, budget=6, targets=target_sets(), model_id="tiny")
    # duplicates: rows whose stored pool features have cosine >= 0.999 (the tiny random model gives two distinct
    # `ocr` rows with the same question and answer such features)
    pool_dir = next((tmp_path / "work" / "features" / checkpoint_names(warm)[-1]).glob("pool-*"))
    feats = Datastore.open(pool_dir).load()[0].astype(np.float64)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    groups = default.result.groups
    same = groups[:, None] == groups[None, :]
    assert ((unit @ unit.T >= 0.999 - 1e-6) | ~same).all()  # merged rows are near-identical
    assert (same | (unit @ unit.T < 0.999 + 1e-6)).all()  # near-identical rows are merged
    n_distinct = len(set(groups.tolist()))
    assert n_distinct < 22
    fixed = aggregate(scores, 6, "vote", p_vote=6 / n_distinct, groups=groups, coverage_floor=0.5)
    assert default.result.selection.order.tolist() == fixed.order.tolist()
    assert len(set(groups[default.result.selection.order].tolist())) == 6  # no duplicate selected twice
    assert default.result.summary()["dedup"] == {"distinct_rows": n_distinct, "rows": 22}
    assert default.result.summary()["coverage"] == {"floor": 0.5, "per_task": 1}
    # answer subtasks (on in the default preset): a target of a closed answer space gets one mean gradient per
    # answer, max-merged; the target with its own subtask column keeps it
    answers = icons(tiny_llava_path, warm, tmp_path / "work")
    select_mixture(pool_sources(), answers, budget=6, targets=target_sets(), model_id="tiny")
    influence = answers.result.influence
    ocr_answers = sorted({a.strip().lower() for a in answer_labels(target_sets()["ocr"], "ocr")})
    assert influence.subtasks == {"count": ["big", "small"], "ocr": ocr_answers} and len(ocr_answers) > 1
    np.testing.assert_allclose(influence.scores[:, 0], scores[:, 0], rtol=1e-6)  # count: unchanged
    assert not np.allclose(influence.scores[:, 1], scores[:, 1])  # ocr: the max over its answers' means
    flat = sorted(plan.sources[n].rows[k] + sum(list(POOL.values())[:i]) for i, n in enumerate(POOL)
                  for k in range(plan.sources[n].count))  # fmt: skip
    assert flat == sorted(expected.order.tolist())
    extra = plan.extra
    assert extra["aggregator"] == "vote" and extra["n_select"] == 6 and len(extra["vote_thresholds"]) == 2
    assert sum(extra["vote_histogram"]["all"]) == 22 and sum(extra["vote_histogram"]["selected"]) == 6
    assert np.array(extra["top_set_overlap"]).shape == (2, 2) and "row id" in extra["tie_break"]
    assert plan.fingerprints["adapters"] == [c["adapter"] for c in result.checkpoints]
    assert Plan.from_json(plan.to_json()).sources == plan.sources
    # votes and per-task scores as dataset columns, with a deterministic fingerprint
    mixture = Mixture(pool_sources(), budget=6)
    with_cols = selector.add_columns(mixture.dataset)
    assert {"icons_votes", "icons_selected", "icons_score_count", "icons_score_ocr"} <= set(with_cols.column_names)
    assert sum(with_cols["icons_selected"]) == 6
    np.testing.assert_allclose(with_cols["icons_score_ocr"], scores[:, 1], rtol=1e-6)
    assert with_cols._fingerprint == selector.add_columns(mixture.dataset)._fingerprint
    # the datastores hold what the manifest says
    last = checkpoint_names(warm)[-1]
    assert [c["name"] for c in result.checkpoints] == [last]
    pool_dir = next((tmp_path / "work" / "features" / last).glob("pool-*"))
    store = Datastore.open(pool_dir)
    assert store.complete and store.identity["features"]["mode"] == "sgd" and store.dim == 48
    assert store.identity["model"] == "tiny" and store.identity["checkpoint"] == last
    # rerun in the same work dir: stores are complete, nothing is recomputed, same plan
    marker = os.path.join(pool_dir, "done", "chunk-000000.json")
    stamp = os.path.getmtime(marker)
    _, again = select_mixture(pool_sources(), selector, budget=6, targets=target_sets(), model_id="tiny")
    assert again.sources == plan.sources and os.path.getmtime(marker) == stamp
    # other aggregators and the specialist, through the same (cached) features (the paper's: no dedup)
    for method in ("merge", "max", "gausnorm", "round_robin", "min_rank"):
        sel = icons(tiny_llava_path, warm, tmp_path / "work", aggregator=method, preset="paper")
        _, p = select_mixture(pool_sources(), sel, budget=6, targets=target_sets(), model_id="tiny")
        assert sel.result.selection.order.tolist() == aggregate(scores, 6, method).order.tolist(), method
        assert p.extra["aggregator"] == method
    spec = icons(
        tiny_llava_path, warm, tmp_path / "work", aggregator="specialist", specialist_task="ocr", preset="paper"
    )
    select_mixture(pool_sources(), spec, budget=6, targets=target_sets(), model_id="tiny")
    assert spec.result.selection.order.tolist() == np.lexsort((np.arange(22), -scores[:, 1]))[:6].tolist()
    assert SELECTORS["icons"](model_path="x").name == "icons"  # the registry entry


def test_less_variant_adam_features_over_two_checkpoints(tiny_llava_path, warm, tmp_path):
    selector = icons(tiny_llava_path, warm, tmp_path / "work", checkpoints="all", pool_mode="adam")
    _, plan = select_mixture(pool_sources(), selector, budget=5, targets=target_sets(), model_id="tiny")
    ckpts = plan.extra["checkpoints"]
    assert [c["name"] for c in ckpts] == checkpoint_names(warm) and len(ckpts) == 2
    assert sum(c["weight"] for c in ckpts) == pytest.approx(1.0) and ckpts[0]["adapter"] != ckpts[1]["adapter"]
    for c in ckpts:
        pool_dir = next((tmp_path / "work" / "features" / c["name"]).glob("pool-*"))
        assert Datastore.open(pool_dir).identity["features"]["mode"] == "adam"
        target_dir = next((tmp_path / "work" / "features" / c["name"]).glob("target-ocr-*"))
        assert Datastore.open(target_dir).identity["features"]["mode"] == "sgd"
    assert selector.result.influence.checkpoint_weights == pytest.approx([c["weight"] for c in ckpts])


def test_rds_baseline(tiny_llava_path, warm, tmp_path):
    selector = icons(tiny_llava_path, warm, tmp_path / "work", signal="rds")
    _, plan = select_mixture(pool_sources(), selector, budget=6, targets=target_sets(), model_id="tiny")
    assert plan.extra["signal"] == "rds" and plan.budget == 6
    pool_dir = next((tmp_path / "work" / "features" / checkpoint_names(warm)[-1]).glob("pool-*"))
    store = Datastore.open(pool_dir)
    assert store.dim == 64 and store.identity["features"]["signal"] == "rds"  # the hidden size, no projection


@pytest.mark.slow
def test_cli_select_runs_the_warmup_and_writes_plan_scores_and_plots(tiny_llava_path, tmp_path):
    from mixwise.cli import main

    paths = []
    for family, n in (("count", 6), ("ocr", 6)):
        path = tmp_path / "toy" / family
        make_source(family, n, seed=1).save_to_disk(str(path))
        paths.append(str(path))
    target = tmp_path / "toy" / "ocr-val"
    import datasets

    datasets.DatasetDict(validation=make_source("ocr", 3, split="validation", seed=2)).save_to_disk(str(target))
    out = tmp_path / "out"
    code = main(
        ["select", "--method", "icons", "--model", str(tiny_llava_path), "--pool", *paths, "--targets", str(target),
         "--ratio", "0.25", "--out", str(out), "--warmup_preset", "tiny", "--proj_dim", "32", "--chunk_size", "8",
         "--batch_size", "6"]
    )  # fmt: skip
    assert code == 0
    manifest = read_json(out / "selection.json")
    assert manifest["method"] == "icons" and manifest["budget"] == 3
    assert manifest["extra"]["tasks"] == ["ocr-val"]
    assert os.path.exists(out / "work" / "warmup" / "warmup.json")  # the warm-up ran
    scores = np.load(out / "icons_scores.npz")
    assert scores["scores"].shape == (12, 1) and scores["selected"].sum() == 3
    for png in ("vote_histogram.png", "overlap_heatmap.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 100


@pytest.mark.slow
def test_callback_with_sfttrainer_trains_on_the_selected_rows(tiny_llava_path, tmp_path):
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    mixture = Mixture(pool_sources(), budget=6, seed=0)
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_llava_path))
    processor = AutoProcessor.from_pretrained(str(tiny_llava_path))
    args = SFTConfig(**cpu_trainer_kwargs(tmp_path / "run", num_train_epochs=1, max_length=None, seed=0))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=mixture.dataset, processing_class=processor, peft_config=lora
    )
    selector = ICONS(work_dir=str(tmp_path / "work"), proj_dim=32, chunk_size=8, batch_size=4, progress=False)
    attach(trainer, mixture, selector=selector, targets=target_sets())
    consumed = []
    collator = trainer.data_collator

    def recording(rows):
        consumed.extend(r["id"] for r in rows)
        return collator(rows)

    trainer.data_collator = recording
    trainer.train()
    plan = mixture.plan
    assert plan.method == "icons" and selector.result.checkpoints[0]["name"] == "live"  # the live LoRA, no warm-up
    ids = mixture.dataset["id"]
    selected = {ids[mixture.offsets[n] + r] for n, sp in plan.sources.items() for r in sp.rows}
    assert len(selected) == 6 and sorted(consumed) == sorted(selected)
    assert read_json(tmp_path / "run" / "selection.json")["method"] == "icons"


def test_live_model_without_lora_gets_a_temporary_adapter(tiny_llava, tmp_path):
    model, processor = tiny_llava
    before = copy.deepcopy(model.state_dict())
    selector = ICONS(work_dir=str(tmp_path / "work"), proj_dim=32, chunk_size=8, progress=False, warmup_preset="tiny")
    _, plan = select_mixture(
        pool_sources(), selector, budget=4, model=model, processing_class=processor, targets=target_sets()
    )
    assert selector.result.checkpoints[0]["name"] == "live-temporary-lora" and plan.budget == 4
    assert not hasattr(model, "peft_config")  # scored on a copy; the live model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="adam"):
        select_mixture(pool_sources(), ICONS(pool_mode="adam", progress=False), budget=4, model=model,
                       processing_class=processor, targets=target_sets())  # fmt: skip


def test_bad_inputs(tiny_llava_path, warm, tmp_path):
    with pytest.raises(ValueError, match="target 'empty' has no rows"):
        select_mixture(pool_sources(), icons(tiny_llava_path, warm, tmp_path / "w0"), budget=4,
                       targets={"empty": make_source("ocr", 0)})  # fmt: skip
    with pytest.raises(ValueError, match="at least one target"):
        select_mixture(pool_sources(), icons(tiny_llava_path, warm, tmp_path / "w0"), budget=4, targets={})
    # a pool row whose answer is truncated away by max_length: a clear error, or a counted skip
    pool = pool_sources()
    long_q = "How many shapes are in the image? " * 12

    def lengthen(row, i):
        if i == 2:
            row["messages"][0]["content"][1]["text"] = long_q
        return row

    pool["colour"] = pool["colour"].map(lengthen, with_indices=True)
    with pytest.raises(DataError, match=r"source 'colour', row 2, field 'answer': answer truncated away"):
        select_mixture(pool, icons(tiny_llava_path, warm, tmp_path / "w1", max_length=60), budget=4,
                       targets=target_sets())  # fmt: skip
    selector = icons(tiny_llava_path, warm, tmp_path / "w2", max_length=60, on_error="skip")
    _, plan = select_mixture(pool, selector, budget=21, targets=target_sets())
    skipped = plan.extra["feature_skipped"]
    assert skipped["count"] == 1 and skipped["rows"][0]["source"] == "colour" and skipped["rows"][0]["row"] == 2
    assert 2 not in plan.sources["colour"].rows and plan.budget == 21  # every other row, never the skipped one
    assert np.isnan(selector.result.influence.scores[8 + 2]).all()
    with pytest.raises(ValueError, match="cannot select 22 rows"):
        select_mixture(pool, selector, budget=22, targets=target_sets())
    with pytest.raises(ValueError, match="unknown aggregator"):
        ICONSConfig(aggregator="borda")


def _tree_diff(a, b):
    cmp = filecmp.dircmp(a, b)
    out = cmp.left_only + cmp.right_only
    for name in cmp.common_files:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            if fa.read() != fb.read():
                out.append(os.path.join(a, name))
    for sub in cmp.common_dirs:
        out += _tree_diff(os.path.join(a, sub), os.path.join(b, sub))
    return out


@pytest.mark.slow
def test_one_and_two_processes_give_identical_datastores_and_selection(tiny_llava_path, warm, tmp_path):
    for n in (1, 2):
        run_distributed(
            "icons_select.py", [str(tiny_llava_path), warm, str(tmp_path / f"work{n}"), str(tmp_path / f"out{n}")], n
        )
    r0, r1 = read_json(tmp_path / "out2" / "rank0.json"), read_json(tmp_path / "out2" / "rank1.json")
    assert r0["world"] == 2 and r0["rows"] == r1["rows"]  # every rank installs the same plan
    last = checkpoint_names(warm)[-1]
    stores = sorted(p.name for p in (tmp_path / "work1" / "features" / last).iterdir())
    assert len(stores) == 3 and stores[0].startswith("pool-")
    assert _tree_diff(tmp_path / "work1" / "features", tmp_path / "work2" / "features") == []
    one, two = read_json(tmp_path / "out1" / "result.json"), read_json(tmp_path / "out2" / "result.json")
    assert one == two
    assert read_json(tmp_path / "out1" / "rank0.json")["rows"] == r0["rows"]
    # the rows of each chunk were computed by one rank only: chunk c by rank c mod 2 (markers are identical anyway)
    pool = Datastore.open(next((tmp_path / "work2" / "features" / last).glob("pool-*")))
    assert pool.complete and pool.n_chunks == 6
    assert json.loads((tmp_path / "out1" / "selection.json").read_text())["budget"] == 6


def test_warmup_inside_a_trainer_callback_selects_like_the_transform(tiny_llava_path, tmp_path):
    """Regression: SFTTrainer replaces `model.forward` by an instance attribute closing over the model, so a plain
    deepcopy of the live model ran the original's modules and the warm-up adapter got no gradient (all influences
    were 0). The callback path must select exactly what the transform path selects."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    import mixwise
    from mixwise.icons import ICONS
    from mixwise.toy import make_source

    pool = {f: make_source(f, 8, seed=3) for f in ("count", "colour", "ocr")}
    targets = {f: make_source(f, 3, split="validation", seed=3) for f in ("count", "colour", "ocr")}
    common = dict(run_warmup=True, warmup_preset="tiny", proj_dim=64, progress=False, plots=False)

    _, reference = mixwise.select_mixture(
        pool, ICONS(model_path=str(tiny_llava_path), work_dir=str(tmp_path / "t"), **common), budget=6, targets=targets
    )

    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_path)
    processor = AutoProcessor.from_pretrained(tiny_llava_path)
    mixture = mixwise.Mixture(pool, budget=6)
    args = SFTConfig(**cpu_trainer_kwargs(tmp_path / "run", max_steps=1, max_length=None))
    trainer = SFTTrainer(model=model, args=args, train_dataset=mixture.dataset, processing_class=processor)
    assert "forward" in model.__dict__  # the trainer's wrapper that made the plain deepcopy wrong
    selector = ICONS(work_dir=str(tmp_path / "c"), **common)
    mixwise.attach(trainer, mixture, selector=selector, targets=targets)
    trainer.train()
    assert np.abs(selector.result.influence.scores).max() > 0
    assert mixture.plan.counts == reference.counts
    assert {n: s.rows for n, s in mixture.plan.sources.items()} == {n: s.rows for n, s in reference.sources.items()}
