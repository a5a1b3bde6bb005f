"""Where 8-bit AdamW state stands against fp32 AdamW on this machine, and the floors that bound it.

AdamW over one tensor of 2^25 params (fp32 params and grads), default threads, stepped
round-robin (medians of 15 after 3 warm-up rounds):
  fp32 state        28 B per param
  8-bit state       16.008 B per param
and two floors, each a time that no 8-bit AdamW step can beat:
  math      the rule's arithmetic alone: AdamW over 2^15 params (its arrays in L1/L2, so no
            memory traffic), per element on one thread, times 2^25 / threads
  convert   the 8-bit state's conversions and memory traffic without the rule: the engine's probe
            (x + 0 * g, no math) over a param, a grad and two 8-bit state arrays of 2^25

    python benchmarks/eight_bit_floor.py
"""

import time

import numpy as np

import fastopt
from fastopt import _core
from fastopt.bench_measure import interleaved_times
from fastopt.binding import Keeps

N = 1 << 25


def main() -> None:
    rng = np.random.default_rng(0)
    p = rng.standard_normal(N).astype(np.float32)
    g = (rng.standard_normal(N) * 1e-3).astype(np.float32)
    opts = {mode: fastopt.AdamW([p.copy()], [g], state_precision=mode) for mode in ("float32", "8bit")}
    codes = [np.ones(N, np.uint8) for _ in range(2)]
    keeps = Keeps.none(1)
    keeps.absmaxes = [[np.ones(-(-N // 2048), np.float32) for _ in range(2)]]
    probe = _core.Group("probe", [p.copy()], [g], keeps, [codes], [1]).probe
    t = interleaved_times({"fp32 state": opts["float32"].step, "8-bit state": opts["8bit"].step, "convert": probe},
                          warmup=3, repeats=15)

    small = 1 << 15
    threads = fastopt.get_num_threads()
    fastopt.set_num_threads(1)
    alone = fastopt.AdamW([p[:small].copy()], [g[:small].copy()])
    reps = 2000
    alone.step()
    t0 = time.perf_counter()
    for _ in range(reps):
        alone.step()
    per_element = (time.perf_counter() - t0) / reps / small
    fastopt.set_num_threads(threads)
    t["math"] = per_element * N / threads

    print(f"{fastopt.cpu_isa()}, {threads} threads, 2^25 params")
    for name in ("fp32 state", "8-bit state", "math", "convert"):
        print(f"  {name:12s} {t[name] * 1e3:8.2f} ms")
    print(f"  8-bit / fp32: {t['8-bit state'] / t['fp32 state']:.2f}x the time; the target (1.25x faster) is "
          f"{t['fp32 state'] / 1.25 * 1e3:.2f} ms; math + convert = {(t['math'] + t['convert']) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
