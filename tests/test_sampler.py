import collections

import numpy as np
import pytest
from helpers import read_json, run_distributed, text_sources

from mixwise import Mixture, MixtureBatchSampler, MixtureSampler, Plan, RepeatMixtureSampler
from mixwise.sampler import rank_batches


@pytest.fixture
def mixture():
    m = Mixture(text_sources({"a": 30, "b": 50, "c": 7}), budget=64, seed=11)
    m.set_plan(Plan.from_weights({"a": 1, "b": 2, "c": 1}, m.sizes, 64, seed=11))
    return m


def per_source(mixture, indices):
    return collections.Counter(mixture.locate(int(i))[0] for i in indices)


def test_epoch_counts_equal_plan(mixture):
    stream = list(MixtureSampler(mixture, seed=11))
    assert len(stream) == 64
    assert per_source(mixture, stream) == {"a": 16, "b": 32, "c": 16}
    # `c` has 7 rows and must give 16: two full passes plus 2 distinct rows
    c_rows = collections.Counter(mixture.locate(i)[1] for i in stream if mixture.locate(i)[0] == "c")
    assert sorted(c_rows.values()) == [2] * 5 + [3] * 2


def test_same_seed_same_stream_new_order_each_epoch(mixture):
    s1, s2 = MixtureSampler(mixture, seed=11), MixtureSampler(mixture, seed=11)
    e0 = list(s1)
    assert e0 == list(s2)
    s1.set_epoch(1)
    e1 = list(s1)
    assert e1 != e0 and sorted(e1) == sorted(e0)  # same rows, other order
    assert list(MixtureSampler(mixture, seed=12)) != e0
    # an epoch not announced with set_epoch follows the previous one rather than replaying it
    s3 = MixtureSampler(mixture, seed=11)
    assert list(s3) == e0 and list(s3) == e1


def test_new_plan_in_place_before_iteration(mixture):
    sampler = MixtureSampler(mixture, seed=11)
    it_len = len(sampler)
    sampler.set_plan(Plan.from_weights({"a": 0, "b": 1, "c": 0}, mixture.sizes, 64))
    stream = list(sampler)
    assert len(stream) == it_len and per_source(mixture, stream) == {"b": 64}
    with pytest.raises(ValueError, match="budget 10 differs"):
        sampler.set_plan(Plan.uniform(mixture.sizes, 10))
    with pytest.raises(ValueError, match=r"missing sources \['c'\]"):
        mixture.set_plan(Plan.uniform({"a": 30, "b": 50}, 64))
    with pytest.raises(ValueError, match="source 'a' with 31 rows"):
        mixture.set_plan(Plan.uniform({"a": 31, "b": 50, "c": 7}, 64))


def test_staged_plan_keeps_stage_order(mixture):
    s1 = Plan.from_weights({"a": 1, "b": 0, "c": 0}, mixture.sizes, 20)
    s2 = Plan.from_weights({"a": 0, "b": 1, "c": 0}, mixture.sizes, 30)
    s3 = Plan.from_weights({"a": 0, "b": 0, "c": 1}, mixture.sizes, 14)
    mixture.set_plan(Plan.staged([s1, s2, s3]))
    names = [mixture.locate(i)[0] for i in MixtureSampler(mixture, seed=1)]
    assert names == ["a"] * 20 + ["b"] * 30 + ["c"] * 14


def test_repeat_sampler_keeps_grpo_structure(mixture):
    mixture.set_plan(Plan.uniform(mixture.sizes, 64))
    sampler = RepeatMixtureSampler(mixture, mini_repeat_count=3, batch_size=5, repeat_count=2, seed=4)
    stream = list(sampler)
    assert len(stream) == len(sampler) == (64 // 5) * 5 * 3 * 2
    base = MixtureSampler(mixture, seed=4).indices(0)
    for c in range(64 // 5):
        chunk = stream[c * 30 : (c + 1) * 30]
        expected = [int(i) for i in base[c * 5 : (c + 1) * 5] for _ in range(3)]
        assert chunk == expected * 2


def test_zero_weight_source_never_drawn(mixture):
    mixture.set_plan(Plan.from_weights({"a": 1, "b": 0, "c": 1}, mixture.sizes, 64))
    stream = list(RepeatMixtureSampler(mixture, mini_repeat_count=2, batch_size=4, repeat_count=1))
    assert "b" not in per_source(mixture, stream)


def test_two_ranks_get_disjoint_shards_whose_union_is_the_plan(mixture, tmp_path):
    run_distributed("shard_stream.py", [str(tmp_path)], nproc=2)
    r0, r1 = read_json(tmp_path / "rank0.json"), read_json(tmp_path / "rank1.json")
    assert r0["world"] == r1["world"] == 2
    sampler = MixtureSampler(mixture, seed=11)
    for epoch in ("0", "1"):
        expected = sampler.indices(int(epoch)).tolist()
        a, b = r0["received"][epoch], r1["received"][epoch]
        assert len(a) == len(b) == 32
        # accelerate gives batch k to rank k % 2: the ranks' batches interleave back into the global stream
        merged = [i for k in range(0, 32, 4) for i in a[k : k + 4] + b[k : k + 4]]
        assert merged == expected
        assert collections.Counter(a) + collections.Counter(b) == collections.Counter(expected)
    assert r0["received"]["0"] != r0["received"]["1"]


def test_large_plan_draw(mixture):
    big = Mixture(text_sources({"x": 3}), budget=5, validate=False)
    assert len(np.unique(big.indices())) <= 3


@pytest.mark.parametrize("n_rows", [1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 90])
@pytest.mark.parametrize("batch_size, world", [(1, 1), (2, 1), (2, 2), (2, 3), (8, 2), (3, 4)])
def test_rank_batches_cover_the_plan_exactly_with_equal_steps(n_rows, batch_size, world):
    try:
        layout = rank_batches(n_rows, batch_size, world)
    except ValueError as err:  # only what cannot be split without repeating rows is refused
        assert n_rows < world or (batch_size == 1 and n_rows % world), err
        return
    rows = sorted(i for batches in layout for lo, hi in batches for i in range(lo, hi))
    assert rows == list(range(n_rows))  # every row of the stream once: nothing padded, nothing dropped
    assert len({len(batches) for batches in layout}) == 1  # the same number of steps on every rank
    assert all(1 <= hi - lo <= batch_size for batches in layout for lo, hi in batches)
    step = batch_size * world
    for t in range(n_rows // step - 1):  # full global steps keep accelerate's layout: batch k goes to rank k % world
        for r in range(world):
            assert layout[r][t] == (t * step + r * batch_size, t * step + (r + 1) * batch_size)


def test_rank_batches_refusals_and_drop_last():
    with pytest.raises(ValueError, match="3 rows but training runs on 4 processes"):
        rank_batches(3, 2, 4)
    with pytest.raises(ValueError, match="multiple of 2, or a per-device batch of at least 2"):
        rank_batches(5, 1, 2)
    assert rank_batches(90, 8, 2, drop_last=True) == [[(k * 16, k * 16 + 8) for k in range(5)],
                                                      [(k * 16 + 8, k * 16 + 16) for k in range(5)]]  # fmt: skip
    assert [[hi - lo for lo, hi in b] for b in rank_batches(90, 8, 2)] == [[8] * 5 + [5]] * 2
    assert [[hi - lo for lo, hi in b] for b in rank_batches(17, 8, 2)] == [[5, 4], [4, 4]]


def test_batch_sampler_ranks_together_draw_the_plan():
    mixture = Mixture(text_sources({"a": 30, "b": 50, "c": 7}), budget=61, seed=11)  # 61 = 7 global batches of 8 + 5
    mixture.set_plan(Plan.from_weights({"a": 1, "b": 2, "c": 1}, mixture.sizes, 61, seed=11))
    samplers = [MixtureBatchSampler(mixture, 4, num_processes=2, process_index=r, seed=11) for r in range(2)]
    stream = MixtureSampler(mixture, seed=11).indices(0).tolist()
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        got = [list(s) for s in samplers]
        assert len(got[0]) == len(got[1]) == len(samplers[0]) == 8
        drawn = [i for r in range(2) for batch in got[r] for i in batch]
        assert collections.Counter(drawn) == collections.Counter(MixtureSampler(mixture, seed=11).indices(epoch))
    samplers[0].set_epoch(0)
    first = list(samplers[0])
    assert first[0] == stream[:4] and first[1] == stream[8:12]  # rank 0: global batches 0, 2, ...
