"""CADC: discovery / attribution / curation as pure functions on constructed trajectories, the selector end to end on
the tiny LLaVA (reusing ICONS's datastores), staged plans consumed in stage order by SFTTrainer (resume mid stage 2,
2 processes), and bad input."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from helpers import SCRIPTS, read_json, run_distributed

from mixwise import Mixture, MixtureSampler, Plan, select_mixture
from mixwise.cadc import (
    CADC,
    CADCConfig,
    analyse,
    assign,
    build_trajectories,
    curate,
    discover_capabilities,
    split_budget,
    staged_plan,
    subtask_means,
    trajectory_influence,
)
from mixwise.registry import SELECTORS
from mixwise.toy import make_source

D, T = 32, 3
GROUP_A, GROUP_B = [0, 1, 2], [3, 4, 5]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def constructed(seed=0, noise=0.05):
    """6 subtasks in two groups. At checkpoint 0 every subtask points the same way (a single checkpoint cannot tell
    the groups apart); at checkpoints 1 and 2 group A follows directions a_t, group B directions b_t."""
    rng = np.random.default_rng(seed)
    shared = unit(rng.normal(size=D))
    a = unit(rng.normal(size=(T, D)))
    b = unit(rng.normal(size=(T, D)))
    means = []
    for t in range(T):
        m = np.empty((6, D))
        for s in range(6):
            base = shared if t == 0 else (a[t] if s in GROUP_A else b[t])
            m[s] = unit(base + noise * rng.normal(size=D))
        means.append(m.astype(np.float32))
    # pool: rows 0..9 help group A (aligned with a_t), rows 10..19 help group B
    pool = []
    for t in range(T):
        dirs = np.concatenate([np.repeat(a[t][None], 10, 0), np.repeat(b[t][None], 10, 0)])
        if t == 0:
            dirs = np.repeat(shared[None], 20, 0)
        feats = unit(dirs + 0.3 * rng.normal(size=(20, D))).astype(np.float32)
        norms = np.full(20, 2.0 - 0.5 * t, np.float32)  # self-influence falls over the checkpoints
        pool.append((feats, norms))
    return [f"t/s{s}" for s in range(6)], means, pool


def test_discovery_finds_the_two_groups_and_attribution_follows():
    names, means, pool = constructed()
    traj = build_trajectories(means)
    assert traj.shape == (6, T * D)
    disc = discover_capabilities(traj, names, threshold=0.5)
    assert disc.n_capabilities == 2 and disc.method == "louvain"
    assert disc.members() == {"c0": [names[s] for s in GROUP_A], "c1": [names[s] for s in GROUP_B]}
    assert disc.capability_map()["t/s4"] == {"c0": 0, "c1": 1}
    # fixed K (agglomerative) agrees; K found is stable across seeds
    fixed = discover_capabilities(traj, names, n_capabilities=2)
    assert fixed.labels.tolist() == disc.labels.tolist() and fixed.method == "agglomerative"
    assert discover_capabilities(traj, names, threshold=0.5, seed=7).labels.tolist() == disc.labels.tolist()
    # the first checkpoint alone cannot separate them
    assert discover_capabilities(build_trajectories(means[:1]), names, threshold=0.5).n_capabilities == 1
    # attribution: rows built to help group A go to c0, the others to c1
    from mixwise.cadc import capability_means

    inf, si = trajectory_influence(pool, capability_means(means, disc.labels), weights=[1, 2, 1])
    assert inf.shape == (20, 2) and si.shape == (T, 20)
    assert assign(inf).tolist() == [0] * 10 + [1] * 10
    np.testing.assert_allclose(si[:, 0], [4.0, 2.25, 1.0])
    # the formula: Σ_t w_t <ĝ_z(θ_t), ḡ_k(θ_t)>, w normalised
    cm = capability_means(means, disc.labels)
    manual = sum(w * pool[t][0] @ cm[t].T for t, w in enumerate([0.25, 0.5, 0.25]))
    np.testing.assert_allclose(inf, manual, rtol=1e-5, atol=1e-6)


def test_curation_budget_splits_and_stage_order():
    rng = np.random.default_rng(1)
    inf = rng.normal(0, 0.1, (30, 3))
    inf[np.arange(30), np.arange(30) % 3] += 1.0  # 10 rows per capability
    si = np.stack([1.0 + np.array([-0.3, 0.2, -0.6])[np.arange(30) % 3] * t for t in range(3)])
    cur = curate(inf, si, 9, weights=[1, 1, 1])
    assert cur.counts == [3, 3, 3] and cur.order == [2, 0, 1]  # c2 falls fastest, c1 rises
    for k in range(3):
        pool = np.nonzero(np.arange(30) % 3 == k)[0]
        top = pool[np.argsort(-inf[pool, k], kind="stable")][:3]
        assert sorted(cur.rows[k].tolist()) == sorted(top.tolist())
    assert curate(inf, si, 9, stage_order="slowest_drop").order == [1, 0, 2]
    assert curate(inf, si, 9, stage_order=[1, 2, 0]).order == [1, 2, 0]
    # splits: exact counts, capped pools re-split, custom weights
    assert split_budget(10, [10, 10, 10]) == [4, 3, 3]
    assert split_budget(12, [2, 10, 10]) == [2, 5, 5]
    assert split_budget(12, [4, 8, 0], "proportional") == [4, 8, 0]
    assert split_budget(10, [10, 10, 10], "custom", [2, 1, 1]) == [5, 3, 2]
    assert split_budget(12, [10, 10, 10], "custom", [1, 0, 0]) == [10, 1, 1]  # cap: rest to the zero-weight pools
    with pytest.raises(ValueError, match="cannot select 31 rows"):
        split_budget(31, [10, 10, 10])
    # the staged plan: one stage per capability in order, exact counts, deterministic, delivered stage by stage
    mixture = Mixture({f: make_source(f, 10, seed=1) for f in ("count", "colour", "ocr")}, budget=9, seed=3)
    plan, table = staged_plan(cur, mixture, method="cadc")
    assert [st.budget for st in plan.stages] == [3, 3, 3] and plan.budget == 9
    assert [t["capability"] for t in table] == ["c2", "c0", "c1"]
    assert Plan.from_json(plan.to_json()).to_dict() == plan.to_dict()
    mixture.set_plan(plan)
    stream = list(MixtureSampler(mixture, seed=3))
    for s, k in enumerate(cur.order):
        assert sorted(stream[3 * s : 3 * s + 3]) == sorted(cur.rows[k].tolist())
    again, _ = staged_plan(curate(inf, si, 9, weights=[1, 1, 1]), mixture, method="cadc")
    assert again.to_dict() == plan.to_dict()


def test_bad_inputs_and_fallbacks():
    feats = unit(np.random.default_rng(0).normal(size=(4, D))).astype(np.float32)
    norms = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="target 'mmt', subtask 'ocr': no validation rows"):
        subtask_means(feats, norms, ["a", "a", "b", "b"], "mmt", expected=["a", "b", "ocr"])
    with pytest.raises(ValueError, match="target 'mmt': validation rows \\[2\\] have no subtask label"):
        subtask_means(feats, norms, ["a", "a", None, "b"], "mmt")
    with pytest.raises(ValueError, match="target 'mmt', subtask 'b': every validation row was skipped"):
        subtask_means(feats, np.array([1, 1, np.nan, np.nan], np.float32), ["a", "a", "b", "b"], "mmt")
    names, sub_names = subtask_means(feats, norms, ["b", "a", "b", "a"], "mmt")[0], ["a", "b"]
    assert names == sub_names

    names, means, pool = constructed()
    cfg = CADCConfig(threshold=0.5)
    # a single checkpoint: documented fallback with a warning
    with pytest.warns(UserWarning, match="only one checkpoint, so there is no trajectory"):
        disc, inf, si, cur, trajectory = analyse(names, means[-1:], pool[-1:], [1.0], 6, cfg)
    assert not trajectory and disc.n_capabilities == 2 and sum(cur.counts) == 6 and si.shape == (1, 20)
    assert cur.change == [0.0, 0.0]  # no change to order by: ties by mean self-influence, then index
    # every similarity below the threshold: each subtask its own capability, with a warning
    with pytest.warns(UserWarning, match="every subtask is its own capability"):
        disc = discover_capabilities(build_trajectories(means), names, threshold=0.999)
    assert disc.labels.tolist() == list(range(6)) and disc.n_edges == 0
    with pytest.raises(ValueError, match="n_capabilities=7 but there are only 6 subtasks"):
        discover_capabilities(build_trajectories(means), names, n_capabilities=7)
    with pytest.raises(ValueError, match="budget_weights miss capabilities"):
        analyse(
            names, means, pool, None, 6, CADCConfig(threshold=0.5, budget_split="custom", budget_weights={"c0": 1})
        )
    with pytest.raises(ValueError, match="budget_split must be one of"):
        CADCConfig(budget_split="greedy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a proper trajectory warns about nothing
        analyse(names, means, pool, None, 6, cfg)


# ---------------------------------------------------------------------------------------------------------------------
# With the tiny model
# ---------------------------------------------------------------------------------------------------------------------

POOL = {"count": 8, "colour": 6, "ocr": 8}


def targets():
    count = make_source("count", 4, split="validation", seed=2)
    count = count.add_column("subtask", ["small", "small", "big", "big"])
    return {"count": count, "ocr": make_source("ocr", 3, split="validation", seed=2)}


def test_selector_end_to_end_reuses_icons_stores_and_reports(tiny_llava_path, tmp_path):
    from mixwise.icons import ICONS
    from mixwise.report import build_report
    from mixwise.signals.warmup import WarmupConfig, run_warmup

    pool = {f: make_source(f, n, seed=1) for f, n in POOL.items()}
    warm = tmp_path / "warmup"
    run_warmup(str(tiny_llava_path), None, Mixture(pool, budget=6).dataset, str(warm), WarmupConfig.tiny("less"), progress=False)  # fmt: skip
    common = dict(model_path=str(tiny_llava_path), warmup_dir=str(warm), work_dir=str(tmp_path / "work"), proj_dim=48,
                  chunk_size=4, batch_size=4, subtask_column={"count": "subtask"}, progress=False, device="cpu")  # fmt: skip
    selector = SELECTORS["cadc"](**common)
    assert isinstance(selector, CADC)
    subset, plan = select_mixture(pool, selector, budget=6, targets=targets(), model_id="tiny")
    assert len(subset) == 6 and plan.method == "cadc" and plan.budget == 6 and plan.stages
    extra = plan.extra
    assert extra["trajectory"] is True and len(extra["checkpoints"]) == 2
    subtasks = sorted(s for members in extra["capabilities"].values() for s in members)
    assert subtasks == ["count/big", "count/small", "ocr"]
    assert sum(st["rows"] for st in extra["stages"]) == 6 == sum(s.budget for s in plan.stages)
    assert [st.extra["capability"] for st in plan.stages] == [st["capability"] for st in extra["stages"]]
    # the sampler's stream follows the stages
    mixture = Mixture(pool, budget=6, seed=0)
    mixture.set_plan(plan)
    cols = selector.add_columns(mixture.dataset)
    stage_of = cols["cadc_stage"]
    stream = list(MixtureSampler(mixture, seed=0))
    assert [stage_of[i] for i in stream] == sorted(stage_of[i] for i in stream)
    assert sum(cols["cadc_selected"]) == 6 and "cadc_influence_c0" in cols.column_names
    # ICONS on the same work dir with the same settings reads CADC's datastores: nothing recomputed
    markers = sorted((tmp_path / "work" / "features").glob("*/*/done/chunk-000000.json"))
    assert len(markers) == 2 * 3  # 2 checkpoints x (pool + 2 targets)
    stamps = [os.path.getmtime(m) for m in markers]
    icons = ICONS(**common, checkpoints="all")
    select_mixture(pool, icons, budget=6, targets=targets(), model_id="tiny")
    assert [os.path.getmtime(m) for m in markers] == stamps
    assert sorted((tmp_path / "work" / "features").glob("*/*/done/chunk-000000.json")) == markers
    # report section
    run = tmp_path / "run"
    plan.save(run)
    page = build_report(run).read_text()
    assert "CADC capability map" in page and "CADC stages" in page


def expected_stream(out_dir):
    mixture = Mixture(
        {f: make_source(f, 12, seed=1) for f in ("count", "colour", "spatial", "ocr")}, budget=24, seed=5
    )
    plan = Plan.load(out_dir / "run")
    mixture.set_plan(plan)
    ids = mixture.dataset["id"]
    stream = [ids[i] for i in MixtureSampler(mixture, seed=5)]
    stage_rows = [{ids[mixture.offsets[n] + r] for n, sp in st.sources.items() for r in sp.rows} for st in plan.stages]
    return stream, stage_rows


def check_stage_order(consumed, stage_rows):
    sizes = [len(s) for s in stage_rows]
    assert sizes == [8, 8, 8]
    start = 0
    for rows, n in zip(stage_rows, sizes):
        assert set(consumed[start : start + n]) == rows  # exact stage boundaries
        start += n


@pytest.mark.slow
def test_staged_plan_trains_in_stage_order_with_resume_mid_stage_two(tiny_llava_path, tmp_path):
    script = str(SCRIPTS / "cadc_train.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    kw = dict(check=True, capture_output=True, text=True, timeout=600, env=env)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    subprocess.run([sys.executable, script, str(tiny_llava_path), str(full), "--save_steps", "6"], **kw)
    a = read_json(full / "rank0.json")
    stream, stage_rows = expected_stream(full)
    assert a["global_step"] == 12 and a["consumed"] == stream
    check_stage_order(a["consumed"], stage_rows)
    manifest = read_json(full / "run" / "selection.json")
    assert [st["extra"]["capability"] for st in manifest["stages"]] == ["c2", "c0", "c1"]
    # checkpoint-6: 12 rows consumed = the middle of stage 2 (rows 8..15)
    ckpt = full / "run" / "checkpoint-6"
    subprocess.run([sys.executable, script, str(tiny_llava_path), str(resumed), "--resume", str(ckpt)], **kw)
    b = read_json(resumed / "rank0.json")
    assert b["consumed"] == a["consumed"][12:]


@pytest.mark.slow
def test_staged_plan_two_processes(tiny_llava_path, tmp_path):
    run_distributed("cadc_train.py", [str(tiny_llava_path), str(tmp_path)])
    r0, r1 = read_json(tmp_path / "rank0.json"), read_json(tmp_path / "rank1.json")
    assert r0["world"] == r1["world"] == 2 and len(r0["consumed"]) == len(r1["consumed"]) == 12
    got = []
    for k in range(0, 12, 2):  # accelerate hands global batch k to rank k % 2
        got += r0["consumed"][k : k + 2] + r1["consumed"][k : k + 2]
    stream, stage_rows = expected_stream(tmp_path)
    assert got == stream
    check_stage_order(got, stage_rows)


def test_cli_select_cadc_writes_a_staged_plan(tiny_llava_path, tmp_path):
    import datasets

    from mixwise.cli import main
    from mixwise.plan import Plan

    paths = []
    for family in ("count", "ocr"):
        path = tmp_path / "toy" / family
        make_source(family, 8, seed=1).save_to_disk(str(path))
        paths.append(str(path))
    targets = []
    for family in ("count", "ocr"):
        path = tmp_path / "toy" / f"{family}-val"
        datasets.DatasetDict(validation=make_source(family, 3, split="validation", seed=2)).save_to_disk(str(path))
        targets.append(str(path))
    out = tmp_path / "out"
    code = main(
        ["select", "--method", "cadc", "--model", str(tiny_llava_path), "--pool", *paths, "--targets", *targets,
         "--ratio", "0.5", "--out", str(out), "--warmup_preset", "tiny-less", "--proj_dim", "32",
         "--n_capabilities", "2"]
    )  # fmt: skip
    assert code == 0
    plan = Plan.load(out)
    assert plan.method == "cadc" and plan.budget == 8 and len(plan.stages) >= 1
    assert sum(st.budget for st in plan.stages) == 8
    assert plan.extra["capability_map"] and plan.extra["stages"]
    # the score file: per-row capability, stage and influence, consistent with the plan
    with np.load(out / "cadc_scores.npz") as scores:
        assert scores["influence"].shape == (16, len(scores["capabilities"]))
        assert scores["self_influence"].shape[1] == 16
        assert int(scores["selected"].sum()) == 8
        stages = scores["stage"][scores["selected"]]
        assert sorted(np.bincount(stages).tolist()) == sorted(st.budget for st in plan.stages)
        assert list(scores["subtasks"]) == list(plan.extra["capability_map"])
    for png in ("capability_map.png", "stages.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
