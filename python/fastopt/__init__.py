"""fastopt: fused, in-place, multi-tensor optimizer steps.

Every step updates params (and fp32 master weights and optimizer state) in place, in one
pass over memory, for any number of tensors, with AVX2/AVX-512 kernels chosen at import.
"""

from __future__ import annotations

import operator

from . import _core, functional, norms, schedules
from ._core import MemoryMoved, TensorError
from .accumulate import GradAccumulator, GradSums
from .catalog import OPTIMIZERS
from .cuda import cuda_available
from .ema import ParamEMA
from .norms import l2_norms
from .optimizer import Diagnostics, Optimizer, ParamGroup, StepResult
from .scaler import DynamicLossScaler

globals().update({cls.__name__: cls for cls in OPTIMIZERS})  # SGD, Adam, AdamW, ...

__version__ = "0.2.0"

# Choose the CPU target now, so that a bad FASTOPT_CPU_ISA fails the import with its reason.
_core.cpu_isa()

__all__ = [
    *(cls.__name__ for cls in OPTIMIZERS), "Optimizer", "ParamGroup", "StepResult", "Diagnostics",
    "DynamicLossScaler", "ParamEMA", "GradAccumulator", "GradSums", "TensorError", "MemoryMoved", "functional", "schedules", "norms", "l2_norms",
    "cpu_isa", "set_num_threads", "get_num_threads", "cuda_available",
]


def cpu_isa() -> str:
    """The active CPU kernel target: ``"scalar"``, ``"avx2"`` or ``"avx512"``.

    Chosen at import from CPUID/XGETBV, or forced by ``FASTOPT_CPU_ISA``.
    """
    return _core.cpu_isa()


def set_num_threads(n: int) -> None:
    """Sets the number of CPU threads a step uses (default: the cores available; 1 to 4 per
    CPU, ValueError outside; TypeError for a non-integer; RuntimeError, and the count
    unchanged, if the system refuses)."""
    if isinstance(n, bool):
        raise TypeError(f"n must be an integer, got {n!r}")
    _core.set_num_threads(operator.index(n))


def get_num_threads() -> int:
    """The number of CPU threads a step uses."""
    return _core.get_num_threads()
