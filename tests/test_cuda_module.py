"""The CUDA engine's loading (python/fastopt/cuda.py): fastopt imports and reports where no
GPU is present; the GPU tests of the engine itself carry the cuda marker."""

import re
import subprocess
import sys

import pytest

import fastopt
from fastopt import cuda


def test_cuda_available_matches_engine():
    assert fastopt.cuda_available() == (cuda.engine() is not None)


def test_import_never_loads_the_cuda_module():
    code = "import sys, fastopt; print('fastopt._cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_required_engine_without_a_device_says_why(monkeypatch):
    """Where the engine counts no device the reason is the CUDA runtime's (a driver older than
    the runtime, no device), not just "no device"; FASTOPT_REQUIRE_CUDA set (1, true, yes; not
    0, false, off or empty) makes it an error."""
    _cuda = pytest.importorskip("fastopt._cuda", reason="fastopt's CUDA engine is not built here")
    if _cuda.device_count() > 0:
        assert _cuda.no_device_reason() == "" and cuda.unavailable_reason() == ""
        return
    reason = _cuda.no_device_reason()
    assert reason
    monkeypatch.setattr(cuda.ctypes, "CDLL", lambda name: None)  # as where a driver library is installed
    module, why = cuda._load.__wrapped__()
    assert module is None and why == "the CUDA runtime sees no device: " + reason
    monkeypatch.setattr(cuda, "_load", lambda: (None, why))
    for value in ("1", "true", "yes"):
        monkeypatch.setenv("FASTOPT_REQUIRE_CUDA", value)
        with pytest.raises(RuntimeError, match=f"FASTOPT_REQUIRE_CUDA={value}, .*" + re.escape(why)):
            cuda.engine()
    for value in ("0", "false", "Off", ""):
        monkeypatch.setenv("FASTOPT_REQUIRE_CUDA", value)
        assert cuda.engine() is None and not fastopt.cuda_available()


def test_a_module_that_does_not_import_says_why(monkeypatch):
    """A broken build (an undefined symbol, ...) is not taken for a missing engine: its import
    error is the reason."""
    monkeypatch.setattr(cuda.ctypes, "CDLL", lambda name: None)
    monkeypatch.setattr(cuda.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setitem(sys.modules, "fastopt._cuda", None)  # its import fails
    monkeypatch.delattr(fastopt, "_cuda", raising=False)
    module, why = cuda._load.__wrapped__()
    assert module is None and why.startswith("fastopt._cuda does not import: "), why


def test_a_build_without_the_engine_says_so(monkeypatch):
    monkeypatch.setattr(cuda.importlib.util, "find_spec", lambda name: None)
    assert cuda._load.__wrapped__() == (None, "fastopt was built without its CUDA engine (no nvcc found, or "
                                              "FASTOPT_CUDA=OFF)")
