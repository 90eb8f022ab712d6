"""The feature datastore: layout, streaming reads, mismatch refusal, resumption after a real SIGKILL."""

import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import SCRIPTS

from mixwise.signals.datastore import Datastore, DatastoreMismatch, fill_store, shared_store
from mixwise.signals.gradients import FeatureResult

IDENTITY = {
    "model": "org/model",
    "model_revision": "abc",
    "adapter": "f00d",
    "checkpoint": "checkpoint-3",
    "features": {"mode": "sgd", "projector": {"kind": "gaussian", "dim": 8, "seed": 0, "block_rows": 4096}},
    "dataset": "fp123",
}


class FakeFeaturizer:
    """Deterministic features from row ids; row 5 is a bad row (skipped)."""

    feature_dim = 8

    def __init__(self):
        self.calls = []

    def featurize_rows(self, rows, names, row_ids):
        self.calls.append(list(row_ids))
        feats = torch.stack([torch.arange(8, dtype=torch.float32) + i for i in row_ids])
        ok = torch.tensor([i != 5 for i in row_ids])
        feats[~ok] = 0
        skipped = [
            {"position": j, "source": "s", "row": i, "field": "loss", "problem": "nan"}
            for j, i in enumerate(row_ids)
            if i == 5
        ]
        return FeatureResult(feats, ok, skipped, torch.zeros(len(row_ids)))


def get_rows(ids):
    return [{"id": int(i)} for i in ids], [("s", int(i)) for i in ids]


def test_shard_layout_write_read_and_chunks(tmp_path):
    """The mixwise 0.1 layout (still read, and written when asked for): preallocated shards shared by all ranks."""
    store = Datastore.create(
        tmp_path / "s", n_rows=10, dim=8, identity=IDENTITY, chunk_size=3, shard_size=4, layout="shards"
    )
    assert store.shard_size == 6 and len(store.manifest["shards"]) == 2  # rounded up to whole chunks
    assert store.n_chunks == 4 and store.chunk_range(3) == (9, 10)
    assert store.pending(0, 2) == [0, 2] and store.pending(1, 2) == [1, 3]
    feats = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    store.write(0, feats[:5], np.arange(5, dtype=np.float32))
    store.write(5, feats[5:], np.arange(5, 10, dtype=np.float32))  # crosses the shard boundary at row 6
    store.mark_done(1, {"skipped": [{"row": 4}]})
    got, norms = Datastore.open(tmp_path / "s").read(2, 9)
    assert got.dtype == np.float16 and np.array_equal(got, feats[2:9].astype(np.float16))
    assert np.array_equal(norms, np.arange(2, 9, dtype=np.float32))
    blocks = list(store.iter_blocks(4))
    assert [(a, b) for a, b, *_ in blocks] == [(0, 4), (4, 8), (8, 10)]
    assert store.done_chunks() == [1] and store.pending(0, 1) == [0, 2, 3] and not store.complete
    assert store.skipped() == [{"row": 4}]
    with open(tmp_path / "s" / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["identity"] == IDENTITY and manifest["dtype"] == "float16"
    assert np.array_equal(np.load(tmp_path / "s" / "row_ids.npy"), np.arange(10))


def test_chunk_layout_one_file_pair_per_chunk(tmp_path):
    store = Datastore.create(tmp_path / "s", n_rows=10, dim=8, identity=IDENTITY, chunk_size=3)
    assert store.layout == "chunks" and store.manifest["version"] == 2 and "shards" not in store.manifest
    assert os.listdir(tmp_path / "s" / "chunks") == []  # nothing preallocated
    feats = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    store.write(0, feats[:6], np.arange(6, dtype=np.float32))  # two whole chunks
    store.write_chunk(3, feats[9:], np.array([9.0], dtype=np.float32))  # the short last chunk
    with pytest.raises(ValueError, match="not whole chunks"):
        store.write(5, feats[5:8], np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="chunk 2 holds 3 rows"):
        store.write_chunk(2, feats[6:8], np.zeros(2, np.float32))
    assert sorted(os.listdir(tmp_path / "s" / "chunks")) == [
        f"{kind}-{c:06d}.npy" for kind in ("features", "norms") for c in (0, 1, 3)
    ]  # no temporary file left behind
    chunk3 = np.load(tmp_path / "s" / "chunks" / "features-000003.npy")
    assert chunk3.dtype == np.float16 and chunk3.shape == (1, 8)
    store.write_chunk(2, feats[6:9], np.arange(6, 9, dtype=np.float32))
    got, norms = Datastore.open(tmp_path / "s").read(2, 10)  # across chunk files
    assert np.array_equal(got, feats[2:].astype(np.float16)) and np.array_equal(norms, np.arange(2, 10))
    assert [(a, b) for a, b, *_ in store.iter_blocks(4)] == [(0, 4), (4, 8), (8, 10)]
    assert np.array_equal(np.concatenate([f.copy() for *_, f, _ in store.iter_blocks(4)]), feats.astype(np.float16))
    (tmp_path / "t").mkdir()
    empty = Datastore.create(tmp_path / "t", n_rows=4, dim=8, identity=IDENTITY, chunk_size=2)
    with pytest.raises(FileNotFoundError, match="features-000000.npy is missing"):
        empty.read(0, 2)


def test_unfinished_shard_store_is_converted_byte_for_byte(tmp_path):
    """An unfinished store of the old layout is converted to chunk files before filling (same path and identity);
    the result is byte-identical to a store filled in the chunk layout from the start."""
    feat = FakeFeaturizer()
    old = Datastore.create(tmp_path / "old", n_rows=7, dim=8, identity=IDENTITY, chunk_size=3, layout="shards")
    result = feat.featurize_rows(*get_rows(np.arange(3)), list(range(3)))
    unit = result.features / result.features.norm(dim=1, keepdim=True)
    old.write(0, unit.numpy(), result.features.norm(dim=1).numpy())
    old.mark_done(0, {"skipped": []})
    old.close()
    store = shared_store(tmp_path / "old", 7, 8, IDENTITY, chunk_size=3)
    assert store.layout == "chunks" and not any(
        n.endswith(".npy") and n != "row_ids.npy" for n in os.listdir(store.path)
    )
    feat.calls.clear()
    fill_store(store, get_rows, feat, progress=False)
    assert feat.calls == [[3, 4, 5], [6]]  # the finished chunk was kept, not recomputed
    fill_store(
        shared_store(tmp_path / "new", 7, 8, IDENTITY, chunk_size=3), get_rows, FakeFeaturizer(), progress=False
    )
    assert same_bytes(tmp_path / "old", tmp_path / "new") == []
    complete = Datastore.create(tmp_path / "done", n_rows=2, dim=8, identity=IDENTITY, chunk_size=2, layout="shards")
    complete.write(0, np.eye(2, 8, dtype=np.float32), np.ones(2, np.float32))
    complete.mark_done(0)
    assert shared_store(tmp_path / "done", 2, 8, IDENTITY, chunk_size=2).layout == "shards"  # complete: read as is


def test_fill_store_normalises_and_records_skips(tmp_path):
    store = Datastore.create(tmp_path / "s", n_rows=7, dim=8, identity=IDENTITY, chunk_size=3)
    feat = FakeFeaturizer()
    report = fill_store(store, get_rows, feat, progress=False)
    assert report.computed == [0, 1, 2] and feat.calls == [[0, 1, 2], [3, 4, 5], [6]]
    unit, norms = store.load()
    raw = np.stack([np.arange(8) + i for i in range(7)]).astype(np.float32)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    valid = np.arange(7) != 5
    np.testing.assert_allclose(unit[valid].astype(np.float32), expected[valid], atol=1e-3)
    np.testing.assert_allclose(norms[valid], np.linalg.norm(raw, axis=1)[valid], rtol=1e-6)
    assert np.isnan(norms[5]) and not unit[5].any()  # a skipped row: NaN norm, zero feature
    assert [s["store_row"] for s in store.skipped()] == [5]
    assert fill_store(store, get_rows, feat, progress=False).computed == []  # complete: nothing recomputed


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", "org/other-model"),
        ("adapter", "beef"),
        ("checkpoint", "checkpoint-6"),
        ("features.projector.seed", 1),
        ("features.projector.dim", 16),
        ("features.mode", "adam"),
        ("dataset", "fp999"),
    ],
)
def test_reopening_with_another_identity_is_refused(tmp_path, field, value):
    Datastore.create(tmp_path / "s", n_rows=4, dim=8, identity=IDENTITY, chunk_size=2)
    other = json.loads(json.dumps(IDENTITY))
    node = other
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(DatastoreMismatch, match=rf"{field}: stored .*, given {value!r}"):
        Datastore.open_or_create(tmp_path / "s", 4, 8, other, chunk_size=2)
    Datastore.open_or_create(tmp_path / "s", 4, 8, IDENTITY, chunk_size=2)  # the same identity opens


def test_other_sizes_or_rows_are_refused(tmp_path):
    Datastore.create(tmp_path / "s", n_rows=4, dim=8, identity=IDENTITY, chunk_size=2)
    with pytest.raises(DatastoreMismatch, match="n_rows=4"):
        Datastore.open_or_create(tmp_path / "s", 5, 8, IDENTITY, chunk_size=2)
    with pytest.raises(DatastoreMismatch, match="row ids differ"):
        Datastore.open_or_create(tmp_path / "s", 4, 8, IDENTITY, row_ids=[3, 2, 1, 0], chunk_size=2)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a datastore"):
        Datastore.create(tmp_path / "junk", 4, 8, IDENTITY)
    with pytest.raises(FileNotFoundError, match="no datastore"):
        Datastore.open(tmp_path / "nothing")


def same_bytes(a, b) -> list[str]:
    """Relative paths whose bytes differ (or exist on one side only)."""
    diffs = []
    cmp = filecmp.dircmp(a, b)
    diffs += cmp.left_only + cmp.right_only
    for name in cmp.common_files:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            if fa.read() != fb.read():
                diffs.append(name)
    for sub in cmp.common_dirs:
        diffs += [f"{sub}/{d}" for d in same_bytes(os.path.join(a, sub), os.path.join(b, sub))]
    return diffs


@pytest.mark.slow
def test_killed_run_resumes_byte_identical(tmp_path):
    """A real SIGKILL after chunk 3's rows are written but before it is marked done; the restart recomputes only
    the unfinished chunks (3 included) and the store ends byte-identical to an uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    script = str(SCRIPTS / "icons_featurize.py")
    ref, test = tmp_path / "ref", tmp_path / "test"
    first = subprocess.run(
        [sys.executable, script, str(test), "--ref", str(ref), "--kill_after_written", "3", "--record",
         str(tmp_path / "first.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert first.returncode == -9, first.stderr[-3000:]  # killed by SIGKILL
    assert json.loads((tmp_path / "first.json").read_text()) == [0, 1, 2]
    assert Datastore.open(test).done_chunks() == [0, 1, 2] and Datastore.open(ref).complete
    assert same_bytes(ref, test)  # not finished yet
    second = subprocess.run(
        [sys.executable, script, str(test), "--record", str(tmp_path / "second.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((tmp_path / "second.json").read_text()) == [3, 4, 5]
    assert same_bytes(ref, test) == []


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_write_a_store_byte_identical_to_one_process(tmp_path):
    """A simulated 2-node torchrun (two node ranks on localhost, one process each, one work dir as on a shared file
    system): every chunk is written by exactly one process into files of its own, and the store is byte-identical
    to one process's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    script = str(SCRIPTS / "store_fill.py")
    one = subprocess.run([sys.executable, script, str(tmp_path / "one"), str(tmp_path / "one-out")], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node_rank",
                str(rank),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                script,
                str(tmp_path / "two"),
                str(tmp_path / "two-out"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
    ranks = [json.loads((tmp_path / "two-out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["node"] for r in ranks] == ["0", "1"]
    store = Datastore.open(tmp_path / "two")
    assert store.layout == "chunks" and store.complete and store.n_chunks == 6
    assert ranks[0]["computed"] == [0, 2, 4] and ranks[1]["computed"] == [1, 3, 5]  # one writer per chunk file
    assert sorted(os.listdir(tmp_path / "two" / "chunks")) == sorted(
        os.path.basename(f) for c in range(6) for f in store.chunk_files(c)
    )
    assert same_bytes(tmp_path / "one", tmp_path / "two") == []
