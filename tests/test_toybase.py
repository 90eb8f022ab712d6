"""mixwise.toybase: the pre-trained toy base is built once, deterministically, and cached by fingerprint."""

import json

import pytest
import torch

from mixwise.models import load_model
from mixwise.toy import make_source
from mixwise.toybase import BASE_FILE, EncodedRows, ToyBaseConfig, build_toy_base, exact_match, toy_base_dir

SMALL = dict(pretrain_rows=4, pretrain_epochs=2, families=["colour", "count"])


def test_built_once_then_read_from_the_cache(tmp_path, one_torch_thread):
    cfg = ToyBaseConfig(**SMALL)
    path = build_toy_base(cfg, tmp_path, progress=False)
    assert path == toy_base_dir(cfg, tmp_path) and (path / BASE_FILE).exists()
    info = json.loads((path / BASE_FILE).read_text())
    assert info["fingerprint"] == cfg.fingerprint() and set(info["validation_exact_match"]) == {"colour", "count"}
    stamp = (path / BASE_FILE).stat().st_mtime_ns
    assert build_toy_base(cfg, tmp_path, progress=False) == path  # found, not rebuilt
    assert (path / BASE_FILE).stat().st_mtime_ns == stamp
    # another recipe is another base; the same recipe rebuilt (force) gives the same weights
    other = ToyBaseConfig(**{**SMALL, "pretrain_epochs": 3})
    assert other.fingerprint() != cfg.fingerprint() and toy_base_dir(other, tmp_path) != path
    before = load_model(path)[0].state_dict()
    build_toy_base(cfg, tmp_path, force=True, progress=False)
    after = load_model(path)[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob("*.tmp*")) and len(list(tmp_path.iterdir())) == 1  # no partial directory left


def test_exact_match_counts_a_row_right_only_if_greedy_decoding_reproduces_it(tmp_path, one_torch_thread):
    model, processor = load_model(build_toy_base(ToyBaseConfig(**SMALL), tmp_path, progress=False))
    rows = list(make_source("colour", 6, "test", seed=0))
    data = EncodedRows(rows, processor)
    hits = exact_match(model.eval(), data)
    for j, row in enumerate(rows):  # greedy generation, compared with the reference answer
        prompt = processor.apply_chat_template(row["messages"][:1], add_generation_prompt=True)
        enc = processor(images=row["images"], text=prompt, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
        text = processor.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        assert hits[j] == (text == row["messages"][1]["content"][0]["text"]), (j, text)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown toy families"):
        ToyBaseConfig(families=["weather"])
    with pytest.raises(ValueError, match="pretrain_rows"):
        ToyBaseConfig(pretrain_rows=0)
