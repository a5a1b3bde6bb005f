"""Deterministic multi-tensor L2 norms.

Sums of squares are taken in one fixed order (``src/cpp/include/fastopt/reduce.h``): the
same bits on every CPU ISA and for any number of threads, one parallel pass over all tensors.
Tensors combine in that order too, so the global norm is reproducible run to run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import _core

TENSOR_RUN = 64  # reduce.h's kTensorRun


def combine(sumsq: Sequence[float]) -> float:
    """The sum of per-tensor sums of squares in the canonical order (runs of 64 tensors,
    each summed in order, then the runs in order), in double precision."""
    total = 0.0
    for r in range(0, len(sumsq), TENSOR_RUN):
        run = 0.0
        for s in sumsq[r:r + TENSOR_RUN]:
            run += s
        total += run
    return total


@dataclass(frozen=True)
class Norms:
    """L2 norms of a list of tensors: ``total`` over all of them, ``per_tensor`` (float64)
    and ``nonfinite``, the count of inf/NaN values in each tensor (int64)."""

    total: float
    per_tensor: np.ndarray
    nonfinite: np.ndarray


def from_sumsq(sums: Sequence[float], nonfinite: Sequence[int]) -> Norms:
    return Norms(math.sqrt(combine(sums)), np.sqrt(np.asarray(sums, np.float64)),
                 np.asarray(nonfinite, np.int64))


def l2_norms(tensors: Sequence[Any]) -> Norms:
    """The global and per-tensor L2 norms of ``tensors`` (float32, float16 or bfloat16 arrays in
    CPU memory: NumPy arrays, CPU tensors, any DLPack tensor), in one pass. Read-only tensors
    are fine: nothing is written."""
    return from_sumsq(*_core.sumsq(list(tensors)))
