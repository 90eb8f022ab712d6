"""Equal collectives on every rank, whatever the item count: `map_across_ranks`, the datastore's creation and fill,
DataProphet's signal computation — with item counts that do not divide the number of processes and smaller than it,
and with an exception on one rank (raised on every rank, not a hang). Plus the helpers in one process."""

import math
import sys

import numpy as np
import pytest
from helpers import SCRIPTS, read_json, run_distributed

from mixwise import distributed
from mixwise.sources import DataError


@pytest.mark.parametrize("n, world", [(0, 3), (1, 3), (2, 3), (7, 3), (9, 3), (5, 1), (4, 8)])
def test_shares_are_contiguous_balanced_and_cover_every_item(n, world):
    bounds = [distributed.share(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in rank order
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) == math.ceil(n / world)


def test_one_process_helpers():
    assert distributed.map_across_ranks(lambda xs: [x + 1 for x in xs], [1, 2], lockstep=True) == [2, 3]
    with pytest.raises(ValueError, match="returned 1 results for 2 items"):
        distributed.map_across_ranks(lambda xs: xs[:1], [1, 2])
    assert distributed.run_agreed(lambda: 5) == 5 and distributed.gather_agreed("x") == ["x"]
    err = DataError("pool", 3, "answer", "empty")  # its constructor does not take `args`: a plain pickle fails
    back = distributed.unpack_error(distributed.pack_error(err), "rank 1")
    assert (
        type(back) is DataError
        and str(back) == str(err)
        and (back.source, back.row, back.field) == ("pool", 3, "answer")
    )
    assert "(raised in rank 1)" in back.__notes__


def test_an_unsharded_model_is_used_as_it_is(tiny_llama):
    model = tiny_llama[0]
    assert distributed.sharding(model) is None and distributed.replicate(model) is model
    with distributed.unsharded(model) as plain:
        assert plain is model


@pytest.fixture(scope="module")
def counted(tiny_llava_path, tmp_path_factory):
    out = {}
    for world in (2, 3):
        d = tmp_path_factory.mktemp(f"collectives{world}")
        run_distributed("collectives.py", [str(tiny_llava_path), str(d)], world)
        out[world] = [read_json(d / f"rank{r}.json") for r in range(world)]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_makes_the_same_collectives(counted, world):
    ranks = counted[world]
    cases = [c for c in ranks[0] if c != "world"]
    assert len(cases) >= 14
    for case in cases:
        per_rank = [r[case]["collectives"] for r in ranks]
        assert all(p == per_rank[0] for p in per_rank) and per_rank[0], (case, per_rank)
        if case.startswith("map n="):
            assert per_rank[0] == {"all_gather_object": 1}  # one gather per call, also for an empty share


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_map_across_ranks_with_uneven_and_tiny_item_counts(counted, world):
    ranks = counted[world]
    for case in (c for c in ranks[0] if c.startswith("map n=")):
        n = int(case.split()[1][2:])
        for r in ranks:
            assert r[case]["result"] == [x * x for x in range(n)], case  # every rank, in item order
        calls = [r[case]["calls"] for r in ranks]
        if "lockstep=True" in case and n:  # every rank's fn got the same number of items, padding included
            assert calls == [[ranks[0][case]["expected_width"]]] * world
        else:  # balanced shares; a rank with none does not call fn
            assert sorted(sum(c) for c in calls) == sorted(hi - lo for lo, hi in
                                                           (distributed.share(n, k, world) for k in range(world)))  # fmt: skip
    errors = {r["map raises on the last rank"].get("error") for r in ranks}
    assert len(errors) == 1 and errors.pop().startswith(f"DataError: source 'pool', row {world}, field 'answer'")


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_datastore_fill_with_fewer_or_uneven_chunks(counted, world):
    ranks = counted[world]
    for case in ("fill rows=3", f"fill rows={(world + 1) * 2 - 1}"):
        computed = [r[case]["computed"] for r in ranks]
        n_chunks = ranks[0][case]["n_chunks"]
        assert sorted(c for cs in computed for c in cs) == list(range(n_chunks))  # every chunk by exactly one rank
        assert all(c % world == rank for rank, cs in enumerate(computed) for c in cs)
        rows = int(case.split("=")[1])
        expected = np.linalg.norm(np.arange(4)[None, :] + 1 + np.arange(rows)[:, None], axis=1)
        for r in ranks:
            assert r[case]["result"]["complete"]
            np.testing.assert_allclose(r[case]["result"]["norms"], expected, rtol=1e-6)
    errors = {r["fill raises on the last rank"].get("error") for r in ranks}
    assert (
        len(errors) == 1
        and errors.pop() == f"DataError: source 'pool', row {2 * (world - 1)}, field 'messages': a bad row"
    )


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_dataprophet_signals_with_fewer_rows_than_processes(counted, world, tiny_llava):
    sys.path.insert(0, str(SCRIPTS))
    import collectives

    from mixwise.dataprophet import DataProphet

    model, processor = tiny_llava
    for sizes in collectives.DATAPROPHET_CASES:
        case = f"dataprophet {sum(sizes.values())} rows"
        pool, targets = collectives.dataprophet_data(sizes)
        one = (
            DataProphet(subsample=None, diversity=False, progress=False)
            .score(pool, targets, model, processor, model_id="tiny-llava")
            .metric()
            .to_dict()
        )
        items = [r[case]["items"] for r in counted[world]]
        assert sum(i["items_local"] for i in items) == items[0]["items_total"] == sum(sizes.values())
        for r in counted[world]:
            got = r[case]["result"]
            for s in one:
                assert got[s] == pytest.approx(one[s], rel=1e-6, abs=1e-9), (case, s)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_a_failing_warmup_raises_on_every_rank(counted, world):
    """The main process trains the warm-up in a child process while the others wait; the child's exception is raised
    on every rank (not a hang)."""
    errors = {r["warm-up fails in the main process's child"].get("error") for r in counted[world]}
    assert len(errors) == 1
    assert (
        errors.pop()
        == "DataError: source 'warmup', row -1, field 'images': truncation to max_length=4 would cut image tokens; raise max_length"
    )
