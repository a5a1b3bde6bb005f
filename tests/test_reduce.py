"""Multi-tensor sums of squares (fastopt/reduce.h, cpu/reduce.cpp): the canonical order,
bit-identical on every ISA and thread count, and non-finite counts."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import fastopt
from registry import U, DTYPES, exact_sumsq, sumsq_error, supported_isas
from registry import isa_switch  # noqa: F401  (a fixture)

LANES, BLOCK, SUPER, RUN = 64, 2048, 131072, 64
SIZES = [0, 1, 63, 64, 65, 2047, 2048, 2049, SUPER - 1, SUPER, SUPER + 1, 3 * SUPER + 777]


def canonical_sumsq(x: np.ndarray) -> float:
    """reduce.h's order in NumPy: float64 lanes (a square of an fp32 value is exact in float64,
    so v * v + lane is the one rounding an fma makes), a fixed fold, block sums added in order
    into super-block sums, those in order into the tensor's."""
    x = x.astype(np.float32).astype(np.float64).reshape(-1)
    total = 0.0
    for s in range(0, x.size, SUPER):
        super_sum = 0.0
        for b in range(s, min(s + SUPER, x.size), BLOCK):
            block = x[b:b + BLOCK]
            lanes = np.zeros(LANES)
            for i in range(0, block.size, LANES):
                v = block[i:i + LANES]
                lanes[:v.size] = v * v + lanes[:v.size]
            w = LANES // 2
            while w >= 1:
                lanes[:w] = lanes[:w] + lanes[w:2 * w]
                w //= 2
            super_sum += float(lanes[0])
        total += super_sum
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
        # + U: exact_sumsq is itself rounded once
        assert s == pytest.approx(exact_sumsq([x]), rel=sumsq_error(n) + U["float64"], abs=0), f"size {n}"


def sums_everywhere(xs, isa_switch):
    """_core.sumsq(xs) on every ISA this CPU has, with 1 and 2 threads."""
    results = []
    for isa in supported_isas():
        isa_switch(isa)
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            results.append(fastopt._core.sumsq(xs))
    fastopt.set_num_threads(2)
    return results


def test_bit_identical_across_isas_and_threads(isa_switch):
    results = sums_everywhere(tensors([5, 4097, 2 * SUPER + 3, 100] * 3, seed=1), isa_switch)
    assert all(r == results[0] for r in results[1:])


def extreme_tensors(dtype: str, sizes=(1, 70, 2049, SUPER + 3)) -> list[np.ndarray]:
    """For each magnitude whose fp32 square overflows or underflows (2e19, the dtype's largest
    finite value, 1e-30, its smallest subnormal; 2e19 and 1e-30 rounded to the dtype), tensors
    of ``sizes`` with values of that magnitude times [0.5, 1], random signs."""
    info = ml_dtypes.finfo(DTYPES[dtype])
    rng = np.random.default_rng(5)
    out = []
    for magnitude in (2e19, float(info.max), 1e-30, float(info.smallest_subnormal)):
        for n in sizes:
            x = magnitude * rng.uniform(0.5, 1.0, n) * rng.choice([-1.0, 1.0], n)
            out.append(np.asarray(x, np.float32).astype(DTYPES[dtype]))
    return out


# fp16's squares fit fp32 (65504^2 ~ 4.3e9, 2^-24 squared 3.6e-15): nothing to overflow there.
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_extreme_magnitudes_neither_overflow_nor_underflow(dtype):
    """Finite values of any magnitude give finite, nonzero sums within sumsq_error of the exact
    ones (fp32 lanes made 2e19 and FLT_MAX inf, 1e-30 and subnormals 0; issue 12)."""
    xs = extreme_tensors(dtype)
    sums, bad = fastopt._core.sumsq(xs)
    assert bad == [0] * len(xs)
    for x, s in zip(xs, sums):
        assert 0 < s < math.inf, f"{x.size} values of magnitude {float(np.max(np.abs(x.astype(np.float64)))):.3g}"
        assert s == canonical_sumsq(x)
        assert s == pytest.approx(exact_sumsq([x]), rel=sumsq_error(x.size) + U["float64"], abs=0)


def test_extremes_bit_identical_across_isas_and_threads(isa_switch):
    results = sums_everywhere(extreme_tensors("float32") + extreme_tensors("bfloat16", sizes=(2049,)), isa_switch)
    assert all(0 < s < math.inf for s in results[0][0])
    assert all(r == results[0] for r in results[1:])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_nonfinite_counts(dtype, isa_switch):
    """Exact on every ISA, in vector bodies and tails; the largest finite values not counted."""
    xs = tensors([3 * SUPER + 5, 70, 1], dtype, seed=2)
    for pos, value in [(0, np.inf), (SUPER + 64, -np.inf), (3 * SUPER + 4, np.nan), (2000, np.nan)]:
        xs[0][pos] = value
    xs[0][1] = xs[1][3] = xs[2][0] = ml_dtypes.finfo(DTYPES[dtype]).max
    xs[1][69] = np.inf
    for isa in supported_isas():
        isa_switch(isa)
        sums, bad = fastopt._core.sumsq(xs)
        assert bad == [4, 1, 0], isa
        assert np.isnan(sums[0]) and sums[1] == np.inf and np.isfinite(sums[2])


def test_rejects_bad_tensors():
    with pytest.raises(fastopt.TensorError, match="tensor 1"):
        fastopt._core.sumsq([np.zeros(3, np.float32), np.zeros(3, np.int32)])
