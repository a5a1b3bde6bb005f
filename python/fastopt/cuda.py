"""Access to the CUDA engine (fastopt._cuda), loaded only where a CUDA driver and device exist."""

from __future__ import annotations

import ctypes
import functools
from types import ModuleType


@functools.lru_cache(maxsize=1)
def engine() -> ModuleType | None:
    """The CUDA engine module, or None: not built, no driver, or no device."""
    try:
        ctypes.CDLL("libcuda.so.1")  # the driver; without it the module is never imported
        from . import _cuda
    except (OSError, ImportError):
        return None
    return _cuda if _cuda.device_count() > 0 else None


def cuda_available() -> bool:
    """Whether fastopt's CUDA engine is built and a CUDA driver and device are present."""
    return engine() is not None
