"""Access to the CUDA engine (fastopt._cuda), loaded only where a CUDA driver and device exist."""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from types import ModuleType


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ModuleType | None, str]:
    """The CUDA engine module and "", or None and why it cannot be used."""
    if importlib.util.find_spec("fastopt._cuda") is None:
        return None, "fastopt was built without its CUDA engine (no nvcc found, or FASTOPT_CUDA=OFF)"
    try:
        ctypes.CDLL("libcuda.so.1")  # the driver; without it the module is never imported
    except OSError as e:
        return None, f"no CUDA driver ({e})"
    try:
        from . import _cuda
    except ImportError as e:  # a broken build (an undefined symbol, ...)
        return None, f"fastopt._cuda does not import: {e}"
    if _cuda.device_count() == 0:
        return None, "the CUDA runtime sees no device: " + _cuda.no_device_reason()
    return _cuda, ""


def _required() -> bool:
    return os.environ.get("FASTOPT_REQUIRE_CUDA", "").strip().lower() not in ("", "0", "false", "no", "off")


def engine() -> ModuleType | None:
    """The CUDA engine module, or None: not built, no driver, no device, or a build that does
    not import (:func:`unavailable_reason` says which). Where the environment variable
    ``FASTOPT_REQUIRE_CUDA`` is set (to ``1``, ``true``, ...: anything but empty, ``0``,
    ``false``, ``no`` or ``off``; a GPU check), a missing engine raises RuntimeError with that
    reason instead."""
    module, reason = _load()
    if module is None and _required():
        raise RuntimeError(f"FASTOPT_REQUIRE_CUDA={os.environ['FASTOPT_REQUIRE_CUDA']}, but fastopt's CUDA engine "
                           f"is not available: {reason}")
    return module


def unavailable_reason() -> str:
    """Why fastopt's CUDA engine cannot be used here ("" where it can): not built, no driver,
    no device (the CUDA runtime's reason, e.g. a driver older than the runtime), or an import
    error of the built module."""
    return _load()[1]


def cuda_available() -> bool:
    """Whether fastopt's CUDA engine is built and a CUDA driver and device are present (else
    ``fastopt.cuda.unavailable_reason()`` says why). Raises RuntimeError where it is not and
    ``FASTOPT_REQUIRE_CUDA`` is set (see :func:`engine`)."""
    return engine() is not None
