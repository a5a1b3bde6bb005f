"""Storage rounding beyond nearest-even (src/cpp/include/fastopt/numeric/random.h and
rounding.h): the counter-based random bits, stochastic rounding to bfloat16 and float16
against the float64 reference and for unbiasedness, the same bits from every CPU target's
lanes (store_stochastic_lane), Kahan-compensated bfloat16 and the bfloat16 + 16-bit remainder
split, through fastopt._core.numeric."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt
from fastopt._core import numeric
from reference_storage import BF16, F16, stochastic_round
from registry import ALL_ISAS, bits
from registry import isa_switch  # noqa: F401  (a fixture)

DTYPES = {"bfloat16": BF16, "float16": F16}


def rounded(x: np.ndarray, r: np.ndarray, dtype: str) -> np.ndarray:
    return numeric.stochastic_round(x.astype(np.float32), r, dtype).view(DTYPES[dtype]).astype(np.float64)


def test_random_bits_are_a_pure_function_of_key_and_index():
    key = numeric.stream_key(7, 3, 1)
    a = numeric.random_bits(key, 0, 1000)
    assert np.array_equal(a[100:200], numeric.random_bits(key, 100, 100))  # any order, any split
    others = [numeric.stream_key(8, 3, 1), numeric.stream_key(7, 4, 1), numeric.stream_key(7, 3, 2)]
    for other in others:  # another seed, step or tensor: other bits
        assert np.mean(numeric.random_bits(other, 0, 1000) == a) < 0.01


def test_random_bits_are_uniform():
    bits = numeric.random_bits(numeric.stream_key(1, 1, 0), 0, 1 << 20)
    n = bits.size
    # Each of the 32 bit positions is set half the time: within 5 standard deviations.
    ones = np.array([np.count_nonzero(bits & np.uint32(1 << b)) for b in range(32)])
    assert np.all(np.abs(ones - n / 2) < 5 * np.sqrt(n / 4))
    # The 16 high bits (what bfloat16 rounding draws) fill 256 buckets evenly (chi-square, 255
    # degrees of freedom: the 1e-6 quantile is about 390).
    counts = np.bincount(bits >> 24, minlength=256)
    assert np.sum((counts - n / 256) ** 2 / (n / 256)) < 390


def sample_values(rng: np.random.Generator) -> np.ndarray:
    """Values across the ranges: normal, near the largest finite values, float16 subnormals,
    exact values, zeros and the specials."""
    parts = [rng.standard_normal(3000) * 10.0 ** rng.integers(-8, 8, 3000),
             rng.uniform(-70000, 70000, 200), rng.uniform(-3.4e38, 3.4e38, 200),
             rng.uniform(-6.2e-5, 6.2e-5, 500), rng.uniform(-1e-8, 1e-8, 100),
             [0.0, -0.0, 1.0, -2.5, 65504.0, 65519.0, 65520.0, 6e-8, np.inf, -np.inf]]
    return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_round_matches_the_reference(dtype):
    rng = np.random.default_rng(0)
    x = sample_values(rng)
    r = rng.integers(0, 2 ** 32, x.size, dtype=np.uint64).astype(np.uint32)
    got = rounded(x, r, dtype)
    want = np.array([stochastic_round(float(a), int(b), DTYPES[dtype]) for a, b in zip(x, r)])
    mismatch = np.flatnonzero(~((got == want) | (np.isnan(got) & np.isnan(want))))
    assert mismatch.size == 0, [(float(x[i]), int(r[i]), got[i], want[i]) for i in mismatch[:5]]
    assert np.array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_round_keeps_representable_values_and_nan(dtype):
    exact = np.array([0.0, -0.0, 1.0, -3.0, 0.15625, np.inf, -np.inf], np.float32)
    for r in (0, 1, 2 ** 31, 2 ** 32 - 1):
        bits = np.full(exact.size, r, np.uint32)
        assert np.array_equal(rounded(exact, bits, dtype), exact.astype(np.float64))
        assert np.isnan(rounded(np.array([np.nan], np.float32), bits[:1], dtype))[0]


@pytest.mark.parametrize("dtype, x", [("bfloat16", 1.0 + 2 ** -10), ("bfloat16", -3.14159), ("bfloat16", 1e-30),
                                      ("float16", 1.0 + 2 ** -12), ("float16", 1000.3), ("float16", 3e-7),
                                      ("float16", 60000.7)])
def test_stochastic_round_is_unbiased(dtype, x):
    """The mean of 2^20 roundings of x (fresh bits each) is x within 5 standard deviations of the
    mean of a two-point draw: ulp * sqrt(p (1 - p) / n)."""
    n = 1 << 20
    bits = numeric.random_bits(numeric.stream_key(11, 5, 3), 0, n)
    got = rounded(np.full(n, x, np.float32), bits, dtype)
    x32 = float(np.float32(x))
    lo, hi = np.unique(got)[[0, -1]]
    p = (abs(x32) - min(abs(lo), abs(hi))) / abs(hi - lo)
    sigma = abs(hi - lo) * np.sqrt(p * (1 - p) / n)
    assert abs(got.mean() - x32) < 5 * sigma + 1e-12 * abs(x32)


def edge_values() -> np.ndarray:
    """fp32 patterns where a lane's integer arithmetic could part from the scalar one: every
    exponent (fp32 subnormals, float16 subnormals and their boundaries, the largest finite
    values, inf and NaN) with mantissas at its ends and middle, both signs; the last values below
    and at each rounding's overflow, the float16 normal and subnormal boundaries, the zeros,
    signalling and quiet NaNs with payloads."""
    exponents = np.arange(256, dtype=np.uint32) << 23
    mantissas = np.array([0, 1, 2, 0x1FFF, 0x2000, 0x400000, 0x7FE000, 0x7FEFFF, 0x7FF000, 0x7FFFFF], np.uint32)
    grid = (exponents[:, None] | mantissas[None, :]).ravel()
    edges = np.array([0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0x7F800000,  # bfloat16's largest, fp32's, inf
                      0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FFFFF, 0x47800000,  # float16's 65504 .. 2^16
                      0x387FFFFF, 0x38800000, 0x33800000, 0x337FFFFF, 0x33000000, 0x32FFFFFF,  # its subnormals
                      0x7F800001, 0x7FBFFFFF, 0x7FC00000, 0x7FC00001, 0x7FFFFFFF], np.uint32)  # NaNs
    half = np.concatenate([grid, edges])
    return np.concatenate([half, half | np.uint32(0x80000000)]).view(np.float32)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("isa", ALL_ISAS)
def test_every_target_rounds_with_the_scalar_bits(isa, dtype, isa_switch):
    """store_stochastic_lane on each CPU target (its vector lanes, then the scalar tail) stores
    exactly the bits of the scalar rounding with bits32(key, start + k), at any start (not a
    multiple of the lane width too, and past 2^32 and 2^62, where the counter's products wrap)."""
    if not fastopt._core.cpu_isa_supported(isa):
        pytest.skip(f"this CPU lacks {isa}")
    isa_switch(isa)
    rng = np.random.default_rng(5)
    patterns = rng.integers(0, 2 ** 32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([edge_values(), sample_values(rng), patterns])
    x = np.concatenate([x, rng.permutation(x)])  # (edge values beside others in one lane too)
    keys = [0, numeric.stream_key(3, 7, 1), 2 ** 64 - 1, 0x0123456789ABCDEF]
    for key, start in zip(keys, [0, 5, 2 ** 32 - 3, 2 ** 62 + 7]):
        for n in (x.size, 23):  # (23: a whole lane or two, and a tail)
            want = numeric.stochastic_round(x[:n], numeric.random_bits(key, start, n), dtype)
            got = numeric.stochastic_store(x[:n], key, start, dtype)
            bad = np.flatnonzero(got != want)
            assert bad.size == 0, [(hex(bits(x)[i]), hex(got[i]), hex(want[i])) for i in bad[:5]]


def bf16_bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).astype(BF16).view(np.uint16)


def test_kahan_and_remainder_keep_the_tiny_updates_that_nearest_even_loses():
    """10^4 updates of 1e-4 relative size from 1.0: rounded to nearest bfloat16 each time, the
    param never moves (each update is below half an ulp); with Kahan compensation it reaches
    the float64 sum within 4 bfloat16 ulps (the compensation itself is bfloat16: 8 bits of what
    was lost are kept; measured: 2.03125 for 2.0, 2 ulps); split into bfloat16 + remainder it is
    exactly the float32 sum."""
    steps, delta = 10_000, 1e-4
    exact = 1.0 + steps * delta
    nearest = np.float32(1.0)
    p, c = bf16_bits([1.0]), np.zeros(1, np.uint16)
    high, low = numeric.split_remainder(np.ones(1, np.float32))
    f32 = np.float32(1.0)
    for _ in range(steps):
        nearest = np.float32(np.float32(nearest + np.float32(delta)).astype(BF16))
        value = np.float32(p.view(BF16).astype(np.float32)[0] + np.float32(delta))
        numeric.kahan_bf16(p, c, np.array([value], np.float32))
        f32 = np.float32(f32 + np.float32(delta))
        master = numeric.join_remainder(high, low)[0]
        high, low = numeric.split_remainder(np.array([master + np.float32(delta)], np.float32))
    assert nearest == 1.0
    kahan = float(p.view(BF16).astype(np.float64)[0])
    assert abs(kahan - exact) <= 4 * 2.0 ** -6  # 4 ulps of [2, 4)
    assert numeric.join_remainder(high, low)[0] == f32


def test_remainder_is_the_float32_master_split_in_two():
    rng = np.random.default_rng(1)
    v = rng.integers(0, 2 ** 32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    high, low = numeric.split_remainder(v)
    assert np.array_equal(numeric.join_remainder(high, low).view(np.uint32), v.view(np.uint32))
    # The model's bfloat16 param is the master truncated toward zero.
    assert np.array_equal(high, (v.view(np.uint32) >> 16).astype(np.uint16))
