"""`TargetMetricsCallback`: the targets' own metric during training — the live model answers a few rows of every
target by greedy generation, and the answers are scored with the shipped `evaluate` module
([`mixwise.metrics.answer_accuracy`]: exact match, numeric match, multiple choice — the definitions of
[`mixwise.rewards`]), logged as `eval/<target>/<metric>` through the trainer's loggers (`report_to`).

It runs every `eval_steps` (the callback's `every`, else `TrainingArguments.eval_steps`, else `logging_steps`) and
at the last step. Every process answers the same few rows, so no collective is needed. Values are logged right
after the trainer's own training log of that step when there is one (logging from `on_step_end` would cancel it,
see [`ProbeLossCallback`]).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import TrainerCallback

from ..metrics import load_answer_metric
from ..models import eval_mode
from ..signals.encoding import conversation, to_model, tokenizer_of
from ..sources import as_pil, extract_fields, row_images
from .probes import is_training_log, log_extra

__all__ = ["TargetMetricsCallback"]


class TargetMetricsCallback(TrainerCallback):
    """Greedy answers to `rows` rows of every target, scored with `metrics` (one kind for every target, or
    `{target: kind}`), logged as `eval/<target>/<kind>`.

    Args:
        targets: `{name: Dataset}` of target rows (SFT or RL format).
        processing_class: the processor (VLMs) or tokenizer (text models) with a chat template.
        metrics: `exact_match`, `numeric_match` or `multiple_choice`, or a mapping target → kind.
        rows: rows per target (the first ones).
        max_new_tokens: answer length.
        every: steps between evaluations (default: `eval_steps`, else `logging_steps`).
        trainer: the trainer whose `log` is used.
    """

    def __init__(
        self,
        targets: dict[str, Any],
        processing_class: Any,
        metrics: dict[str, str] | str = "exact_match",
        rows: int = 4,
        max_new_tokens: int = 16,
        every: int | None = None,
        trainer: Any = None,
    ):
        self.processing_class = processing_class
        self.max_new_tokens = int(max_new_tokens)
        self.every = every
        self.trainer = trainer
        self.examples: dict[str, list[tuple[list, list, str]]] = {}
        self.kinds: dict[str, str] = {}
        for name, ds in targets.items():
            examples = []
            for i in range(min(int(rows), len(ds))):
                row = ds[i]
                prompt, _full = conversation(row, name, i)
                examples.append((prompt, [as_pil(im) for im in row_images(row)], extract_fields(row, name, i).answer))
            self.examples[name] = examples
            self.kinds[name] = metrics if isinstance(metrics, str) else metrics.get(name, "exact_match")
        self.metric_modules = {kind: load_answer_metric(kind) for kind in set(self.kinds.values())}
        self.pending: dict[str, float] | None = None

    @torch.no_grad()
    def answer(self, model: Any, prompt: list, images: list) -> str:
        """The model's greedy answer to one prompt."""
        tok = tokenizer_of(self.processing_class)
        text = self.processing_class.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt", "add_special_tokens": False}
        if images:
            kwargs["images"] = [images]
        inputs = to_model(model, self.processing_class(**kwargs))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        return tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    def evaluate(self, model: Any) -> dict[str, float]:
        """`{eval/<target>/<kind>: score}` with the live model (left in the mode it was in)."""
        logs = {}
        with eval_mode(model):
            for name, examples in self.examples.items():
                if not examples:
                    continue
                predictions = [self.answer(model, prompt, images) for prompt, images, _ in examples]
                kind = self.kinds[name]
                result = self.metric_modules[kind].compute(
                    predictions=predictions, references=[ref for _, _, ref in examples]
                )
                logs[f"eval/{name}/{kind}"] = float(result[kind])
        return logs

    def interval(self, args, state) -> int:
        every = self.every or args.eval_steps or args.logging_steps or 1
        if every < 1:  # a fraction of the run, as TrainingArguments allows
            every = math.ceil(every * max(state.max_steps, 1))
        return max(int(every), 1)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or self.trainer is None:
            return control
        step = state.global_step
        if step % self.interval(args, state) == 0 or step == state.max_steps:
            logs = self.evaluate(model)
            if control.should_log:
                self.pending = logs  # logged after the trainer's own log of this step (see `on_log`)
            else:
                log_extra(self.trainer, logs)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pending is not None and is_training_log(logs):
            pending, self.pending = self.pending, None
            log_extra(self.trainer, pending)
        return control
