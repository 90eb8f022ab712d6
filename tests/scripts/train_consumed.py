"""Train a tiny model on a mixture with a real trainer and record, on every rank, the rows actually consumed.

usage: train_consumed.py KIND MODEL_DIR OUT_DIR [--resume CKPT] [--max_steps N] [--save_steps N] [--epochs E]
KIND: sft (TRL SFTTrainer, tiny LLaVA), grpo (TRL GRPOTrainer, tiny LLaVA), trainer (transformers Trainer,
tiny Llama text model).

The selection callback installs, at train begin, the plan of `SplitSelector` (computed across ranks with
`map_across_ranks`); every rank writes `OUT_DIR/rank{r}.json` with what it consumed and what it scored.
"""

import argparse
import json
import os

from mixwise import FixedWeights, Mixture, attach
from mixwise.distributed import map_across_ranks, shutdown, state
from mixwise.testing import cpu_trainer_kwargs
from mixwise.toy import make_source

WEIGHTS = {"count": 3.0, "colour": 1.0, "spatial": 0.0, "ocr": 0.0}


class SplitSelector:
    """Fixed target weights, but reached through a distributed scoring pass with the live model: every row of the
    pool is 'scored' by the rank that owns it (its source's weight), and the weights are read back from the
    gathered scores. Records which rows this rank scored."""

    name = "split_test"

    def __init__(self):
        self.scored = []

    def config(self):
        return {"weights": WEIGHTS}

    def select(self, context):
        assert context.model is not None and context.processing_class is not None
        mixture = context.mixture

        def score(indices):
            self.scored.extend(indices)
            return [WEIGHTS[mixture.locate(i)[0]] for i in indices]

        scores = map_across_ranks(score, range(mixture.total_size))
        weights = {n: scores[mixture.offsets[n]] for n in mixture.names}
        plan = FixedWeights(weights).select(context)
        plan.method = self.name
        return plan


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["sft", "sft_text", "grpo", "trainer"])
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("--resume", default=None)
    p.add_argument("--max_steps", type=int, default=-1)
    p.add_argument("--save_steps", type=int, default=0)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--budget", type=int, default=32)
    a = p.parse_args()

    fmt = "rl" if a.kind == "grpo" else "sft"
    pool = {f: make_source(f, 12, seed=1, fmt=fmt) for f in WEIGHTS}
    if a.kind in ("trainer", "sft_text"):  # text-only rows for the text model
        pool = {
            f: ds.remove_columns("images").map(
                lambda r: {
                    "messages": [{"role": m["role"], "content": m["content"][-1]["text"]} for m in r["messages"]]
                }
            )
            for f, ds in pool.items()
        }
    mixture = Mixture(pool, budget=a.budget, seed=5)
    selector = SplitSelector()
    consumed = []
    common = cpu_trainer_kwargs(
        os.path.join(a.out_dir, "run"),
        num_train_epochs=a.epochs,
        max_steps=a.max_steps,
        logging_steps=1,
        save_strategy="steps" if a.save_steps else "no",
        save_steps=a.save_steps or 500,
        seed=5,
    )

    if a.kind in ("sft", "sft_text"):
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        if a.kind == "sft":
            model = AutoModelForImageTextToText.from_pretrained(a.model_dir)
            processor = AutoProcessor.from_pretrained(a.model_dir)
        else:
            model = AutoModelForCausalLM.from_pretrained(a.model_dir)
            processor = AutoTokenizer.from_pretrained(a.model_dir)
        args = SFTConfig(max_length=None, **common)
        trainer = SFTTrainer(model=model, args=args, train_dataset=mixture.dataset, processing_class=processor)
        collator = trainer.data_collator

        def recording(examples):
            consumed.extend(ex["id"] for ex in examples)
            return collator(examples)

        trainer.data_collator = recording
    elif a.kind == "grpo":
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from trl import GRPOConfig, GRPOTrainer

        model = AutoModelForImageTextToText.from_pretrained(a.model_dir)
        processor = AutoProcessor.from_pretrained(a.model_dir)

        def exact_match(completions, answer, id, **kwargs):
            consumed.append(list(id))  # one call per generation batch on this rank
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return [float(t.strip() == ans) for t, ans in zip(texts, answer)]

        common.pop("remove_unused_columns")
        args = GRPOConfig(
            num_generations=2,
            max_completion_length=4,
            beta=0.0,
            use_vllm=False,
            **common,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=exact_match, args=args, train_dataset=mixture.dataset, processing_class=processor
        )
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

        model = AutoModelForCausalLM.from_pretrained(a.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(a.model_dir)

        def collate(examples):
            consumed.extend(ex["id"] for ex in examples)
            texts = [tokenizer.apply_chat_template(ex["messages"], tokenize=False) for ex in examples]
            batch = tokenizer(texts, return_tensors="pt", padding=True)
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            batch["labels"] = labels
            return batch

        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=mixture.dataset,
            data_collator=collate,
            processing_class=tokenizer,
        )

    attach(trainer, mixture, selector=selector)
    trainer.train(resume_from_checkpoint=a.resume)
    rank = state().process_index
    with open(os.path.join(a.out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "consumed": consumed,
                "scored": selector.scored,
                "world": state().num_processes,
                "plan_counts": mixture.plan.counts,
                "global_step": trainer.state.global_step,
                "log_keys": sorted({k for h in trainer.state.log_history for k in h}),
            },
            f,
        )
    shutdown()


if __name__ == "__main__":
    main()
