"""The ``fastopt bench`` benchmark: fastopt's optimizer steps against a bandwidth probe and peers.

For each optimizer (``catalog.OPTIMIZERS``, each with its class's ``bench_hypers``) and two layouts of the same ``size``
params (ONE tensor, and ``tensors`` tensors of mixed sizes that sum exactly to ``size``), it
times steps of:

* ``fastopt``: the optimizer class, on NumPy arrays (``master_weights=True`` for half params);
* ``torch-fused``, ``torch-foreach``, ``torch-forloop``: ``torch.optim`` with ``fused=True``,
  ``foreach=True`` and ``foreach=False``, same hyperparameters, on torch tensors of the same
  layout with ``.grad`` set (when torch is importable);
* ``numpy``: a naive in-place NumPy step (ufuncs with ``out=``, one tensor at a time).

Every implementation starts from fresh copies of the same values and takes the same number of
steps; its final params are compared with fastopt's (``max_abs_diff``). For float16/bfloat16
params the peers keep fp32 master weights as fastopt does: they step fp32 masters with the
fp32 grads and then write the half params from them.

Bytes per param and step count the streams of the update, each once per direction::

    param     float32: read + write 4 + 4    half with fp32 master: write 2 (the master is read)
    grad      float32: read 4
    master    (half params only) float32: read + write 4 + 4
    state     float32, read + write 4 + 4 each: SGD momentum_buffer; Adam/AdamW exp_avg, exp_avg_sq

    fp32 SGD momentum: 20 B    fp32 Adam/AdamW: 28 B
    half SGD momentum: 22 B    half Adam/AdamW: 30 B

(The CPU's write-allocate reads a half param's cache lines before storing them: 2 B more in
practice, not counted.) GB/s = bytes per param * params / time, for every row, so the
peers' GB/s is the bandwidth they would need at fastopt's byte count.

The ``probe`` row binds fastopt's engine to ONE tensor with exactly these streams (same
dtypes, same read/write roles) and runs a no-math rule through it: every stream loaded and
stored by the same code, the update replaced by x + 0*g. Its GB/s is what this machine moves
for these streams; ``fraction_of_probe`` is fastopt's GB/s divided by the probe's, i.e. the
cost of the optimizer's math and of the tensor layout.

Times are medians over ``repeats`` steps (``time.perf_counter``, each step timed alone) after
``warmup`` untimed steps. The probe, fastopt and torch's fused step (both layouts) are stepped
round-robin, so that their ratios come from one interleaved run; the slower peers are timed
one after another.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TextIO

import numpy as np

from . import __version__, cpu_isa, get_num_threads
from .bench_measure import (DTYPES, Data, Layout, OptimizerSpec, Runner, interleaved_times, median_step_time,
                            probe_bytes, probe_step, tensor_sizes)
from .bench_peers import IMPLS, NUMPY_STEPS, Impl, fixed_cost_us, torch_with_threads
from .bench_layouts import check_layout_names, named_layouts
from .bench_report import Progress, format_table, make_row
from .catalog import OPTIMIZERS

# The run and what its callers (the CLI, the CUDA benchmark, the tests) name through it.
__all__ = ["BenchConfig", "run_bench", "check_run", "check_timing", "format_table", "fixed_cost_us", "SPECS",
           "DTYPES", "IMPLS", "Impl", "tensor_sizes"]

SPECS: dict[str, OptimizerSpec] = {
    spec.name: spec for spec in (OptimizerSpec(cls, NUMPY_STEPS.get(cls.__name__.lower())) for cls in OPTIMIZERS)}


# ---- the run -------------------------------------------------------------------------------

def check_run(dtype: str, optimizers: Sequence[str], repeats: int, warmup: int) -> None:
    """ValueError for what every benchmark configuration of one param dtype checks alike."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_timing(optimizers, repeats, warmup)


def check_timing(optimizers: Sequence[str], repeats: int, warmup: int) -> None:
    """ValueError for unknown optimizers, repeats < 1 or warmup < 0."""
    unknown = [o for o in optimizers if o not in SPECS]
    if unknown or not optimizers:
        raise ValueError(f"optimizers must be among {', '.join(SPECS)}, got {', '.join(optimizers)}")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")


@dataclass
class BenchConfig:
    """What ``fastopt bench`` measures (see the module docstring)."""

    size: int = 2 ** 25
    tensors: int = 4096
    dtype: str = "float32"
    optimizers: tuple[str, ...] = tuple(SPECS)
    repeats: int = 10
    warmup: int = 2
    use_torch: bool = True
    threads: int | None = None
    layouts: tuple[str, ...] = ()  # --layout: names of bench_layouts (default: single, and mixed unless tensors == 1)

    def validate(self) -> None:
        check_layout_names(self.layouts)
        if self.size < 16:
            raise ValueError(f"size must be at least 16, got {self.size}")
        if (not self.layouts or "mixed" in self.layouts) and not 1 <= self.tensors <= self.size:
            raise ValueError(f"tensors must be in [1, size], got {self.tensors}")
        check_run(self.dtype, self.optimizers, self.repeats, self.warmup)
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


# fastopt, the probe and torch's fused step are within a few percent of each other: they are
# stepped round-robin, so that the machine's drift falls on all of them alike. The far slower
# peers are timed one after another.
INTERLEAVED = ("fastopt", "torch-fused", "deepspeed-cpuadam")


def _error_text(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _try_build(impl: Impl, spec: OptimizerSpec, layout: Layout, data: Data) -> tuple[Runner | None, str | None]:
    """The impl built and stepped once, or (None, why) for a torch peer that cannot run."""
    try:
        runner = impl.build(spec, layout, data)
        runner.step()
        return runner, None
    except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
        if not impl.needs_torch:
            raise
        return None, _error_text(e)


def applicable(spec: OptimizerSpec, impls: Sequence[Impl]) -> list[Impl]:
    """The impls that exist for ``spec``: torch's only where torch.optim has the optimizer,
    the naive NumPy step only where one is written."""
    return [i for i in impls if not (i.needs_torch and spec.torch_name is None)
            and not (i.name == "numpy" and spec.numpy_step is None)
            and not (i.optimizers and spec.name not in i.optimizers)]


def _bench_optimizer(spec: OptimizerSpec, layouts: Sequence[Layout], data: Data, impls: Sequence[Impl],
                     cfg: BenchConfig, progress: Progress) -> list[dict[str, Any]]:
    """The rows of one optimizer: the probe, then each layout's impls in ``impls`` order."""
    streams = spec.streams(data.params.dtype)
    single = Layout("single", (max(sum(layout.sizes) for layout in layouts),))
    close = [i for i in impls if i.name in INTERLEAVED]
    progress.start(f"{spec.name} probe, " + ", ".join(
        f"{layout.label} {i.name}" for layout in layouts for i in close) + " (interleaved)")
    runners: dict[tuple[str, str], Runner] = {}
    errors: dict[tuple[str, str], str] = {}
    for layout in layouts:
        for impl in close:
            runner, error = _try_build(impl, spec, layout, data)
            if runner is None:
                errors[(layout.name, impl.name)] = error
            else:
                runners[(layout.name, impl.name)] = runner
    steps: dict[tuple[str, str], Callable[[], None]] = {("single", "probe"): probe_step(streams, single.sizes[0])}
    steps.update({k: r.step for k, r in runners.items()})
    times = interleaved_times(steps, cfg.warmup, cfg.repeats)
    results = {k: r.result() for k, r in runners.items()}
    runners = steps = None
    gc.collect()
    # The probe moves the elementwise streams once: a two-pass rule's extra reads are not in it.
    probe = make_row(spec, single, "probe", probe_bytes(streams), single.sizes[0], times[("single", "probe")])
    probe["fraction_of_probe"] = 1.0
    progress.end(f"probe {probe['gb_per_s']:.1f} GB/s")

    rows = [probe]
    for layout in layouts:
        reference = results[(layout.name, "fastopt")]
        layout_rows = []
        for impl in impls:
            key = (layout.name, impl.name)
            if impl in close:
                seconds, result, error = times.get(key), results.get(key), errors.get(key)
            else:
                progress.start(f"{spec.name} {layout.label} {impl.name}")
                runner, error = _try_build(impl, spec, layout, data)
                seconds = result = None
                if runner is not None:
                    seconds = median_step_time(runner.step, max(cfg.warmup, 1), cfg.repeats, times.untimed)
                    result = runner.result()
                runner = None
                gc.collect()
            row = make_row(spec, layout, impl.name, spec.bytes_per_param(data.params.dtype, layout.shapes),
                           sum(layout.sizes), seconds, error)
            if result is not None and impl.name != "fastopt":
                row["max_abs_diff"] = float(np.max(np.abs(result - reference)))
            if impl not in close:
                progress.end(f"n/a ({error})" if error else f"{row['ms_per_step']:.3f} ms/step")
            layout_rows.append(row)
        fastopt_row = layout_rows[0]
        fastopt_row["fraction_of_probe"] = fastopt_row["gb_per_s"] / probe["gb_per_s"]
        fastopt_row["probe_is_ceiling"] = fastopt_row["fraction_of_probe"] <= 1.0
        for row in layout_rows:
            if row["ms_per_step"] is not None:
                row["speedup_vs"] = row["ms_per_step"] / fastopt_row["ms_per_step"]
        rows += layout_rows
    return rows


def run_bench(cfg: BenchConfig, progress_stream: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Runs the benchmark; returns the report: environment info and one row per measurement.

    Rows carry optimizer, layout ("single"/"multi"), num_tensors, impl, ms_per_step,
    gb_per_s, bytes_per_param, fraction_of_probe (fastopt and probe rows), speedup_vs
    (the impl's time / fastopt's time: how many times faster fastopt is), max_abs_diff
    (of the final params against fastopt's) and error (why a peer could not run, or None).
    """
    cfg.validate()
    torch = torch_with_threads(cfg.use_torch, cfg.threads)
    impls = [i for i in IMPLS if torch is not None or not i.needs_torch]
    names = cfg.layouts or (("single", "mixed") if cfg.tensors > 1 else ("single",))
    mixed = tuple(tensor_sizes(cfg.size, cfg.tensors)) if "mixed" in names else ()
    layouts = named_layouts(names, cfg.size, mixed, "cpu")
    # The two default layouts share one probe and one interleaved run; named ones run one by one
    # (a model's arrays alone take gigabytes).
    runs = [layouts] if not cfg.layouts else [[layout] for layout in layouts]
    specs = [SPECS[o] for o in cfg.optimizers]
    dtype = DTYPES[cfg.dtype]
    sequential = sum(len(layouts) for spec in specs for i in applicable(spec, impls) if i.name not in INTERLEAVED)
    progress = Progress(len(specs) * len(runs) + sequential + 1, progress_stream)

    data = Data.make(max(sum(layout.sizes) for layout in layouts), dtype)
    rows, streams_doc = [], {}
    for spec in specs:
        streams_doc[spec.name] = spec.describe(dtype)
        for run in runs:
            rows += _bench_optimizer(spec, run, data, applicable(spec, impls), cfg, progress)
    progress.start("fixed cost: adamw, 1000 tensors of 1 element")
    fixed = fixed_cost_us(torch)
    progress.end(f"{fixed['fastopt']:.1f} us/step")
    sizes = layouts[-1].sizes
    return {
        "layouts": {layout.name: [len(layout.sizes), sum(layout.sizes)] for layout in layouts},
        "fastopt_version": __version__,
        "cpu_isa": cpu_isa(),
        "threads": get_num_threads(),
        "torch": None if torch is None else torch.__version__,
        "torch_threads": None if torch is None else torch.get_num_threads(),
        "numpy": np.__version__,
        "size": cfg.size, "tensors": cfg.tensors, "dtype": cfg.dtype,
        "tensor_sizes": {"min": min(sizes), "max": max(sizes)},
        "repeats": cfg.repeats, "warmup": cfg.warmup,
        "streams": streams_doc,
        "rows": rows,
        "fixed_cost_us": fixed,
    }
