"""Rows → model inputs with answer-only labels, and per-sample losses. Shared by every signal that runs the model
(perplexity, gradient features, hidden states).

**Answer tokens.** A row is rendered twice with the model's own chat template: the prompt (every turn before the
final assistant turn, plus the generation prompt) and the full conversation. The tokens after the prompt are the
answer tokens: the final assistant turn including its end-of-turn marker. This needs no `{% generation %}` tags,
so it works with any chat template whose prompt rendering is a prefix of the full rendering (checked; a template
for which it is not raises a clear error).

**Padding.** Batches are right-padded: a causal model's real tokens then keep the positions they have at batch
size 1, so a padded batch gives the same per-sample values as one row at a time (tested).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..sources import ANSWER_COLUMNS, DataError, as_pil, row_images

IGNORE_INDEX = -100


def _clean_content(content: Any) -> Any:
    """Drop the `None` keys that Arrow structs add to content parts, so any chat template sees plain parts."""
    if isinstance(content, str) or content is None:
        return content
    return [
        {k: v for k, v in part.items() if v is not None} if isinstance(part, Mapping) else part for part in content
    ]


def _clean(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": _clean_content(m.get("content"))} for m in messages]


def conversation(row: Mapping[str, Any], source: str = "?", index: int | None = None) -> tuple[list, list]:
    """`(prompt_messages, full_messages)` of a row in SFT or RL format (see [`mixwise.sources`])."""
    if "messages" in row:
        messages = _clean(row["messages"])
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise DataError(source, index, "messages", "no assistant turn to score")
        return messages[:last], messages[: last + 1]
    if "prompt" in row:
        prompt = row["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _clean(prompt)
        answer = next((row[c] for c in ANSWER_COLUMNS if c in row and row[c] is not None), None)
        if answer is None or not str(answer).strip():
            raise DataError(source, index, "answer", "empty or missing answer")
        return prompt, prompt + [{"role": "assistant", "content": [{"type": "text", "text": str(answer)}]}]
    raise DataError(source, index, "messages", f"row has neither 'messages' nor 'prompt' (keys: {sorted(row)})")


def tokenizer_of(processing_class: Any) -> Any:
    return getattr(processing_class, "tokenizer", processing_class)


@contextlib.contextmanager
def right_padding(processing_class: Any):
    tok = tokenizer_of(processing_class)
    old = tok.padding_side
    tok.padding_side = "right"
    try:
        yield
    finally:
        tok.padding_side = old


def encode_rows(
    rows: Sequence[Mapping[str, Any]],
    processing_class: Any,
    max_length: int | None = None,
    source: str = "?",
    start_index: int = 0,
    drop_images: bool = False,
) -> dict[str, torch.Tensor]:
    """Encode rows for a forward pass: the processor's outputs plus `labels` that keep only answer tokens.

    Args:
        rows: dataset rows (SFT or RL format).
        processing_class: a processor (VLMs) or tokenizer (text models) with a chat template.
        max_length: truncate from the left of the prompt? No: rows longer than this raise, naming the row —
            silently cutting answer tokens would change the signal.
        source, start_index: used in error messages (row ids are `start_index + position`).
        drop_images: encode the text only (e.g. to measure a text-only signal on a VLM).
    """
    tok = tokenizer_of(processing_class)
    if getattr(tok, "chat_template", None) is None and getattr(processing_class, "chat_template", None) is None:
        raise ValueError("the processing class has no chat template; set one (tokenizer.chat_template = ...)")
    prompts, fulls, images = [], [], []
    for j, row in enumerate(rows):
        prompt, full = conversation(row, source, start_index + j)
        prompt_text = processing_class.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full_text = processing_class.apply_chat_template(full, tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ValueError(
                f"source '{source}', row {start_index + j}: the chat template's prompt rendering is not a prefix of "
                "the full conversation, so answer tokens cannot be located"
            )
        prompts.append(prompt_text)
        fulls.append(full_text)
        images.append([] if drop_images else [as_pil(im) for im in row_images(row)])
    # Answer length in tokens, from text alone: images expand inside the prompt, which does not change it.
    n_prompt = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    n_full = [len(ids) for ids in tok(fulls, add_special_tokens=False)["input_ids"]]
    n_answer = [f - p for f, p in zip(n_full, n_prompt)]
    for j, n in enumerate(n_answer):
        if n <= 0:
            raise DataError(source, start_index + j, "answer", "the answer renders to no tokens")
    with right_padding(processing_class):
        kwargs: dict[str, Any] = {"text": fulls, "padding": True, "return_tensors": "pt", "add_special_tokens": False}
        if any(images):
            if not all(images):
                raise DataError(
                    source, start_index + images.index([]), "images", "a batch mixes rows with and without images"
                )
            kwargs["images"] = images
        batch = processing_class(**kwargs)
    lengths = batch["attention_mask"].sum(dim=1)
    if max_length is not None and int(lengths.max()) > max_length:
        j = int(lengths.argmax())
        raise DataError(
            source, start_index + j, "messages", f"{int(lengths[j])} tokens exceed max_length={max_length}"
        )
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for j, (length, n) in enumerate(zip(lengths.tolist(), n_answer)):
        labels[j, length - n : length] = batch["input_ids"][j, length - n : length]
    batch["labels"] = labels
    return dict(batch)


def to_model(model: Any, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The batch's tensors on the model's device, floating ones in its dtype (non-tensor entries dropped)."""
    p = next(model.parameters())
    return {
        k: (v.to(p.device, p.dtype) if torch.is_floating_point(v) else v.to(p.device))
        for k, v in batch.items()
        if isinstance(v, torch.Tensor)
    }


def _answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """`(batch, seq-1)`: whether position t+1 holds an answer token (predicted from position t)."""
    mask = labels[:, 1:] != IGNORE_INDEX
    if bool((mask.sum(dim=1) == 0).any()):
        raise ValueError("a sample has no answer tokens in its labels")
    return mask


def _mean_answer_nll(answer_logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean NLL from the logits at the answer-predicting positions only (`(Σ mask, vocab)`, row-major)."""
    token_nll = torch.nn.functional.cross_entropy(answer_logits.float(), labels[:, 1:][mask], reduction="none")
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(mask)[mask]
    sums = torch.zeros(labels.shape[0], dtype=token_nll.dtype, device=token_nll.device)
    return sums.index_add(0, rows, token_nll) / mask.sum(dim=1)


def per_sample_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over each sample's own answer tokens, shape `(batch,)`.

    `nll_i = −(1/|A_i|) Σ_{t∈A_i} log p(y_t | y_<t)` — never the batch-mean over all tokens of a padded batch.
    """
    mask = _answer_mask(labels)
    return _mean_answer_nll(logits[:, :-1][mask], labels, mask)


@functools.lru_cache(maxsize=64)
def _forward_takes(cls: type, name: str) -> bool:
    try:
        return name in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def forward_takes(model: Any, name: str) -> bool:
    """Whether `model`'s forward has the keyword `name` (looking through a peft wrapper to the model inside)."""
    get_base = getattr(model, "get_base_model", None)
    inner = get_base() if callable(get_base) else model
    return _forward_takes(type(inner), name)


def answer_nll(model: Any, inputs: Mapping[str, Any], labels: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """`(per-sample mean answer-token NLL (batch,), model output)` of one forward, differentiable.

    The logits are computed only at the positions that predict an answer token (`logits_to_keep` with a boolean
    `(batch, seq)` mask), so the LM head — with a real vocabulary a large share of a small model's compute and of its
    activation memory — runs on those rows only. The values equal [`per_sample_nll`] on the full logits. A model
    whose forward has no `logits_to_keep`, or ignores a boolean mask, gets the full logits.
    """
    mask = _answer_mask(labels)
    if forward_takes(model, "logits_to_keep"):
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = mask
        out = model(**inputs, logits_to_keep=keep)
        if out.logits.dim() == 2 and out.logits.shape[0] == int(keep.sum()):
            return _mean_answer_nll(out.logits, labels, mask), out
        if out.logits.dim() == 3 and out.logits.shape[:2] == labels.shape:  # the mask was not applied: full logits
            return per_sample_nll(out.logits, labels), out
    out = model(**inputs)
    return per_sample_nll(out.logits, labels), out


# ---------------------------------------------------------------------------------------------------------------------
# Encoding with truncation and per-row error reporting
# ---------------------------------------------------------------------------------------------------------------------


def image_token_id(model: torch.nn.Module) -> int | None:
    """The id of the image placeholder token in `model`'s config (`image_token_id` / `image_token_index`), if any."""
    config = getattr(model, "config", None)
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    return None


class RowEncoder:
    """[`encode_rows`] + right truncation to `max_length` + checks, reporting bad rows by (source, row, field).

    Truncation never cuts image tokens (that row is a bad row) and a row whose answer is cut away entirely is a bad
    row; the warm-up and the gradient featurizer encode through it.
    """

    def __init__(self, processing_class: Any, max_length: int | None, image_token_id: int | None):
        self.processing_class = processing_class
        self.max_length = max_length
        self.image_token_id = image_token_id

    def check_one(self, row: Mapping[str, Any], name: tuple[str, int]) -> DataError | None:
        try:
            self.encode([row], [name])
        except DataError as err:
            return err
        return None

    def encode(self, rows: Sequence[Mapping[str, Any]], names: Sequence[tuple[str, int]]) -> dict[str, torch.Tensor]:
        try:
            batch = encode_rows(rows, self.processing_class, source=names[0][0], start_index=names[0][1])
        except DataError as err:
            if len(rows) == 1:
                raise DataError(names[0][0], names[0][1], err.field, err.problem) from None
            raise
        if self.max_length is None or batch["input_ids"].shape[1] <= self.max_length:
            return batch
        n, length = batch["input_ids"].shape
        cut = self.max_length
        if self.image_token_id is not None:
            lost = (batch["input_ids"][:, cut:] == self.image_token_id).any(dim=1)
            if bool(lost.any()):
                j = int(lost.nonzero()[0, 0])
                raise DataError(
                    *names[j], "images", f"truncation to max_length={cut} would cut image tokens; raise max_length"
                )
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and tuple(value.shape[:2]) == (n, length):
                value = value[:, :cut]
            out[key] = value
        empty = ((out["labels"] != IGNORE_INDEX).sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            j = empty[0]
            raise DataError(*names[j], "answer", f"answer truncated away: no answer token within max_length={cut}")
        return out
