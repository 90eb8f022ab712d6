"""Multimodal perplexity: answer tokens only, per-sample mean, macro average, padding-invariant, clear errors."""

import math

import numpy as np
import pytest
import torch

from mixwise.signals.embeddings import EmbeddingConfig, FieldEmbedder
from mixwise.signals.encoding import encode_rows, per_sample_nll
from mixwise.signals.perplexity import PerplexityConfig, dataset_perplexity, forward_nll, sample_nll
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


# ------------------------------------------------------------------------------------------------------------------
# The scoring forward: answer logits only, and the image pathway shared with the image signal
# ------------------------------------------------------------------------------------------------------------------


def _lm_head_rows(model):
    """Record how many rows the LM head projects in each call."""
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
    )
    return rows, handle


@pytest.mark.parametrize("name", ["tiny_llava", "tiny_qwen2_vl", "tiny_llama"])
def test_forward_nll_projects_answer_positions_only_with_full_logit_values(name, request):
    model, processing_class = request.getfixturevalue(name)
    if name == "tiny_llama":
        rows = [text_row("How many shapes?", "3"), text_row("Which bar is the tallest?", "the red one")]
    else:
        rows = list(make_source("count", 2, seed=3)) + list(make_source("chart", 2, seed=3))
    batch = encode_rows(rows, processing_class)
    with torch.no_grad():
        full = per_sample_nll(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
    head_rows, handle = _lm_head_rows(model)
    try:
        nll, image_out = forward_nll(model, batch)
    finally:
        handle.remove()
    np.testing.assert_allclose(nll.numpy(), full.numpy(), rtol=0, atol=1e-5)
    assert image_out is None
    n_answer = int((batch["labels"] != -100).sum())
    assert head_rows == [n_answer] and n_answer < batch["input_ids"].numel()
    assert "labels" in batch  # the caller's batch is left as it was


@pytest.mark.parametrize("name", ["tiny_llava", "tiny_qwen2_vl"])
@pytest.mark.parametrize("feature", ["projected", "tower"])
def test_forward_nll_shares_one_image_pass_with_the_image_signal(name, feature, request):
    model, processor = request.getfixturevalue(name)
    rows = list(make_source("shape", 3, seed=4)) + list(make_source("ocr", 2, seed=4))
    embedder = FieldEmbedder(model, processor, EmbeddingConfig(image_feature=feature))
    batch = encode_rows(rows, processor)
    alone = forward_nll(model, batch)[0]
    tower = getattr(model.model, "vision_tower", None) or model.model.visual
    calls = []
    handle = tower.register_forward_hook(lambda *a: calls.append(1))
    try:
        nll, image_out = forward_nll(model, batch, image_features=True)
    finally:
        handle.remove()
    assert len(calls) == 1  # the vision tower ran once for both signals
    np.testing.assert_allclose(nll.numpy(), alone.numpy(), rtol=0, atol=1e-6)
    shared = embedder.sample_vectors(
        embedder.image_vectors(image_out, len(rows), batch.get("image_grid_thw")), [1] * len(rows)
    )
    separate = embedder.embed_images([r["images"] for r in rows])
    np.testing.assert_allclose(np.stack(shared), separate, rtol=0, atol=1e-5)
