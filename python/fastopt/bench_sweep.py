"""``fastopt bench --sweep``: the cost of a step across sizes, fastopt against torch.optim.

For each size from 2**10 up to ``max_size`` (every power of two, and between two of them the
odd size 3 * 2**(k-1) + 1), each optimizer steps the same fp32 params laid out as ONE tensor
and as ``max(2, min(4096, size // 1024))`` tensors of mixed sizes (as in the main table), in
every implementation: fastopt and torch.optim's fused, foreach and for-loop steps, stepped
round-robin (medians of ``repeats`` after ``warmup`` rounds), so that the machine's drift falls
on all of them alike; DeepSpeed's CPU Adam too, for Adam and AdamW, where importable. Each timed
step follows 20 ms of untimed steps of its own implementation (its own count: no params are
compared here; see bench_measure.SETTLE). A row per
(size, layout, impl); ``speedup_vs`` is the impl's time over fastopt's, and the table shows,
per size and layout, fastopt's time, the fastest torch step's and DeepSpeed's, with their ratios.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import asdict, dataclass
from typing import Any, Mapping, TextIO

import numpy as np

from . import __version__, cpu_isa, get_num_threads
from .bench import SPECS, applicable, check_timing
from .bench_measure import F32, Data, Layout, interleaved_times, tensor_sizes
from .bench_peers import IMPLS, torch_with_threads
from .bench_report import Progress, aligned_lines

__all__ = ["SweepConfig", "sweep_sizes", "run_sweep", "format_sweep_table"]

LOW = 10


@dataclass
class SweepConfig:
    """What ``fastopt bench --sweep`` measures (module docstring)."""

    max_size: int = 2 ** 26
    optimizers: tuple[str, ...] = ("adamw",)
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None
    use_torch: bool = True

    def validate(self) -> None:
        if self.max_size < 2 ** LOW:
            raise ValueError(f"the sweep's largest size must be at least 2**{LOW}, got {self.max_size}")
        check_timing(self.optimizers, self.repeats, self.warmup)


def sweep_sizes(max_size: int) -> list[int]:
    """2**10, 3 * 2**9 + 1, 2**11, 3 * 2**10 + 1, ... up to max_size."""
    sizes, k = [], LOW
    while 2 ** k <= max_size:
        sizes.append(2 ** k)
        if 2 ** (k + 1) <= max_size:
            sizes.append(3 * 2 ** (k - 1) + 1)
        k += 1
    return sizes


def many(size: int) -> int:
    return max(2, min(4096, size // 1024))


def run_sweep(cfg: SweepConfig, progress_stream: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Runs the sweep; a report with the configuration, environment and rows (optimizer, size,
    layout, num_tensors, impl, ms_per_step, gb_per_s, speedup_vs, error)."""
    cfg.validate()
    torch = torch_with_threads(cfg.use_torch, cfg.threads)
    impls = [i for i in IMPLS if i.name != "numpy" and (torch is not None or not i.needs_torch)]
    sizes = sweep_sizes(cfg.max_size)
    # (a case's work: its params, plus each implementation's 20 ms of untimed steps per repeat,
    # worth some 2^20 params)
    progress = Progress(len(sizes) * len(cfg.optimizers), progress_stream,
                        [size + 2 ** 20 for _ in cfg.optimizers for size in sizes])
    rows = []
    for name in cfg.optimizers:
        spec = SPECS[name]
        bpp = spec.bytes_per_param(np.dtype(F32))
        for size in sizes:
            progress.start(f"{name} {size} params")
            data = Data.make(size, np.dtype(F32))
            layouts = [Layout("single", (size,)), Layout("multi", tuple(tensor_sizes(size, many(size))))]
            steps, errors = {}, {}
            for layout in layouts:
                for impl in applicable(spec, impls):
                    try:
                        runner = impl.build(spec, layout, data)
                        runner.step()
                        steps[(layout, impl.name)] = runner.step
                    except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported
                        if not impl.needs_torch:
                            raise
                        errors[(layout, impl.name)] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            times = interleaved_times(steps, cfg.warmup, cfg.repeats, own_pace=True)
            steps = None
            gc.collect()
            for layout in layouts:
                ours = times[(layout, "fastopt")]
                for impl in applicable(spec, impls):
                    t = times.get((layout, impl.name))
                    rows.append({"optimizer": name, "size": size, "layout": layout.name,
                                 "num_tensors": len(layout.sizes), "impl": impl.name,
                                 "ms_per_step": None if t is None else t * 1e3,
                                 "gb_per_s": None if t is None else bpp * size / t / 1e9,
                                 "speedup_vs": None if t is None else t / ours,
                                 "error": errors.get((layout, impl.name))})
            progress.end(f"fastopt {ours * 1e3:.3f} ms (many tensors)")
    return {"kind": "sweep", "config": asdict(cfg), "fastopt_version": __version__, "cpu_isa": cpu_isa(),
            "threads": get_num_threads(), "torch": None if torch is None else torch.__version__,
            "torch_threads": None if torch is None else torch.get_num_threads(), "rows": rows}


def format_sweep_table(report: Mapping[str, Any]) -> str:
    """Per optimizer, size and layout: fastopt's time, the fastest torch step's and DeepSpeed's
    (where it ran), each with its time over fastopt's."""
    torch = f"torch {report['torch']} ({report['torch_threads']} threads)" if report["torch"] else "torch: not used"
    lines = [f"fastopt {report['fastopt_version']} bench --sweep: fp32 params; cpu_isa {report['cpu_isa']}, "
             f"{report['threads']} threads; {torch}; median of {report['config']['repeats']} steps, round-robin",
             "fastest torch = the fastest of torch.optim's fused, foreach and for-loop steps; <peer>/fastopt = the "
             "peer's time / fastopt's (below 1: the peer is faster)", ""]
    cells = []
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in report["rows"]:
        groups.setdefault((r["optimizer"], r["size"], r["layout"]), []).append(r)
    for (name, size, _), rs in groups.items():
        ours = next(r for r in rs if r["impl"] == "fastopt")
        ran = [r for r in rs if r["ms_per_step"] is not None]
        torch_rows = [r for r in ran if r["impl"].startswith("torch-")]
        best = min(torch_rows, key=lambda r: r["ms_per_step"]) if torch_rows else None
        ds = next((r for r in ran if r["impl"] == "deepspeed-cpuadam"), None)
        cells.append([name, str(size), f"{ours['num_tensors']}", f"{ours['ms_per_step']:.4f}",
                      *(["-", "-", "-"] if best is None else
                        [f"{best['ms_per_step']:.4f}", best["impl"][6:], f"{best['speedup_vs']:.2f}x"]),
                      *(["-", "-"] if ds is None else [f"{ds['ms_per_step']:.4f}", f"{ds['speedup_vs']:.2f}x"])])
    header = ["optimizer", "params", "tensors", "fastopt ms", "fastest torch ms", "torch step", "torch/fastopt",
              "deepspeed ms", "deepspeed/fastopt"]
    missing = {r["impl"]: r["error"] for r in report["rows"] if r["error"]}  # ("-" in the table: why)
    notes = [""] + [f"{impl}: n/a ({error})" for impl, error in sorted(missing.items())] if missing else []
    return "\n".join(lines + aligned_lines(header, cells, left=1) + notes)
