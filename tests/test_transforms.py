import collections

import datasets
from helpers import text_sources

from mixwise import Mixture, MixtureSampler, Plan, RandomSubset, Uniform, add_scores, apply_plan, select_mixture
from mixwise.sources import extract_fields


class CountingScorer:
    """A model-free `Scorer`: the answer's length in characters (+ `extra`), counting its calls."""

    name = "answer_length"
    columns = ("a_chars",)
    model_id = None

    def __init__(self, extra: int = 0):
        self.calls = 0
        self.extra = extra

    def config(self):
        return {"columns": list(self.columns), "extra": self.extra}

    def __call__(self, batch, indices):
        self.calls += 1
        rows = [{k: batch[k][j] for k in batch} for j in range(len(indices))]
        return {"a_chars": [len(extract_fields(row).answer) + self.extra for row in rows]}


def test_add_scores_hits_cache_on_second_run(tmp_path):
    text_sources({"pool": 50})["pool"].save_to_disk(tmp_path / "pool")

    first = CountingScorer()
    ds = add_scores(datasets.load_from_disk(str(tmp_path / "pool")), first, batch_size=10)
    assert first.calls == 5 and ds["a_chars"][:3] == [1, 1, 1]

    second = CountingScorer()  # a fresh object, a fresh load: only the explicit fingerprint can match
    again = add_scores(datasets.load_from_disk(str(tmp_path / "pool")), second, batch_size=10)
    assert second.calls == 0, "expected a datasets cache hit"
    assert again["a_chars"] == ds["a_chars"] and again._fingerprint == ds._fingerprint

    changed = CountingScorer(extra=1)  # configuration changed -> new fingerprint, recomputed
    third = add_scores(datasets.load_from_disk(str(tmp_path / "pool")), changed, batch_size=10)
    assert changed.calls == 5 and third._fingerprint != ds._fingerprint
    assert third["a_chars"][0] == ds["a_chars"][0] + 1


def test_apply_plan_materializes_exactly_the_sampler_stream():
    sources = text_sources({"a": 30, "b": 50, "c": 7})
    mixture = Mixture(sources, budget=40, seed=2)
    plan = Plan.from_weights({"a": 1, "b": 3, "c": 0}, mixture.sizes, 40, seed=2)
    mixed = apply_plan(mixture, plan)
    assert len(mixed) == 40 and collections.Counter(mixed["source"]) == {"a": 10, "b": 30}
    stream = list(MixtureSampler(mixture, seed=2))
    assert mixed["id"] == [mixture.dataset[i]["id"] for i in stream]
    # deterministic fingerprint: same plan -> same fingerprint; other plan -> other
    assert apply_plan(mixture, plan)._fingerprint == mixed._fingerprint
    assert apply_plan(mixture, Plan.uniform(mixture.sizes, 40))._fingerprint != mixed._fingerprint


def test_select_mixture_with_trivial_selectors():
    sources = text_sources({"a": 30, "b": 50})
    mixed, plan = select_mixture(sources, Uniform(), budget=20, seed=0)
    assert plan.method == "uniform" and collections.Counter(mixed["source"]) == {"a": 10, "b": 10}
    subset, rplan = select_mixture(sources, RandomSubset(), budget=20, seed=0)
    assert len(set(subset["id"])) == 20  # without replacement
    again, _ = select_mixture(sources, RandomSubset(), budget=20, seed=0)
    assert again["id"] == subset["id"]
    assert rplan.fingerprints["data"]["a"] == sources["a"]._fingerprint
