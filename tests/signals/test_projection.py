"""Seeded blockwise random projections: equal to the dense matrix, bounded memory, JL bound, same in every process."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from mixwise.fingerprint import derive_seed
from mixwise.signals.projection import BlockProjector, KroneckerProjector, ProjectorSpec, jl_epsilon, normalize


def unit_pairs(n_pairs: int, dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n_pairs, dim, generator=gen)
    h = 0.6 * g + torch.randn(n_pairs, dim, generator=gen)  # correlated pairs: inner products far from 0
    return g / g.norm(dim=1, keepdim=True), h / h.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_blockwise_projection_equals_the_dense_matrix(kind):
    spec = ProjectorSpec(kind=kind, dim=48, seed=7, block_rows=100)
    proj = BlockProjector(1030, spec, cache_bytes=0)
    assert proj.n_blocks == 11  # 10 full blocks + a 30-row remainder
    x = torch.randn(5, 1030, generator=torch.Generator().manual_seed(1))
    dense = proj.dense()
    assert dense.shape == (1030, 48)
    torch.testing.assert_close(proj.project(x), x @ dense, rtol=1e-5, atol=1e-5)
    if kind == "rademacher":
        assert set(torch.unique((dense * 48**0.5).round()).tolist()) == {-1.0, 1.0}
        torch.testing.assert_close(dense.abs(), torch.full_like(dense, 48**-0.5))
    # same seed -> same matrix (fresh object, cache or not); another seed -> another matrix
    assert torch.equal(BlockProjector(1030, spec, cache_bytes=1 << 20).dense(), dense)
    other = BlockProjector(1030, ProjectorSpec(kind=kind, dim=48, seed=8, block_rows=100)).dense()
    assert not torch.equal(other, dense)


def test_memory_is_bounded_by_the_cache_and_one_block():
    spec = ProjectorSpec(dim=64, seed=0, block_rows=128)
    proj = BlockProjector(10_000, spec, cache_bytes=3 * 128 * 64 * 4)
    x = torch.randn(2, 10_000)
    y1 = proj.project(x)
    assert proj._cached_bytes <= proj.cache_bytes and len(proj._cache) == 3
    assert proj.peak_bytes == 3 * 128 * 64 * 4 + 128 * 64 * 4  # cache + one block in flight, never 10_000 x 64
    torch.testing.assert_close(proj.project(x), y1)  # cached and regenerated blocks agree
    assert ProjectorSpec(dim=8192).rows_per_block * 8192 * 4 == 64 * 2**20  # the default block: 64 MiB


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_inner_products_within_the_jl_bound(kind):
    dim, d_in = 1024, 4096
    g, h = unit_pairs(40, d_in)
    proj = BlockProjector(d_in, ProjectorSpec(kind=kind, dim=dim, seed=3))
    pg, ph = proj.project(g), proj.project(h)
    err = ((pg * ph).sum(1) - (g * h).sum(1)).abs()
    eps = jl_epsilon(dim, delta=0.01)
    assert float(err.max()) <= eps
    assert float(((pg.norm(dim=1) ** 2) - 1).abs().max()) <= eps
    # cosine after normalisation is what ICONS uses; it stays within the bound as well
    ug, _ = normalize(pg)
    uh, _ = normalize(ph)
    assert float(((ug * uh).sum(1) - (g * h).sum(1)).abs().max()) <= 2 * eps


def test_jl_epsilon_formula():
    assert jl_epsilon(8192, 0.01) == pytest.approx((8 * np.log(400) / 8192) ** 0.5)
    assert jl_epsilon(8192) < jl_epsilon(5120) < jl_epsilon(1024)


def test_factorized_projection_is_unbiased_and_bounded():
    shapes = {f"p{i}": (64, 8) if i % 2 else (8, 64) for i in range(8)}
    gen = torch.Generator().manual_seed(0)
    errors = []
    for trial in range(12):
        g = {n: torch.randn(1, *s, generator=gen) for n, s in shapes.items()}
        h = {n: 0.5 * g[n] + torch.randn(1, *s, generator=gen) for n, s in shapes.items()}
        gn = torch.cat([v.reshape(-1) for v in g.values()]).norm()
        hn = torch.cat([v.reshape(-1) for v in h.values()]).norm()
        g = {n: v / gn for n, v in g.items()}
        h = {n: v / hn for n, v in h.items()}
        true = sum(float((g[n] * h[n]).sum()) for n in shapes)
        proj = KroneckerProjector(shapes, ProjectorSpec(kind="factorized", dim=1024, seed=trial))
        assert sum(f.keep for f in proj.factors.values()) == 1024
        errors.append(float(proj.project_matrices(g)[0] @ proj.project_matrices(h)[0]) - true)
    errors = np.array(errors)
    assert abs(errors.mean()) < 0.06  # unbiased (12 draws of std ~0.08)
    assert np.abs(errors).max() < 2 * jl_epsilon(1024)  # larger variance than a dense R, same order


def test_same_projection_in_another_process():
    spec = ProjectorSpec(dim=32, seed=11, block_rows=64)
    x = torch.arange(300 * 2, dtype=torch.float32).reshape(2, 300) / 600
    here = BlockProjector(300, spec).project(x).numpy().tobytes().hex()
    code = (
        "import torch\nfrom mixwise.signals.projection import BlockProjector, ProjectorSpec\n"
        "x = torch.arange(600, dtype=torch.float32).reshape(2, 300) / 600\n"
        "print(BlockProjector(300, ProjectorSpec(dim=32, seed=11, block_rows=64)).project(x).numpy().tobytes().hex())"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert there == here
    assert derive_seed("a", 1) == derive_seed("a", 1) != derive_seed("a", 2)


def test_spec_validation():
    with pytest.raises(ValueError, match="unknown projector kind"):
        ProjectorSpec(kind="srht")
    with pytest.raises(ValueError, match="positive integer"):
        ProjectorSpec(dim=0)
    with pytest.raises(ValueError, match="dense matrix"):
        BlockProjector(10, ProjectorSpec(kind="factorized", dim=4))
    with pytest.raises(ValueError, match="expected a"):
        BlockProjector(10, ProjectorSpec(dim=4)).project(torch.zeros(2, 11))
    assert ProjectorSpec(dim=8).to_dict() == {"kind": "gaussian", "dim": 8, "seed": 0, "block_rows": 2**21}


def test_normalize_keeps_zero_rows():
    unit, norms = normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.equal(norms, torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(unit, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
