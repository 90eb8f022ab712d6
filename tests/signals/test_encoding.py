import pytest
import torch

from mixwise.signals.encoding import IGNORE_INDEX, encode_rows, per_sample_nll
from mixwise.sources import DataError
from mixwise.toy import make_source


def rows(fmt="sft", n=5):
    # different families -> different question lengths -> real padding inside the batch
    out = []
    for fam in ("count", "ocr", "spatial", "digits", "chart"):
        out.extend(make_source(fam, 1, seed=2, fmt=fmt).to_list())
    return out[:n]


@pytest.mark.parametrize("fmt", ["sft", "rl"])
@pytest.mark.parametrize("zoo", ["tiny_llava", "tiny_qwen2_vl"])
def test_padded_batch_equals_batch_size_one(zoo, fmt, request):
    model, processor = request.getfixturevalue(zoo)
    data = rows(fmt)
    batch = encode_rows(data, processor)
    assert (batch["attention_mask"].sum(1).unique().numel()) > 1, "the batch must actually be padded"
    with torch.no_grad():
        batched = per_sample_nll(model(**batch).logits, batch["labels"])
        single = torch.cat(
            [per_sample_nll(model(**(b := encode_rows([r], processor))).logits, b["labels"]) for r in data]
        )
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_labels_cover_exactly_the_answer_and_end_token(tiny_llava):
    _, processor = tiny_llava
    data = rows("sft", 3)
    batch = encode_rows(data, processor)
    tok = processor.tokenizer
    for j, row in enumerate(data):
        kept = batch["labels"][j][batch["labels"][j] != IGNORE_INDEX]
        answer = row["messages"][-1]["content"][0]["text"]
        assert tok.decode(kept).replace(" ", "").startswith(answer.replace(" ", ""))
        assert "<|end|>" in tok.decode(kept)
        assert "<|user|>" not in tok.decode(kept)


def test_text_model_and_errors(tiny_llama):
    model, tok = tiny_llama
    data = [{"prompt": "What is 2+2?", "answer": "4"}, {"prompt": "Name a colour.", "answer": "red"}]
    batch = encode_rows(data, tok)
    with torch.no_grad():
        nll = per_sample_nll(model(**batch).logits, batch["labels"])
    assert nll.shape == (2,) and torch.isfinite(nll).all()
    with pytest.raises(DataError, match="source 'mine', row 11, field 'answer'"):
        encode_rows(
            [{"prompt": "q", "answer": "a"}, {"prompt": "q", "answer": ""}], tok, source="mine", start_index=10
        )
    with pytest.raises(DataError, match="exceed max_length"):
        encode_rows(data, tok, max_length=3)
