"""The CUDA engine's loading (python/fastopt/cuda.py): fastopt imports and reports where no
GPU is present; the GPU tests of the engine itself carry the cuda marker."""

import subprocess
import sys

import fastopt
from fastopt import cuda


def test_cuda_available_matches_engine():
    assert fastopt.cuda_available() == (cuda.engine() is not None)


def test_import_never_loads_the_cuda_module():
    code = "import sys, fastopt; print('fastopt._cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
