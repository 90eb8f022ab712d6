"""GPU check (issue 15, item 7), prepared but not run here (no GPU was lent): featurizer and DataProphet throughput on
a 2B-class LLaVA shape in bf16 (random weights), next to their references, in one process, in a few minutes.

    python benchmarks/gpu.py                                   # on a GPU: --shape 2b --device cuda --dtype bfloat16
    python benchmarks/gpu.py --shape tiny --device cpu --dtype float32 --rows 8 --ref_rows 2   # smoke test on CPU

Measured, on the same model and rows (toy rows at the shape's image size, answers of varied length):

* `featurizer` — `GradientFeaturizer` (batched per-sample LoRA gradients through hooks) on `--rows` rows,
  projected to `--dim` by the per-layer factorized projection (default: no per-sample gradient materialised; the
  2B shape's LoRA gradient has D ≈ 121M entries, whose dense D × 8192 Gaussian matrix cannot be cached and is
  regenerated blockwise at every buffer flush) or `--projector gaussian` (buffering `--buffer_gb` of gradients per
  flush): samples/s;
* `less_ref` — the LESS / ICONS way on `--ref_rows` rows: batch size 1, `loss.backward()`, the LoRA `.grad`s
  flattened and projected with a blockwise Gaussian projector regenerated at every call (as TRAK's projector,
  which LESS uses, does): samples/s; ratio featurizer / less_ref (goal >= 10);
* `train_step` — a plain LoRA training step (forward + backward + AdamW) on the same batches: samples/s; ratio
  featurizer / train_step (goal >= 0.8);
* MFU of each: `k · P · T / seconds / peak`, with P the model's parameters, T the tokens processed, k = 6 for the
  training step (forward + backward of weights and activations), 4 for the featurizer (forward + activation
  backward; the LoRA gradients are formed from the hooks) and 4 for the reference (forward + backward), and
  `--peak_tflops` the device's dense bf16 peak (default 989, an H100/H200 SXM); goal >= 40% for the featurizer;
* `dataprophet` — `DataProphet(subsample=None)` scoring of the rows with every signal, next to a bare batched
  forward of the full conversation: samples/s and their ratio.

The 2B-class shape: CLIP tower 24 x 1024 (16 heads, 4096 intermediate, 336 px images in 14 px patches: 576 image
tokens), Llama 24 x 2048 (16 heads, 5632 intermediate), vocabulary 32000, LoRA r=128 on every linear layer of the
language model (the ICONS preset): about 1.8B parameters.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = {
    "2b": dict(
        image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16, vision_intermediate=4096,
        text_hidden=2048, text_layers=24, text_heads=16, text_kv_heads=16, text_intermediate=5632,
    ),
    "tiny": dict(),
}  # fmt: skip


def build(a):
    from peft import get_peft_model

    from mixwise.signals.warmup import WarmupConfig, lora_config
    from mixwise.testing import build_llava, build_tiny_llava

    if a.shape == "tiny":
        model, processor = build_tiny_llava(seed=0)
        image_size = 32
    else:
        model, processor = build_llava(seed=0, vocab_size=32000, **SHAPES[a.shape])
        image_size = SHAPES[a.shape]["image_size"]
    dtype = getattr(torch, a.dtype)
    model = model.to(device=a.device, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = lora_config(model, WarmupConfig(r=a.r, alpha=2 * a.r, dropout=0.0))
        cfg.init_lora_weights = False  # random A and B: both gradients non-zero, as after a warm-up
        peft_model = get_peft_model(model, cfg)
    peft_model.to(device=a.device, dtype=dtype)
    return peft_model, processor, image_size, n_params


def rows(n: int, image_size: int):
    from mixwise.toy import make_source

    families = ("count", "colour", "ocr", "chart", "spatial", "shape")
    out = []
    for i in range(n):
        row = make_source(families[i % len(families)], i // len(families) + 1, seed=5, image_size=image_size)[-1]
        words = "the answer is " + " ".join(["red", "blue", "circle", "square", "three"][: 1 + i % 5]) * (1 + i % 4)
        row["messages"][1]["content"][0]["text"] = words
        out.append(row)
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="2b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--ref_rows", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dim", type=int, default=8192)
    p.add_argument("--r", type=int, default=128)
    p.add_argument("--peak_tflops", type=float, default=989.0)
    p.add_argument(
        "--projector",
        choices=["gaussian", "factorized"],
        default="factorized",
        help="the featurizer's projection (the reference always projects densely)",
    )
    p.add_argument("--buffer_gb", type=float, default=8.0, help="per-sample gradients buffered per projection")
    p.add_argument(
        "--skip", default="", help="comma-separated parts to skip: featurizer,less_ref,train_step,dataprophet"
    )
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))

    from mixwise.signals.encoding import encode_rows, per_sample_nll
    from mixwise.signals.gradients import FeaturizerConfig, GradientFeaturizer
    from mixwise.signals.projection import BlockProjector, ProjectorSpec

    torch.manual_seed(0)
    model, processor, image_size, n_params = build(a)
    data = rows(a.rows, image_size)
    names = [("bench", i) for i in range(a.rows)]
    batches = [encode_rows(data[k : k + a.batch], processor) for k in range(0, a.rows, a.batch)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    ref_tokens = sum(int(encode_rows([row], processor)["attention_mask"].sum()) for row in data[: a.ref_rows])
    spec = ProjectorSpec(kind="gaussian", dim=a.dim, seed=0)
    print(f"shape={a.shape}: {n_params / 1e9:.2f}B parameters, {a.dtype} on {a.device}; {a.rows} rows "
          f"({tokens / a.rows:.0f} tokens/row), batch {a.batch}, LoRA r={a.r}, projection to {a.dim}", flush=True)  # fmt: skip
    peak = a.peak_tflops * 1e12
    results = {}

    def report(name, n, seconds, flops):
        results[name] = n / seconds
        print(f"  {name:<12} {n / seconds:9.2f} samples/s   MFU {flops / seconds / peak:6.1%}", flush=True)

    if "featurizer" not in skip:
        cfg = FeaturizerConfig(batch_size=a.batch, max_buffer_bytes=int(a.buffer_gb * 2**30))
        feat = GradientFeaturizer(model, processor, cfg, projector=ProjectorSpec(kind=a.projector, dim=a.dim, seed=0))
        feat.featurize_rows(data[: a.batch], names[: a.batch])  # warm-up: kernels, allocator, projection blocks
        seconds = timed(lambda: feat.featurize_rows(data, names), a.device)
        report("featurizer", a.rows, seconds, 4 * n_params * tokens)
        print(f"               (LoRA gradient size D = {feat.input_dim:,})")
        del feat
    if "less_ref" not in skip:
        params = [p for n_, p in model.named_parameters() if "lora_" in n_]
        for n_, p in model.named_parameters():
            p.requires_grad_("lora_" in n_)
        proj = BlockProjector(sum(p.numel() for p in params), spec, cache_bytes=0, device=torch.device(a.device))
        model.eval()

        def one(row):
            batch = {k: v.to(a.device) for k, v in encode_rows([row], processor).items()}
            labels = batch.pop("labels")
            loss = per_sample_nll(model(**batch).logits, labels)[0]
            model.zero_grad(set_to_none=True)
            loss.backward()
            return proj.project(torch.cat([p.grad.reshape(-1) for p in params]).float()[None])[0]

        one(data[0])
        seconds = timed(lambda: [one(row) for row in data[: a.ref_rows]], a.device)
        report("less_ref", a.ref_rows, seconds, 4 * n_params * ref_tokens)
        model.zero_grad(set_to_none=True)
    if "train_step" not in skip:
        params = [p for n_, p in model.named_parameters() if "lora_" in n_]
        opt = torch.optim.AdamW(params, lr=1e-5)
        model.train()
        on_device = [{k: v.to(a.device) for k, v in b.items()} for b in batches]

        def epoch():
            for b in on_device:
                model(**b).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        epoch()
        seconds = timed(epoch, a.device)
        report("train_step", a.rows, seconds, 6 * n_params * tokens)
        model.eval()
        del opt
    if "featurizer" in results and "less_ref" in results:
        print(f"featurizer / less_ref: {results['featurizer'] / results['less_ref']:.1f}x (goal >= 10)")
    if "featurizer" in results and "train_step" in results:
        print(f"featurizer / train_step: {results['featurizer'] / results['train_step']:.2f} (goal >= 0.8)")
    if "dataprophet" not in skip:
        from mixwise.dataprophet import DataProphet
        from mixwise.toy import make_source

        base = model.get_base_model()
        source = make_source("chart", a.rows, seed=0, image_size=image_size)
        target = make_source("count", 16, split="validation", seed=0, image_size=image_size)
        src_rows = [source[i] for i in range(len(source))]

        @torch.no_grad()
        def bare():
            for k in range(0, a.rows, a.batch):
                batch = {k_: v.to(a.device) for k_, v in encode_rows(src_rows[k : k + a.batch], processor).items()}
                batch.pop("labels")
                base(**batch)

        def score():
            selector = DataProphet(subsample=None, progress=False, batch_size=a.batch, embedding_batch_size=a.batch)
            selector.score({"chart": source}, {"count": target}, base, processor, model_id="bench")

        bare()
        t_bare = timed(bare, a.device, repeats=2)
        t_score = timed(score, a.device, repeats=2)
        print(f"  bare forward {a.rows / t_bare:9.2f} samples/s")
        print(f"  dataprophet  {(a.rows + len(target)) / t_score:9.2f} samples/s   ratio "
              f"{((a.rows + len(target)) / t_score) / (a.rows / t_bare):.2f} (goal >= 0.8)")  # fmt: skip


if __name__ == "__main__":
    main()
