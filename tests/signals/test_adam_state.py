"""`pool_mode="adam"` (LESS) needs Adam moments: a checkpoint of another optimizer is refused, naming it, before
any model is loaded — instead of zero moments turning the features into `(1−β1)g/sqrt((1−β2)g²+ε)`."""

import copy

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

from mixwise import Mixture
from mixwise.icons import ICONSConfig, run_icons
from mixwise.signals.encoding import encode_rows
from mixwise.signals.warmup import WarmupCheckpoint, WarmupResult, load_adam_state, require_adam_state
from mixwise.toy import make_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def text_dataset(n=8):
    rows = make_source("count", n, seed=2)
    return datasets.Dataset.from_list(
        [{"messages": [{"role": m["role"], "content": m["content"][-1]["text"]} for m in r["messages"]]} for r in rows]
    )


def checkpoint_of(optim, tiny_llama, tmp_path):
    base, tokenizer = tiny_llama
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(
        output_dir=str(tmp_path / optim),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        optim=optim,
    )
    Trainer(
        model=model, args=args, train_dataset=text_dataset(), data_collator=lambda rows: encode_rows(rows, tokenizer)
    ).train()
    return str(tmp_path / optim / "checkpoint-2"), model


@pytest.mark.parametrize("optim, found", [("adafactor", "Adafactor"), ("sgd", "SGD")])
def test_a_checkpoint_without_adam_moments_is_refused_naming_its_optimizer(optim, found, tiny_llama, tmp_path):
    ckpt, model = checkpoint_of(optim, tiny_llama, tmp_path)
    saved = torch.load(f"{ckpt}/optimizer.pt", weights_only=True)["state"]
    assert not any("exp_avg" in entry for entry in saved.values())  # no Adam moments in it
    for check in (lambda: load_adam_state(ckpt, model), lambda: require_adam_state(ckpt)):
        with pytest.raises(ValueError, match=f"pool_mode='adam' needs Adam moments .* holds the state of {found}"):
            check()


def test_the_icons_pipeline_refuses_it_before_loading_the_model(tiny_llama, tmp_path):
    ckpt, _ = checkpoint_of("adafactor", tiny_llama, tmp_path)
    warm = tmp_path / "warm"
    warm.mkdir()
    WarmupResult(str(warm), [WarmupCheckpoint(path=ckpt, step=2)], rows=[0, 1], config={}).save()
    cfg = ICONSConfig(
        warmup_dir=str(warm),
        pool_mode="adam",
        model_path="/no/such/model",
        work_dir=str(tmp_path / "w"),
        progress=False,
    )
    pool = {"count": make_source("count", 6, seed=1)}
    with pytest.raises(ValueError, match="holds the state of Adafactor"):  # not the missing model directory
        run_icons(Mixture(pool, budget=3), {"count": make_source("count", 3, split="validation")}, 3, config=cfg)


def test_adam_moments_are_read(tiny_llama, tmp_path):
    ckpt, model = checkpoint_of("adamw_torch", tiny_llama, tmp_path)
    require_adam_state(ckpt)
    state = load_adam_state(ckpt, model)
    assert not state.missing and state.step == 2 and len(state.exp_avg) == 8
