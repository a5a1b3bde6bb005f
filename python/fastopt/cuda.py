"""Access to the CUDA engine (fastopt._cuda), loaded only where a CUDA driver and device exist."""

from __future__ import annotations

import ctypes
import functools
import os
from types import ModuleType


@functools.lru_cache(maxsize=1)
def engine() -> ModuleType | None:
    """The CUDA engine module, or None: not built, no driver, or no device. With the
    environment variable ``FASTOPT_REQUIRE_CUDA=1`` (a GPU check) each of those raises instead,
    with its reason (an import error of the module, such as an undefined symbol, included)."""
    required = os.environ.get("FASTOPT_REQUIRE_CUDA") == "1"
    try:
        ctypes.CDLL("libcuda.so.1")  # the driver; without it the module is never imported
        from . import _cuda
    except (OSError, ImportError):
        if required:
            raise
        return None
    if _cuda.device_count() > 0:
        return _cuda
    if required:
        raise RuntimeError("FASTOPT_REQUIRE_CUDA=1, but fastopt's CUDA engine sees no device: "
                           + _cuda.no_device_reason())
    return None


def cuda_available() -> bool:
    """Whether fastopt's CUDA engine is built and a CUDA driver and device are present."""
    return engine() is not None
