"""DataProphet: the metric and its terms, caching, allocation (Alg. 1), instance scores (Alg. 2), the selector as a
transform / in a trainer across 2 processes / from the CLI, and bad input."""

import importlib.util
import json
import os

import numpy as np
import pytest
from helpers import SCRIPTS, read_json, run_distributed

from mixwise import select_mixture
from mixwise.cli import main
from mixwise.dataprophet import (
    ABLATIONS,
    DataProphet,
    DataProphetConfig,
    DataProphetInstances,
    DataProphetResult,
    SignalComputer,
    Terms,
    combine_targets,
    instance_scores,
    per_target_weights,
    select_instances,
    sharpen_scores,
)
from mixwise.dataprophet.tau import Matrix
from mixwise.plan import Plan
from mixwise.signals.embeddings import FieldEmbedder, field_similarity
from mixwise.signals.perplexity import dataset_perplexity, sample_nll
from mixwise.sources import DataError, extract_fields
from mixwise.toy import corrupt_rows, make_source

FAMILIES = ("count", "colour", "ocr")


def pool(n=24):
    return {f: make_source(f, n, split="train", seed=1) for f in FAMILIES}


def targets(n=10, families=FAMILIES):
    return {f: make_source(f, n, split="test", seed=1) for f in families}


@pytest.fixture(scope="module")
def scored(tiny_llava):
    model, processor = tiny_llava
    dp = DataProphet(subsample=16, progress=False)
    return dp, dp.score(pool(), targets(), model, processor, model_id="tiny-llava")


def hand_result(**kw) -> DataProphetResult:
    S, T = ["a", "b"], ["a", "b"]
    base = dict(
        sources=S,
        targets=T,
        qsim=Matrix(S, T, [[0.9, 0.5], [0.4, 0.8]]),
        asim=Matrix(S, T, [[0.7, 0.2], [0.3, 0.6]]),
        isim=Matrix(S, T, [[1.0, 0.9], [0.9, 1.0]]),
        ppl_source={"a": 4.0, "b": 2.0},
        ppl_target={"a": 5.0, "b": 1.0},
        silhouette={"a": 0.1, "b": 0.3},
        entropy={"a": 0.8, "b": 0.5},
        terms=Terms(),
        config=DataProphetConfig.paper(),
    )
    base.update(kw)
    return DataProphetResult(**base)


# ------------------------------------------------------------------------------------------------------------------
# Formula
# ------------------------------------------------------------------------------------------------------------------


def test_metric_is_the_product_of_the_terms_hand_computed():
    r = hand_result()
    m = r.metric()
    # M(a→b) = 0.5 · 0.2 · 0.9 · PPL(a)=4 · (0.1+0.8) / PPL(b)=1
    assert m["a", "b"] == pytest.approx(0.5 * 0.2 * 0.9 * 4 * 0.9 / 1)
    # M(b→a) = 0.4 · 0.3 · 0.9 · 2 · (0.3+0.5) / 5: directional, not symmetric
    assert m["b", "a"] == pytest.approx(0.4 * 0.3 * 0.9 * 2 * 0.8 / 5)
    assert m["a", "b"] != pytest.approx(m["b", "a"])
    f = r.factors()
    assert set(f) == {"qsim", "asim", "isim", "ppl_ratio", "diversity"}
    assert f["ppl_ratio"]["b", "a"] == pytest.approx(2 / 5)
    assert f["diversity"]["b", "a"] == pytest.approx(0.8)


@pytest.mark.parametrize("name", ["qsim", "asim", "isim", "ppl", "diversity"])
def test_turning_a_term_off_removes_exactly_that_factor(name):
    r = hand_result()
    full, without = r.metric(), r.metric(Terms.without(name))
    factor = r.factors()["ppl_ratio" if name == "ppl" else name]
    np.testing.assert_allclose(without.values * factor.values, full.values)
    assert not np.allclose(without.values, full.values)
    assert set(ABLATIONS) == {"full", "no_ppl", "no_isim", "no_diversity", "no_qsim", "no_asim"}


def test_scored_terms_agree_with_their_definitions(scored):
    dp, r = scored
    assert r.sources == list(FAMILIES) and r.targets == list(FAMILIES)
    # recompute QSim / PPL / diversity from the cached per-sample signals
    entries = {(m["role"], m["dataset"], m["kind"]): a for m, a in _entries(dp)}
    for s in FAMILIES:
        for t in FAMILIES:
            q_s, q_t = entries[("source", s, "text")]["q"], entries[("target", t, "text")]["q"]
            assert r.qsim[s, t] == pytest.approx(field_similarity(q_s, q_t), abs=1e-6)
            i_s, i_t = entries[("source", s, "image")]["i"], entries[("target", t, "image")]["i"]
            assert r.isim[s, t] == pytest.approx(field_similarity(i_s, i_t), abs=1e-6)
        assert r.ppl_source[s] == pytest.approx(dataset_perplexity(entries[("source", s, "nll")]["nll"]))
        assert -1 <= r.silhouette[s] <= 1 and 0 <= r.entropy[s] <= 1
    assert r.n_rows["source"] == {f: 16 for f in FAMILIES} and r.n_rows["target"] == {f: 10 for f in FAMILIES}
    assert len(dp.computer.memory) == 18  # 6 datasets x (nll, text, image)
    # directional: swapping source and target gives a different score
    m = r.metric()
    assert m["count", "colour"] != pytest.approx(m["colour", "count"])
    # the subsample is seeded: the same rows every time, a subset of the pool
    rows = entries[("source", "count", "nll")]["rows"]
    assert len(rows) == 16 and np.all(np.diff(rows) > 0) and rows.max() < 24


def test_one_pass_per_row_gives_each_signal_as_computed_alone(scored, tiny_llava):
    """Scoring reads each row once: one forward gives NLL and image vector, one text pass gives Q and A. The
    values equal each module run on its own."""
    dp, _ = scored
    model, processor = tiny_llava
    entries = {(m["role"], m["dataset"], m["kind"]): a for m, a in _entries(dp)}
    embedder = FieldEmbedder(model, processor)
    for role, name in [("source", "count"), ("target", "ocr")]:
        ds = (pool() if role == "source" else targets())[name]
        rows = entries[(role, name, "nll")]["rows"]
        assert np.array_equal(rows, entries[(role, name, "image")]["rows"])
        picked = [ds[int(r)] for r in rows]
        np.testing.assert_allclose(
            entries[(role, name, "nll")]["nll"], sample_nll(model, processor, picked), rtol=0, atol=1e-5
        )
        images = embedder.embed_images([row["images"] for row in picked])
        np.testing.assert_allclose(entries[(role, name, "image")]["i"], images, rtol=0, atol=1e-5)
        fields = [extract_fields(row) for row in picked]
        q = embedder.embed_texts([f.question for f in fields])
        np.testing.assert_allclose(entries[(role, name, "text")]["q"], q, rtol=0, atol=1e-5)


def _entries(dp):
    """(meta, arrays) of every signal the selector holds (meta names the dataset, its role and the signal)."""
    return list(dp.computer.memory.values())


# ------------------------------------------------------------------------------------------------------------------
# Caching
# ------------------------------------------------------------------------------------------------------------------


def test_adding_a_target_computes_only_that_targets_signals(tiny_llava, tmp_path, monkeypatch):
    model, processor = tiny_llava
    calls = []
    original = SignalComputer.compute_rows

    def spy(self, job, ids, *args):
        calls.append((job.role, job.name, job.kind))
        return original(self, job, ids, *args)

    monkeypatch.setattr(SignalComputer, "compute_rows", spy)
    cache = tmp_path / "cache"
    src = pool(16)
    first = DataProphet(subsample=12, cache_dir=str(cache), progress=False)
    r1 = first.score(src, targets(8, ("count", "colour")), model, processor, model_id="tiny-llava")
    assert {c[:2] for c in calls} == {("source", f) for f in FAMILIES} | {("target", "count"), ("target", "colour")}
    files = sorted(os.listdir(cache))
    assert len(files) == 2 * 5 * 3  # one .npz + one .json per (dataset, signal)
    metas = [json.loads((cache / f).read_text()) for f in files if f.endswith(".json")]
    assert {(m["role"], m["dataset"], m["kind"]) for m in metas} == {
        (role, name, kind)
        for role, names in (("source", FAMILIES), ("target", ("count", "colour")))
        for name in names
        for kind in ("nll", "text", "image")
    }
    assert all(m["model_id"] == "tiny-llava" for m in metas)

    calls.clear()
    second = DataProphet(subsample=12, cache_dir=str(cache), progress=False)  # a new object: the disk cache
    r2 = second.score(src, targets(8), model, processor, model_id="tiny-llava")
    assert {c[:2] for c in calls} == {("target", "ocr")}
    assert sorted(r2.computed) == [("target", "ocr", k) for k in ("image", "nll", "text")]
    assert len(r2.cached) == 15
    np.testing.assert_allclose(r2.metric().values[:, :2], r1.metric().values)  # cached == computed

    calls.clear()  # another model id: nothing is reused
    DataProphet(subsample=12, cache_dir=str(cache), progress=False).score(
        src, targets(8, ("count",)), model, processor, model_id="other-model"
    )
    assert len(calls) > 0 and {c[1] for c in calls} == set(FAMILIES)
    calls.clear()  # another signal configuration (text pooling): only the text signals are recomputed
    DataProphet(DataProphetConfig(subsample=12, cache_dir=str(cache), progress=False, text_pooling="last")).score(
        src, targets(8), model, processor, model_id="tiny-llava"
    )
    assert {c[2] for c in calls} == {"text"}


# ------------------------------------------------------------------------------------------------------------------
# Allocation (Alg. 1), sharpening, several targets
# ------------------------------------------------------------------------------------------------------------------


def test_allocation_is_proportional_per_target_and_sums_to_the_budget():
    m = Matrix(["a", "b", "c"], ["t"], [[0.5], [0.3], [0.2]])
    w = per_target_weights(m)
    np.testing.assert_allclose(w.col("t"), [0.5, 0.3, 0.2])
    for budget in (1, 7, 100, 1001):
        plan = Plan.from_weights(combine_targets(w), {"a": 50, "b": 50, "c": 50}, budget)
        assert sum(plan.counts.values()) == budget
    assert Plan.from_weights(combine_targets(w), {"a": 50, "b": 50, "c": 50}, 10).counts == {"a": 5, "b": 3, "c": 2}
    plan = hand_result().to_plan({"a": 3, "b": 100}, 101, seed=4)
    assert sum(plan.counts.values()) == 101 and plan.sources["a"].repeated  # more rows than a source has
    assert plan.method == "dataprophet" and set(plan.extra["metric"]) == {"a", "b"}
    assert json.loads(plan.to_json())["sources"]["a"]["repeated"] is True


def test_sharpening_concentrates_the_budget():
    m = np.array([0.39, 0.5, 0.72])  # the paper's range: proportional is close to uniform
    flat = sharpen_scores(m)
    power = sharpen_scores(m, "power", power=8)
    temp = sharpen_scores(m, "temperature", temperature=0.05)
    for w in (flat, power, temp):
        assert w.sum() == pytest.approx(1.0) and np.all(np.diff(w) > 0)  # order kept
    assert flat.max() < 0.45 < power.max() < temp.max()
    np.testing.assert_allclose(power, m**8 / (m**8).sum())
    np.testing.assert_allclose(temp, np.exp(m / 0.05) / np.exp(m / 0.05).sum())
    # negative scores get no budget (proportional / power); all non-positive is an error naming the target
    np.testing.assert_allclose(sharpen_scores(np.array([-0.1, 0.3, 0.1])), [0.0, 0.75, 0.25])
    with pytest.raises(ValueError, match="target 'tt'.*no source has a positive score"):
        sharpen_scores(np.array([-0.1, 0.0]), name="tt")


def test_several_targets_mean_of_normalized_weights_or_user_weights():
    m = Matrix(["a", "b"], ["t1", "t2"], [[1.0, 10.0], [3.0, 10.0]])
    w = per_target_weights(m)  # t1: (.25, .75); t2: (.5, .5) — t2's large scale does not dominate
    assert combine_targets(w) == pytest.approx({"a": 0.375, "b": 0.625})
    assert combine_targets(w, {"t1": 3, "t2": 1}) == pytest.approx({"a": 0.3125, "b": 0.6875})
    assert combine_targets(w, {"t2": 1}) == pytest.approx({"a": 0.5, "b": 0.5})
    with pytest.raises(ValueError, match="unknown targets"):
        combine_targets(w, {"t3": 1})
    r = hand_result(config=DataProphetConfig.paper(combine="weighted", target_weights={"a": 1.0}))
    assert r.weights() == pytest.approx(dict(zip(["a", "b"], r.target_weights().col("a"))))
    with pytest.raises(ValueError, match="needs target_weights"):
        DataProphetConfig(combine="weighted")
    per_target = r.target_plans({"a": 50, "b": 50}, 20)
    assert set(per_target) == {"a", "b"} and all(sum(p.counts.values()) == 20 for p in per_target.values())


# ------------------------------------------------------------------------------------------------------------------
# Instance level (Alg. 2)
# ------------------------------------------------------------------------------------------------------------------


def test_instance_score_formula_and_selection_on_a_constructed_pool():
    e = np.eye(3)
    # target: all questions/answers/images along e0; PPL(t) = 2
    tstats = {"t": {"q": e[0], "a": e[0], "i": e[0], "ppl": 2.0}}
    q = np.array([e[0], e[1], e[0] + e[1], e[0], -e[0]])
    a = np.array([e[0], e[0], e[0], e[0], e[0]])
    i = np.array([e[0], e[0], e[0], e[0] + e[2], e[0]])
    nll = np.log([2.0, 2.0, 2.0, 4.0, 2.0])
    s = instance_scores(q, a, i, nll, tstats).col("t")
    c = 1 / np.sqrt(2)
    np.testing.assert_allclose(s, [1.0, 0.0, c, c * 4 / 2, -1.0])  # m(u) = q̂·μq · â·μa · î·μi · PPL({u})/PPL(t)
    assert select_instances(s, top_k=2).tolist() == [3, 0]
    assert select_instances(s, threshold=0.5).tolist() == [3, 0, 2]
    assert select_instances(s, top_k=1, threshold=0.5).tolist() == [3]
    assert select_instances([1.0, 2.0, 2.0], top_k=2).tolist() == [1, 2]  # ties: lower index first
    no_ppl = instance_scores(q, a, i, nll, tstats, Terms.without("ppl")).col("t")
    np.testing.assert_allclose(no_ppl, [1.0, 0.0, c, c, -1.0])


def test_instance_selector_picks_rows_of_the_matching_family(tiny_llava):
    model, processor = tiny_llava
    dp = DataProphetInstances(subsample=8, progress=False)
    mixed, plan = select_mixture(
        pool(12), dp, budget=10, model=model, processing_class=processor, targets=targets(8, ("colour",))
    )
    assert len(mixed) == 10 and plan.method == "dataprophet_instances"
    assert sum(plan.counts.values()) == 10
    scores = dp.score_instances(pool(12), targets(8, ("colour",)), model, processor)
    assert len(scores.combined) == 36
    top = scores.select(top_k=10)
    assert {s: sorted(plan.sources[s].rows) for s in top} == top


# ------------------------------------------------------------------------------------------------------------------
# Integration
# ------------------------------------------------------------------------------------------------------------------


def test_selector_as_a_transform(tiny_llava):
    model, processor = tiny_llava
    dp = DataProphet(subsample=16, progress=False)
    mixed, plan = select_mixture(
        pool(), dp, budget=30, seed=2, model=model, processing_class=processor, targets=targets(), model_id="tiny"
    )
    assert len(mixed) == 30 and "source" in mixed.column_names
    assert plan.method == "dataprophet" and sum(plan.counts.values()) == 30
    assert plan.config["subsample"] == 16 and plan.config["terms"]["ppl"] is True
    assert set(plan.extra["terms"]) == {"qsim", "asim", "isim", "ppl_ratio", "diversity"}
    expected = Plan.from_weights(dp.last_result.weights(), plan.sizes, 30).counts
    assert plan.counts == expected
    assert dict(zip(*np.unique(mixed["source"], return_counts=True))) == {k: v for k, v in expected.items() if v}
    Plan.from_json(plan.to_json())  # the manifest round-trips
    with pytest.raises(ValueError, match="needs target datasets"):
        select_mixture(pool(), dp, budget=30, model=model, processing_class=processor)


def test_text_only_model_with_the_image_term_off(tiny_llama):
    model, tok = tiny_llama

    def text(ds):
        return ds.remove_columns("images").map(
            lambda r: {"messages": [{"role": m["role"], "content": m["content"][-1]["text"]} for m in r["messages"]]}
        )

    src = {f: text(ds) for f, ds in pool(14).items()}
    tgt = {f: text(ds) for f, ds in targets(6).items()}
    with pytest.raises(DataError, match="source 'count'.*field 'images'.*isim"):
        DataProphet(progress=False).score(src, tgt, model, tok)
    r = DataProphet(progress=False, **Terms.without("isim").flags()).score(src, tgt, model, tok)
    assert r.isim is None and np.all(r.factors()["isim"].values == 1)
    assert np.all(np.isfinite(r.metric().values))


@pytest.mark.slow
def test_two_processes_in_the_trainer_callback_match_one_process(tiny_llava_path, tmp_path):
    run_distributed("dataprophet_callback.py", [str(tiny_llava_path), str(tmp_path)])
    r0, r1 = read_json(tmp_path / "rank0.json"), read_json(tmp_path / "rank1.json")
    assert r0["world"] == r1["world"] == 2
    # the scoring work was split: each rank computed half the items
    assert r0["work"]["items_local"] + r1["work"]["items_local"] == r0["work"]["items_total"] > 0
    assert 0 < r0["work"]["items_local"] < r0["work"]["items_total"]
    assert r0["plan_counts"] == r1["plan_counts"]

    spec = importlib.util.spec_from_file_location("dataprophet_callback", SCRIPTS / "dataprophet_callback.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_path)
    processor = AutoProcessor.from_pretrained(tiny_llava_path)
    dp = DataProphet(**script.SETTINGS)
    result = dp.score(script.pool(), script.targets(), model, processor, model_id="tiny-llava")
    one = result.metric()
    for r in (r0, r1):
        two = Matrix.from_dict(r["metric"]).reindex(one.rows, one.cols)
        np.testing.assert_allclose(two.values, one.values, rtol=0, atol=1e-5)
    sizes = {n: len(ds) for n, ds in script.pool().items()}
    assert result.to_plan(sizes, script.BUDGET).counts == r0["plan_counts"]
    manifest = read_json(tmp_path / "run" / "selection.json")
    assert manifest["method"] == "dataprophet" and "metric" in manifest["extra"]


def test_cli_score_writes_every_output(tiny_llava_path, tmp_path, capsys):
    world = tmp_path / "world"
    for f in ("count", "colour"):
        ds = make_source(f, 14, split="train", seed=1)
        from datasets import DatasetDict

        DatasetDict(train=ds, test=make_source(f, 6, split="test", seed=1)).save_to_disk(str(world / f))
    out = tmp_path / "out"
    argv = ["score", "--model", str(tiny_llava_path), "--sources", str(world / "count"), str(world / "colour")]
    argv += ["--targets", str(world / "count"), str(world / "colour"), "--budget", "40", "--out", str(out)]
    argv += ["--subsample", "12", "--sharpen", "power", "--power", "4", "--target_weights", "colour=2", "count=1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "allocation:" in printed
    for name in ("metric.csv", "selection.json", "heatmap.png", "weights.csv", "signals.csv"):
        assert (out / name).exists(), name
    for term in ("qsim", "asim", "isim", "ppl_ratio", "diversity"):
        assert Matrix.from_csv(out / f"term_{term}.csv").rows == ["count", "colour"]
    metric = Matrix.from_csv(out / "metric.csv")
    assert metric.rows == ["count", "colour"] and metric.cols == ["count", "colour"]
    product = np.prod([Matrix.from_csv(out / f"term_{t}.csv").values for t in ("qsim", "asim", "isim")], axis=0)
    product *= Matrix.from_csv(out / "term_ppl_ratio.csv").values * Matrix.from_csv(out / "term_diversity.csv").values
    np.testing.assert_allclose(metric.values, product)
    plan = Plan.load(out)
    assert plan.method == "dataprophet" and sum(plan.counts.values()) == 40
    assert plan.config["sharpen"] == "power" and plan.config["target_weights"] == {"colour": 2.0, "count": 1.0}
    # 40 rows from two 14-row sources repeat rows: TRL fractions cannot say that, so no mixture.yaml, and the
    # command names `mixwise export` instead
    assert not (out / "mixture.yaml").exists() and "mixwise export" in printed
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert os.listdir(out / "cache")  # signals cached for the next run


# ------------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------------


def test_target_without_answer_text(tiny_llava):
    model, processor = tiny_llava
    bad = {"count": corrupt_rows(make_source("count", 8, split="test", seed=1), empty_answer_row=3)}
    with pytest.raises(DataError, match="source 'count', row 3, field 'messages'.*empty answer"):
        DataProphet(progress=False).score(pool(12), bad, model, processor)
    r = DataProphet(progress=False, on_error="skip").score(pool(12), bad, model, processor)
    assert r.n_rows["target"]["count"] == 7
    assert {f["row"] for f in r.failures["target:count"]} == {3}
    assert r.to_extra()["skipped_rows"]["target:count"][0]["field"] == "messages"


def test_image_that_fails_to_decode(tiny_llava):
    model, processor = tiny_llava
    bad = {"colour": corrupt_rows(make_source("colour", 8, split="test", seed=1), image_row=5)}
    with pytest.raises(DataError, match="source 'colour', row 5, field 'images'.*fails to decode"):
        DataProphet(progress=False).score(pool(12), bad, model, processor)
    r = DataProphet(progress=False, on_error="skip").score(pool(12), bad, model, processor)
    assert r.n_rows["target"]["colour"] == 7


def test_empty_source_and_truncated_answer(tiny_llava):
    model, processor = tiny_llava
    src = pool(12)
    src["ocr"] = src["ocr"].select([])
    with pytest.raises(DataError, match="source 'ocr'.*source dataset is empty"):
        DataProphet(progress=False).score(src, targets(6), model, processor)
    # a row whose answer would be cut by max_length: an error naming it, or a counted skip
    long = make_source("count", 12, split="train", seed=1).map(
        lambda r, i: {"messages": r["messages"] if i != 4 else _long_question(r["messages"])}, with_indices=True
    )
    cfg = {"max_length": 40}
    with pytest.raises(DataError, match=r"source 'count', row 4, field 'messages'.*exceed max_length=40"):
        DataProphet(DataProphetConfig(progress=False, **cfg)).score({"count": long}, targets(6), model, processor)
    r = DataProphet(DataProphetConfig(progress=False, on_error="skip", **cfg)).score(
        {"count": long}, targets(6), model, processor
    )
    assert [f["row"] for f in r.failures["source:count"]] == [4]
    assert r.n_rows["source"]["count"] == 11  # the row is left out of every term, not only perplexity


def _long_question(messages):
    messages[0]["content"][1]["text"] = "How many shapes are in the image? " * 10
    return messages


# ------------------------------------------------------------------------------------------------------------------
# mixwise's fixes (allocation stage) and the paper preset
# ------------------------------------------------------------------------------------------------------------------


def test_sign_safe_similarity_hand_computed():
    from mixwise.dataprophet import sign_safe

    sims = np.array([-0.5, 0.0, 0.25])
    np.testing.assert_allclose(sign_safe(sims, "signed"), sims)
    np.testing.assert_allclose(sign_safe(sims, "clip"), [0.0, 0.0, 0.25])
    np.testing.assert_allclose(sign_safe(sims, "shift"), [0.25, 0.5, 0.625])
    # the paper's product: two negative similarities agree (+0.3), one negative one disagrees; clipped, neither counts
    q, a = np.array([-0.6, -0.6]), np.array([-0.5, 0.5])
    assert list(q * a) == pytest.approx([0.3, -0.3])
    assert list(sign_safe(q, "clip") * sign_safe(a, "clip")) == [0.0, 0.0]
    with pytest.raises(ValueError, match="similarity_sign"):
        sign_safe(sims, "abs")


def test_centred_similarity_hand_computed():
    from mixwise.dataprophet import centred_similarity

    # two sources and a target sharing a dominant direction e0: uncentred every cosine is close to 1
    ms = {"near": np.array([1.0, 0.1, 0.0]), "far": np.array([1.0, -0.1, 0.0])}
    mt = {"t": np.array([1.0, 0.1, 0.02])}
    c = np.mean([ms["near"], ms["far"], mt["t"]], axis=0)  # the pooled centre: (1, 1/30, 1/150)
    m = centred_similarity(ms, mt)
    for s in ms:
        u, v = ms[s] - c, mt["t"] - c
        assert m[s, "t"] == pytest.approx(float(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))
    assert m["near", "t"] > 0.9 and m["far", "t"] < -0.9  # the gap the dominant direction hid
    given = centred_similarity(ms, mt, centre=np.zeros(3))  # no centre: plain cosines, both about 0.99
    assert given["near", "t"] > 0.99 and given["far", "t"] > 0.97


def test_ppl_guard_hand_computed():
    from mixwise.dataprophet import guard_ppl_ratio

    r = np.array([0.5, 1.0, 2.0, 8.0])
    np.testing.assert_allclose(guard_ppl_ratio(r, "none"), r)
    np.testing.assert_allclose(guard_ppl_ratio(r, "cap", 2.0), [0.5, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(guard_ppl_ratio(r, "band", 2.0), [0.5, 1.0, 2.0, 0.5])  # C^2 / r above C
    np.testing.assert_allclose(guard_ppl_ratio(r, "band", 1.0), [0.5, 1.0, 0.5, 0.125])  # min(r, 1/r)
    with pytest.raises(ValueError, match="ppl_guard"):
        guard_ppl_ratio(r, "clip")


def test_capped_allocation_gives_the_excess_to_the_other_sources():
    from mixwise.dataprophet import capped_allocation

    # "dups" would get 60 of 100 rows but has 10 distinct rows: capped, its excess split 1:1 by the others' weights
    counts = capped_allocation({"dups": 0.6, "a": 0.2, "b": 0.2}, {"dups": 10, "a": 100, "b": 100}, 100)
    assert counts == {"dups": 10, "a": 45, "b": 45}
    # a zero weight stays at zero; when every cap is reached the budget forces repeats, by the weights
    assert capped_allocation({"x": 1.0, "y": 0.0}, {"x": 3, "y": 50}, 5) == {"x": 5, "y": 0}
    assert sum(capped_allocation({"a": 0.5, "b": 0.5}, {"a": 2, "b": 2}, 7).values()) == 7


def fix_result(config):
    """Two sources, one target; `dup` is a near copy of the target but mostly duplicates, `hard` is mislabelled."""
    S, T = ["clean", "hard", "dup"], ["t"]
    return DataProphetResult(
        sources=S,
        targets=T,
        qsim=Matrix(S, T, [[0.99], [0.99], [0.99]]),
        asim=Matrix(S, T, [[0.98], [0.98], [0.98]]),
        isim=Matrix(S, T, [[0.99], [0.99], [0.99]]),
        ppl_source={"clean": 2.0, "hard": 16.0, "dup": 2.0},
        ppl_target={"t": 2.0},
        silhouette={"clean": 0.2, "hard": 0.2, "dup": 1.0},
        entropy={"clean": 0.9, "hard": 0.9, "dup": 1.0},
        centred={
            "qsim": Matrix(S, T, [[0.8], [0.8], [-0.5]]),
            "asim": Matrix(S, T, [[0.6], [0.6], [-0.4]]),
            "isim": Matrix(S, T, [[0.9], [0.9], [0.7]]),
        },
        silhouette_distinct={"clean": 0.2, "hard": 0.2, "dup": 0.0},
        entropy_distinct={"clean": 0.9, "hard": 0.9, "dup": 1.0},
        distinct={"clean": 1.0, "hard": 1.0, "dup": 0.1},
        terms=Terms(),
        config=config,
    )


def test_paper_preset_allocates_with_the_papers_metric_and_the_default_with_the_fixes():
    paper = fix_result(DataProphetConfig.paper())
    np.testing.assert_allclose(paper.allocation_metric().values, paper.metric().values)
    # paper: the mislabelled source wins by its perplexity (x 8), the duplicates by their silhouette (2.0 vs 1.1)
    pm = paper.metric()
    assert pm["hard", "t"] == pytest.approx(0.99 * 0.98 * 0.99 * 8 * 1.1)
    assert pm["dup", "t"] == pytest.approx(0.99 * 0.98 * 0.99 * 1 * 2.0)
    default = fix_result(DataProphetConfig())
    np.testing.assert_allclose(default.metric().values, pm.values)  # metric() is always the paper's M
    m = default.allocation_metric()
    assert m["clean", "t"] == pytest.approx(0.8 * 0.6 * 0.9 * 1.0 * 1.1)  # centred, clipped, r = 1, Sil+H
    assert m["hard", "t"] == pytest.approx(0.8 * 0.6 * 0.9 * (1 / 8) * 1.1)  # band, C = 1: 1/r
    assert m["dup", "t"] == 0.0  # a negative centred similarity, clipped
    w = default.weights()
    assert w["clean"] > 0.8 and w["hard"] < 0.5 * w["clean"] and w["dup"] == 0.0
    # duplicate-aware diversity on its own: (Sil + H) of the distinct samples x the distinct share
    only_dedup = fix_result(DataProphetConfig.paper(diversity_dedup=True))
    assert only_dedup.factors(fixed=True)["diversity"]["dup", "t"] == pytest.approx((0.0 + 1.0) * 0.1)
    assert only_dedup.factors(fixed=True)["diversity"]["clean", "t"] == pytest.approx(1.1)


def test_preset_resolution_and_explicit_options():
    d, p = DataProphetConfig(), DataProphetConfig.paper()
    assert (d.centre, d.similarity_sign, d.ppl_guard, d.diversity_dedup, d.dedup_rows) == (
        "pooled", "clip", "band", True, True)  # fmt: skip
    assert (p.centre, p.similarity_sign, p.ppl_guard, p.diversity_dedup, p.dedup_rows) == (
        "none", "signed", "none", False, False)  # fmt: skip
    assert p.is_paper and not d.is_paper
    assert DataProphetConfig(preset="paper", ppl_guard="cap").ppl_guard == "cap"  # an explicit option wins
    assert DataProphet(preset="paper").settings.is_paper  # switching preset re-resolves the options
    assert DataProphet(DataProphetConfig.paper(), preset="default").settings.centre == "pooled"
    assert d.to_dict()["allocation"]["preset"] == "default"
    with pytest.raises(ValueError, match="similarity_sign"):
        DataProphetConfig(similarity_sign="abs")
    with pytest.raises(ValueError, match="preset"):
        DataProphetConfig(preset="robust")


def test_uniform_fallback_for_a_target_no_source_matches():
    r = fix_result(DataProphetConfig())
    r.centred["qsim"] = Matrix(r.sources, r.targets, [[-0.1], [-0.2], [-0.3]])
    assert r.uniform_targets() == ["t"]
    assert r.weights() == pytest.approx({"clean": 1 / 3, "hard": 1 / 3, "dup": 1 / 3})


def test_distinct_rows_plan_never_repeats_a_duplicated_row():
    # the paper's metric with distinct-row plans only: `dup` wants ~10 of the 60 rows but has 4 distinct ones
    r = fix_result(DataProphetConfig(preset="paper", dedup_rows=True))
    sizes = {"clean": 50, "hard": 50, "dup": 40}
    groups = {"clean": np.arange(50), "hard": np.arange(50), "dup": np.repeat(np.arange(4), 10)}  # 4 rows x 10
    plan = r.to_plan(sizes, 60, row_groups=groups, seed=3)
    assert plan.counts["dup"] == 4 and sum(plan.counts.values()) == 60
    picked = [int(groups["dup"][i]) for i in plan.sources["dup"].rows]
    assert sorted(picked) == [0, 1, 2, 3]  # one copy of each duplicated row
    assert plan.extra["dedup_rows"]["distinct_rows"]["dup"] == 4
    # without distinct rows the same weights draw copies
    paper = fix_result(DataProphetConfig.paper()).to_plan(sizes, 60, row_groups=groups, seed=3)
    assert paper.sources["dup"].rows is None and paper.counts["dup"] > 4


def test_instance_score_fixes_hand_computed():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    targets = {"t": {"q": np.array([1.0, 0.0]), "ppl": 2.0}}
    terms = Terms(qsim=True, asim=False, isim=False, ppl=True, diversity=False)
    nll = np.log(np.array([2.0, 8.0]))  # PPL({u}) = 2 and 8: r = 1 and 4
    paper = instance_scores(q, None, None, nll, targets, terms)
    np.testing.assert_allclose(paper.values[:, 0], [1.0 * 1.0, 0.0 * 4.0])
    centre = {"q": np.array([0.5, 0.5])}
    fixed = instance_scores(q, None, None, nll, targets, terms, centres=centre, similarity_sign="clip",
                            ppl_guard="band", ppl_cap=1.0)  # fmt: skip
    # centred: cos((0.5,-0.5), (0.5,-0.5)) = 1 and cos((-0.5,0.5), (0.5,-0.5)) = -1 -> clipped to 0; r = 4 -> 1/4
    np.testing.assert_allclose(fixed.values[:, 0], [1.0, 0.0], atol=1e-12)
    shifted = instance_scores(q, None, None, nll, targets, terms, centres=centre, similarity_sign="shift",
                              ppl_guard="band", ppl_cap=1.0)  # fmt: skip
    np.testing.assert_allclose(shifted.values[:, 0], [1.0, 0.0 * 0.25], atol=1e-12)


def test_distinct_instance_selection_takes_one_copy_first():
    from mixwise.dataprophet import InstanceScores

    scores = InstanceScores(
        sources=["a"] * 5,
        rows=[0, 1, 2, 3, 4],
        scores=Matrix([str(k) for k in range(5)], ["t"], [[5.0], [5.0], [4.0], [3.0], [2.0]]),
        combined=np.array([5.0, 5.0, 4.0, 3.0, 2.0]),
        groups=np.array([0, 0, 0, 1, 2]),  # rows 0-2 are copies
    )
    assert scores.select(top_k=3) == {"a": [0, 1, 2]}
    assert scores.select(top_k=3, distinct=True) == {"a": [0, 3, 4]}
    assert scores.select(top_k=4, distinct=True) == {"a": [0, 1, 3, 4]}  # the budget forces a second copy


def test_for_targets_restricts_every_term(scored):
    _, r = scored
    sub = r.for_targets(["ocr", "count"])
    assert sub.targets == ["ocr", "count"]
    for t in sub.targets:
        np.testing.assert_allclose(sub.metric().col(t), r.metric().col(t))
        np.testing.assert_allclose(sub.allocation_metric().col(t), r.allocation_metric().col(t))
    with pytest.raises(ValueError, match="unknown targets"):
        r.for_targets(["nope"])


def test_scored_centred_similarity_and_distinct_share(scored):
    from mixwise.dataprophet import centred_similarity

    dp, r = scored
    entries = {(m["role"], m["dataset"], m["kind"]): a for m, a in _entries(dp)}
    from mixwise.signals.embeddings import mean_unit_vector

    ms = {s: mean_unit_vector(entries[("source", s, "text")]["q"]) for s in FAMILIES}
    mt = {t: mean_unit_vector(entries[("target", t, "text")]["q"]) for t in FAMILIES}
    expected = centred_similarity(ms, mt)
    np.testing.assert_allclose(r.centred["qsim"].values, expected.values, atol=1e-6)
    assert r.distinct == {f: 1.0 for f in FAMILIES}  # toy rows are all distinct
