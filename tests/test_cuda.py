"""fastopt.cuda: the CUDA engine is found where it can run, and with FASTOPT_REQUIRE_CUDA=1 (the
GPU check) a missing engine is an error with its reason, never a run of skipped tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

import fastopt

TESTS = pathlib.Path(__file__).parent


def run(args, require):
    env = {**os.environ, "FASTOPT_REQUIRE_CUDA": "1" if require else "0"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=TESTS, timeout=300)


@pytest.mark.skipif(fastopt.cuda_available(), reason="a CUDA engine and device are present here")
def test_required_engine_missing_is_an_error():
    probe = ["-c", "import fastopt; print(fastopt.cuda.engine())"]
    assert run(probe, require=False).stdout.strip() == "None"
    missing = run(probe, require=True)
    assert missing.returncode != 0
    assert any(reason in missing.stderr for reason in ("libcuda", "_cuda", "sees no device")), missing.stderr
    tests = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_cuda_options.py"], require=True)
    assert tests.returncode != 0 and " skipped" not in tests.stdout.splitlines()[-1], tests.stdout[-2000:]
