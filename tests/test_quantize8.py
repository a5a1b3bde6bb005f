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


def nearest_codes(x: np.ndarray, absmax: np.ndarray, signed: bool) -> np.ndarray:
    """Brute force: the index of the nearest map value to each x / absmax (ties: lower)."""
    y = x.astype(np.float32) * (np.float32(1) / np.repeat(absmax, BLOCK)[: x.size]).astype(np.float32)
    m = numeric.dynamic_map(signed).astype(np.float64)
    return np.argmin(np.abs(y.astype(np.float64)[:, None] - m[None, :]), axis=1)


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
    assert np.array_equal(codes, nearest_codes(x, absmax, signed))
    back = numeric.dequantize_blockwise(codes, absmax, signed)
    m = numeric.dynamic_map(signed).astype(np.float64)
    worst = max(np.diff(m).max() / 2, 1 + m[0] if signed else 0)  # (the signed map stops short of -1)
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
