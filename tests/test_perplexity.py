"""Multimodal perplexity: answer tokens only, per-sample mean, macro average, padding-invariant, clear errors."""

import math

import numpy as np
import pytest
import torch

from mixwise.perplexity import PerplexityConfig, dataset_perplexity, sample_nll
from mixwise.sources import DataError
from mixwise.toy import make_source


def text_row(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_padded_batches_give_batch_size_one_values(tiny_llava):
    model, processor = tiny_llava
    rows = list(make_source("spatial", 5, seed=2)) + list(make_source("ocr", 4, seed=2))
    one = sample_nll(model, processor, rows, PerplexityConfig(batch_size=1))
    padded = sample_nll(model, processor, rows, PerplexityConfig(batch_size=9))
    assert one.shape == (9,)
    np.testing.assert_allclose(padded, one, rtol=0, atol=1e-5)
    assert len(set(np.round(one, 4))) > 1  # real, different values


def test_qwen2_vl_padded_batches(tiny_qwen2_vl):
    model, processor = tiny_qwen2_vl
    rows = list(make_source("count", 3, seed=1)) + list(make_source("chart", 3, seed=1))
    one = sample_nll(model, processor, rows, PerplexityConfig(batch_size=1))
    padded = sample_nll(model, processor, rows, PerplexityConfig(batch_size=6))
    np.testing.assert_allclose(padded, one, rtol=0, atol=1e-5)


def test_nll_is_the_mean_over_answer_tokens_only(tiny_llama):
    model, tok = tiny_llama
    rows = [text_row("How many shapes are there?", "The answer is 3."), text_row("Which bar?", "red")]
    nll = sample_nll(model, tok, rows)
    for row, value in zip(rows, nll):
        prompt = tok.apply_chat_template(row["messages"][:1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(row["messages"], tokenize=False)
        ids = tok(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        # token k is predicted from position k-1; answer tokens are positions n_prompt .. end (answer + <|end|>)
        expected = -np.mean([logp[k - 1, ids[0, k]].item() for k in range(n_prompt, ids.shape[1])])
        assert value == pytest.approx(expected, abs=1e-5)


def test_question_tokens_do_not_count_but_condition(tiny_llama):
    model, tok = tiny_llama
    a = sample_nll(model, tok, [text_row("Which bar?", "red")])[0]
    b = sample_nll(model, tok, [text_row("Which bar is the tallest in the bar chart today?", "red")])[0]
    c = sample_nll(model, tok, [text_row("Which bar?", "red red red red")])[0]
    # same answer, different question: a different value (conditioning), but not the question's own loss, which
    # would grow with its length by several nats
    assert a != b and abs(a - b) < 3
    assert a != c


def test_dataset_perplexity_is_a_macro_mean_then_exp():
    # two samples: 1 answer token with nll 1.0, 9 answer tokens averaging 3.0
    per_sample = [1.0, 3.0]
    assert dataset_perplexity(per_sample) == pytest.approx(math.exp(2.0))
    micro = math.exp((1.0 * 1 + 3.0 * 9) / 10)
    assert dataset_perplexity(per_sample) != pytest.approx(micro)
    with pytest.raises(ValueError, match="empty"):
        dataset_perplexity([])


def test_errors_name_source_row_and_field(tiny_llama):
    model, tok = tiny_llama
    rows = [text_row("q", "a"), {"messages": [{"role": "user", "content": "only a question"}]}]
    with pytest.raises(DataError, match=r"source 'pool', row 17, field 'messages'.*no assistant turn"):
        sample_nll(model, tok, rows, source="pool", row_ids=[16, 17])
    long = [text_row("q", "a"), text_row("q " * 50, "a")]
    with pytest.raises(DataError, match=r"source 'pool', row 8, field 'messages'.*exceed max_length=20"):
        sample_nll(model, tok, long, PerplexityConfig(max_length=20), source="pool", row_ids=[7, 8])
