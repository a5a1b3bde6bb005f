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

import functools
import gc
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TextIO

import ml_dtypes
import numpy as np

from . import __version__, _core, cpu_isa, get_num_threads, set_num_threads
from .catalog import OPTIMIZERS

DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}
F32 = np.dtype(np.float32)
SEED = 0
SIZE_SPREAD = 1000.0  # tensor sizes are log-uniform over this ratio before rescaling


# ---- what is measured ----------------------------------------------------------------------

@dataclass(frozen=True)
class Stream:
    """One array the update streams through memory, per param element."""

    name: str
    dtype: np.dtype
    read: bool
    written: bool

    @property
    def bytes(self) -> int:
        """Bytes moved per element and step."""
        return self.dtype.itemsize * (int(self.read) + int(self.written))

    def describe(self) -> str:
        n = self.dtype.itemsize
        mode = "r+w" if self.read and self.written else "w" if self.written else "r"
        sizes = f"{n}+{n}" if self.read and self.written else f"{n}"
        return f"{self.name} {mode} {sizes}"


@dataclass(frozen=True)
class OptimizerSpec:
    """One benchmarked optimizer (its class's description): the same hyperparameters for
    fastopt, torch and NumPy."""

    fastopt_cls: type
    numpy_step: Callable[..., None] | None = None  # (params, grads, states, step, hypers, scratch)

    @property
    def name(self) -> str:
        return self.fastopt_cls.__name__.lower()

    @property
    def torch_name(self) -> str | None:  # None: torch.optim has no such optimizer
        return self.fastopt_cls.__name__ if self.fastopt_cls.in_torch else None

    @property
    def hypers(self) -> Mapping[str, Any]:
        return self.fastopt_cls.bench_hypers

    @property
    def extra_bytes(self) -> int:
        """A two-pass rule's other pass, in bytes per param: LARS's norm pass reads p and g (8);
        LAMB's second pass re-reads p, m and v (12) after the first has moved the elementwise streams."""
        extra = self.fastopt_cls.extra_pass
        return 4 * len(extra[1]) if extra else 0

    @property
    def extra_doc(self) -> str:
        extra = self.fastopt_cls.extra_pass
        return f"; {extra[0]} " + ", ".join(f"{s} r 4" for s in extra[1]) if extra else ""

    @property
    def state_names(self) -> tuple[str, ...]:
        """The state arrays these hyperparameters use."""
        cls = self.fastopt_cls
        hyper = cls._to_hyper({**cls.default_hypers(), **self.hypers})
        return tuple(cls.state_names[:hyper.num_state()])

    def streams(self, dtype: np.dtype) -> list[Stream]:
        """The update's streams for params of ``dtype`` (fp32 grads; fp32 master if half)."""
        half = dtype != F32  # then the fp32 master is read and the param only written
        out = [Stream("param", dtype, not half, True), Stream("grad", F32, True, False)]
        if half:
            out.append(Stream("master", F32, True, True))
        out += [Stream(s, F32, True, True) for s in self.state_names]
        return out

    def bytes_per_param(self, dtype: np.dtype) -> int:
        return sum(s.bytes for s in self.streams(dtype)) + self.extra_bytes

    def describe(self, dtype: np.dtype) -> str:
        return ", ".join(s.describe() for s in self.streams(dtype)) + self.extra_doc


def numpy_sgd(params, grads, states, step, h, scratch) -> None:
    """Naive in-place SGD with momentum (dampening 0, no Nesterov), one tensor at a time."""
    lr, momentum, wd = h["lr"], h["momentum"], h.get("weight_decay", 0.0)
    for p, g, (buf,) in zip(params, grads, states):
        t, u = scratch[0][:p.size], scratch[1][:p.size]
        if wd:
            g = np.add(g, np.multiply(p, wd, out=u), out=u)
        if step == 1:
            np.copyto(buf, g)
        else:
            buf *= momentum
            buf += g
        np.multiply(buf, lr, out=t)
        p -= t


def _numpy_adam(params, grads, states, step, h, scratch, decoupled: bool) -> None:
    lr, (b1, b2), eps, wd = h["lr"], h["betas"], h["eps"], h["weight_decay"]
    step_size = lr / (1 - b1 ** step)
    bc2_sqrt = float(np.sqrt(1 - b2 ** step))
    for p, g, (m, v) in zip(params, grads, states):
        t, u = scratch[0][:p.size], scratch[1][:p.size]
        if wd and decoupled:
            p *= 1 - lr * wd
        elif wd:
            g = np.add(g, np.multiply(p, wd, out=u), out=u)
        m *= b1
        np.multiply(g, 1 - b1, out=t)
        m += t
        v *= b2
        np.multiply(g, g, out=t)
        t *= 1 - b2
        v += t
        np.sqrt(v, out=t)
        t /= bc2_sqrt
        t += eps
        np.divide(m, t, out=t)
        t *= step_size
        p -= t


def numpy_adam(params, grads, states, step, h, scratch) -> None:
    """Naive in-place Adam (L2 weight decay in the gradient), one tensor at a time."""
    _numpy_adam(params, grads, states, step, h, scratch, decoupled=False)


def numpy_adamw(params, grads, states, step, h, scratch) -> None:
    """Naive in-place AdamW (decoupled weight decay), one tensor at a time."""
    _numpy_adam(params, grads, states, step, h, scratch, decoupled=True)


NUMPY_STEPS = {"sgd": numpy_sgd, "adam": numpy_adam, "adamw": numpy_adamw}
SPECS: dict[str, OptimizerSpec] = {
    spec.name: spec for spec in (OptimizerSpec(cls, NUMPY_STEPS.get(cls.__name__.lower())) for cls in OPTIMIZERS)}


# ---- layouts and data ----------------------------------------------------------------------

def tensor_sizes(total: int, count: int, seed: int = SEED, spread: float = SIZE_SPREAD) -> list[int]:
    """``count`` deterministic sizes >= 1 that sum exactly to ``total``.

    Weights are log-uniform over ``[1, spread]`` from a fixed seed; each tensor gets one
    element plus its share of the rest, rounded down, and the remainder goes one element
    each to the tensors with the largest rounded-off fractions.
    """
    if not 1 <= count <= total:
        raise ValueError(f"need 1 <= tensors <= size, got {count} tensors for {total} params")
    if count == 1:
        return [total]
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(0.0, np.log(spread), count))
    share = w / w.sum() * (total - count)
    sizes = 1 + np.floor(share).astype(np.int64)
    short = total - int(sizes.sum())
    sizes[np.argsort(np.floor(share) - share)[:short]] += 1
    return [int(s) for s in sizes]


@dataclass(frozen=True)
class Layout:
    """How the params are split into tensors."""

    name: str  # "single" or "multi"
    sizes: tuple[int, ...]

    @property
    def label(self) -> str:
        n = len(self.sizes)
        return f"{n} tensor" if n == 1 else f"{n} tensors"

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """Views of consecutive pieces of ``flat``."""
        ends = np.cumsum(self.sizes)
        return [flat[e - s:e] for s, e in zip(self.sizes, ends)]

    def copies(self, flat: np.ndarray) -> list[np.ndarray]:
        """Separately allocated copies of the pieces of ``flat``, as a model's tensors are."""
        return [v.copy() for v in self.views(flat)]


@dataclass
class Data:
    """The starting values every implementation copies: params (their dtype and widened to
    float32) and float32 grads, all flat."""

    params: np.ndarray
    params32: np.ndarray
    grads: np.ndarray

    @classmethod
    def make(cls, size: int, dtype: np.dtype, seed: int = SEED) -> "Data":
        rng = np.random.default_rng(seed)
        p32 = rng.standard_normal(size, dtype=np.float32)
        p32 *= 0.1
        params = p32.astype(dtype)
        grads = rng.standard_normal(size, dtype=np.float32)
        grads *= 0.01
        return cls(params, params.astype(F32) if dtype != F32 else params, grads)

    @property
    def half(self) -> bool:
        return self.params.dtype != F32


# ---- implementations -------------------------------------------------------------------------

@dataclass
class Runner:
    """A built implementation: ``step()`` takes one step; ``result()`` is the params now,
    flattened to float32."""

    step: Callable[[], None]
    result: Callable[[], np.ndarray]


def _flat32(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.reshape(-1).astype(F32) for a in arrays])


def build_fastopt(spec: OptimizerSpec, layout: Layout, data: Data) -> Runner:
    params = layout.copies(data.params)
    grads = layout.copies(data.grads)
    opt = spec.fastopt_cls(params, grads, master_weights=data.half, **spec.hypers)
    return Runner(opt.step, lambda: _flat32(params))


def build_numpy(spec: OptimizerSpec, layout: Layout, data: Data) -> Runner:
    params = layout.copies(data.params)
    grads = layout.copies(data.grads)
    masters = layout.copies(data.params32) if data.half else params
    states = [[np.zeros_like(m) for _ in spec.state_names] for m in masters]
    scratch = [np.empty(max(layout.sizes), F32) for _ in range(2)]
    count = [0]

    def step() -> None:
        count[0] += 1
        spec.numpy_step(masters, grads, states, count[0], spec.hypers, scratch)
        if data.half:
            for p, m in zip(params, masters):
                p[...] = m  # rounds to nearest even

    return Runner(step, lambda: _flat32(params))


def build_torch(spec: OptimizerSpec, layout: Layout, data: Data, *, variant: Mapping[str, Any]) -> Runner:
    import torch

    def tensors(flat: np.ndarray, dtype=None) -> list:
        return [torch.from_numpy(v).to(dtype or torch.float32, copy=True) for v in layout.views(flat)]

    params = tensors(data.params32, getattr(torch, data.params.dtype.name))
    masters = tensors(data.params32) if data.half else params
    for m, g in zip(masters, tensors(data.grads)):
        m.grad = g
    opt = getattr(torch.optim, spec.torch_name)(masters, **spec.hypers, **variant)
    loop = variant.get("foreach") is False

    def step() -> None:
        opt.step()
        if data.half and loop:
            for p, m in zip(params, masters):
                p.copy_(m)
        elif data.half:
            torch._foreach_copy_(params, masters)

    return Runner(step, lambda: torch.cat([p.float() for p in params]).numpy())


@dataclass(frozen=True)
class Impl:
    name: str
    build: Callable[[OptimizerSpec, Layout, Data], Runner]
    needs_torch: bool = False


def _torch_impl(name: str, **variant: Any) -> Impl:
    return Impl(name, functools.partial(build_torch, variant=variant), needs_torch=True)


IMPLS: tuple[Impl, ...] = (
    Impl("fastopt", build_fastopt),
    _torch_impl("torch-fused", fused=True),
    _torch_impl("torch-foreach", foreach=True),
    _torch_impl("torch-forloop", foreach=False),
    Impl("numpy", build_numpy),
)


# ---- timing --------------------------------------------------------------------------------

def median_step_time(step: Callable[[], None], warmup: int, repeats: int) -> float:
    """Median seconds of ``repeats`` separately timed calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def probe_step(streams: Sequence[Stream], size: int) -> Callable[[], None]:
    """The bandwidth probe over fresh, filled arrays with the given streams: fastopt's
    engine bound to one tensor with these streams, the update replaced by x + 0*g (no
    math). Filled, not zeroed: untouched zero pages would let reads come from cache."""
    arrays = {s.name: np.ones(size, s.dtype) for s in streams}
    names = [s.name for s in streams if s.name not in ("param", "grad", "master")]
    group = _core.Group("probe", [arrays["param"]], [arrays["grad"]], [arrays.get("master")],
                        [[arrays[n] for n in names]], names, [1])
    return group.probe


# ---- the run -------------------------------------------------------------------------------

def check_run(dtype: str, optimizers: Sequence[str], repeats: int, warmup: int) -> None:
    """ValueError for what every benchmark configuration checks alike."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
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

    def validate(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be at least 16, got {self.size}")
        if not 1 <= self.tensors <= self.size:
            raise ValueError(f"tensors must be in [1, size], got {self.tensors}")
        check_run(self.dtype, self.optimizers, self.repeats, self.warmup)
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


class Progress:
    """One line per case on ``stream``: its label when it starts, its time when it ends."""

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total, self.done, self.stream = total, 0, stream

    def start(self, label: str) -> None:
        self.done += 1
        self._write(f"[{self.done}/{self.total}] {label} ... ")

    def end(self, text: str) -> None:
        self._write(text + "\n")

    def _write(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text)
            self.stream.flush()


def _import_torch(wanted: bool):
    if not wanted:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def _row(spec: OptimizerSpec, layout: Layout, impl: str, bpp: int, size: int,
         seconds: float | None, error: str | None = None) -> dict[str, Any]:
    return {
        "optimizer": spec.name, "layout": layout.name, "num_tensors": len(layout.sizes),
        "impl": impl,
        "ms_per_step": None if seconds is None else seconds * 1e3,
        "gb_per_s": None if seconds is None else bpp * size / seconds / 1e9,
        "bytes_per_param": bpp,
        "fraction_of_probe": None, "speedup_vs": None, "max_abs_diff": None, "error": error,
    }


# fastopt, the probe and torch's fused step are within a few percent of each other: they are
# stepped round-robin, so that the machine's drift falls on all of them alike. The far slower
# peers are timed one after another.
INTERLEAVED = ("fastopt", "torch-fused")


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


def interleaved_times(steps: Mapping[Any, Callable[[], None]], warmup: int, repeats: int) -> dict[Any, float]:
    """Median seconds per step of each of ``steps``, stepped round-robin ``repeats`` times
    after ``warmup`` rounds."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[Any, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def applicable(spec: OptimizerSpec, impls: Sequence[Impl]) -> list[Impl]:
    """The impls that exist for ``spec``: torch's only where torch.optim has the optimizer,
    the naive NumPy step only where one is written."""
    return [i for i in impls if not (i.needs_torch and spec.torch_name is None)
            and not (i.name == "numpy" and spec.numpy_step is None)]


def _bench_optimizer(spec: OptimizerSpec, layouts: Sequence[Layout], data: Data, impls: Sequence[Impl],
                     cfg: BenchConfig, progress: Progress) -> list[dict[str, Any]]:
    """The rows of one optimizer: the probe, then each layout's impls in ``impls`` order."""
    streams = spec.streams(data.params.dtype)
    bpp = spec.bytes_per_param(data.params.dtype)
    single = Layout("single", (cfg.size,))
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
    steps: dict[tuple[str, str], Callable[[], None]] = {("single", "probe"): probe_step(streams, cfg.size)}
    steps.update({k: r.step for k, r in runners.items()})
    times = interleaved_times(steps, cfg.warmup, cfg.repeats)
    results = {k: r.result() for k, r in runners.items()}
    runners = steps = None
    gc.collect()
    # The probe moves the elementwise streams once: a two-pass rule's extra reads are not in it.
    probe = _row(spec, single, "probe", bpp - spec.extra_bytes, cfg.size, times[("single", "probe")])
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
                    seconds = median_step_time(runner.step, cfg.warmup, cfg.repeats)
                    result = runner.result()
                runner = None
                gc.collect()
            row = _row(spec, layout, impl.name, bpp, cfg.size, seconds, error)
            if result is not None and impl.name != "fastopt":
                row["max_abs_diff"] = float(np.max(np.abs(result - reference)))
            if impl not in close:
                progress.end(f"n/a ({error})" if error else f"{row['ms_per_step']:.3f} ms/step")
            layout_rows.append(row)
        fastopt_row = layout_rows[0]
        fastopt_row["fraction_of_probe"] = fastopt_row["gb_per_s"] / probe["gb_per_s"]
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
    torch = _import_torch(cfg.use_torch)
    if cfg.threads is not None:
        set_num_threads(cfg.threads)
        if torch is not None:
            torch.set_num_threads(cfg.threads)
    impls = [i for i in IMPLS if torch is not None or not i.needs_torch]
    layouts = [Layout("single", (cfg.size,))]
    if cfg.tensors > 1:
        layouts.append(Layout("multi", tuple(tensor_sizes(cfg.size, cfg.tensors))))
    specs = [SPECS[o] for o in cfg.optimizers]
    dtype = DTYPES[cfg.dtype]
    sequential = sum(len(layouts) for spec in specs for i in applicable(spec, impls) if i.name not in INTERLEAVED)
    progress = Progress(len(specs) + sequential + 1, progress_stream)

    data = Data.make(cfg.size, dtype)
    rows, streams_doc = [], {}
    for spec in specs:
        streams_doc[spec.name] = spec.describe(dtype)
        rows += _bench_optimizer(spec, layouts, data, applicable(spec, impls), cfg, progress)
    progress.start("fixed cost: adamw, 1000 tensors of 1 element")
    fixed = fixed_cost_us(torch)
    progress.end(f"{fixed['fastopt']:.1f} us/step")
    sizes = layouts[-1].sizes
    return {
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


def fixed_cost_us(torch=None, tensors: int = 1000, rounds: int = 5) -> dict[str, float]:
    """Microseconds per bound AdamW step over ``tensors`` one-element tensors: the fixed cost
    of a step (Python call, dispatch, per-tensor work). Median over ``rounds`` rounds of
    about 50 ms each; torch's fused AdamW on the same layout beside it when torch is given."""
    def timed(step: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        for _ in range(20):
            step()
        steps = max(20, int(0.05 / max((time.perf_counter() - t0) / 20, 1e-9)))
        per_round = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            per_round.append((time.perf_counter() - t0) / steps * 1e6)
        return statistics.median(per_round)

    params = [np.zeros(1, np.float32) for _ in range(tensors)]
    grads = [np.ones(1, np.float32) for _ in range(tensors)]
    out = {"fastopt": timed(SPECS["adamw"].fastopt_cls(params, grads, lr=1e-3).step)}
    if torch is not None:
        tparams = [torch.zeros(1) for _ in range(tensors)]
        for t in tparams:
            t.grad = torch.ones(1)
        out["torch-fused"] = timed(torch.optim.AdamW(tparams, lr=1e-3, fused=True).step)
    return out


# ---- the table -----------------------------------------------------------------------------

def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _table_cells(row: Mapping[str, Any]) -> list[str]:
    layout = "-" if row["impl"] == "probe" else (
        "1 tensor" if row["num_tensors"] == 1 else f"{row['num_tensors']} tensors")
    frac = row["fraction_of_probe"]
    speed = row["speedup_vs"]
    cells = [row["optimizer"], layout, row["impl"],
             _fmt(row["ms_per_step"], ".3f"), _fmt(row["gb_per_s"], ".1f"), str(row["bytes_per_param"]),
             _fmt(None if frac is None else 100 * frac, ".0f", "%"),
             "-" if row["impl"] in ("fastopt", "probe") else _fmt(speed, ".2f", "x"),
             _fmt(row["max_abs_diff"], ".1e")]
    if row["error"]:
        cells[3] = "n/a"
        cells.append(row["error"][:90])
    return cells


def _layouts_doc(report: Mapping[str, Any]) -> str:
    if report["tensors"] == 1:
        return "1 tensor"
    sizes = report["tensor_sizes"]
    return f"1 tensor, and {report['tensors']} tensors of {sizes['min']} to {sizes['max']} params"


HEADER = ["optimizer", "layout", "impl", "ms/step", "GB/s", "B/param", "of probe",
          "fastopt faster", "max|dp|"]


def format_table(report: Mapping[str, Any]) -> str:
    """The report as text: a header (environment, bytes model) and an aligned table."""
    torch = f"torch {report['torch']} ({report['torch_threads']} threads)" if report["torch"] else "torch: not used"
    size = report["size"]
    pow2 = f" = 2**{size.bit_length() - 1}" if size & (size - 1) == 0 else ""
    lines = [
        f"fastopt {report['fastopt_version']} bench: {size} {report['dtype']} params{pow2}; "
        f"cpu_isa {report['cpu_isa']}, {report['threads']} threads; {torch}; numpy {report['numpy']}",
        f"layouts: {_layouts_doc(report)}; median of {report['repeats']} steps after "
        f"{report['warmup']} warmup steps",
        "bytes per param and step (GB/s = B/param * params / time, for every row):",
    ]
    for name, doc in report["streams"].items():
        bpp = next(r["bytes_per_param"] for r in report["rows"] if r["optimizer"] == name)
        lines.append(f"  {name:<6}{bpp:>3} B = {doc}")
    lines.append("probe: fastopt's engine over one tensor with those streams and no math; of probe = GB/s / probe GB/s; "
                 "fastopt faster = impl time / fastopt time; max|dp| = final params vs fastopt's")
    lines.append("")
    fixed = report["fixed_cost_us"]
    lines.append("fixed cost of a step (adamw, 1000 tensors of 1 element): " +
                 ", ".join(f"{k} {v:.1f} us" for k, v in fixed.items()))
    lines.append("")
    return "\n".join(lines + table_lines(report["rows"]))


def table_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows as aligned text lines under HEADER, a blank line between optimizers."""
    table = [HEADER] + [_table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in table) for i in range(len(HEADER))]
    lines = []
    for k, cells in enumerate(table):
        if k > 1 and cells[0] != table[k - 1][0]:
            lines.append("")
        out = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        lines.append("  ".join(out + cells[len(HEADER):]).rstrip())
    return lines
