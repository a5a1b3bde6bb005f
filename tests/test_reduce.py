"""Multi-tensor sums of squares (fastopt/reduce.h, cpu/reduce.cpp): the canonical order,
bit-identical on every ISA and thread count, and non-finite counts."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt
from registry import DTYPES, sumsq_error, supported_isas
from registry import isa_switch  # noqa: F401  (a fixture)

LANES, BLOCK, SUPER, RUN = 64, 2048, 131072, 64
SIZES = [0, 1, 63, 64, 65, 2047, 2048, 2049, SUPER - 1, SUPER, SUPER + 1, 3 * SUPER + 777]


def canonical_sumsq(x: np.ndarray) -> float:
    """reduce.h's order in NumPy: float32 lanes fed by fma (x*x is exact in float64 and the
    one rounding to float32 is the fma's), a fixed fold, block sums added in double."""
    x = x.astype(np.float32).astype(np.float64).reshape(-1)
    total = 0.0
    for b in range(0, x.size, BLOCK):
        block = x[b:b + BLOCK]
        lanes = np.zeros(LANES, np.float32)
        for i in range(0, block.size, LANES):
            v = block[i:i + LANES]
            lanes[:v.size] = (v * v + lanes[:v.size].astype(np.float64)).astype(np.float32)
        w = LANES // 2
        while w >= 1:
            lanes[:w] = lanes[:w] + lanes[w:2 * w]
            w //= 2
        total += float(lanes[0])
    return total


def tensors(sizes, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(n), np.float32).astype(DTYPES[dtype]) for n in sizes]


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_matches_canonical_order_exactly(dtype):
    xs = tensors(SIZES, dtype)
    sums, bad = fastopt._core.sumsq(xs)
    assert bad == [0] * len(xs)
    for n, x, s in zip(SIZES, xs, sums):
        assert s == canonical_sumsq(x), f"size {n}"
        np.testing.assert_allclose(s, float(np.sum(x.astype(np.float64) ** 2)), rtol=sumsq_error(n))


def test_bit_identical_across_isas_and_threads(isa_switch):
    xs = tensors([5, 4097, 2 * SUPER + 3, 100] * 3, seed=1)
    results = []
    for isa in supported_isas():
        isa_switch(isa)
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            results.append(fastopt._core.sumsq(xs))
    fastopt.set_num_threads(2)
    assert all(r == results[0] for r in results[1:])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_nonfinite_counts(dtype):
    xs = tensors([3 * SUPER + 5, 70, 1], dtype, seed=2)
    for pos, value in [(0, np.inf), (SUPER + 64, -np.inf), (3 * SUPER + 4, np.nan), (2000, np.nan)]:
        xs[0][pos] = value
    xs[1][69] = np.inf
    sums, bad = fastopt._core.sumsq(xs)
    assert bad == [4, 1, 0]
    assert np.isnan(sums[0]) and sums[1] == np.inf and np.isfinite(sums[2])


def test_rejects_bad_tensors():
    with pytest.raises(fastopt.TensorError, match="tensor 1"):
        fastopt._core.sumsq([np.zeros(3, np.float32), np.zeros(3, np.int32)])
