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
    """FASTOPT_REQUIRE_CUDA=1 where the engine counts no device: the error carries the CUDA
    runtime's reason (a driver older than the runtime, no device), not just "no device"."""
    _cuda = pytest.importorskip("fastopt._cuda", reason="fastopt's CUDA engine is not built here")
    if _cuda.device_count() > 0:
        assert _cuda.no_device_reason() == ""
        return
    reason = _cuda.no_device_reason()
    assert reason
    monkeypatch.setenv("FASTOPT_REQUIRE_CUDA", "1")
    monkeypatch.setattr(cuda.ctypes, "CDLL", lambda name: None)  # as where a driver library is installed
    with pytest.raises(RuntimeError, match=re.escape(reason)):
        cuda.engine.__wrapped__()
