"""The benchmark's measuring: the streams a step moves and the bytes they count, the specs of
the benchmarked optimizers (from their classes), the tensor layouts and data, fastopt's own
runner, the bandwidth probe and the timers. (``fastopt.bench`` runs it all.)"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import ml_dtypes
import numpy as np

from . import _core
from .binding import Keeps

DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}
F32 = np.dtype(np.float32)
BF16 = DTYPES["bfloat16"]
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
    block: int = 1  # param elements per element of this array (a block-wise scale: the block's size)

    @property
    def bytes(self) -> int | float:
        """Bytes moved per param element and step (a fraction for a block-wise scale)."""
        n = self.dtype.itemsize * (int(self.read) + int(self.written))
        return n if self.block == 1 else n / self.block

    def describe(self) -> str:
        n = self.dtype.itemsize
        mode = "r+w" if self.read and self.written else "w" if self.written else "r"
        sizes = f"{n}+{n}" if self.read and self.written else f"{n}"
        return f"{self.name} {mode} {sizes}" + (f" per {self.block}" if self.block > 1 else "")


# How a half param's value is kept, by ``master_weights``: whether the update reads the param,
# and the stream that keeps the rest of its value (float32 params need none).
KEPT: dict[bool | str, tuple[bool, Stream | None]] = {
    False: (True, None),  # rounded to nearest: the param is all there is
    True: (False, Stream("master", F32, True, True)),  # the master is read, the param only written
    "remainder": (True, Stream("remainder", np.dtype(np.uint16), True, True)),  # the master's low half
    "kahan": (True, Stream("compensation", BF16, True, True)),
    "stochastic": (True, None),
}
# How each state array is stored, by ``state_precision``: its element dtype, and for a
# block-wise quantized state the params per float32 absmax (each block's scale, read and
# written as the block is).
STATE_FORMATS: dict[str, tuple[np.dtype, int | None]] = {
    "float32": (F32, None),
    "bfloat16": (BF16, None),
    "bfloat16_stochastic": (BF16, None),
    "8bit": (np.dtype(np.uint8), 2048),
}


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
        LAMB's second pass re-reads p, m and v (12), Adafactor's p, g and a vector's variance (12),
        after the first has moved the elementwise streams."""
        extra = self.fastopt_cls.extra_pass
        return 4 * len(extra[1]) if extra else 0

    @property
    def extra_doc(self) -> str:
        extra = self.fastopt_cls.extra_pass
        return f"; {extra[0]} " + ", ".join(f"{s} r 4" for s in extra[1]) if extra else ""

    def state_names(self, shape: tuple[int, ...] = (1,)) -> tuple[str, ...]:
        """The state arrays these hyperparameters use on a param of ``shape`` (default: the
        benchmark's 1-D tensors; Adafactor's vectors keep a variance, its matrices row_var and
        col_var)."""
        cls = self.fastopt_cls
        hyper = cls._to_hyper({**cls.default_hypers(), **self.hypers})
        return tuple(cls.state_shapes(shape))[:hyper.num_state()]

    def factors(self, shape: tuple[int, ...]) -> bool:
        """Whether a param of ``shape`` keeps factored state (a value per row and per column)."""
        return self.fastopt_cls.factored and len(shape) >= 2

    def streams(self, dtype: np.dtype, master_weights: bool | str = True,
                state_precision: str = "float32", shape: tuple[int, ...] = (1,)) -> list[Stream]:
        """The update's streams for params of ``dtype`` and ``shape`` (fp32 grads), their value
        kept as ``master_weights`` keeps a half param's (default: an fp32 master), the state
        stored as ``state_precision`` stores it (see :data:`KEPT` and :data:`STATE_FORMATS`).
        Factored state (a few values per matrix row and column) is no stream."""
        reads_param, kept = KEPT[master_weights] if dtype != F32 else (True, None)
        out = [Stream("param", dtype, reads_param, True), Stream("grad", F32, True, False)]
        out += [kept] if kept else []
        if self.factors(shape):
            return out
        state_dtype, block = STATE_FORMATS[state_precision]
        read_only = _core.read_only_state[self.fastopt_cls.rule]
        for k, name in enumerate(self.state_names(shape)):
            out.append(Stream(name, state_dtype, True, not read_only >> k & 1))  # (Sophia's h: only read)
            out += [Stream(f"{name} absmax", F32, True, True, block)] if block else []
        return out

    def bytes_per_param(self, dtype: np.dtype, shapes: Sequence[tuple[int, ...]] | None = None) -> float:
        """Bytes moved per param and step, over params of ``shapes`` (None: 1-D tensors): their
        mean where a factored rule moves other streams over matrices than over vectors (its
        factor pass reads g once more; its passes read no per-element state)."""
        if not shapes or not any(self.factors(s) for s in shapes):
            return sum(s.bytes for s in self.streams(dtype)) + self.extra_bytes
        total = moved = 0
        for shape in shapes:
            n = math.prod(shape)
            streams = self.streams(dtype, shape=shape)
            names = {"p", "g"} | {s.name for s in streams}
            extra = 4 * sum(1 for name in self.fastopt_cls.extra_pass[1] if name in names)
            moved += n * (sum(s.bytes for s in streams) + extra + (4 if self.factors(shape) else 0))
            total += n
        return round(moved / total, 3)

    def describe(self, dtype: np.dtype) -> str:
        """The streams over 1-D params (and a factored rule's over matrices, which differ)."""
        doc = ", ".join(s.describe() for s in self.streams(dtype)) + self.extra_doc
        if self.fastopt_cls.factored:
            matrix = (2, 2)
            doc += (f"; params of >= 2 dims {self.bytes_per_param(dtype, [matrix]):g} B: "
                    + ", ".join(s.describe() for s in self.streams(dtype, shape=matrix))
                    + "; factor pass g r 4; " + self.fastopt_cls.extra_pass[0] + " p r 4, g r 4")
        return doc


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

    name: str  # "single", "multi" or a model's (bench_layouts.MODELS)
    sizes: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...] | None = None  # the tensors' shapes (None: 1-D, of sizes)

    @property
    def label(self) -> str:
        n = len(self.sizes)
        return f"{n} tensor" if n == 1 else f"{n} tensors"

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """Views of consecutive pieces of ``flat``."""
        ends = np.cumsum(self.sizes)
        return [flat[e - s:e].reshape(shape) for s, e, shape in zip(self.sizes, ends, self.tensor_shapes)]

    @property
    def tensor_shapes(self) -> tuple[tuple[int, ...], ...]:
        return self.shapes if self.shapes is not None else tuple((s,) for s in self.sizes)

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


def flat32(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.reshape(-1).astype(F32) for a in arrays])


def build_fastopt(spec: OptimizerSpec, layout: Layout, data: Data) -> Runner:
    params = layout.copies(data.params)
    grads = layout.copies(data.grads)
    opt = spec.fastopt_cls(params, grads, master_weights=data.half, **spec.hypers)
    return Runner(opt.step, lambda: flat32(params))


# ---- timing --------------------------------------------------------------------------------

def median_step_time(step: Callable[[], None], warmup: int, repeats: int, untimed: int = 0) -> float:
    """Median seconds of ``repeats`` separately timed calls, after ``warmup`` untimed ones, each
    after ``untimed`` more (as many steps in all as interleaved_times takes with that count)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        for _ in range(untimed):
            step()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def as_probed(streams: Sequence[Stream]) -> list[Stream]:
    """``streams`` as the probe over them moves them: it writes every state stream, those that
    an update only reads (Sophia's Hessian average) too."""
    return [s if s.name in ("param", "grad", "master") else dataclasses.replace(s, written=True) for s in streams]


def probe_bytes(streams: Sequence[Stream]) -> float:
    """The bytes per param the probe over ``streams`` moves."""
    return sum(s.bytes for s in as_probed(streams))


def probe_step(streams: Sequence[Stream], size: int) -> Callable[[], None]:
    """The bandwidth probe over fresh, filled arrays with the given streams: fastopt's
    engine bound to one tensor with these streams, the update replaced by x + 0*g (no
    math). Filled, not zeroed: untouched zero pages would let reads come from cache."""
    arrays = {s.name: np.ones(size, s.dtype) for s in streams}
    names = [s.name for s in streams if s.name not in ("param", "grad", "master")]
    keeps = Keeps.none(1)
    keeps.masters = [arrays.get("master")]
    group = _core.Group("probe", [arrays["param"]], [arrays["grad"]], keeps, [[arrays[n] for n in names]], [1])
    return group.probe


# Each timed step of a round-robin comes after untimed steps of the same implementation, for
# about SETTLE seconds: the OpenMP threads of the step before (torch's, DeepSpeed's) spin for
# milliseconds after their parallel region (libgomp's default wait policy) and would take a core
# from the next implementation's step, and a pause instead would time their threads waking
# from sleep. Each implementation is thus timed as a loop of its own steps runs. (Measured on
# the 2-core AMD EPYC: AdamW over one 2^24 tensor right after torch's fused step took 12.2 ms,
# 7.1 with torch's threads passive, OMP_WAIT_POLICY=PASSIVE.) Every implementation takes the
# same number of steps (their final params are compared): the untimed steps' count is the
# fastest one's for SETTLE, at most what the slowest one takes in SETTLE_MOST, and at most
# SETTLE_STEPS (the trajectories compared stay short). Where nothing is compared (own_pace),
# each implementation's untimed steps run for SETTLE by the clock instead: with the same count,
# a fast step among slow ones (the sweep's one tensor among 768 stepped by torch's for-loop)
# took its untimed steps in a few ms, still within the disturbance (measured on the 2-core AMD
# EPYC: fastopt's AdamW over one 786433 tensor took 0.68 ms in the first ms after DeepSpeed's
# step over 768 tensors, 0.37 in the next 2, 0.20 from 6 ms on).
SETTLE, SETTLE_MOST, SETTLE_STEPS = 0.02, 0.5, 50


class Timings(dict):
    """Median seconds per step by key; ``untimed``: the untimed steps before each timed one (0
    where each implementation took its own count)."""

    untimed: int = 0


def interleaved_times(steps: Mapping[Any, Callable[[], None]], warmup: int, repeats: int,
                      settle: float = SETTLE, own_pace: bool = False) -> Timings:
    """Median seconds per step of each of ``steps``, stepped round-robin ``repeats`` times
    after ``warmup`` rounds (at least one), each timed step after as many untimed steps of its
    own (the same count for all, at least one) as take the fastest about ``settle`` seconds;
    with ``own_pace``, after untimed steps of its own for ``settle`` seconds (at least one;
    the implementations then take different numbers of steps)."""
    took = {k: 0.0 for k in steps}
    for _ in range(max(warmup, 1)):
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            took[k] = time.perf_counter() - t0
    fastest, slowest = min(took.values(), default=0.0), max(took.values(), default=0.0)
    untimed = max(1, min(int(settle / max(fastest, 1e-9)), int(SETTLE_MOST / max(slowest, 1e-9)), SETTLE_STEPS))
    times: dict[Any, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            if own_pace:
                until = time.perf_counter() + settle
                step()
                while time.perf_counter() < until:
                    step()
            else:
                for _ in range(untimed):
                    step()
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
    out = Timings({k: statistics.median(v) for k, v in times.items()})
    out.untimed = 0 if own_pace else untimed
    return out
