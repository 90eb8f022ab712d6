"""Exact per-sample LoRA gradient features in one batched backward pass (LESS / ICONS step 2).

LESS (Xia et al., 2024) and ICONS (Wu et al., 2025) describe each sample `z` by the gradient of *its own* loss with
respect to the LoRA parameters of a warmed-up model, then project it (see [`mixwise.signals.projection`]). The published code
computes it in a batch-size-1 loop (one forward, one backward, one flattened `D`-vector, one projection per sample).
This module computes the same vectors for a whole padded batch at once:

* **Loss.** `L = Σ_i ℓ_i` with `ℓ_i` the mean negative log-likelihood over sample `i`'s *own* answer tokens
  ([`mixwise.signals.encoding.per_sample_nll`]). Because the samples do not interact in a causal LM with right padding,
  `∂L/∂θ` restricted to sample `i`'s activations is exactly `∂ℓ_i/∂θ` — never the batch-mean over all tokens of a
  padded batch, which would weight samples by their length.
* **Per-sample gradients from hooks.** A LoRA linear computes `y = W x + s · B A x`. With `a_t = A x_t` (captured by a
  forward hook on `lora_A`) and `δ_t = ∂ℓ_i/∂(B a_t)` (the gradient of `lora_B`'s output, which already carries the
  scaling `s`, captured by a tensor hook during backward):

      ∂ℓ_i/∂B = Σ_t δ_t a_tᵀ                  (out × r)
      ∂ℓ_i/∂A = Σ_t (Bᵀ δ_t) x_tᵀ = Σ_t γ_t x_tᵀ   (r × in),  γ_t = ∂ℓ_i/∂a_t (captured on `a`)

  summed over sample `i`'s tokens `t` (padding tokens have zero gradient). Each is a batched matrix product computed
  inside the hook, so at most one layer's per-sample gradients exist at a time. The backward pass itself is one
  `torch.autograd.grad` of `L` w.r.t. the LoRA weights (the frozen base weights get no gradient). Tested equal to a
  batch-size-1 autograd reference within 1e-4 relative, padded batches included.
* **Modes** (applied to the flattened per-sample gradient `g`):
  `sgd`: `g`; `sign`: `sign(g)`; `adam` (LESS, for pool samples): with the warm-up checkpoint's Adam moments `m, v`
  (matched **by parameter name**, see [`mixwise.signals.warmup.load_adam_state`]) and its `β1, β2`:
  `m' = β1 m + (1−β1) g`, `v' = β2 v + (1−β2) g²`, `Γ = m' / sqrt(v' + ε)`, `ε = 1e-8` inside the root, no bias
  correction, and the state is **not** updated between samples.
* **Projection.** `sgd`/`sign`/`adam` vectors are gathered in a buffer of up to `max_buffer_bytes` and projected
  together by the seeded block projector (dense `R`, generated blockwise) — one block generation is amortised over the
  whole buffer. With `projector.kind = "factorized"` (plain `sgd` only), each hook instead sketches `Σ_t u_t v_tᵀ`
  as `Σ_t (S_m u_t)(S_n v_t)ᵀ` and no per-sample gradient is ever materialised (see `benchmarks/featurize.py` for the
  measured difference).
* **Visual dependency** (ICONS appendix, optional): the feature is `T(g(real image)) − T(g(N(0,1) noise image))`
  with the same text, the noise drawn in the processor's pixel space from a generator seeded by
  `(noise_seed, row id)`.

[`HiddenStateFeaturizer`] gives the RDS baseline's features (last-token final hidden state) through the same
interface. Bad rows (no answer token, e.g. truncated away by `max_length`; a non-finite loss or gradient) raise a
[`~mixwise.sources.DataError`] naming the source, row and field, or — with `on_error="skip"` — are counted and get a
zero feature.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..fingerprint import derive_seed, short_hash
from ..models import eval_mode
from ..sources import DataError, row_images
from .encoding import RowEncoder, answer_nll, image_token_id, per_sample_nll
from .projection import BlockProjector, KroneckerProjector, ProjectorSpec

GRADIENT_MODES = ("sgd", "adam", "sign")


@dataclass
class FeaturizerConfig:
    """How per-sample features are computed.

    Attributes:
        mode: `sgd` (plain gradient; ICONS for pool and validation, LESS for validation), `adam` (LESS pool
            samples: the Adam-preconditioned update, needs a warm-up checkpoint's optimizer state) or `sign`.
        batch_size: rows per forward/backward pass.
        max_length: truncate encoded rows to this many tokens (right side). A row whose answer is cut away entirely,
            or whose image tokens would be cut, is a bad row. `None`: no truncation.
        max_buffer_bytes: per-sample flattened gradients are buffered up to this size (at least one batch) and
            projected together; larger buffers amortise the projection's block generation.
        cache_bytes: projection blocks kept in memory (see [`mixwise.signals.projection.BlockProjector`]).
        adam_eps: `ε` inside the square root of the Adam transform (LESS: 1e-8).
        visual_dependency: features `T(g(image)) − T(g(noise image))` (ICONS appendix) instead of `T(g(image))`.
        noise_seed: seed of the noise images.
        on_error: `"raise"` (default) or `"skip"` (zero feature, counted in the report).
    """

    mode: str = "sgd"
    batch_size: int = 8
    max_length: int | None = None
    max_buffer_bytes: int = 1 << 30
    cache_bytes: int = 1 << 30
    adam_eps: float = 1e-8
    visual_dependency: bool = False
    noise_seed: int = 0
    on_error: str = "raise"

    def __post_init__(self):
        if self.mode not in GRADIENT_MODES:
            raise ValueError(f"unknown gradient mode {self.mode!r}; expected one of {GRADIENT_MODES}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")

    def identity(self) -> dict[str, Any]:
        """The fields that change the features (written to the datastore manifest)."""
        return {
            "mode": self.mode,
            "max_length": self.max_length,
            "adam_eps": self.adam_eps if self.mode == "adam" else None,
            "visual_dependency": self.visual_dependency,
            "noise_seed": self.noise_seed if self.visual_dependency else None,
        }


@dataclass
class LoraLayerRef:
    """One LoRA linear layer of a peft model (the active adapter)."""

    module_name: str
    lora_a: torch.nn.Linear
    lora_b: torch.nn.Linear
    a_name: str  # parameter names as in `model.named_parameters()`
    b_name: str


def find_lora_layers(model: torch.nn.Module, adapter_name: str | None = None) -> list[LoraLayerRef]:
    """The LoRA linear layers of `model` for `adapter_name` (default: the model's active adapter).

    Raises a clear error for LoRA variants this featurizer does not differentiate exactly (DoRA and other
    `lora_variant`s, `lora_bias`, LoRA on embeddings/convolutions).
    """
    if adapter_name is None:
        active = getattr(model, "active_adapter", None)
        adapter_name = active if isinstance(active, str) else (active[0] if active else "default")
    names = {id(p): n for n, p in model.named_parameters()}
    layers = []
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or adapter_name not in lora_a:
            if getattr(module, "lora_embedding_A", None) is not None and adapter_name in getattr(
                module, "lora_embedding_A", {}
            ):
                raise NotImplementedError(f"LoRA on the embedding layer '{name}' is not supported by the featurizer")
            continue
        a, b = lora_a[adapter_name], module.lora_B[adapter_name]
        if not isinstance(a, torch.nn.Linear) or not isinstance(b, torch.nn.Linear):
            raise NotImplementedError(
                f"LoRA layer '{name}' uses {type(a).__name__}; only linear LoRA layers are supported"
            )
        if adapter_name in getattr(module, "lora_variant", {}):
            raise NotImplementedError(f"LoRA layer '{name}' uses a LoRA variant (e.g. DoRA); not supported")
        if b.bias is not None:
            raise NotImplementedError(f"LoRA layer '{name}' has a lora_B bias (lora_bias=True); not supported")
        layers.append(LoraLayerRef(name, a, b, names[id(a.weight)], names[id(b.weight)]))
    if not layers:
        raise ValueError(f"the model has no LoRA layers for adapter {adapter_name!r}; attach a LoRA adapter first")
    return layers


def lora_parameter_names(model: torch.nn.Module, layers: Sequence[LoraLayerRef]) -> list[str]:
    """The canonical flattening order: LoRA weights in `model.named_parameters()` order."""
    wanted = {ly.a_name for ly in layers} | {ly.b_name for ly in layers}
    return [n for n, _ in model.named_parameters() if n in wanted]


@dataclass
class AdamState:
    """Adam moments of the LoRA parameters, flattened in the featurizer's canonical order.

    Build with [`mixwise.signals.warmup.load_adam_state`], which matches the checkpoint's integer-keyed optimizer state to
    parameter names.
    """

    names: list[str]
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    beta1: float
    beta2: float
    step: float | None = None
    missing: list[str] = field(default_factory=list)  # parameters that had no optimizer state (zeros used)

    def flat(self, order: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        unknown = [n for n in order if n not in self.exp_avg]
        if unknown:
            raise KeyError(f"the Adam state has no entry for parameters {unknown[:3]} (of {len(unknown)})")
        m = torch.cat([self.exp_avg[n].reshape(-1).float() for n in order]).to(device)
        v = torch.cat([self.exp_avg_sq[n].reshape(-1).float() for n in order]).to(device)
        return m, v


def adam_transform(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, beta1: float, beta2: float, eps: float = 1e-8):
    """LESS's Adam update direction, in place on `g` (rows = samples): `Γ = m'/sqrt(v' + ε)` with
    `m' = β1 m + (1−β1) g`, `v' = β2 v + (1−β2) g²`; no bias correction; `m, v` are not updated."""
    v_new = g.square().mul_(1.0 - beta2).add_(v, alpha=beta2).add_(eps).sqrt_()
    return g.mul_(1.0 - beta1).add_(m, alpha=beta1).div_(v_new)


@dataclass
class FeatureResult:
    """Features of a list of rows: `features` (n, d') float32 before normalisation; `ok[i]` False for skipped
    rows (zero feature); `skipped`: `{"row", "source", "field", "problem"}` per skipped row; `losses`: per-row loss
    (NaN when skipped)."""

    features: torch.Tensor
    ok: torch.Tensor
    skipped: list[dict[str, Any]]
    losses: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------------
# The featurizers
# ---------------------------------------------------------------------------------------------------------------------


class _Featurizer:
    """Shared driver: batching (rows with and without images are never mixed), bad-row handling, buffering."""

    feature_dim: int

    def __init__(self, model: torch.nn.Module, processing_class: Any, config: FeaturizerConfig):
        self.model = model
        self.processing_class = processing_class
        self.config = config
        self.device = next(model.parameters()).device
        self.encoder = RowEncoder(processing_class, config.max_length, image_token_id(model))

    # subclasses: `_start(n)`, `_run_batch(batch, positions, row_ids) -> losses`, `_finish() -> (n, d')`

    def featurize_rows(
        self,
        rows: Sequence[Mapping[str, Any]],
        names: Sequence[tuple[str, int]],
        row_ids: Sequence[int] | None = None,
    ) -> FeatureResult:
        """Features of `rows` (the order is kept). `names[i] = (source, row)` names row `i` in errors; `row_ids`
        (default: the row numbers in `names`) seed the visual-dependency noise."""
        n = len(rows)
        if len(names) != n:
            raise ValueError(f"{n} rows but {len(names)} names")
        row_ids = [nm[1] for nm in names] if row_ids is None else list(row_ids)
        ok = torch.ones(n, dtype=torch.bool)
        losses = torch.full((n,), float("nan"))
        skipped: list[dict[str, Any]] = []

        def bad(i: int, err: DataError) -> None:
            if self.config.on_error == "raise":
                raise err
            ok[i] = False
            skipped.append({"position": i, "source": names[i][0], "row": names[i][1], "field": err.field,
                            "problem": err.problem})  # fmt: skip

        # rows with and without images are batched separately (a processor cannot mix them in one batch)
        groups: dict[bool, list[int]] = {}
        for i, row in enumerate(rows):
            has_images = bool(row_images(row))
            if self.config.visual_dependency and not has_images:
                bad(i, DataError(*names[i], "images", "visual-dependency features need a row with an image"))
                continue
            groups.setdefault(has_images, []).append(i)
        batches = []
        for idx in groups.values():
            batches += [idx[k : k + self.config.batch_size] for k in range(0, len(idx), self.config.batch_size)]
        self._start(n)
        for positions in batches:
            positions = list(positions)
            while positions:
                try:
                    batch = self.encoder.encode([rows[i] for i in positions], [names[i] for i in positions])
                except DataError:
                    # find the bad rows one by one, then encode the rest again
                    keep = []
                    for i in positions:
                        err = self.encoder.check_one(rows[i], names[i])
                        if err is None:
                            keep.append(i)
                        else:
                            bad(i, err)
                    if keep == positions:
                        raise
                    positions = keep
                    continue
                batch_losses = self._run_batch(batch, positions, [row_ids[i] for i in positions])
                finite = torch.isfinite(batch_losses)
                if bool(finite.all()):
                    losses[positions] = batch_losses.cpu()
                    break
                # a non-finite loss (or gradient): drop those rows and redo the batch without them
                for j in (~finite).nonzero().flatten().tolist():
                    what = "loss" if not math.isfinite(float(batch_losses[j])) else "gradient"
                    bad(positions[j], DataError(*names[positions[j]], what, "non-finite value (NaN or inf)"))
                positions = [p for p, f in zip(positions, finite.tolist()) if f]
        features = self._finish()
        features[~ok.to(features.device)] = 0.0
        return FeatureResult(features=features, ok=ok, skipped=skipped, losses=losses)

    def _inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {
            k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != "labels"
        }

    def _start(self, n: int) -> None:
        raise NotImplementedError

    def _run_batch(self, batch, positions, row_ids) -> torch.Tensor:
        raise NotImplementedError

    def _finish(self) -> torch.Tensor:
        raise NotImplementedError


class GradientFeaturizer(_Featurizer):
    """Per-sample LoRA gradient features (see the module docstring for the formulas).

    Args:
        model: a peft model with a LoRA adapter attached once and **unmerged** (e.g.
            `PeftModel.from_pretrained(base, checkpoint, is_trainable=True)`); left as it was on exit.
        processing_class: its processor or tokenizer (with a chat template).
        config: mode, batch size, truncation, buffering, error handling.
        projector: `ProjectorSpec` (`gaussian`/`rademacher`: dense blockwise; `factorized`: Kronecker, `sgd` only;
            `none`: the raw `D`-dim gradient, for tests and small adapters).
        adam: the Adam moments for `mode="adam"`.
        adapter_name: which adapter (default: the active one).
        projector_instance: reuse another featurizer's projector (same spec and gradient size), so that its block
            cache is shared (e.g. between the pool and the validation featurizers).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processing_class: Any,
        config: FeaturizerConfig | None = None,
        projector: ProjectorSpec | None = None,
        adam: AdamState | None = None,
        adapter_name: str | None = None,
        projector_instance: BlockProjector | KroneckerProjector | None = None,
    ):
        super().__init__(model, processing_class, config or FeaturizerConfig())
        self.layers = find_lora_layers(model, adapter_name)
        self.param_names = lora_parameter_names(model, self.layers)
        params = dict(model.named_parameters())
        self.shapes = {n: tuple(params[n].shape) for n in self.param_names}
        self.offsets: dict[str, int] = {}
        offset = 0
        for n in self.param_names:
            self.offsets[n] = offset
            offset += math.prod(self.shapes[n])
        self.input_dim = offset
        # Logits at answer positions only (fewer LM-head rows), unless the LM head itself carries LoRA weights: their
        # per-sample gradients need the head's input laid out by sample.
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head_params = {id(p) for p in head.parameters()} if head is not None else set()
        self._answer_logits_only = not any(id(params[n]) in head_params for n in self.param_names)
        self.spec = projector or ProjectorSpec()
        mode = self.config.mode
        shared = getattr(projector_instance, "spec", None) if projector_instance is not None else None
        if shared is not None and (
            shared != self.spec or getattr(projector_instance, "input_dim", None) not in (None, offset)
        ):
            raise ValueError("the shared projector does not match this featurizer's projection spec or gradient size")
        if self.spec.kind == "factorized" and mode != "sgd":
            raise ValueError(f"the factorized projection is linear in the token factors; mode {mode!r} needs 'sgd'")
        if projector_instance is not None:
            self.projector: Any = projector_instance
        elif self.spec.kind == "factorized":
            self.projector = KroneckerProjector(self.shapes, self.spec, device=self.device)
        elif self.spec.kind == "none":
            self.projector = None
        else:
            self.projector = BlockProjector(self.input_dim, self.spec, self.config.cache_bytes, device=self.device)
        self.feature_dim = self.input_dim if self.projector is None else self.spec.dim
        if mode == "adam":
            if adam is None:
                raise ValueError("mode 'adam' needs the warm-up checkpoint's optimizer state (`adam=...`)")
            self.adam_m, self.adam_v = adam.flat(self.param_names, self.device)
            self.adam_betas = (adam.beta1, adam.beta2)
        per_row = self.input_dim * 4
        self.buffer_rows = max(self.config.batch_size, self.config.max_buffer_bytes // per_row)
        self._sink: Callable[[str, torch.Tensor, torch.Tensor], None] | None = None

    # -- hooks ------------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Eval mode, only the LoRA weights require grad, hooks on `lora_A`/`lora_B`; all restored on exit."""
        model = self.model
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        lora = set(self.param_names)
        handles = []
        for ly in self.layers:
            handles.append(ly.lora_a.register_forward_hook(self._hook_a(ly.a_name)))
            handles.append(ly.lora_b.register_forward_hook(self._hook_b(ly.b_name)))
        try:
            with eval_mode(model):
                for n, p in model.named_parameters():
                    p.requires_grad_(n in lora)
                yield
        finally:
            for h in handles:
                h.remove()
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])

    def _hook_a(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0]
            if output.requires_grad and self._sink is not None:
                output.register_hook(lambda grad: self._emit(name, grad, x))  # ∂ℓ/∂a_t ⊗ x_t

        return hook

    def _hook_b(self, name: str):
        def hook(module, inputs, output):
            a = inputs[0]
            if output.requires_grad and self._sink is not None:
                output.register_hook(lambda grad: self._emit(name, grad, a))  # δ_t ⊗ a_t

        return hook

    def _emit(self, name: str, u: torch.Tensor, v: torch.Tensor) -> None:
        batch = self._batch_size
        if u.shape[0] != batch:
            raise RuntimeError(f"LoRA parameter '{name}': leading dimension {u.shape[0]} is not the batch ({batch})")
        self._sink(name, u.reshape(batch, -1, u.shape[-1]).float(), v.reshape(batch, -1, v.shape[-1]).float())

    # -- one batch ----------------------------------------------------------------------------------------------------

    def _backward(self, batch: Mapping[str, torch.Tensor], sink, pixel_values: torch.Tensor | None = None):
        """Forward, per-sample losses, one backward of `Σ_i ℓ_i`; the hooks feed `sink(name, u, v)`."""
        inputs = self._inputs(batch)
        if pixel_values is not None:
            inputs["pixel_values"] = pixel_values
        labels = batch["labels"].to(self.device)
        self._batch_size = labels.shape[0]
        params = [p for n, p in self.model.named_parameters() if n in self.offsets]
        self._sink = sink
        try:
            with torch.enable_grad():
                if self._answer_logits_only:
                    losses, _ = answer_nll(self.model, {**inputs, "use_cache": False}, labels)
                else:
                    losses = per_sample_nll(self.model(**inputs, use_cache=False).logits, labels)
                if not bool(torch.isfinite(losses).all()):
                    return losses.detach()
                torch.autograd.grad(losses.sum(), params, allow_unused=True)
        finally:
            self._sink = None
        return losses.detach()

    def per_sample_gradients(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(losses (B,), raw per-sample gradients (B, D))` in the canonical order (no mode, no projection)."""
        n = batch["labels"].shape[0]
        flat = torch.zeros(n, self.input_dim, device=self.device)
        with self.capturing():
            losses = self._backward(batch, self._flat_sink(flat))
        return losses, flat

    def _flat_sink(self, flat: torch.Tensor):
        def sink(name: str, u: torch.Tensor, v: torch.Tensor) -> None:
            off = self.offsets[name]
            size = math.prod(self.shapes[name])
            flat[:, off : off + size] += torch.bmm(u.transpose(1, 2), v).reshape(u.shape[0], -1)

        return sink

    def _kron_sink(self, out: torch.Tensor):
        proj: KroneckerProjector = self.projector

        def sink(name: str, u: torch.Tensor, v: torch.Tensor) -> None:
            s_m, s_n = proj.matrices(name)
            f = proj.factors[name]
            sketch = torch.bmm((u @ s_m.T).transpose(1, 2), v @ s_n.T)  # Σ_t (S_m u_t)(S_n v_t)ᵀ
            out[:, f.offset : f.offset + f.keep] += sketch.reshape(u.shape[0], -1)[:, : f.keep] / math.sqrt(f.keep)

        return sink

    def _transform(self, g: torch.Tensor) -> torch.Tensor:
        mode = self.config.mode
        if mode == "sign":
            return g.sign_()
        if mode == "adam":
            return adam_transform(g, self.adam_m, self.adam_v, *self.adam_betas, eps=self.config.adam_eps)
        return g

    # -- driver hooks ---------------------------------------------------------------------------------------------------

    def _start(self, n: int) -> None:
        self._out = torch.zeros(n, self.feature_dim, device=self.device)
        self._buffer = None
        self._buffered: list[int] = []
        if self.projector is not None and not isinstance(self.projector, KroneckerProjector):
            self._buffer = torch.zeros(min(n, self.buffer_rows), self.input_dim, device=self.device)

    def _run_batch(self, batch, positions, row_ids) -> torch.Tensor:
        noise = self._noise(batch, row_ids) if self.config.visual_dependency else None
        n = len(positions)
        if isinstance(self.projector, KroneckerProjector):
            out = torch.zeros(n, self.feature_dim, device=self.device)
            with self.capturing():
                losses = self._backward(batch, self._kron_sink(out))
                if noise is not None and bool(torch.isfinite(losses).all()):
                    neg = torch.zeros_like(out)
                    losses2 = self._backward(batch, self._kron_sink(neg), pixel_values=noise)
                    out -= neg
                    losses = torch.where(torch.isfinite(losses2), losses, losses2)
            losses = _mark_nonfinite(losses, out)
            if bool(torch.isfinite(losses).all()):
                self._out[positions] = out
            return losses
        flat = torch.zeros(n, self.input_dim, device=self.device)
        with self.capturing():
            losses = self._backward(batch, self._flat_sink(flat))
            if bool(torch.isfinite(losses).all()):
                self._transform(flat)
                if noise is not None:
                    neg = torch.zeros_like(flat)
                    losses2 = self._backward(batch, self._flat_sink(neg), pixel_values=noise)
                    flat -= self._transform(neg)
                    losses = torch.where(torch.isfinite(losses2), losses, losses2)
        losses = _mark_nonfinite(losses, flat)
        if not bool(torch.isfinite(losses).all()):
            return losses
        if self.projector is None:
            self._out[positions] = flat
            return losses
        if len(self._buffered) + n > self._buffer.shape[0]:
            self._flush()
        start = len(self._buffered)
        self._buffer[start : start + n] = flat
        self._buffered += list(positions)
        return losses

    def _flush(self) -> None:
        if self._buffered:
            k = len(self._buffered)
            self._out[self._buffered] = self.projector.project(self._buffer[:k])
            self._buffered = []

    def _finish(self) -> torch.Tensor:
        if self._buffer is not None:
            self._flush()
        out, self._out, self._buffer = self._out, None, None
        return out

    def _noise(self, batch: Mapping[str, torch.Tensor], row_ids: Sequence[int]) -> torch.Tensor:
        """N(0,1) pixel values of the batch's shape; row `i`'s part seeded by `(noise_seed, row id)`."""
        pixels = batch.get("pixel_values")
        if pixels is None:
            raise ValueError("visual-dependency features need a model input `pixel_values`")
        n = len(row_ids)
        if "image_grid_thw" in batch:  # Qwen2-VL: flattened patches, per image prod(t, h, w) rows
            sizes = batch["image_grid_thw"].prod(dim=1).tolist()
        else:
            sizes = [1] * pixels.shape[0]
        if len(sizes) % n:
            raise ValueError("visual-dependency noise needs the same number of images in every row of a batch")
        per_row = len(sizes) // n
        parts = []
        k = 0
        for rid in row_ids:
            rows = sum(sizes[k : k + per_row])
            k += per_row
            gen = torch.Generator().manual_seed(derive_seed("mixwise-noise", self.config.noise_seed, rid))
            parts.append(torch.randn((rows, *pixels.shape[1:]), generator=gen))
        return torch.cat(parts).to(device=self.device, dtype=pixels.dtype)

    def identity(self) -> dict[str, Any]:
        """What determines these features apart from the model and data (for the datastore manifest)."""
        return {
            "signal": "gradient",
            **self.config.identity(),
            "projector": self.spec.to_dict(),
            "input_dim": self.input_dim,
            "parameters_sha": _names_hash(self.param_names, self.shapes),
        }


def _mark_nonfinite(losses: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Set the loss of rows whose features are not finite to NaN (so they are reported as bad rows)."""
    bad = ~torch.isfinite(feats).all(dim=1)
    if bool(bad.any()):
        losses = losses.clone()
        losses[bad.to(losses.device)] = float("nan")
    return losses


def _names_hash(names: Sequence[str], shapes: Mapping[str, tuple[int, ...]]) -> str:
    return short_hash(repr([(n, shapes[n]) for n in names]).encode(), 16)


class HiddenStateFeaturizer(_Featurizer):
    """RDS baseline features: the final hidden state of each row's last (non-padding) token.

    RDS (representation-based data selection, used as a baseline by LESS and ICONS) replaces the gradient by the
    last token's final-layer hidden state; the same normalisation, influence and vote follow.
    """

    def __init__(self, model: torch.nn.Module, processing_class: Any, config: FeaturizerConfig | None = None):
        super().__init__(model, processing_class, config or FeaturizerConfig())
        text_config = getattr(model.config, "text_config", model.config)
        base = getattr(model, "get_base_model", None)
        if base is not None:
            text_config = getattr(base().config, "text_config", base().config)
        self.feature_dim = int(text_config.hidden_size)
        self.spec = ProjectorSpec(kind="none", dim=self.feature_dim)

    def _start(self, n: int) -> None:
        self._out = torch.zeros(n, self.feature_dim, device=self.device)

    def _run_batch(self, batch, positions, row_ids) -> torch.Tensor:
        with eval_mode(self.model), torch.no_grad():
            out = self.model(**self._inputs(batch), output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]
        last = batch["attention_mask"].to(self.device).sum(dim=1) - 1
        feats = hidden[torch.arange(hidden.shape[0], device=self.device), last].float()
        losses = per_sample_nll(out.logits, batch["labels"].to(self.device))
        losses = _mark_nonfinite(losses, feats)
        if bool(torch.isfinite(losses).all()):
            self._out[positions] = feats
        return losses

    def _finish(self) -> torch.Tensor:
        out, self._out = self._out, None
        return out

    def identity(self) -> dict[str, Any]:
        return {
            "signal": "rds",
            "mode": None,
            "max_length": self.config.max_length,
            "projector": self.spec.to_dict(),
            "input_dim": self.feature_dim,
        }


__all__ = [
    "GRADIENT_MODES",
    "AdamState",
    "FeatureResult",
    "FeaturizerConfig",
    "GradientFeaturizer",
    "HiddenStateFeaturizer",
    "LoraLayerRef",
    "adam_transform",
    "find_lora_layers",
    "lora_parameter_names",
]
