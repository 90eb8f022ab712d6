"""mixwise.consumption: what a plain `Trainer` attached to a mixture trained on, counted at the training step."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from mixwise import Mixture, Plan, attach
from mixwise.consumption import ConsumptionCountingMixin, record_consumption
from mixwise.testing import cpu_trainer_kwargs
from mixwise.toy import make_source


def text_pool(n):
    def text_only(row):
        return {"messages": [{"role": m["role"], "content": m["content"][-1]["text"]} for m in row["messages"]]}

    return {f: make_source(f, n, seed=1).remove_columns("images").map(text_only) for f in ("count", "colour", "ocr")}


def make_trainer(tiny_llama_path, tmp_path, mixture, remove_unused_columns=False):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)

    def collate(examples):
        texts = [tokenizer.apply_chat_template(ex["messages"], tokenize=False) for ex in examples]
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch

    args = TrainingArguments(
        **cpu_trainer_kwargs(str(tmp_path / "run"), num_train_epochs=1, seed=3, per_device_train_batch_size=8),
    )
    args.remove_unused_columns = remove_unused_columns
    trainer = Trainer(model=model, args=args, train_dataset=mixture.dataset, data_collator=collate)
    return attach(trainer, mixture)


def test_a_plain_trainer_consumes_exactly_the_plan(tiny_llama_path, tmp_path, one_torch_thread):
    # an uneven plan (7 / 13 / 0 rows) in batches of 8: the last batch is partial, one source gets nothing
    pool = text_pool(16)
    weights = {"count": 0.35, "colour": 0.65, "ocr": 0.0}
    plan = Plan.from_weights(weights, {f: len(ds) for f, ds in pool.items()}, budget=20)
    mixture = Mixture(pool, budget=20, plan=plan, seed=3)
    trainer = make_trainer(tiny_llama_path, tmp_path, mixture)
    log = record_consumption(trainer)
    assert isinstance(trainer, ConsumptionCountingMixin) and trainer.mixture is mixture
    trainer.train()
    assert {k: v for k, v in mixture.plan.counts.items() if v} == dict(log.counts)
    assert sum(log.counts.values()) == 20


def test_counting_needs_the_source_column(tiny_llama_path, tmp_path, one_torch_thread):
    mixture = Mixture(text_pool(4), budget=8, seed=3)
    trainer = make_trainer(tiny_llama_path, tmp_path, mixture)
    log = record_consumption(trainer)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        log([{"messages": []}])


def test_a_trainer_without_a_mixture_is_refused(tiny_llama_path, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    trainer = Trainer(model=model, args=TrainingArguments(**cpu_trainer_kwargs(str(tmp_path / "run"))))
    with pytest.raises(ValueError, match="attach"):
        record_consumption(trainer)
