"""Selection inside sharded trainers: DataProphet, ICONS (with and without a warm-up) and CADC run from the selection
callback of a real SFTTrainer whose model is sharded by FSDP2 or DeepSpeed ZeRO-3 (2 gloo processes), and select
exactly what the unsharded (DDP) run selects, with byte-identical datastores."""

import importlib.util

import pytest
from helpers import read_json, run_distributed, tree_diff

from mixwise.callback import uses_model
from mixwise.selectors import FixedWeights, RandomSubset, Uniform

METHODS = ["dataprophet", "icons", "icons_warmup", "cadc"]


def test_baselines_need_no_model():
    assert not any(uses_model(s) for s in (Uniform(), FixedWeights({"a": 1.0}), RandomSubset()))

    class Scoring:
        def select(self, context): ...

    class Declared(Scoring):
        uses_model = False

    assert uses_model(Scoring()) and not uses_model(Declared())


@pytest.fixture(scope="module")
def reference(tiny_llava_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    run_distributed("sharded_select.py", ["ddp", str(tiny_llava_path), str(out), *METHODS])
    return out, [read_json(out / f"rank{r}.json") for r in range(2)]


def check_same_selection(reference, out, kind):
    ref_dir, ref = reference
    got = [read_json(out / f"rank{r}.json") for r in range(2)]
    for r in range(2):
        assert got[r]["world"] == 2
        for method in METHODS:
            mine, theirs = got[r][method], ref[r][method]
            assert mine["sharding"] == kind and theirs["sharding"] is None  # the callback was handed a sharded model
            assert mine["trained_sharded"] and mine["global_step"] == 1  # and trained it sharded afterwards
            for key in theirs:
                if key not in ("sharding", "trained_sharded"):
                    assert mine[key] == theirs[key], (method, key)  # metric, scores, stages, rows: all equal
    for method in ("icons", "icons_warmup", "cadc"):
        assert tree_diff(ref_dir / method / "work" / "features", out / method / "work" / "features") == []


@pytest.mark.slow
def test_fsdp2_sharded_model_selects_like_an_unsharded_one(tiny_llava_path, reference, tmp_path):
    run_distributed("sharded_select.py", ["fsdp2", str(tiny_llava_path), str(tmp_path), *METHODS])
    check_same_selection(reference, tmp_path, "fsdp2")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_zero3_sharded_model_selects_like_an_unsharded_one(tiny_llava_path, reference, tmp_path):
    run_distributed("sharded_select.py", ["zero3", str(tiny_llava_path), str(tmp_path), *METHODS])
    check_same_selection(reference, tmp_path, "zero3")
