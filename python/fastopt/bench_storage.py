"""``fastopt bench --storage``: each storage mode against the time its bytes allow.

For each optimizer (default AdamW, with its class's ``bench_hypers``) and each mode of
:data:`fastopt.storage_modes.MODES` (fp32 params; bf16 params with an fp32 master, a uint16
remainder, a bf16 Kahan compensation, stochastic rounding, or nothing), one optimizer steps ONE
tensor of ``size`` params from the same values and float32 grads. A mode's bytes per param and
step count what its update moves, each stream once per direction at its dtype
(:meth:`OptimizerSpec.streams`): the param (read + write; only written beside an fp32
master), the grad (read), the master, remainder or compensation (read + write) and each state
array the hyperparameters use (read + write, as ``state_precision`` stores it)::

    AdamW: fp32 28 B, bf16 + fp32 master 30 B, bf16 + remainder 28 B, bf16 + Kahan 28 B,
           bf16 + stochastic rounding 24 B, bf16 round-to-nearest (no master) 24 B

The probe (fastopt's engine moving the optimizer's fp32 streams with no math, as in the main
table) measures what this machine moves: ``floor`` = a mode's bytes per param * params / the
probe's GB/s is the time its bytes allow, and ``floor/time`` is that over the mode's time
(100%: the mode moves its bytes at the probe's bandwidth). A mode faster than its floor
(``floor/time`` above 100%) shows that the probe is no ceiling for its streams: such a row is
flagged (``probe_is_ceiling`` false), its ratio no measure of efficiency.

Times are medians of ``repeats`` steps after ``warmup`` rounds, the probe and every mode
stepped round-robin, so that the machine's drift falls on all of them alike. Two-pass rules
(LARS, LAMB) are refused: how their other pass reads a mode's params is not modeled.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from typing import Any, Mapping, TextIO

import numpy as np

from . import __version__, cpu_isa, get_num_threads, set_num_threads
from .bench import SPECS, check_timing
from .bench_measure import F32, Data, OptimizerSpec, Stream, as_probed, interleaved_times, probe_step
from .bench_report import Progress, aligned_lines, power_of_two
from .storage_modes import MODES, StorageMode

__all__ = ["StorageBenchConfig", "run_storage_bench", "format_storage_table", "storage_streams"]


@dataclass
class StorageBenchConfig:
    """What ``fastopt bench --storage`` measures (see the module docstring)."""

    size: int = 2 ** 25
    optimizers: tuple[str, ...] = ("adamw",)
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None

    def validate(self) -> None:
        """ValueError for a size below 16, unknown or two-pass optimizers, repeats < 1,
        warmup < 0 or threads < 1."""
        if self.size < 16:
            raise ValueError(f"size must be at least 16, got {self.size}")
        check_timing(self.optimizers, self.repeats, self.warmup)
        two_pass = [o for o in self.optimizers if SPECS[o].fastopt_cls.extra_pass]
        if two_pass:
            raise ValueError(f"the storage table does not model the other pass of {', '.join(two_pass)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def storage_streams(spec: OptimizerSpec, mode: StorageMode) -> list[Stream]:
    """The streams ``spec``'s update moves in ``mode``."""
    return spec.streams(mode.dtype, mode.master_weights, mode.state_precision)


def _row(spec: OptimizerSpec, mode: str, streams: list[Stream], size: int, seconds: float,
         probe_gb_per_s: float | None) -> dict[str, Any]:
    """A row of the report; ``probe_gb_per_s`` None: the probe's own."""
    bpp = sum(s.bytes for s in streams)
    gb_per_s = bpp * size / seconds / 1e9
    fraction = 1.0 if probe_gb_per_s is None else gb_per_s / probe_gb_per_s  # = floor / time
    return {"optimizer": spec.name, "mode": mode, "bytes_per_param": bpp,
            "streams": ", ".join(s.describe() for s in streams),
            "ms_per_step": seconds * 1e3, "gb_per_s": gb_per_s, "floor_ms": fraction * seconds * 1e3,
            "floor_fraction": fraction, "probe_is_ceiling": fraction <= 1.0}


def _bench_optimizer(spec: OptimizerSpec, data: Data, cfg: StorageBenchConfig,
                     progress: Progress) -> list[dict[str, Any]]:
    """The probe's row, then a row per mode the optimizer takes (8-bit state: not Adagrad's)."""
    modes = [m for m in MODES if spec.fastopt_cls.eight_bit_state or m.state_precision != "8bit"]
    progress.start(f"{spec.name} probe, " + ", ".join(m.label for m in modes) + " (interleaved)")
    probe_streams = spec.streams(F32)
    steps = {"probe": probe_step(probe_streams, cfg.size)}
    for mode in modes:  # the grads are only read: every mode shares them
        opt = spec.fastopt_cls([data.params32.astype(mode.dtype)], [data.grads], **mode.options, **spec.hypers)
        steps[mode.label] = opt.step
    times = interleaved_times(steps, cfg.warmup, cfg.repeats)
    steps = opt = None
    gc.collect()
    probe = _row(spec, "probe", as_probed(probe_streams), cfg.size, times["probe"], None)
    progress.end(f"probe {probe['gb_per_s']:.1f} GB/s")
    return [probe] + [_row(spec, m.label, storage_streams(spec, m), cfg.size, times[m.label], probe["gb_per_s"])
                      for m in modes]


def run_storage_bench(cfg: StorageBenchConfig, progress_stream: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Runs the storage table; returns the report: environment info and one row per optimizer
    and mode (the probe first), each with optimizer, mode (its label, or "probe"),
    bytes_per_param, streams (what they count), ms_per_step, gb_per_s, floor_ms (the time its
    bytes allow at the probe's bandwidth), floor_fraction (floor_ms / ms_per_step) and
    probe_is_ceiling (floor_fraction <= 1). ValueError for a bad configuration."""
    cfg.validate()
    if cfg.threads is not None:
        set_num_threads(cfg.threads)
    data = Data.make(cfg.size, F32)
    progress = Progress(len(cfg.optimizers), progress_stream)
    rows = [row for name in cfg.optimizers for row in _bench_optimizer(SPECS[name], data, cfg, progress)]
    return {
        "fastopt_version": __version__, "cpu_isa": cpu_isa(), "threads": get_num_threads(),
        "numpy": np.__version__, "size": cfg.size, "repeats": cfg.repeats, "warmup": cfg.warmup,
        "rows": rows,
    }


HEADER = ["optimizer", "mode", "B/param", "ms/step", "GB/s", "floor ms", "floor/time"]


def _cells(row: Mapping[str, Any]) -> list[str]:
    fraction = f"{100 * row['floor_fraction']:.0f}%" + ("" if row["probe_is_ceiling"] else " no ceiling")
    return [row["optimizer"], row["mode"], f"{row['bytes_per_param']:g}", f"{row['ms_per_step']:.3f}",
            f"{row['gb_per_s']:.1f}", f"{row['floor_ms']:.3f}", fraction]


def format_storage_table(report: Mapping[str, Any]) -> str:
    """The report as text: a header (environment, each mode's bytes) and an aligned table."""
    lines = [
        f"fastopt {report['fastopt_version']} bench --storage: one tensor of {report['size']} params"
        f"{power_of_two(report['size'])}, float32 grads; cpu_isa {report['cpu_isa']}, "
        f"{report['threads']} threads; numpy {report['numpy']}",
        f"median of {report['repeats']} steps after {report['warmup']} warmup rounds, the probe and every mode "
        "stepped round-robin",
        "bytes per param and step (GB/s = B/param * params / time):",
    ]
    width = max(len(r["optimizer"]) + len(r["mode"]) for r in report["rows"]) + 1
    lines += [f"  {r['optimizer'] + ' ' + r['mode']:<{width}} {r['bytes_per_param']:>3g} B = {r['streams']}"
              for r in report["rows"]]
    lines += ["probe: fastopt's engine moving the fp32 streams with no math",
              "floor = B/param * params / probe GB/s, the time its bytes allow; floor/time: 100% = at the probe's "
              "bandwidth"]
    if not all(r["probe_is_ceiling"] for r in report["rows"]):
        lines.append("no ceiling: faster than its bytes allow at the probe's bandwidth, so the probe is no ceiling "
                     "for this mode's streams and its ratio no measure of efficiency")
    return "\n".join(lines + [""] + aligned_lines(HEADER, [_cells(r) for r in report["rows"]], left=2))
