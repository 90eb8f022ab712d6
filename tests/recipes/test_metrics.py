"""The targets' own metric during training: greedy answers scored by the shipped `evaluate` module, logged as
`eval/<target>/<metric>` every eval_steps without cancelling the trainer's own log."""

from __future__ import annotations

import json

import pytest

from mixwise.metrics import load_answer_metric
from mixwise.recipes import TargetMetricsCallback
from mixwise.rewards import exact_match, multiple_choice, numeric_match
from mixwise.toy import make_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_evaluate_module_has_the_rewards_definitions():
    predictions = ["The Cat.", "about 41 apples", "(B) a dog", "7", "", "c"]
    references = ["cat", "42", "B", "8", "x", "C"]
    for kind, fn in (
        ("exact_match", exact_match),
        ("numeric_match", numeric_match),
        ("multiple_choice", multiple_choice),
    ):
        expected = sum(fn(predictions, answer=references)) / len(predictions)
        assert load_answer_metric(kind).compute(predictions=predictions, references=references) == {kind: expected}
    with pytest.raises(ValueError, match="unknown answer metric"):
        load_answer_metric("f1")


def test_callback_scores_the_live_models_answers(tiny_llava):
    model, processor = tiny_llava
    rows = make_source("count", 4, split="validation", seed=0)
    callback = TargetMetricsCallback({"count": rows}, processor, rows=4, max_new_tokens=6)
    answers = [callback.answer(model, prompt, images) for prompt, images, _ in callback.examples["count"]]

    # a target whose first two references are the model's own answers: exact match 2 of 4
    def own_answer(row, j):
        if j < 2:
            row["messages"][-1]["content"] = [{"type": "text", "text": answers[j] or "x"}]
        return row

    own = rows.map(own_answer, with_indices=True)
    refs = [r for _, _, r in TargetMetricsCallback({"own": own}, processor, rows=4).examples["own"]]
    expected = sum(exact_match(answers, answer=refs)) / 4
    logs = TargetMetricsCallback({"own": own}, processor, rows=4, max_new_tokens=6).evaluate(model)
    assert logs == {"eval/own/exact_match": expected} and expected >= 0.5


def test_recipe_logs_metrics_every_eval_steps_and_keeps_the_loss(tmp_path):
    from mixwise.cli import main

    out = tmp_path / "run"
    argv = ["sft", "--config", "sft_uniform", "--output_dir", str(out), "--toy_families", "count", "ocr"]
    argv += ["--toy_n_train", "6", "--toy_n_target", "2", "--budget", "12", "--per_device_train_batch_size", "2"]
    argv += ["--logging_steps", "2", "--eval_steps", "3", "--metric_rows", "2", "--probe_rows", "1"]
    argv += ["--target_metrics", json.dumps({"count": "numeric_match"}), "--report", "false"]
    assert main(argv) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    metric_steps = {h["step"]: h for h in history if any(k.startswith("eval/") for k in h)}
    assert sorted(metric_steps) == [3, 6]
    assert set(metric_steps[3]) >= {"eval/count/numeric_match", "eval/ocr/exact_match"}
    assert sorted(h["step"] for h in history if "loss" in h and "grad_norm" in h) == [2, 4, 6]
    assert sorted(h["step"] for h in history if "probe_loss/count" in h) == [2, 4, 6]
