"""LARS / SGD-momentum and LAMB / AdamW step times on the same 2^25 fp32 params, stepped
round-robin in one run (the issue's <= 1.5x target is a ratio within one run).

    python benchmarks/two_pass_ratio.py [TENSORS]   # TENSORS equal tensors (default 1)
"""
import sys

import numpy as np

import fastopt
from fastopt.bench import interleaved_times

N = 2**25
tensors = int(sys.argv[1]) if len(sys.argv) > 1 else 1
rng = np.random.default_rng(0)


def step_of(cls, **hypers):
    params = [rng.standard_normal(N // tensors).astype(np.float32) for _ in range(tensors)]
    grads = [rng.standard_normal(N // tensors).astype(np.float32) * 1e-3 for _ in range(tensors)]
    return cls(params, grads, lr=1e-3, **hypers).step


steps = {"sgd": step_of(fastopt.SGD, momentum=0.9), "lars": step_of(fastopt.LARS),
         "adamw": step_of(fastopt.AdamW), "lamb": step_of(fastopt.LAMB)}
t = interleaved_times(steps, 3, 15)
print(f"{tensors} x {N // tensors} fp32, {fastopt.cpu_isa()}: " + "  ".join(f"{k} {v * 1e3:.2f} ms" for k, v in t.items()))
print(f"LARS/SGD {t['lars'] / t['sgd']:.3f}  LAMB/AdamW {t['lamb'] / t['adamw']:.3f}")
