"""Allocation of the fp32 arrays fastopt owns (optimizer state, master weights)."""

from __future__ import annotations

import numpy as np

from . import _core

_ALIGN = 64  # one cache line, and one AVX-512 vector


def aligned_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed, C-contiguous float32 array whose data starts on a 64-byte boundary."""
    n = int(np.prod(shape, dtype=np.int64))
    pad = _ALIGN // 4
    raw = np.zeros(n + pad, dtype=np.float32)
    start = (-raw.ctypes.data % _ALIGN) // 4
    return raw[start:start + n].reshape(shape)


def state_like(param, name: str) -> np.ndarray:
    """A zeroed float32 array with the shape of ``param`` (any supported array)."""
    shape, _, _ = _core.describe(param, name)
    return aligned_zeros(tuple(shape))


def master_copy(param, name: str) -> np.ndarray:
    """The exact float32 value of ``param``, in a new aligned array."""
    out = state_like(param, name)
    _core.widen_into(param, out)
    return out
