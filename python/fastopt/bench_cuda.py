"""``fastopt bench --device cuda``: the benchmark's table on a GPU.

Needs PyTorch with CUDA (it allocates the tensors and provides the peers). For each optimizer
(the CPU benchmark's specs: SGD momentum 0.9, Adam, AdamW) and two layouts — ONE tensor of
``size`` params, and ``tensors`` separately allocated tensors of ``tensor_elems`` params each —
it times steps of:

* ``fastopt``: the optimizer class on torch CUDA tensors (``master_weights=True`` for half
  params), one kernel launch per step on torch's current stream;
* ``torch-fused``, ``torch-foreach``: ``torch.optim`` with ``fused=True`` / ``foreach=True``,
  same hyperparameters, same tensors' values, ``.grad`` set (for half params the peers step fp32
  masters and then copy them into the half params, as fastopt does).

The ``probe`` row is a device-to-device copy (``dst.copy_(src)``, 1 GiB or the largest
layout's bytes, whichever is larger) counted as bytes read plus bytes written: the bandwidth
this GPU moves. ``of probe`` = an impl's GB/s (bytes per param from the CPU benchmark's model
times params, over its time) / the copy's GB/s.

Timing: CUDA events around each step, every implementation and the copy stepped round-robin,
the median of ``repeats`` rounds after ``warmup`` rounds. Every implementation takes the same
number of steps from the same values; ``max|dp|`` compares its final params with fastopt's.
"""

from __future__ import annotations

import gc
import statistics
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TextIO

import numpy as np

from . import __version__
from .bench import SPECS, check_run
from .bench_measure import DTYPES, F32, Layout, OptimizerSpec
from .bench_layouts import check_layout_names, named_layouts
from .bench_report import Progress, make_row, table_lines

COPY_BYTES = 2 ** 30


@dataclass
class CudaBenchConfig:
    """What ``fastopt bench --device cuda`` measures (see the module docstring)."""

    size: int = 2 ** 28
    tensors: int = 10000
    tensor_elems: int = 4096
    dtype: str = "float32"
    optimizers: tuple[str, ...] = ("sgd", "adam", "adamw")
    repeats: int = 30
    warmup: int = 5
    use_torch: bool = True
    layouts: tuple[str, ...] = ()  # --layout: names of bench_layouts (default: single and mixed)

    def validate(self) -> None:
        check_layout_names(self.layouts)
        if self.size < 16 or self.tensors < 1 or self.tensor_elems < 1:
            raise ValueError("size must be >= 16, tensors and tensor_elems >= 1")
        check_run(self.dtype, self.optimizers, self.repeats, self.warmup)


def _torch_cuda():
    try:
        import torch
    except ImportError:
        raise RuntimeError("fastopt bench --device cuda needs PyTorch with CUDA") from None
    if not torch.cuda.is_available():
        raise RuntimeError("fastopt bench --device cuda: torch sees no CUDA device")
    from .cuda import cuda_available
    if not cuda_available():
        raise RuntimeError("fastopt bench --device cuda: fastopt's CUDA engine is not available")
    return torch


def event_times(torch, steps: Mapping[Any, Callable[[], None]], warmup: int, repeats: int) -> dict[Any, float]:
    """Median seconds per call of each of ``steps``, timed with CUDA events on the current
    stream, called round-robin ``repeats`` times after ``warmup`` rounds."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    events = {k: [] for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            events[k].append((start, end))
    torch.cuda.synchronize()
    return {k: statistics.median(s.elapsed_time(e) for s, e in v) / 1e3 for k, v in events.items()}


def _copy_step(torch, nbytes: int) -> Callable[[], None]:
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


class _Data:
    """Flat fp32 starting values on the GPU; each implementation copies them into tensors
    of the layout (separately allocated, as a model's are)."""

    def __init__(self, torch, size: int, dtype: np.dtype):
        g = torch.Generator(device="cuda").manual_seed(0)
        self.torch, self.dtype = torch, getattr(torch, dtype.name)
        self.params32 = torch.randn(size, device="cuda", generator=g) * 0.1
        self.params32 = self.params32.to(self.dtype).float()  # exactly representable in dtype
        self.grads = torch.randn(size, device="cuda", generator=g) * 0.01
        self.half = dtype != F32

    def pieces(self, flat, layout: Layout, dtype=None) -> list:
        return [t.to(dtype or self.torch.float32, copy=True).reshape(shape)
                for t, shape in zip(flat[:sum(layout.sizes)].split(layout.sizes), layout.tensor_shapes)]


def _build(impl: str, spec: OptimizerSpec, layout: Layout, data: _Data):
    """(step, result) of one implementation; result() is the params flattened to fp32."""
    torch = data.torch
    params = data.pieces(data.params32, layout, data.dtype)
    grads = data.pieces(data.grads, layout)
    if impl == "fastopt":
        opt = spec.fastopt_cls(params, grads, master_weights=data.half, **spec.hypers)
        step = opt.step
    else:
        masters = data.pieces(data.params32, layout) if data.half else params
        for m, g in zip(masters, grads):
            m.grad = g
        variant = {"fused": True} if impl == "torch-fused" else {"foreach": True}
        topt = getattr(torch.optim, spec.torch_name)(masters, **spec.hypers, **variant)

        def step() -> None:
            topt.step()
            if data.half:
                torch._foreach_copy_(params, masters)
    return step, lambda: torch.cat([p.reshape(-1).float() for p in params])


def _bench_optimizer(torch, spec: OptimizerSpec, layouts: list[Layout], data: _Data, impls: list[str],
                     cfg: CudaBenchConfig, progress: Progress) -> list[dict[str, Any]]:
    bpp = spec.bytes_per_param(np.dtype(DTYPES[cfg.dtype]))
    progress.start(f"{spec.name}: copy probe and " + ", ".join(f"{l.label} {i}" for l in layouts for i in impls))
    steps, results, errors = {}, {}, {}
    # Half the largest step's bytes each way (so that the copy moves as much), 1 GiB at least.
    copy_bytes = max(COPY_BYTES, max(sum(l.sizes) for l in layouts) * bpp // 2 // 4 * 4)
    steps[("single", "probe")] = _copy_step(torch, copy_bytes)
    for layout in layouts:
        for impl in impls:
            try:
                step, result = _build(impl, spec, layout, data)
                step()
                steps[(layout.name, impl)] = step
                results[(layout.name, impl)] = result
            except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
                if impl == "fastopt":
                    raise
                errors[(layout.name, impl)] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
    times = event_times(torch, steps, cfg.warmup, cfg.repeats)
    finals = {k: r() for k, r in results.items()}
    steps = results = None
    gc.collect()
    torch.cuda.empty_cache()

    copy_row = make_row(spec, Layout("single", (cfg.size,)), "probe", bpp, cfg.size, None)
    copy_row["gb_per_s"] = 2 * copy_bytes / times[("single", "probe")] / 1e9
    copy_row["ms_per_step"] = times[("single", "probe")] * 1e3
    copy_row["bytes_per_param"] = "copy"
    copy_row["fraction_of_probe"] = 1.0
    progress.end(f"copy {copy_row['gb_per_s']:.0f} GB/s")
    rows = [copy_row]
    for layout in layouts:
        n = sum(layout.sizes)
        ref = finals[(layout.name, "fastopt")]
        base = times[(layout.name, "fastopt")]
        for impl in impls:
            key = (layout.name, impl)
            row = make_row(spec, layout, impl, spec.bytes_per_param(np.dtype(DTYPES[cfg.dtype]), layout.shapes), n,
                           times.get(key), errors.get(key))
            if key in times:
                row["fraction_of_probe"] = row["gb_per_s"] / copy_row["gb_per_s"]
                row["speedup_vs"] = times[key] / base
                if impl != "fastopt":
                    row["max_abs_diff"] = float((finals[key] - ref).abs().max())
            rows.append(row)
    return rows


def run_cuda_bench(cfg: CudaBenchConfig, progress_stream: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Runs the GPU benchmark; returns the report (environment and rows, as run_bench's)."""
    cfg.validate()
    torch = _torch_cuda()
    peers = ["torch-fused", "torch-foreach"] if cfg.use_torch else []
    names = cfg.layouts or (("single", "mixed") if cfg.tensors > 1 else ("single",))
    layouts = named_layouts(names, cfg.size, (cfg.tensor_elems,) * cfg.tensors, "cuda")
    runs = [layouts] if not cfg.layouts else [[layout] for layout in layouts]  # (a model at a time)
    data = _Data(torch, max(sum(layout.sizes) for layout in layouts), np.dtype(DTYPES[cfg.dtype]))
    progress = Progress(len(cfg.optimizers) * len(runs), progress_stream)
    rows, streams_doc = [], {}
    for name in cfg.optimizers:
        spec = SPECS[name]
        streams_doc[name] = spec.describe(np.dtype(DTYPES[cfg.dtype]))
        impls = ["fastopt"] + (peers if spec.torch_name else [])
        for run in runs:
            rows += _bench_optimizer(torch, spec, run, data, impls, cfg, progress)
    return {
        "fastopt_version": __version__, "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "size": cfg.size, "tensors": cfg.tensors,
        "layouts": {layout.name: [len(layout.sizes), sum(layout.sizes)] for layout in layouts},
        "tensor_elems": cfg.tensor_elems, "dtype": cfg.dtype, "repeats": cfg.repeats,
        "warmup": cfg.warmup, "streams": streams_doc, "rows": rows,
    }


def _cuda_layouts_doc(report: Mapping[str, Any]) -> str:
    layouts = report.get("layouts", {})
    if set(layouts) <= {"single", "multi"}:
        return f"1 tensor of {report['size']}, and {report['tensors']} tensors of {report['tensor_elems']}"
    return ", ".join(f"{k} ({n} tensors, {total} params)" for k, (n, total) in layouts.items())


def format_cuda_table(report: Mapping[str, Any]) -> str:
    lines = [
        f"fastopt {report['fastopt_version']} bench on {report['device']}: {report['dtype']} params; "
        f"torch {report['torch']}",
        f"layouts: {_cuda_layouts_doc(report)}; "
        f"median of {report['repeats']} steps after {report['warmup']} warmup steps (CUDA events, round-robin)",
        "bytes per param and step (GB/s = B/param * params / time):",
    ]
    for name, doc in report["streams"].items():
        bpp = next(r["bytes_per_param"] for r in report["rows"] if r["optimizer"] == name and r["impl"] != "probe")
        lines.append(f"  {name} {bpp:g} B = {doc}")
    lines += ["probe: a device-to-device copy, bytes read + written; of probe = GB/s / copy GB/s; "
              "fastopt faster = impl time / fastopt time", ""]
    return "\n".join(lines + table_lines(report["rows"]))
