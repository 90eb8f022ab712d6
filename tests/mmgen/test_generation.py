"""MM-GEN step 2: prompts, JSON parsing and repair, local and HTTP generators, the resumable log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import SCRIPTS

from mixwise.mmgen import (
    FixedFeatureEncoder,
    GenerationLog,
    ImagePool,
    LocalVLMGenerator,
    OpenAIChatGenerator,
    ScriptedGenerator,
    collect_rows,
    make_items,
    parse_pairs,
    partition_reference,
    retrieve_candidates,
    run_generation,
)
from mixwise.mmgen.server import ChatServer, ModelBackend, ScriptedBackend
from mixwise.toy import make_source

sys.path.insert(0, str(SCRIPTS))
import mmgen_models  # noqa: E402  (tests/scripts helper: the tiny LLaVA taught to answer with JSON)

TASK = "Answer questions about the colour of the shape."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(n_images: int, n_pairs: int = 3, pool_size: int = 40):
    ref = make_source("colour", 60, "validation")
    keep = [i for i, r in enumerate(ref) if r["messages"][1]["content"][0]["text"] in ("red", "blue", "green")]
    ref = ref.select(keep)
    enc = FixedFeatureEncoder()
    part = partition_reference(ref, enc, keywords=["red", "blue", "green"])
    pool = ImagePool.from_dataset(make_source("colour", pool_size, "train"), name="pool")
    retrieval = retrieve_candidates(pool.embed(enc), pool.ids, part, part.counts(n_images))
    items = make_items(retrieval, part, ref, TASK, n_pairs=n_pairs, num_examples=2, seed=0)
    return items, pool, part, ref


def _accounted(report) -> None:
    """Every item is either parsed into rows or counted as rejected."""
    assert report.parsed + sum(report.rejected.values()) == report.items


# ----------------------------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------------------------


def test_prompts_hold_task_n_and_examples_from_the_same_subgroup():
    items, _, part, ref = _setup(9)
    assert len(items) == 9 and {it.subgroup for it in items} <= {"red", "blue", "green"}
    for it in items:
        assert TASK in it.prompt and f"exactly {it.n_pairs} " in it.prompt and it.n_pairs == 3
        assert f"Image type: {it.subgroup}" in it.prompt
        examples = [json.loads(line) for line in it.prompt.splitlines() if line.startswith('{"Q"')]
        assert len(examples) == 2
        assert {e["A"] for e in examples} == {it.subgroup}  # the reference answers of this subgroup's rows
    again, *_ = _setup(9)
    assert [(it.key, it.prompt) for it in again] == [(it.key, it.prompt) for it in items]  # rebuilt identically
    pool = ImagePool.from_dataset(make_source("colour", 40, "train"), name="pool")
    retrieval = retrieve_candidates(pool.embed(FixedFeatureEncoder()), pool.ids, part, part.counts(9))
    other = make_items(retrieval, part, ref, "Another task.", n_pairs=3, num_examples=2)
    assert [it.image_id for it in other] == [it.image_id for it in items]
    assert {it.prompt_id for it in other}.isdisjoint({it.prompt_id for it in items})  # new prompt, new id


# ----------------------------------------------------------------------------------------------------------------
# parsing and repair
# ----------------------------------------------------------------------------------------------------------------

GOOD = [{"Q": "What colour?", "A": "red"}, {"Q": "Is it round?", "A": "yes"}]


@pytest.mark.parametrize(
    "text, repairs",
    [
        (json.dumps(GOOD), []),
        ("```json\n" + json.dumps(GOOD) + "\n```", ["code fence"]),
        ("Sure! Here are the pairs:\n" + json.dumps(GOOD) + "\nHope this helps.", ["extracted JSON"]),
        ('[{"Q": "What colour?", "A": "red"}, {"Q": "Is it round?", "A": "yes"},]', ["trailing comma"]),
        ("[{'Q': 'What colour?', 'A': 'red'}, {'Q': 'Is it round?', 'A': 'yes'}]", ["python literal"]),
        ('[{Q: "What colour?", A: "red"}, {Q: "Is it round?", A: "yes"}]', ["unquoted keys"]),
        (json.dumps({"pairs": GOOD}), ["wrapped in object"]),
        (json.dumps([{"question": "What colour?", "answer": "red"}, {"q": "Is it round?", "a": "yes"}]), []),
        (json.dumps(GOOD)[:-1] + ', {"Q": "cut of', ["truncated array"]),
        ("Pairs {as asked}:\n" + json.dumps(GOOD), ["extracted JSON"]),
    ],
)
def test_parse_repairs(text, repairs):
    res = parse_pairs(text, n_pairs=2)
    assert res.ok and res.pairs == GOOD
    for r in repairs:
        assert r in res.repairs
    if not repairs:
        assert res.repairs == []


@pytest.mark.parametrize(
    "text, error",
    [
        ("", "empty output"),
        ("   ", "empty output"),
        ("I cannot answer that.", "no JSON found"),
        ('[{"Q": "a", "A": }', "invalid JSON"),
        ('"just a string"', "no JSON found"),
        ('{"note": 3}', "not a list of pairs"),
        ('[{"Q": "", "A": "x"}, {"A": "y"}, 5]', "no valid pairs"),
    ],
)
def test_parse_rejects(text, error):
    res = parse_pairs(text, n_pairs=2)
    assert not res.ok and res.error == error and res.pairs == []


def test_parse_counts_dropped_pairs_and_coerces_numbers():
    res = parse_pairs(
        '[{"Q": "How many?", "A": 3}, {"Q": "x"}, "junk", {"Q": "a", "A": "b"}, {"Q": "c", "A": "d"}]', 2
    )
    assert res.pairs == [{"Q": "How many?", "A": "3"}, {"Q": "a", "A": "b"}]
    assert res.dropped == {"missing Q or A": 1, "not an object": 1, "more pairs than asked": 1}
    assert "non-string value" in res.repairs


def test_malformed_generator_output_is_repaired_or_rejected_and_counted(tmp_path):
    items, pool, _, _ = _setup(8, n_pairs=2)
    outputs = [
        json.dumps(GOOD),  # ok
        "```json\n" + json.dumps(GOOD) + "\n```",  # repaired
        "no idea",  # rejected: no JSON found
        "",  # rejected: empty output
        json.dumps({"pairs": GOOD[:1]}),  # repaired, one pair short
        '[{"Q": "q", "A": "a"},]',  # repaired (trailing comma), short
        '[{"Q": "q"',  # rejected: invalid JSON
        json.dumps(GOOD + GOOD),  # two pairs beyond N dropped
    ]
    log = tmp_path / "gen.jsonl"
    stats = run_generation(items, pool, ScriptedGenerator(outputs), log, progress=False)
    assert stats.generated == 8 and stats.errors == 0
    rows, report = collect_rows(items, log)
    assert report.items == 8 and report.parsed == 5 and report.repaired == 3
    assert report.rejected == {"no JSON found": 1, "empty output": 1, "invalid JSON": 1}
    assert report.repairs["code fence"] == 1 and report.repairs["wrapped in object"] == 1
    assert report.repairs["trailing comma"] == 1
    assert report.pairs_dropped == {"more pairs than asked": 2}
    assert report.short_items == 2 and report.pairs == len(rows) == 2 + 2 + 1 + 1 + 2
    _accounted(report)
    assert sum(s["items"] for s in report.per_subgroup.values()) == 8


# ----------------------------------------------------------------------------------------------------------------
# local model
# ----------------------------------------------------------------------------------------------------------------


def test_local_model_yields_valid_rows(tmp_path, json_llava_path):
    items, pool, _, _ = _setup(6)
    gen = LocalVLMGenerator(str(json_llava_path), max_new_tokens=64, batch_size=4)
    assert gen.name == f"local:{json_llava_path}"
    stats = run_generation(items, pool, gen, tmp_path / "gen.jsonl", progress=False)
    assert stats.generated == 6
    rows, report = collect_rows(items, tmp_path / "gen.jsonl")
    assert report.parsed == 6 and report.rejected == {} and report.repairs == {}
    assert len(rows) == 12  # the taught model answers with two pairs
    assert {(r["question"], r["answer"]) for r in rows} == {(p["Q"], p["A"]) for p in mmgen_models.PAIRS}
    assert all(r["generator"] == gen.name for r in rows)


def test_random_local_model_output_is_rejected_and_counted(tmp_path, tiny_llava_path):
    items, pool, _, _ = _setup(4)
    gen = LocalVLMGenerator(str(tiny_llava_path), max_new_tokens=16, batch_size=2)
    run_generation(items, pool, gen, tmp_path / "gen.jsonl", progress=False)
    rows, report = collect_rows(items, tmp_path / "gen.jsonl")
    _accounted(report)
    assert report.items == 4 and sum(report.rejected.values()) >= 1  # random weights emit no JSON array


# ----------------------------------------------------------------------------------------------------------------
# HTTP: the project's loopback server, transformers serve
# ----------------------------------------------------------------------------------------------------------------


def test_loopback_server_with_the_real_model_yields_valid_rows(tmp_path, json_llava_path):
    items, pool, _, _ = _setup(6)
    with ChatServer(ModelBackend(str(json_llava_path))) as server:
        assert server.url.startswith("http://127.0.0.1:")
        gen = OpenAIChatGenerator(server.url + "/v1", "json-llava", max_tokens=64, concurrency=3, timeout=60)
        stats = run_generation(items, pool, gen, tmp_path / "gen.jsonl", progress=False)
        assert server.completed == 6
    assert stats.generated == 6 and stats.errors == 0
    rows, report = collect_rows(items, tmp_path / "gen.jsonl")
    assert report.parsed == 6 and len(rows) == 12
    assert {(r["question"], r["answer"]) for r in rows} == {(p["Q"], p["A"]) for p in mmgen_models.PAIRS}
    assert all(r["generator"] == "openai:json-llava@" + server.url + "/v1" for r in rows)


def test_loopback_server_with_a_random_model_counts_rejections(tmp_path, tiny_llava_path):
    items, pool, _, _ = _setup(4)
    with ChatServer(ModelBackend(str(tiny_llava_path))) as server:
        gen = OpenAIChatGenerator(server.url, "tiny", max_tokens=16, concurrency=2, timeout=60)
        stats = run_generation(items, pool, gen, tmp_path / "gen.jsonl", progress=False)
    assert stats.generated == 4
    _, report = collect_rows(items, tmp_path / "gen.jsonl")
    _accounted(report)
    assert sum(report.rejected.values()) >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_transformers_serve_on_loopback_yields_valid_rows(tmp_path, json_llava_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("openai")
    import requests

    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "transformers")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    cmd = [exe, "serve", str(json_llava_path), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):  # bounded wait for start-up (at most ~2 minutes)
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            pytest.fail("transformers serve did not start")
        items, pool, _, _ = _setup(4)
        gen = OpenAIChatGenerator(f"http://127.0.0.1:{port}/v1", str(json_llava_path), max_tokens=64, concurrency=2)
        stats = run_generation(items, pool, gen, tmp_path / "gen.jsonl", progress=False)
        assert stats.errors == 0, GenerationLog.read(tmp_path / "gen.jsonl")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    rows, report = collect_rows(items, tmp_path / "gen.jsonl")
    assert report.parsed == 4 and len(rows) == 8
    assert {(r["question"], r["answer"]) for r in rows} == {(p["Q"], p["A"]) for p in mmgen_models.PAIRS}


def test_retries_with_backoff_then_success(tmp_path):
    items, pool, _, _ = _setup(3, n_pairs=2)
    with ChatServer(ScriptedBackend([json.dumps(GOOD)]), fail_first=3) as server:
        gen = OpenAIChatGenerator(server.url, "scripted", concurrency=1, max_retries=3, backoff=0.01)
        stats = run_generation(items, pool, gen, tmp_path / "gen.jsonl", progress=False)
        assert server.received == 3 + 3 and server.completed == 3
    assert stats.generated == 3 and stats.errors == 0
    records, _ = GenerationLog.read(tmp_path / "gen.jsonl")
    assert sorted(r["attempts"] for r in records) == [1, 1, 4]  # the first request failed three times


def test_failed_requests_are_recorded_and_retried_on_the_next_run(tmp_path):
    items, pool, _, _ = _setup(3, n_pairs=2)
    log = tmp_path / "gen.jsonl"
    with ChatServer(ScriptedBackend([json.dumps(GOOD)]), fail_first=100, fail_status=503) as server:
        gen = OpenAIChatGenerator(server.url, "scripted", concurrency=2, max_retries=1, backoff=0.01)
        stats = run_generation(items, pool, gen, log, progress=False)
    assert stats.errors == 3 and stats.generated == 0
    _, report = collect_rows(items, log)
    assert report.rejected == {"generator error": 3}
    with ChatServer(ScriptedBackend([json.dumps(GOOD)]), fail_status=400, fail_first=1) as server:
        gen = OpenAIChatGenerator(server.url, "scripted", concurrency=1, max_retries=5, backoff=0.01)
        stats = run_generation(items, pool, gen, log, progress=False)
        assert server.received == 3  # a 400 is not retried
    assert stats.errors == 1 and stats.generated == 2
    with ChatServer(ScriptedBackend([json.dumps(GOOD)])) as server:
        gen = OpenAIChatGenerator(server.url, "scripted", concurrency=2)
        stats = run_generation(items, pool, gen, log, progress=False)
        assert server.received == 1  # only the one still failed
    rows, report = collect_rows(items, log)
    assert report.parsed == 3 and report.rejected == {} and len(rows) == 6


def test_timeouts_are_errors_not_hangs(tmp_path):
    items, pool, _, _ = _setup(2, n_pairs=2)
    with ChatServer(ScriptedBackend([json.dumps(GOOD)])) as server:
        server.gate.clear()  # hold every request
        gen = OpenAIChatGenerator(server.url, "scripted", concurrency=2, timeout=0.5, max_retries=1, backoff=0.01)
        stats = run_generation(items, pool, gen, tmp_path / "gen.jsonl", progress=False)
        server.gate.set()
    assert stats.errors == 2
    records, _ = GenerationLog.read(tmp_path / "gen.jsonl")
    assert all("Timeout" in r["error"] and r["attempts"] == 2 for r in records)


def test_connection_errors_are_retried_then_recorded():
    from mixwise.mmgen import GenerationRequest
    from mixwise.toy import make_source as toy

    gen = OpenAIChatGenerator(f"http://127.0.0.1:{_free_port()}", "nobody", max_retries=2, backoff=0.01, timeout=5)
    out = gen.request(GenerationRequest(toy("colour", 1)[0]["images"][0], "hi"))
    assert out.text is None and "ConnectionError" in out.error and out.attempts == 3


# ----------------------------------------------------------------------------------------------------------------
# the log
# ----------------------------------------------------------------------------------------------------------------


def test_torn_last_line_is_cut_and_restart_does_not_duplicate(tmp_path):
    items, pool, _, _ = _setup(6, n_pairs=2)
    log = tmp_path / "gen.jsonl"
    run_generation(items[:4], pool, ScriptedGenerator([json.dumps(GOOD)]), log, progress=False)
    with open(log, "ab") as f:  # a crash in the middle of writing the fifth record
        f.write(b'{"image_id": "colour/train/9", "prompt_id": "p0-')
    records, bad = GenerationLog.read(log)
    assert len(records) == 4 and bad == 1
    gen = ScriptedGenerator([json.dumps(GOOD)])
    stats = run_generation(items, pool, gen, log, progress=False)
    assert stats.already_done == 4 and stats.generated == 2 and stats.torn_lines == 1 and gen.calls == 2
    records, bad = GenerationLog.read(log)
    assert bad == 0 and len(records) == 6
    assert len({(r["image_id"], r["prompt_id"]) for r in records}) == 6
    stats = run_generation(items, pool, ScriptedGenerator([json.dumps(GOOD)]), log, progress=False)
    assert stats.already_done == 6 and stats.generated == 0
    assert len(GenerationLog.read(log)[0]) == 6


def test_log_is_locked_against_a_second_writer(tmp_path):
    with GenerationLog(tmp_path / "gen.jsonl") as log:
        log.append({"image_id": "a", "prompt_id": "p", "status": "ok", "text": "[]"})
        with pytest.raises(RuntimeError, match="in use by another process"):
            with GenerationLog(tmp_path / "gen.jsonl"):
                pass
    with GenerationLog(tmp_path / "gen.jsonl"):  # released on exit
        pass
