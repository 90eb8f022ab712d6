"""LoRA warm-up with the real Trainer: presets, targets, checkpoints with optimizer state, Adam state by name."""

import copy
import json
import os

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

from mixwise import Mixture
from mixwise.models import load_model
from mixwise.signals.encoding import encode_rows
from mixwise.signals.warmup import (
    OPTIMIZER_NAMES_FILE,
    WarmupConfig,
    _optimizer_names_callback,
    attach_adapter,
    checkpoint_lr_weights,
    language_model_linear_names,
    load_adam_state,
    run_warmup,
    trainer_optimizer_order,
    warmup_rows,
)
from mixwise.toy import make_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_presets():
    icons, less = WarmupConfig.icons(), WarmupConfig.less()
    assert (icons.r, icons.alpha, icons.targets, icons.learning_rate, icons.epochs, icons.scheduler) == (
        128, 256, "all-linear", 2e-4, 1.0, "cosine"
    )  # fmt: skip
    assert (less.r, less.alpha, less.targets, less.epochs) == (128, 512, "attention", 4.0)
    assert icons.fraction == less.fraction == 0.05
    tiny = WarmupConfig.tiny("less")
    assert tiny.r == 4 and tiny.alpha == 16 and tiny.targets == "attention" and tiny.epochs == 2.0
    assert WarmupConfig.preset("icons", r=8).r == 8
    with pytest.raises(ValueError, match="unknown warm-up preset"):
        WarmupConfig.preset("lora")
    with pytest.raises(ValueError, match="fraction"):
        WarmupConfig(fraction=0)


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl"])
def test_targets_are_the_language_model_only(kind, tiny_llava, tiny_qwen2_vl):
    model = (tiny_llava if kind == "llava" else tiny_qwen2_vl)[0]
    names = language_model_linear_names(model)
    assert len(names) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert all(n.startswith("model.language_model.layers.") for n in names)
    all_linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    excluded = set(all_linear) - set(names)
    assert "lm_head" in excluded and any("vision" in n or "visual" in n for n in excluded)
    attention = language_model_linear_names(model, "attention")
    assert len(attention) == 8 and {n.rsplit(".", 1)[1] for n in attention} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_warmup_rows_are_seeded():
    rows = warmup_rows(1000, 0.05, seed=3)
    assert len(rows) == 50 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, warmup_rows(1000, 0.05, seed=3))
    assert not np.array_equal(rows, warmup_rows(1000, 0.05, seed=4))
    assert len(warmup_rows(7, 0.05, 0)) == 1


@pytest.fixture(scope="module")
def warm(tiny_llava_path, tmp_path_factory):
    pool = {f: make_source(f, 8, seed=1) for f in ("count", "colour", "ocr")}
    mixture = Mixture(pool, budget=6)
    out = tmp_path_factory.mktemp("warm") / "w"
    cfg = WarmupConfig.tiny("less", fraction=0.5)
    return run_warmup(str(tiny_llava_path), None, mixture.dataset, str(out), cfg, progress=False), mixture, cfg


def test_warmup_checkpoints_keep_optimizer_state(warm, tiny_llava_path):
    result, mixture, cfg = warm
    assert len(result.rows) == 12 and result.rows == warmup_rows(24, 0.5, cfg.seed).tolist()
    assert [c.step for c in result.checkpoints] == [3, 6]  # 12 rows / batch 4 = 3 steps per epoch, 2 epochs
    for c in result.checkpoints:
        for name in ("optimizer.pt", "adapter_model.safetensors", "trainer_state.json", OPTIMIZER_NAMES_FILE):
            assert os.path.exists(os.path.join(c.path, name)), name
        with open(os.path.join(c.path, "adapter_config.json")) as f:
            targets = json.load(f)["target_modules"]
        assert targets and all("language_model" in t and t.rsplit(".", 1)[1] in ("q_proj", "k_proj", "v_proj", "o_proj")
                               for t in targets)  # fmt: skip
    # checkpoint weights: the mean learning rate logged in each epoch, normalised
    with open(os.path.join(result.checkpoints[-1].path, "trainer_state.json")) as f:
        lrs = {h["step"]: h["learning_rate"] for h in json.load(f)["log_history"] if "learning_rate" in h}
    means = [np.mean([lrs[s] for s in (1, 2, 3)]), np.mean([lrs[s] for s in (4, 5, 6)])]
    assert result.lr_weights == pytest.approx([m / sum(means) for m in means])
    assert checkpoint_lr_weights(result.checkpoints[-1].path, [3, 6]) == pytest.approx(result.lr_weights)
    # rerun: reused, not retrained
    stamp = os.path.getmtime(os.path.join(result.checkpoints[0].path, "optimizer.pt"))
    again = run_warmup(str(tiny_llava_path), None, mixture.dataset, result.output_dir, cfg, progress=False)
    assert again.key == result.key
    assert os.path.getmtime(os.path.join(result.checkpoints[0].path, "optimizer.pt")) == stamp
    with pytest.raises(ValueError, match="another configuration"):
        run_warmup(str(tiny_llava_path), None, mixture.dataset, result.output_dir, WarmupConfig.tiny(), progress=False)


def test_adapter_attached_once_unmerged(warm, tiny_llava_path):
    result, _, _ = warm
    base, _ = load_model(str(tiny_llava_path))
    model = attach_adapter(base, result.checkpoints[-1].path)
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(layers) == 8 and not any(m.merged for m in layers)
    assert all(len(m.lora_A) == 1 for m in layers)  # one adapter, not two
    with pytest.raises(ValueError, match="already carries an adapter"):
        attach_adapter(model, result.checkpoints[-1].path)


def text_dataset(n=8):
    import datasets

    rows = make_source("count", n, seed=2)
    return datasets.Dataset.from_list(
        [{"messages": [{"role": m["role"], "content": m["content"][-1]["text"]} for m in r["messages"]]} for r in rows]
    )


def test_adam_state_matched_by_name_on_a_real_trainer_checkpoint(tiny_llama, tmp_path):
    """A checkpoint whose integer-keyed state is NOT in named_parameters() order: a trainable norm weight of layer 0
    (no weight decay: group 1) comes before layer 1's LoRA weights in named_parameters() but last in the optimizer."""
    base, tokenizer = tiny_llama
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    norm = model.base_model.model.model.layers[0].input_layernorm.weight
    norm.requires_grad_(True)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.1,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        optim="adamw_torch",
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=text_dataset(), data_collator=lambda rows: encode_rows(rows, tokenizer)
    )
    trainer.add_callback(_optimizer_names_callback())
    trainer.train()
    ckpt = str(tmp_path / "checkpoint-2")
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    order, sizes = trainer_optimizer_order(model)
    assert sizes == [8, 1] and order[-1].endswith("layers.0.input_layernorm.weight")
    assert list(named)[4].endswith("layers.0.input_layernorm.weight")  # fifth by name, last in the optimizer

    def check(state):
        assert state.beta1 == 0.9 and state.beta2 == 0.999 and state.step == 2 and not state.missing
        for name, p in named.items():
            live = trainer.optimizer.state[p]
            assert torch.equal(state.exp_avg[name], live["exp_avg"]), name
            assert torch.equal(state.exp_avg_sq[name], live["exp_avg_sq"]), name

    check(load_adam_state(ckpt, model))  # via the names recorded from the live optimizer
    os.remove(os.path.join(ckpt, OPTIMIZER_NAMES_FILE))
    check(load_adam_state(ckpt, model))  # via Trainer's grouping, reproduced
    # the naive mapping (index i = i-th trainable parameter by name) is wrong for this checkpoint
    saved = torch.load(os.path.join(ckpt, "optimizer.pt"), weights_only=True)["state"]
    naive_ok = all(tuple(saved[i]["exp_avg"].shape) == tuple(p.shape) for i, p in enumerate(named.values()))
    assert not naive_ok
    # a model with other trainable parameters is refused, naming the mismatch
    other = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(ValueError, match="cannot be matched|has shape"):
        load_adam_state(ckpt, other)
