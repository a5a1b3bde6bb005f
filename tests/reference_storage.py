"""Float64 references of the storage numerics (src/cpp/include/fastopt/numeric/rounding.h and
quantize8.h), written from their definitions: stochastic rounding as "round away from zero with
probability (|x| - |truncated x|) / ulp", decided by the uniform bits as documented, and the
dynamic quantization map of Dettmers (2015, 2022) from its formula."""

from __future__ import annotations

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)


def neighbours(x: float, dtype: np.dtype) -> tuple[float, float]:
    """(|x| truncated to dtype, the next dtype magnitude up) for a finite float32 x, in float64;
    past the largest finite value the next one is where infinity begins (one ulp further)."""
    a = abs(float(x))
    info = ml_dtypes.finfo(dtype) if dtype == BF16 else np.finfo(dtype)
    biggest = float(info.max)
    if a >= biggest:
        ulp = float(info.max) - float(np.nextafter(dtype.type(biggest), dtype.type(0)))
        return biggest, biggest + ulp
    lo = float(np.array(a, np.float64).astype(dtype))  # nearest: step down if it rounded up
    if lo > a:
        lo = float(np.nextafter(dtype.type(lo), dtype.type(0)))
    hi = float(np.nextafter(dtype.type(lo), dtype.type(np.inf)))
    return lo, hi


def stochastic_round(x: float, r: int, dtype: np.dtype) -> float:
    """x rounded with the 32 random bits r: away from zero iff the bits fall in the top fraction
    p = (|x| - lo) / (hi - lo) of their range, using the bits rounding.h draws: the top 16
    (bfloat16), the top 13 (float16 normal range) or all 32 (float16 below it, where p is taken
    to 32 bits, truncated)."""
    if np.isnan(x) or np.isinf(x):
        return x
    lo, hi = neighbours(x, dtype)
    p = (abs(x) - lo) / (hi - lo)
    if dtype == BF16:
        up = (r >> 16) >= 65536 * (1 - p)
    elif abs(x) >= 2.0 ** -14:
        up = (r >> 19) >= 8192 * (1 - p)
    else:
        up = r >= 2 ** 32 - np.floor(p * 2 ** 32)
    out = hi if up else lo
    if out > float(ml_dtypes.finfo(dtype).max if dtype == BF16 else np.finfo(dtype).max):
        out = np.inf
    return float(np.copysign(out, x))


def dynamic_map(signed: bool) -> np.ndarray:
    """The 256 values of the dynamic tree quantization map, ascending, as float64: for each
    exponent i = 0 .. 6, the midpoints between 2^i + 1 (unsigned: 2^(i+1) + 1) evenly spaced
    points of [0.1, 1], times 10^(i - 6), with both signs where signed; and 0 and 1."""
    values = [0.0, 1.0]
    for i in range(7):
        points = np.linspace(0.1, 1.0, (2 ** i if signed else 2 ** (i + 1)) + 1)
        mids = 10.0 ** (i - 6) * (points[:-1] + points[1:]) / 2
        values += list(mids) + (list(-mids) if signed else [])
    return np.array(sorted(values))
