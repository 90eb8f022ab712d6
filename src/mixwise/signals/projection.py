"""Seeded, memory-bounded random projections of gradient features (LESS / ICONS step 3).

LESS (Xia et al., 2024) and ICONS (Wu et al., 2025) compress each per-sample LoRA gradient `g ∈ R^D` with a random
matrix, `g̃ = Rᵀ g` with `R ∈ R^{D×d'}` (`d'` = 8192 in LESS, 5120 in ICONS; the paper's ablation plateaus around
5120), then L2-normalise `g̃` (cosine similarity; avoids the short-sequence bias of raw inner products). By the
Johnson–Lindenstrauss lemma, entries drawn i.i.d. from `N(0, 1/d')` (or `±1/sqrt(d')`) give
`E⟨Rᵀg, Rᵀh⟩ = ⟨g, h⟩` and, for unit vectors, `|⟨Rᵀg, Rᵀh⟩ − ⟨g, h⟩| ≤ ε` with probability `≥ 1 − δ` once
`d' ≥ 8 ln(4/δ) / ε²` (norm preservation of `g ± h`, union bound) — see [`jl_epsilon`].

Two projectors:

* [`BlockProjector`] (`kind="gaussian"` or `"rademacher"`, the default): the exact dense `R`, but never held as a
  dense `D × d'` matrix. `R` is cut into row blocks of `block_rows` input coordinates; block `b` is generated on the
  CPU by a `torch.Generator` seeded with a 64-bit integer derived from `(seed, b)` (sha256, so identical in every
  process, rerun and machine), and optionally kept in a bounded in-memory cache. `x @ R` is accumulated block by
  block. **Peak memory** of a projection of a `(B, D)` batch, beyond the batch itself:
  `min(cache_bytes, D·d'·4) + block_rows·d'·4 + B·d'·4` bytes — e.g. with `d' = 8192`, the default
  `block_rows = 2048` (a 64 MiB block) and the default 1 GiB cache: at most ~1.1 GiB however large `D` is. Without a
  cache every call regenerates the blocks (`D·d'` normal draws, ~200 M/s/core on CPU), which is why the featurizer
  projects a *buffer* of many samples at once.
* [`KroneckerProjector`] (`kind="factorized"`, only for plain `sgd` gradients): a per-parameter Kronecker-structured
  projection `S_m G S_nᵀ` of each `m × n` LoRA matrix `G`, with small Gaussian `S_m ∈ R^{k_m×m}`,
  `S_n ∈ R^{k_n×n}`. Each kept entry `s_aᵀ G t_b` is an unbiased sketch of `⟨G, H⟩`
  (`E[s_aᵀ G t_b · s_aᵀ H t_b] = tr(G Hᵀ)`), so the concatenation over parameters, scaled, is unbiased for the full
  inner product (with a somewhat larger variance than a dense `R`). Its advantage: a LoRA per-sample gradient is a
  sum of token outer products `Σ_t u_t v_tᵀ`, so `S_m G S_nᵀ = Σ_t (S_m u_t)(S_n v_t)ᵀ` is computed without ever
  materialising `G` (LoGra-style). Memory: `Σ_p (k_m·m + k_n·n)·4` bytes, tiny. Its error is larger than a dense
  `R`'s at the same `d'` (each parameter gets only `d'/P` entries; measured ≈2.5× the dense error std at `d' = 1024`
  in `tests/test_projection.py`), and it is ~1.5× faster end to end on CPU (`benchmarks/RESULTS_icons.md`).

Matrices are always generated on the CPU (a CUDA generator draws other numbers) and moved to the compute device, so
a CPU and a GPU run use the same projection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from ..fingerprint import derive_seed

PROJECTOR_KINDS = ("gaussian", "rademacher", "factorized", "none")
DEFAULT_BLOCK_ELEMENTS = 1 << 24  # one generated block holds 2^24 floats (64 MiB in float32)


def jl_epsilon(dim: int, delta: float = 0.01) -> float:
    """The Johnson–Lindenstrauss inner-product error bound for unit vectors at projection dimension `dim`.

    With i.i.d. `N(0, 1/d')` entries, each squared norm is preserved within `1 ± ε` with probability
    `≥ 1 − 2 exp(−d' ε² / 8)`; applying it to `g + h` and `g − h` (union bound over two vectors) gives
    `|⟨Rᵀg, Rᵀh⟩ − ⟨g, h⟩| ≤ ε` for unit `g, h` with probability `≥ 1 − delta` when `ε = sqrt(8 ln(4/δ) / d')`.
    """
    return math.sqrt(8.0 * math.log(4.0 / delta) / dim)


@dataclass(frozen=True)
class ProjectorSpec:
    """What determines a projection: written to the datastore manifest and compared on reopen.

    Attributes:
        kind: `"gaussian"` (entries `N(0, 1/d')`), `"rademacher"` (`±1/sqrt(d')`), `"factorized"` (per-parameter
            Kronecker, `sgd` gradients only) or `"none"` (no projection; `dim` is the feature's own size, e.g. RDS
            hidden states).
        dim: the projected dimension `d'` (LESS 8192, ICONS 5120).
        seed: projection seed; every process and rerun with the same seed uses the same matrix.
        block_rows: input coordinates per generated block (default `2^24 // dim`, a 64 MiB float32 block).
    """

    kind: str = "gaussian"
    dim: int = 8192
    seed: int = 0
    block_rows: int | None = None

    def __post_init__(self):
        if self.kind not in PROJECTOR_KINDS:
            raise ValueError(f"unknown projector kind {self.kind!r}; expected one of {PROJECTOR_KINDS}")
        if not isinstance(self.dim, int) or self.dim <= 0:
            raise ValueError(f"projection dim must be a positive integer, got {self.dim!r}")
        if self.block_rows is not None and self.block_rows <= 0:
            raise ValueError(f"block_rows must be positive, got {self.block_rows}")

    @property
    def rows_per_block(self) -> int:
        return self.block_rows or max(1, DEFAULT_BLOCK_ELEMENTS // self.dim)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_rows"] = self.rows_per_block if self.kind in ("gaussian", "rademacher") else None
        return d


class BlockProjector:
    """`x ↦ x @ R` for a seeded dense `R ∈ R^{D×d'}` generated block by block (see the module docstring).

    Args:
        input_dim: `D`, the length of the flattened gradient.
        spec: kind (`gaussian` / `rademacher`), `dim`, `seed`, `block_rows`.
        cache_bytes: keep generated blocks in memory up to this many bytes (0 disables the cache).
        device: where the projection is computed; blocks are generated on the CPU and moved there.
    """

    def __init__(
        self, input_dim: int, spec: ProjectorSpec, cache_bytes: int = 1 << 30, device: str | torch.device = "cpu"
    ):
        if spec.kind not in ("gaussian", "rademacher"):
            raise ValueError(f"BlockProjector projects with a dense matrix; got kind {spec.kind!r}")
        if input_dim <= 0:
            raise ValueError(f"input_dim must be positive, got {input_dim}")
        self.input_dim = int(input_dim)
        self.spec = spec
        self.dim = spec.dim
        self.block_rows = spec.rows_per_block
        self.n_blocks = math.ceil(self.input_dim / self.block_rows)
        self.cache_bytes = int(cache_bytes)
        self.device = torch.device(device)
        self._cache: dict[int, torch.Tensor] = {}
        self._cached_bytes = 0

    @property
    def peak_bytes(self) -> int:
        """Upper bound of the memory the projector itself holds (cache + one block in flight)."""
        full = self.input_dim * self.dim * 4
        return min(self.cache_bytes, full) + min(self.block_rows, self.input_dim) * self.dim * 4

    def block_range(self, b: int) -> tuple[int, int]:
        start = b * self.block_rows
        return start, min(start + self.block_rows, self.input_dim)

    def _generate(self, b: int) -> torch.Tensor:
        start, stop = self.block_range(b)
        gen = torch.Generator(device="cpu").manual_seed(derive_seed("mixwise-projection", self.spec.seed, b))
        shape = (stop - start, self.dim)
        if self.spec.kind == "gaussian":
            block = torch.randn(shape, generator=gen, dtype=torch.float32)
        else:
            block = torch.randint(0, 2, shape, generator=gen, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)
        return block.mul_(1.0 / math.sqrt(self.dim)).to(self.device)

    def block(self, b: int) -> torch.Tensor:
        """Block `b` of `R`: rows `block_range(b)`, shape `(rows, d')`, float32 on `device`."""
        if b in self._cache:
            return self._cache[b]
        block = self._generate(b)
        size = block.numel() * 4
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[b] = block
            self._cached_bytes += size
        return block

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ R` for `x` of shape `(B, D)` (float32), accumulated over blocks; returns `(B, d')` float32."""
        if x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected a (batch, {self.input_dim}) tensor, got shape {tuple(x.shape)}")
        out = torch.zeros(x.shape[0], self.dim, dtype=torch.float32, device=x.device)
        for b in range(self.n_blocks):
            start, stop = self.block_range(b)
            out.addmm_(x[:, start:stop].float(), self.block(b))
        return out

    def dense(self) -> torch.Tensor:
        """The full `R` (`D × d'`) — for tests and small references only; never used by the featurizer."""
        return torch.cat([self._generate(b) for b in range(self.n_blocks)], dim=0)


@dataclass(frozen=True)
class KroneckerFactor:
    """The projection of one `m × n` parameter: `S_m G S_nᵀ`, first `keep` entries (row-major), times `scale`."""

    name: str
    shape: tuple[int, int]
    k_m: int
    k_n: int
    keep: int
    offset: int  # where this parameter's `keep` entries start in the output vector


class KroneckerProjector:
    """Per-parameter Kronecker-structured projection (`kind="factorized"`); see the module docstring.

    The output dimension `d'` is split as evenly as possible across the parameters (in the given order, the
    remainder going to the first ones); parameter `p` with share `k_p` uses `k_n = clamp(round(sqrt(k_p)), 1, n)`
    and `k_m = ceil(k_p / k_n)` and keeps the first `k_p` entries of `S_m G S_nᵀ`. Entries of `S_m`, `S_n` are
    `N(0, 1)`, seeded by `(seed, parameter name, side)`; the whole output is scaled by `1/sqrt(k_p)` per parameter, so
    `E⟨P g, P h⟩ = ⟨g, h⟩`.

    Args:
        shapes: `{parameter name: (rows, cols)}` in the canonical (flattening) order.
        spec: `kind="factorized"`, `dim`, `seed`.
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]], spec: ProjectorSpec, device: str | torch.device = "cpu"):
        if spec.kind != "factorized":
            raise ValueError(f"KroneckerProjector needs kind='factorized', got {spec.kind!r}")
        if not shapes:
            raise ValueError("no parameters to project")
        names = list(shapes)
        if spec.dim < len(names):
            raise ValueError(f"projection dim {spec.dim} is smaller than the number of parameters ({len(names)})")
        self.spec = spec
        self.dim = spec.dim
        self.device = torch.device(device)
        base, rest = divmod(spec.dim, len(names))
        self.factors: dict[str, KroneckerFactor] = {}
        self._mats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        offset = 0
        for i, name in enumerate(names):
            m, n = (int(v) for v in shapes[name])
            keep = base + (1 if i < rest else 0)
            k_n = min(n, max(1, round(math.sqrt(keep))))
            k_m = math.ceil(keep / k_n)
            self.factors[name] = KroneckerFactor(name, (m, n), k_m, k_n, keep, offset)
            offset += keep
        self.peak_bytes = sum((f.k_m * f.shape[0] + f.k_n * f.shape[1]) * 4 for f in self.factors.values())

    def matrices(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`(S_m, S_n)` of parameter `name`, float32 on `device` (cached: they are small)."""
        if name not in self._mats:
            f = self.factors[name]
            mats = []
            for side, (k, size) in (("m", (f.k_m, f.shape[0])), ("n", (f.k_n, f.shape[1]))):
                gen = torch.Generator(device="cpu").manual_seed(
                    derive_seed("mixwise-kron", self.spec.seed, name, side)
                )
                mats.append(torch.randn((k, size), generator=gen, dtype=torch.float32).to(self.device))
            self._mats[name] = (mats[0], mats[1])
        return self._mats[name]

    def place(self, name: str, sketch: torch.Tensor, out: torch.Tensor) -> None:
        """Write a parameter's `(B, k_m, k_n)` sketch into its slice of `out` (`(B, d')`), scaled."""
        f = self.factors[name]
        flat = sketch.reshape(sketch.shape[0], -1)[:, : f.keep]
        out[:, f.offset : f.offset + f.keep] = flat * (1.0 / math.sqrt(f.keep))

    def project_matrices(self, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Project explicit per-sample gradients `{name: (B, m, n)}` (a reference path; the featurizer uses the
        token factors instead)."""
        batch = next(iter(grads.values())).shape[0]
        out = torch.zeros(batch, self.dim, dtype=torch.float32, device=self.device)
        for name in self.factors:
            s_m, s_n = self.matrices(name)
            g = grads[name].float()
            self.place(name, torch.einsum("km,bmn,ln->bkl", s_m, g, s_n), out)
        return out


def normalize(features: torch.Tensor, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`(unit rows, norms)`; rows of norm 0 stay 0 (their norm, 0, is kept, so a caller can tell)."""
    norms = torch.linalg.vector_norm(features.float(), dim=1)
    safe = torch.where(norms > eps, norms, torch.ones_like(norms))
    return features.float() / safe[:, None], norms
