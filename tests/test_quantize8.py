"""8-bit block-wise state quantization (src/cpp/include/fastopt/numeric/quantize8.h): the
dynamic map against its float64 definition, nearest codes, per-block absmax, through
fastopt._core.numeric."""

from __future__ import annotations

import numpy as np
import pytest

from fastopt._core import numeric
from reference_storage import dynamic_map

BLOCK = numeric.quant_block


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_is_the_papers(signed):
    got = numeric.dynamic_map(signed)
    want = dynamic_map(signed)
    assert got.shape == (256,) and want.shape == (256,)
    assert np.array_equal(got, want.astype(np.float32))
    assert np.all(np.diff(got) > 0)
    assert got[-1] == 1.0 and 0.0 in got
    if signed:
        assert np.array_equal(np.sort(-got[got < 0]), got[(got > 0) & (got < 1)])  # symmetric but 1
    else:
        assert got[0] == 0.0


def scaled(x: np.ndarray, absmax: np.ndarray) -> np.ndarray:
    """x / absmax as the quantizer computes it: x times the float32 reciprocal."""
    return (x.astype(np.float32) * (np.float32(1) / np.repeat(absmax, BLOCK)[: x.size]).astype(np.float32))


def nearest_codes(y: np.ndarray, signed: bool) -> np.ndarray:
    """The definition, brute force in float64: the code of the nearest map value to each y, ties
    toward zero; unsigned, a positive y takes at least the smallest positive value."""
    m = numeric.dynamic_map(signed).astype(np.float64)
    d = np.abs(y.astype(np.float64)[:, None] - m[None, :])
    d += np.abs(m)[None, :] * 1e-300  # (a tie goes to the smaller magnitude)
    codes = np.argmin(d, axis=1)
    if not signed:
        codes[(y > 0) & (codes == 0)] = 1
    return codes


def assert_nearest(codes: np.ndarray, y: np.ndarray, signed: bool) -> None:
    """codes are the definition's, but where y lies within 1e-4 of a spacing of the midpoint
    between two neighbouring values (float32 rounding in the quantizer's formula), which may
    take the other one; those are rare."""
    want = nearest_codes(y, signed)
    m = numeric.dynamic_map(signed).astype(np.float64)
    off = np.flatnonzero(codes != want)
    assert np.all(np.abs(codes[off].astype(int) - want[off]) == 1)
    lo, hi = m[np.minimum(codes[off], want[off])], m[np.maximum(codes[off], want[off])]
    assert np.all(np.abs(y[off] - (lo + hi) / 2) <= 1e-4 * (hi - lo))
    assert off.size <= y.size // 1000


@pytest.mark.parametrize("signed", [True, False])
def test_codes_are_nearest_over_every_magnitude(signed):
    """Magnitudes log-uniform over 10 orders (every decade of the map, and below) and the map's
    values themselves, with both signs where signed."""
    rng = np.random.default_rng(3)
    y = (10.0 ** rng.uniform(-10, 0, 200_000)).astype(np.float32)
    y = np.concatenate([y, numeric.dynamic_map(signed), np.float32([0.0, 1.0])])
    if signed:
        y *= np.where(rng.random(y.size) < 0.5, np.float32(-1), np.float32(1))
    y = y[np.abs(y) <= 1]
    y = y[: y.size // (BLOCK - 1) * (BLOCK - 1)].reshape(-1, BLOCK - 1)
    x = np.concatenate([np.ones((y.shape[0], 1), np.float32), y], axis=1).ravel()  # each block's absmax 1
    codes, absmax = numeric.quantize_blockwise(x, signed)
    assert np.all(absmax == 1)
    assert_nearest(codes.reshape(-1, BLOCK)[:, 1:].ravel(), y.ravel(), signed)


@pytest.mark.parametrize("signed", [True, False])
def test_blockwise_codes_are_nearest_and_errors_bounded(signed):
    rng = np.random.default_rng(2)
    n = 3 * BLOCK + 123  # a partial last block
    x = rng.standard_normal(n).astype(np.float32) * np.float32(1e-3)
    if not signed:
        x = np.abs(x) ** 2
    x[5] = 50.0 if signed else 2500.0  # an outlier: it costs its own block only
    codes, absmax = numeric.quantize_blockwise(x, signed)
    assert absmax.shape == (4,)
    assert np.array_equal(absmax, np.array([np.abs(x[b:b + BLOCK]).max() for b in range(0, n, BLOCK)]))
    assert_nearest(codes, scaled(x, absmax), signed)
    back = numeric.dequantize_blockwise(codes, absmax, signed)
    m = numeric.dynamic_map(signed).astype(np.float64)
    # (the signed map stops short of -1; the unsigned one keeps positive values off zero)
    worst = max(np.diff(m).max() / 2, 1 + m[0] if signed else m[1])
    assert np.all(np.abs(back - x) <= worst * np.repeat(absmax, BLOCK)[:n] * (1 + 1e-5))  # (dequantized in float32)
    rel = np.abs(back - x)[BLOCK:] / np.repeat(absmax, BLOCK)[BLOCK:n]
    assert rel.mean() < 0.01  # blocks without the outlier keep their own scale


def test_blockwise_zeros_and_nan():
    codes, absmax = numeric.quantize_blockwise(np.zeros(10, np.float32), True)
    assert absmax[0] == 0 and np.all(numeric.dequantize_blockwise(codes, absmax, True) == 0)
    x = np.ones(10, np.float32)
    x[3] = np.nan
    codes, absmax = numeric.quantize_blockwise(x, True)
    assert np.isnan(absmax[0])
