"""AdamW over one tensor of 2^24 params in each way of keeping a bfloat16 param's fp32 value:
fp32 params, bf16 + fp32 master, bf16 + remainder, bf16 + Kahan compensation, bf16 rounded
stochastically. One optimizer per mode, stepped round-robin; prints the median ms of 15 steps
each (after 3 warm-up rounds).

    python benchmarks/storage_modes.py [log2 size]      (FASTOPT_CPU_ISA=avx2 for the AVX2 kernels)
"""

import statistics
import sys
import time

import ml_dtypes
import numpy as np

import fastopt

MODES = {"fp32": None, "master": True, "remainder": "remainder", "kahan": "kahan", "stochastic": "stochastic"}


def make(mode: str, base: np.ndarray) -> fastopt.AdamW:
    grads = [np.full(base.size, 1e-3, np.float32)]
    if MODES[mode] is None:
        return fastopt.AdamW([base.copy()], grads, lr=1e-3)
    return fastopt.AdamW([base.astype(ml_dtypes.bfloat16)], grads, lr=1e-3, master_weights=MODES[mode])


def main() -> None:
    n = 1 << int(sys.argv[1] if len(sys.argv) > 1 else 24)
    base = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    opts = {mode: make(mode, base) for mode in MODES}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(3):
        for opt in opts.values():
            opt.step()
    for _ in range(15):
        for mode, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[mode].append(time.perf_counter() - t0)
    print(f"{fastopt.cpu_isa()}, 2^{n.bit_length() - 1} params: " +
          ", ".join(f"{mode} {statistics.median(t) * 1e3:.2f} ms" for mode, t in times.items()))


if __name__ == "__main__":
    main()
