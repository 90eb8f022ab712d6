"""Per-sample LoRA gradient features: exact against batch-size-1 autograd, modes, projections, bad rows."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from mixwise.signals.encoding import encode_rows, per_sample_nll
from mixwise.signals.gradients import (
    AdamState,
    FeaturizerConfig,
    GradientFeaturizer,
    HiddenStateFeaturizer,
    adam_transform,
    find_lora_layers,
)
from mixwise.signals.projection import BlockProjector, KroneckerProjector, ProjectorSpec
from mixwise.signals.warmup import WarmupConfig, lora_config
from mixwise.sources import DataError
from mixwise.toy import make_source

RAW = ProjectorSpec(kind="none", dim=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_lora(model, targets="all-linear", seed=0):
    """A LoRA adapter with random A *and* B (so that both gradients are non-zero)."""
    cfg = lora_config(model, WarmupConfig.tiny(targets=targets))
    cfg.init_lora_weights = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(copy.deepcopy(model), cfg)


def text_rows(rows):
    return [
        {"messages": [{"role": m["role"], "content": m["content"][-1]["text"]} for m in r["messages"]]} for r in rows
    ]


def toy_rows(kind, answers=("3", "a much longer answer with many more tokens", "red", "yes it is")):
    rows = [make_source(f, 2, seed=3)[i] for f in ("count", "ocr") for i in range(2)]
    for row, answer in zip(rows, answers):
        row["messages"][1]["content"][0]["text"] = answer
    return text_rows(rows) if kind == "llama" else rows


def reference_gradients(model, processor, rows, names):
    """Batch-size-1 autograd: one forward/backward per row, the flattened gradient of its own mean answer NLL."""
    params = dict(model.named_parameters())
    model.eval()
    out, losses = [], []
    for row in rows:
        batch = encode_rows([row], processor)
        labels = batch.pop("labels")
        loss = per_sample_nll(model(**batch).logits, labels)[0]
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        out.append(torch.cat([g.reshape(-1) for g in grads]))
        losses.append(loss.detach())
    return torch.stack(losses), torch.stack(out)


@pytest.fixture(scope="module")
def models(tiny_llava, tiny_qwen2_vl, tiny_llama):
    return {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl, "llama": tiny_llama}


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl", "llama"])
def test_padded_batch_gradients_equal_batch_size_one(models, kind):
    base, processor = models[kind]
    model = with_lora(base)
    rows = toy_rows(kind)
    batch = encode_rows(rows, processor)
    assert bool((batch["attention_mask"] == 0).any())  # the batch is really padded
    feat = GradientFeaturizer(model, processor, FeaturizerConfig(batch_size=4), projector=RAW)
    # LoRA of the language model only: nothing from the vision tower, projector or lm_head
    assert all("language_model" in n or kind == "llama" for n in feat.param_names)
    assert not any("vision" in n or "visual" in n or "lm_head" in n or "projector" in n for n in feat.param_names)
    head_rows = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: head_rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
    )
    try:
        losses, grads = feat.per_sample_gradients(batch)
    finally:
        handle.remove()
    assert head_rows == [int((batch["labels"] != -100).sum())]  # the LM head projects answer positions only
    ref_losses, ref = reference_gradients(model, processor, rows, feat.param_names)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=1e-6)
    rel = (grads - ref).norm(dim=1) / ref.norm(dim=1)
    assert float(rel.max()) < 1e-4, rel
    # the A and B gradients are both non-trivial
    a_off = feat.offsets[find_lora_layers(model)[0].a_name]
    assert float(grads[:, a_off : a_off + 16].abs().sum()) > 0


def test_features_do_not_depend_on_the_batch(models):
    base, processor = models["llava"]
    model = with_lora(base)
    rows = toy_rows("llava") + toy_rows("llava", answers=("1", "2", "3", "4"))
    names = [("pool", i) for i in range(len(rows))]
    spec = ProjectorSpec(dim=32, seed=5, block_rows=512)
    big = GradientFeaturizer(model, processor, FeaturizerConfig(batch_size=8), projector=spec)
    one = GradientFeaturizer(model, processor, FeaturizerConfig(batch_size=1, max_buffer_bytes=0), projector=spec)
    a = big.featurize_rows(rows, names)
    b = one.featurize_rows(rows, names)
    assert a.ok.all() and not a.skipped
    # float32 sums in another order: agreement to 1e-5 of the largest feature
    scale = float(a.features.abs().max())
    torch.testing.assert_close(a.features, b.features, rtol=1e-4, atol=1e-5 * scale)
    # projected features are the raw per-sample gradients times the seeded dense matrix
    _, raw = big.per_sample_gradients(encode_rows(rows, processor))
    dense = BlockProjector(big.input_dim, spec).dense()
    torch.testing.assert_close(a.features, raw @ dense, rtol=1e-4, atol=1e-5 * scale)


def test_adam_transform_formula():
    g = torch.tensor([[2.0, -1.0, 0.0]])
    m = torch.tensor([1.0, 0.5, -0.2])
    v = torch.tensor([4.0, 0.25, 0.0])
    out = adam_transform(g.clone(), m, v, 0.9, 0.999, eps=1e-8)
    m2 = 0.9 * m + 0.1 * g
    v2 = 0.999 * v + 0.001 * g**2
    torch.testing.assert_close(out, m2 / torch.sqrt(v2 + 1e-8))
    assert float(out[0, 0]) == pytest.approx(1.1 / (4.0 + 1e-8) ** 0.5)  # m'=1.1, v'=4: no bias correction


def test_adam_and_sign_modes_use_the_named_state(models):
    base, processor = models["llama"]
    model = with_lora(base)
    rows = toy_rows("llama")
    names = [("pool", i) for i in range(4)]
    sgd = GradientFeaturizer(model, processor, FeaturizerConfig(batch_size=4), projector=RAW)
    raw = sgd.featurize_rows(rows, names).features
    gen = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    m = {n: torch.randn(params[n].shape, generator=gen) * 1e-3 for n in sgd.param_names}
    v = {n: torch.rand(params[n].shape, generator=gen) * 1e-5 for n in sgd.param_names}
    state = AdamState(names=sgd.param_names, exp_avg=m, exp_avg_sq=v, beta1=0.8, beta2=0.99)
    adam = GradientFeaturizer(model, processor, FeaturizerConfig(mode="adam"), projector=RAW, adam=state)
    flat_m = torch.cat([m[n].reshape(-1) for n in sgd.param_names])
    flat_v = torch.cat([v[n].reshape(-1) for n in sgd.param_names])
    expected = (0.8 * flat_m + 0.2 * raw) / torch.sqrt(0.99 * flat_v + 0.01 * raw**2 + 1e-8)
    torch.testing.assert_close(adam.featurize_rows(rows, names).features, expected, rtol=1e-5, atol=1e-7)
    sign = GradientFeaturizer(model, processor, FeaturizerConfig(mode="sign"), projector=RAW)
    assert torch.equal(sign.featurize_rows(rows, names).features, raw.sign())
    with pytest.raises(ValueError, match="optimizer state"):
        GradientFeaturizer(model, processor, FeaturizerConfig(mode="adam"), projector=RAW)
    with pytest.raises(KeyError, match="no entry"):
        GradientFeaturizer(
            model, processor, FeaturizerConfig(mode="adam"), adam=AdamState([], {}, {}, 0.9, 0.999), projector=RAW
        )


def test_factorized_projection_equals_the_explicit_kronecker_sketch(models):
    base, processor = models["llava"]
    model = with_lora(base)
    rows = toy_rows("llava")
    names = [("pool", i) for i in range(4)]
    spec = ProjectorSpec(kind="factorized", dim=200, seed=2)
    feat = GradientFeaturizer(model, processor, FeaturizerConfig(batch_size=4), projector=spec)
    got = feat.featurize_rows(rows, names).features
    raw_feat = GradientFeaturizer(model, processor, FeaturizerConfig(batch_size=4), projector=RAW)
    _, raw = raw_feat.per_sample_gradients(encode_rows(rows, processor))
    per_param = {n: raw[:, o : o + torch.Size(raw_feat.shapes[n]).numel()].reshape(4, *raw_feat.shapes[n])
                 for n, o in raw_feat.offsets.items()}  # fmt: skip
    expected = KroneckerProjector(raw_feat.shapes, spec).project_matrices(per_param)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="needs 'sgd'"):
        GradientFeaturizer(model, processor, FeaturizerConfig(mode="sign"), projector=spec)


def test_visual_dependency_is_the_gradient_difference_with_a_noise_image(models):
    base, processor = models["llava"]
    model = with_lora(base)
    rows = toy_rows("llava")[:2]
    names = [("pool", 10), ("pool", 11)]
    cfg = FeaturizerConfig(batch_size=2, visual_dependency=True, noise_seed=4)
    vd = GradientFeaturizer(model, processor, cfg, projector=RAW)
    got = vd.featurize_rows(rows, names).features
    batch = encode_rows(rows, processor)
    noise = vd._noise(batch, [10, 11])
    assert noise.shape == batch["pixel_values"].shape and not torch.equal(noise[0], noise[1])
    assert torch.equal(noise[1], vd._noise(encode_rows(rows[1:], processor), [11])[0])  # seeded by row id only
    _, real = vd.per_sample_gradients(batch)
    _, fake = vd.per_sample_gradients({**batch, "pixel_values": noise})
    torch.testing.assert_close(got, real - fake, rtol=1e-4, atol=1e-7)
    assert float((real - fake).norm()) > 0


def test_answer_truncated_away_raises_or_is_skipped(models):
    base, processor = models["llava"]
    model = with_lora(base)
    rows = toy_rows("llava")
    names = [("pool", i) for i in range(4)]
    labels = encode_rows(rows, processor)["labels"]
    first = [int(torch.nonzero(lab != -100)[0]) for lab in labels]  # where each row's answer starts
    assert len(set(first)) > 1  # the questions differ in length, so a cut can keep some answers and not others
    # keeps one answer token of the rows whose answer starts first; every other row loses its whole answer
    cut = min(first) + 1
    strict = GradientFeaturizer(model, processor, FeaturizerConfig(max_length=cut), projector=RAW)
    with pytest.raises(DataError, match=r"source 'pool', row \d, field 'answer': answer truncated away"):
        strict.featurize_rows(rows, names)
    skip = GradientFeaturizer(model, processor, FeaturizerConfig(max_length=cut, on_error="skip"), projector=RAW)
    res = skip.featurize_rows(rows, names)
    assert len(res.skipped) == sum(f >= cut for f in first) and all(s["field"] == "answer" for s in res.skipped)
    assert 0 < len(res.skipped) < 4
    for s in res.skipped:
        assert not res.ok[s["position"]] and float(res.features[s["position"]].abs().sum()) == 0
    assert res.ok.sum() == 4 - len(res.skipped)
    too_short = GradientFeaturizer(model, processor, FeaturizerConfig(max_length=8), projector=RAW)
    with pytest.raises(DataError, match="field 'images': truncation .* would cut image tokens"):
        too_short.featurize_rows(rows[:1], names[:1])


def test_nan_loss_raises_or_is_skipped(models):
    base, processor = models["llama"]
    model = with_lora(base)
    rows = toy_rows("llama")
    rows[2]["messages"][0]["content"] += " <|vision_end|>"  # a token only this row uses
    token = processor.convert_tokens_to_ids("<|vision_end|>")
    with torch.no_grad():
        model.get_input_embeddings().weight[token] = float("nan")
    names = [("src", i) for i in range(4)]
    with pytest.raises(DataError, match="source 'src', row 2, field 'loss': non-finite"):
        GradientFeaturizer(model, processor, FeaturizerConfig(), projector=RAW).featurize_rows(rows, names)
    res = GradientFeaturizer(model, processor, FeaturizerConfig(on_error="skip"), projector=RAW).featurize_rows(
        rows, names
    )
    assert [s["row"] for s in res.skipped] == [2] and res.ok.tolist() == [True, True, False, True]
    assert bool(torch.isfinite(res.features).all())
    # the other rows are unaffected: equal to a run without the bad row
    clean = GradientFeaturizer(model, processor, FeaturizerConfig(), projector=RAW).featurize_rows(
        rows[:2] + rows[3:], names[:2] + names[3:]
    )
    torch.testing.assert_close(res.features[[0, 1, 3]], clean.features, rtol=1e-4, atol=1e-7)


def test_model_is_left_as_it_was(models):
    base, processor = models["llava"]
    model = with_lora(base)
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    feat = GradientFeaturizer(model, processor, FeaturizerConfig(), projector=ProjectorSpec(dim=16))
    feat.featurize_rows(toy_rows("llava")[:2], [("p", 0), ("p", 1)])
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())  # transformers' own, if any
    feat.featurize_rows(toy_rows("llava")[:2], [("p", 0), ("p", 1)])
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()) == hooks
    with pytest.raises(ValueError, match="no LoRA layers"):
        GradientFeaturizer(base, processor)


def test_rds_features_are_last_token_hidden_states(models):
    base, processor = models["llava"]
    model = with_lora(base)
    rows = toy_rows("llava")
    feat = HiddenStateFeaturizer(model, processor, FeaturizerConfig(batch_size=4))
    got = feat.featurize_rows(rows, [("p", i) for i in range(4)]).features
    assert got.shape == (4, 64)
    model.eval()  # the reference without LoRA dropout, as the featurizer runs
    for i, row in enumerate(rows):
        batch = encode_rows([row], processor)
        batch.pop("labels")
        with torch.no_grad():
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1][0, -1]
        torch.testing.assert_close(got[i], hidden, rtol=1e-4, atol=1e-5)


def test_lora_on_the_lm_head_keeps_full_logits_and_stays_exact(models):
    base, tok = models["llama"]
    names = [n for n, m in base.named_modules() if n.endswith(("q_proj", "v_proj"))] + ["lm_head"]
    config = LoraConfig(r=2, lora_alpha=4, target_modules=names, init_lora_weights=False)
    model = get_peft_model(copy.deepcopy(base), config)
    rows = toy_rows("llama")
    batch = encode_rows(rows, tok)
    feat = GradientFeaturizer(model, tok, FeaturizerConfig(batch_size=4), projector=RAW)
    assert any("lm_head" in n for n in feat.param_names)
    losses, grads = feat.per_sample_gradients(batch)
    _, ref = reference_gradients(model, tok, rows, feat.param_names)
    assert float(((grads - ref).norm(dim=1) / ref.norm(dim=1)).max()) < 1e-4
