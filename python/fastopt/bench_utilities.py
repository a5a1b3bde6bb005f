"""``fastopt bench --utilities``: the fused multi-tensor passes around a step against the time
their bytes allow and against PyTorch's foreach forms.

Over ONE tensor of ``size`` params and ``tensors`` tensors of mixed sizes summing to ``size``, for
float32 and bfloat16 model tensors (the averages and accumulators are float32), it times:

* ``ema``: :meth:`fastopt.ParamEMA.update` against ``torch._foreach_lerp_(averages, params,
  1 - decay)`` (timm's ModelEmaV3; bf16 params converted to float32 first, as it must);
  bytes per param: the average read and written (8) + the param read (4 or 2);
* ``accumulate``: the last micro-batch of :meth:`fastopt.GradAccumulator.add` (the accumulated
  grads' sums of squares taken by the same pass) against ``torch._foreach_add_(accumulators,
  grads, alpha=scale)`` then ``torch._foreach_norm(accumulators)`` (the step's norm pass,
  4 B more); bytes per param: the accumulator read and written (8) + the grad read (4 or 2);
* ``sophia-hessian``: :meth:`fastopt.Sophia.update_hessian` (the Hessian average read and
  written, the estimate read, and read once more by the pass that checks it is finite: 16 or 13 B).

Each row's probe moves the same streams through fastopt's engine with no math (as in the main
table): ``of probe`` is the row's GB/s over the probe's (fastopt's bytes for the peers too).
Every implementation of one case is stepped round-robin with the probe (medians of ``repeats``).
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TextIO

import numpy as np

from . import __version__, cpu_isa, get_num_threads, set_num_threads
from .bench_measure import BF16, F32, Stream, interleaved_times, probe_step, tensor_sizes
from .bench_report import Progress, aligned_lines, power_of_two

__all__ = ["UtilityBenchConfig", "run_utility_bench", "format_utility_table", "UTILITIES"]

UTILITIES = ("ema", "accumulate", "sophia-hessian")
MODEL_DTYPES = {"float32": F32, "bfloat16": BF16}


@dataclass
class UtilityBenchConfig:
    """What ``fastopt bench --utilities`` measures (see the module docstring)."""

    size: int = 2 ** 25
    tensors: int = 4096
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None
    use_torch: bool = True

    def validate(self) -> None:
        """ValueError for a size below 16, tensors outside [1, size], repeats < 1, warmup < 0 or
        threads < 1."""
        if self.size < 16:
            raise ValueError(f"size must be at least 16, got {self.size}")
        if not 1 <= self.tensors <= self.size:
            raise ValueError(f"tensors must be in [1, size], got {self.tensors}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("repeats must be >= 1 and warmup >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def streams(utility: str, dtype: np.dtype) -> list[Stream]:
    """What one pass moves per param: the float32 buffer it updates, the model tensor it reads
    (Sophia's estimates twice: a finiteness pass first)."""
    own = {"ema": "average", "accumulate": "accumulator", "sophia-hessian": "hessian"}[utility]
    theirs = {"ema": "param", "accumulate": "grad", "sophia-hessian": "estimate"}[utility]
    out = [Stream(own, F32, True, True), Stream(theirs, dtype, True, False)]
    return out + ([Stream("estimate (finiteness pass)", dtype, True, False)] if utility == "sophia-hessian" else [])


def _probe(utility: str, dtype: np.dtype, size: int) -> tuple[Callable[[], None], float]:
    """The probe over the update's streams (the updated buffer as the probe's param, the read one
    as its grad), and the bytes per param it moves."""
    own, theirs = streams(utility, dtype)[:2]
    return probe_step([Stream("param", own.dtype, True, True), Stream("grad", theirs.dtype, True, False)],
                      size), own.bytes + theirs.bytes


def _fastopt(utility: str, ours: list[np.ndarray], theirs: list[np.ndarray]) -> Callable[[], None]:
    from .accumulate import GradAccumulator
    from .ema import ParamEMA
    from .sophia import Sophia
    if utility == "ema":
        return ParamEMA(theirs, ours, decay=0.999).update
    if utility == "accumulate":
        acc = GradAccumulator(theirs, ours)
        return lambda: acc.add(0.25, last=True)
    opt = Sophia([np.zeros(a.shape, np.float32) for a in ours], [np.zeros(a.shape, np.float32) for a in ours])
    for i, a in enumerate(ours):
        opt.state[i]["hessian"][...] = a
    return lambda: opt.update_hessian(theirs)


def _torch(utility: str, ours: list[np.ndarray], theirs: list[np.ndarray]) -> Callable[[], None] | None:
    """PyTorch's foreach form of the pass, over tensors sharing the arrays' memory (bf16 through
    its bits); None for a pass torch has no form of."""
    import torch
    mine = [torch.from_numpy(a) for a in ours]
    other = [torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype == BF16 else torch.from_numpy(a)
             for a in theirs]
    wide = (lambda xs: [x.float() for x in xs]) if theirs[0].dtype == BF16 else (lambda xs: xs)
    if utility == "ema":
        return lambda: torch._foreach_lerp_(mine, wide(other), 0.001)
    if utility == "accumulate":
        def step() -> None:
            torch._foreach_add_(mine, wide(other), alpha=0.25)
            torch._foreach_norm(mine)
        return step
    return None


def _bytes(utility: str, dtype: np.dtype) -> int:
    return sum(s.bytes for s in streams(utility, dtype))


def _case(utility: str, dtype: np.dtype, sizes: list[int], cfg: UtilityBenchConfig, progress: Progress,
          layout: str) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    ours = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    theirs = [rng.standard_normal(n).astype(np.float32).astype(dtype) for n in sizes]
    probe, probe_bpp = _probe(utility, dtype, cfg.size)
    steps: dict[str, Callable[[], None]] = {"probe": probe, "fastopt": _fastopt(utility, ours, theirs)}
    peer = _torch(utility, [a.copy() for a in ours], theirs) if cfg.use_torch else None
    if peer is not None:
        steps["torch-foreach"] = peer
    progress.start(f"{utility} {dtype.name} {layout} ({', '.join(steps)}, interleaved)")
    times = interleaved_times(steps, cfg.warmup, cfg.repeats)
    steps = None
    gc.collect()
    probe_gbps = probe_bpp * cfg.size / times["probe"] / 1e9
    progress.end(f"probe {probe_gbps:.1f} GB/s")
    rows = []
    for impl, seconds in times.items():
        bpp = probe_bpp if impl == "probe" else _bytes(utility, dtype)
        gbps = bpp * cfg.size / seconds / 1e9
        rows.append({"utility": utility, "dtype": dtype.name, "layout": layout, "impl": impl, "bytes_per_param": bpp,
                     "streams": ", ".join(s.describe() for s in streams(utility, dtype)),
                     "ms_per_step": seconds * 1e3, "gb_per_s": gbps, "fraction_of_probe": gbps / probe_gbps})
    return rows


def run_utility_bench(cfg: UtilityBenchConfig, progress_stream: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Runs the table; returns the report: environment info and one row per utility, model dtype,
    layout and implementation (the probe first), each with utility, dtype, layout, impl,
    bytes_per_param, streams, ms_per_step, gb_per_s and fraction_of_probe. ValueError for a bad
    configuration."""
    cfg.validate()
    if cfg.threads is not None:
        set_num_threads(cfg.threads)
        if cfg.use_torch:
            import torch
            torch.set_num_threads(cfg.threads)
    layouts = {"single": [cfg.size]}
    if cfg.tensors > 1:
        layouts[f"mixed {cfg.tensors}"] = tensor_sizes(cfg.size, cfg.tensors)
    cases = [(u, d, name, sizes) for u in UTILITIES for d in MODEL_DTYPES.values() for name, sizes in layouts.items()]
    progress = Progress(len(cases), progress_stream)
    rows = [row for u, d, name, sizes in cases for row in _case(u, d, sizes, cfg, progress, name)]
    return {"fastopt_version": __version__, "cpu_isa": cpu_isa(), "threads": get_num_threads(),
            "numpy": np.__version__, "size": cfg.size, "tensors": cfg.tensors, "repeats": cfg.repeats,
            "warmup": cfg.warmup, "rows": rows}


HEADER = ["utility", "dtype", "layout", "impl", "B/param", "ms/step", "GB/s", "of probe"]


def _cells(row: Mapping[str, Any]) -> list[str]:
    f = row["fraction_of_probe"]
    return [row["utility"], row["dtype"], row["layout"], row["impl"], f"{row['bytes_per_param']:g}",
            f"{row['ms_per_step']:.3f}", f"{row['gb_per_s']:.1f}", "no ceiling" if f > 1.0 else f"{100 * f:.0f}%"]


def format_utility_table(report: Mapping[str, Any]) -> str:
    """The report as text: a header (environment, each pass's bytes) and an aligned table."""
    lines = [
        f"fastopt {report['fastopt_version']} bench --utilities: {report['size']} params"
        f"{power_of_two(report['size'])} in one tensor and in {report['tensors']} of mixed sizes; float32 "
        f"averages/accumulators; cpu_isa {report['cpu_isa']}, {report['threads']} threads; numpy {report['numpy']}",
        f"median of {report['repeats']} passes after {report['warmup']} warmup rounds, each case's implementations "
        "and its probe stepped round-robin",
        "bytes per param and pass (GB/s = B/param * params / time, fastopt's bytes for every row; torch's "
        "accumulate also reads the accumulators again for the norm):",
    ]
    seen = []
    for r in report["rows"]:
        key = (r["utility"], r["dtype"])
        if key not in seen and r["impl"] != "probe":
            seen.append(key)
            lines.append(f"  {r['utility']} {r['dtype']}: {r['bytes_per_param']:g} B = {r['streams']}")
    lines.append("of probe: GB/s over the probe's (fastopt's engine moving the update's two streams with no math; "
                 "its row counts those bytes); no ceiling: faster than the probe")
    return "\n".join(lines + [""] + aligned_lines(HEADER, [_cells(r) for r in report["rows"]], left=4))
