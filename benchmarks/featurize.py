"""Benchmark: mixwise's batched per-sample LoRA gradient featurizer vs a LESS-style reference and vs training.

Not part of CI. One run measures, side by side on the same randomly initialised LLaVA-shaped model (~30M parameters:
CLIP tower 4x256, Llama 8x512, LoRA on every linear layer of the language model) and the same rows:

* `less_ref`   — the LESS/ICONS way: a batch-size-1 loop; per row, `loss.backward()`, the LoRA `.grad`s flattened
                 into one `D`-vector, projected with a dense `D × d'` matrix held in memory (the most favourable
                 version of the reference: TRAK's CPU `BasicProjector`, which LESS falls back to without CUDA,
                 regenerates the matrix at every call, which is far slower still — `less_ref_regen`, run on 2 rows);
* `ours_dense` — `GradientFeaturizer` (batched hooks, buffered blockwise projection; the block cache holds the whole
                 matrix, i.e. the same memory as the reference);
* `ours_bounded` — the same with the default 1 GiB block cache (memory bounded; blocks beyond it are regenerated
                 once per buffer flush);
* `ours_factorized` — the per-layer Kronecker projection (`sgd` only, no per-sample gradient materialised);
* `train_step` — a plain LoRA training step (forward + backward + AdamW) on the same batches: the practical limit.

Each method runs in its own subprocess (sequentially) so that its peak resident memory (sampled every 5 ms,
minus the resident memory right before its projection matrix / cache / optimizer is built) is its own. Features of `ours_dense` are checked against
`less_ref` (same matrix) before timing is reported.

usage: python benchmarks/featurize.py [--rows 48] [--ref_rows 12] [--batch 8] [--dim 2048] [--r 8] [--rounds 1]
       [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))


# ---------------------------------------------------------------------------------------------------------------------
# The model and data (identical in every worker)
# ---------------------------------------------------------------------------------------------------------------------


# The LLaVA-shaped model of this benchmark (also used by `benchmarks/dataprophet.py --shape llava`).
LLAVA_SHAPE = dict(
    image_size=64, patch_size=16, vision_hidden=256, vision_layers=4, vision_heads=4, vision_intermediate=1024,
    text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=8, text_intermediate=1408,
)  # fmt: skip


def build(r: int, dropout: float = 0.0):
    from peft import get_peft_model

    from mixwise.signals.warmup import WarmupConfig, lora_config
    from mixwise.testing import build_llava

    model, processor = build_llava(seed=0, **LLAVA_SHAPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = lora_config(model, WarmupConfig(r=r, alpha=2 * r, dropout=dropout))
        cfg.init_lora_weights = False  # random A and B: both gradients non-zero, as after a warm-up
        model = get_peft_model(model, cfg)
    return model, processor


def rows(n: int):
    """Toy rows of several families, answers of varied length (so batches are padded), ~60-110 tokens each."""
    from mixwise.toy import make_source

    families = ("count", "colour", "ocr", "chart", "spatial", "shape")
    out = []
    for i in range(n):
        row = make_source(families[i % len(families)], i // len(families) + 1, seed=5, image_size=64)[-1]
        words = "the answer is " + " ".join(["red", "blue", "circle", "square", "three"][: 1 + i % 5]) * (1 + i % 4)
        row["messages"][1]["content"][0]["text"] = words
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------------------------------


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.base = rss()
        self.peak = self.base
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss())


def dense_matrix(proj):
    """The projector's full R, assembled block by block into one preallocated tensor."""
    out = torch.empty(proj.input_dim, proj.dim)
    for b in range(proj.n_blocks):
        lo, hi = proj.block_range(b)
        out[lo:hi] = proj._generate(b)
    return out


def worker(method: str, a) -> dict:
    from mixwise.signals.encoding import encode_rows, per_sample_nll
    from mixwise.signals.gradients import FeaturizerConfig, GradientFeaturizer
    from mixwise.signals.projection import BlockProjector, ProjectorSpec

    torch.manual_seed(0)
    model, processor = build(a.r)
    n = a.ref_rows if method.startswith("less_ref") else a.rows
    if method == "less_ref_regen":
        n = 2
    data = rows(n)
    spec = ProjectorSpec(kind="factorized" if method == "ours_factorized" else "gaussian", dim=a.dim, seed=0)
    names = [("bench", i) for i in range(n)]
    info: dict = {"method": method, "rows": n}
    mem = PeakRSS().__enter__()  # memory from here on (projection matrix or cache included); time: the loop only
    if method.startswith("ours"):
        cache = {"ours_dense": 1 << 40, "ours_bounded": 1 << 30, "ours_factorized": 0}[method]
        cfg = FeaturizerConfig(batch_size=a.batch, cache_bytes=cache, max_buffer_bytes=1 << 30)
        feat = GradientFeaturizer(model, processor, cfg, projector=spec)
        info["D"] = feat.input_dim
        if method == "ours_dense":  # fill the cache outside the timing: the reference's matrix is built untimed too
            for b in range(feat.projector.n_blocks):
                feat.projector.block(b)
        feat.featurize_rows(data[: a.batch], names[: a.batch])  # warm-up (kernels, allocator)
        t = time.perf_counter()
        result = feat.featurize_rows(data, names)
        info["seconds"] = time.perf_counter() - t
        info["features"] = result.features[: a.ref_rows].tolist()
    elif method.startswith("less_ref"):
        params = [p for n_, p in model.named_parameters() if "lora_" in n_]
        for n_, p in model.named_parameters():
            p.requires_grad_("lora_" in n_)
        d = sum(p.numel() for p in params)
        info["D"] = d
        proj = BlockProjector(d, spec, cache_bytes=0)
        matrix = dense_matrix(proj) if method == "less_ref" else None
        model.eval()

        def one(row):
            batch = encode_rows([row], processor)
            labels = batch.pop("labels")
            loss = per_sample_nll(model(**batch).logits, labels)[0]
            model.zero_grad(set_to_none=True)
            loss.backward()
            g = torch.cat([p.grad.reshape(-1) for p in params])  # the flattened full LoRA gradient
            if matrix is not None:
                return g @ matrix
            return proj.project(g[None])[0]  # TRAK BasicProjector-style: regenerate R at every call

        one(data[0])
        t = time.perf_counter()
        feats = [one(row) for row in data]
        info["seconds"] = time.perf_counter() - t
        info["features"] = torch.stack(feats).tolist()
    else:  # train_step
        params = [p for n_, p in model.named_parameters() if "lora_" in n_]
        opt = torch.optim.AdamW(params, lr=1e-4)
        batches = [encode_rows(data[k : k + a.batch], processor) for k in range(0, n, a.batch)]
        model.train()

        def step(batch):
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step(batches[0])
        t = time.perf_counter()
        for batch in batches:
            step(batch)
        info["seconds"] = time.perf_counter() - t
    mem.__exit__(None, None, None)
    info["samples_per_s"] = n / info["seconds"]
    info["peak_extra_bytes"] = mem.peak - mem.base
    info["peak_rss_bytes"] = mem.peak
    return info


# ---------------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=48)
    p.add_argument("--ref_rows", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (1: robust on a shared machine)")
    p.add_argument("--methods", default="less_ref,ours_dense,ours_bounded,ours_factorized,train_step,less_ref_regen")
    p.add_argument("--worker", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.worker:
        info = worker(a.worker, a)
        with open(a.out, "w") as f:
            json.dump(info, f)
        return

    model, _ = build(a.r)
    n_params = sum(p.numel() for p in model.parameters())
    d = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    del model
    print(f"model: LLaVA-shaped, {n_params / 1e6:.1f}M parameters; LoRA r={a.r} on every linear layer of the LM: "
          f"D = {d:,}; d' = {a.dim}; dense R = {d * a.dim * 4 / 2**30:.2f} GiB (float32)")  # fmt: skip
    print(f"rows: {a.rows} (reference: {a.ref_rows}), batch {a.batch}, torch threads {torch.get_num_threads()}")
    results: dict[str, dict] = {}
    methods = a.methods.split(",")
    for rnd in range(a.rounds):
        for m in methods:
            out = f"/tmp/mixwise-bench-{os.getpid()}-{m}.json"
            cmd = [sys.executable, __file__, "--worker", m, "--out", out] + [
                f"--{k}={getattr(a, k)}" for k in ("rows", "ref_rows", "batch", "dim", "r", "threads")
            ]
            subprocess.run(cmd, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            with open(out) as f:
                info = json.load(f)
            os.remove(out)
            if m not in results or info["samples_per_s"] > results[m]["samples_per_s"]:
                results[m] = info
            print(f"  round {rnd}: {m:<16} {info['samples_per_s']:8.2f} samples/s   "
                  f"peak +{info['peak_extra_bytes'] / 2**20:8.0f} MiB", flush=True)  # fmt: skip
    if "less_ref" in results and "ours_dense" in results:
        ref = torch.tensor(results["less_ref"]["features"])
        ours = torch.tensor(results["ours_dense"]["features"])[: len(ref)]
        rel = float(((ours - ref).norm(dim=1) / ref.norm(dim=1)).max())
        print(f"check: ours_dense vs less_ref features, max relative difference {rel:.2e}")
    print()
    print(f"{'method':<18}{'samples/s':>12}{'peak extra RSS':>18}")
    for m, info in results.items():
        print(f"{m:<18}{info['samples_per_s']:>12.2f}{info['peak_extra_bytes'] / 2**20:>14.0f} MiB")
    print()
    ref = results.get("less_ref")
    train = results.get("train_step")
    for m in ("ours_dense", "ours_bounded", "ours_factorized"):
        if m not in results:
            continue
        line = f"{m:<18}"
        if ref:
            line += f" vs less_ref: {results[m]['samples_per_s'] / ref['samples_per_s']:6.2f}x faster"
        if "less_ref_regen" in results:
            line += f" | vs less_ref_regen: {results[m]['samples_per_s'] / results['less_ref_regen']['samples_per_s']:7.1f}x"
        if train:
            line += f" | {results[m]['samples_per_s'] / train['samples_per_s']:5.2f}x of training throughput"
        print(line)
    if ref and train:
        # A featurizer does a training step's forward and backward (per-sample gradients need the full backward),
        # so a training step's speed over the reference bounds what any featurizer can reach on this machine.
        print(f"ceiling: a plain training step is {train['samples_per_s'] / ref['samples_per_s']:.2f}x less_ref")


if __name__ == "__main__":
    main()
