"""The one registry of optimizer x option combinations and of per-dtype tolerances.

Every parametrized rule test (reference, master weights, ISA parity, sizes, in-place,
functional, torch parity) is driven by ``CASES``; every numeric comparison takes its
tolerance from ``TOLERANCES`` through :func:`tol`. Shared data helpers live here too, so
that all test modules feed the optimizers the same kind of inputs.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Iterator, Sequence

import ml_dtypes
import numpy as np
import pytest

import fastopt
import fastopt.functional as F

# ---- cases ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    cls: type            # fastopt.SGD / Adam / AdamW; torch.optim has a class of the same name
    fn: Callable         # the functional form: fastopt.functional.sgd_ / adam_ / adamw_
    kwargs: dict         # hyperparameters, spelled as torch.optim spells them

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def seed(self) -> int:
        return zlib.crc32(self.id.encode())

    def __repr__(self) -> str:  # shown by pytest on failure
        return f"Case({self.id}: {self.name}{self.kwargs})"


def _sgd(id_: str, **kw: Any) -> Case:
    return Case(id_, fastopt.SGD, F.sgd_, {"lr": 0.05, **kw})


def _adam(cls: type, fn: Callable, id_: str, **kw: Any) -> Case:
    return Case(id_, cls, fn, kw)


def _adam_family(cls: type, fn: Callable) -> list[Case]:
    p = cls.__name__.lower()
    # Adam's L2 term is added to the grad; a weight decay that is exact in fp32 (0.125) keeps
    # grad + wd * p exact when the two nearly cancel. With wd = 0.1 (inexact in fp32) such a
    # cancellation leaves ~1e-9 in fp32 but ~1e-17 in float64, and at |g| ~ eps Adam's
    # step g / (|g| + eps) turns that into an lr-sized difference: a property of fp32, not
    # a bug, but one random grads do hit now and then.
    wd = 0.125
    return [
        _adam(cls, fn, f"{p}-default"),  # the optimizer's own defaults (AdamW: wd 1e-2)
        _adam(cls, fn, f"{p}-no_weight_decay", lr=0.02, weight_decay=0.0),
        _adam(cls, fn, f"{p}-weight_decay", lr=0.02, weight_decay=wd),
        _adam(cls, fn, f"{p}-betas_eps", lr=0.02, betas=(0.8, 0.99), eps=1e-2),
        # beta2 = 0.99 lets v fall below its running max within the tests' step counts.
        _adam(cls, fn, f"{p}-amsgrad", lr=0.02, betas=(0.9, 0.99), amsgrad=True),
        _adam(cls, fn, f"{p}-maximize", lr=0.02, maximize=True),
        _adam(cls, fn, f"{p}-amsgrad_wd_maximize", lr=0.02, betas=(0.9, 0.99), weight_decay=wd,
              amsgrad=True, maximize=True),
    ]


CASES: list[Case] = [
    _sgd("sgd-plain"),
    _sgd("sgd-momentum", momentum=0.9),
    _sgd("sgd-dampening", momentum=0.9, dampening=0.3),
    _sgd("sgd-dampening_one", momentum=0.5, dampening=1.0),
    _sgd("sgd-nesterov", momentum=0.9, nesterov=True),
    _sgd("sgd-weight_decay", weight_decay=0.1),
    _sgd("sgd-maximize", maximize=True),
    _sgd("sgd-momentum_wd", momentum=0.9, weight_decay=0.05),
    _sgd("sgd-nesterov_wd_maximize", momentum=0.8, nesterov=True, weight_decay=0.05, maximize=True),
    _sgd("sgd-momentum_dampening_wd_maximize", momentum=0.9, dampening=0.1, weight_decay=0.05,
         maximize=True),
    *_adam_family(fastopt.Adam, F.adam_),
    *_adam_family(fastopt.AdamW, F.adamw_),
]

CASE_IDS = [c.id for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"

# The option-free case of each optimizer, which every other case must differ from.
BASELINE = {"SGD": "sgd-plain", "Adam": "adam-no_weight_decay", "AdamW": "adamw-no_weight_decay"}


def case_by_id(id_: str) -> Case:
    return next(c for c in CASES if c.id == id_)


def functional_step(case: Case, params: Sequence, grads: Sequence, state: dict, step: int,
                    masters: Sequence | None = None, **overrides: Any) -> None:
    """One step of ``case`` through its functional form.

    ``state`` maps fastopt's state names (``momentum_buffer``, ``exp_avg``, ...) to lists of
    float32 arrays, one per param; it is filled with zeroed arrays on the first call.
    """
    kw = {**case.kwargs, **overrides}
    if case.cls is fastopt.SGD:
        names = ["momentum_buffer"] if kw.get("momentum", 0) else []
    else:
        names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if kw.get("amsgrad") else [])
        if "betas" in kw:
            kw["beta1"], kw["beta2"] = kw.pop("betas")
    for n in names:
        state.setdefault(n, [np.zeros(np.shape(p), np.float32) for p in params])
    case.fn(params, grads, *[state[n] for n in names], step=step, master_params=masters, **kw)


# ---- tolerances -------------------------------------------------------------------------

# rtol/atol for ``np.testing.assert_allclose(actual, expected)``. Params start ~N(0, 1).
TOLERANCES: dict[str, dict[str, float]] = {
    # fp32 params (and the fp32 master weights of fp16/bf16 params) vs the float64
    # reference after >= 100 steps: only fp32 rounding of each operation accumulates.
    "float32": dict(rtol=1e-5, atol=5e-6),
    "master": dict(rtol=1e-5, atol=5e-6),
    # fp16/bf16 params rounded at every step (no master weights) vs a float64 reference
    # that rounds its params to the same dtype after every step. The two disagree where an
    # update lands near a rounding boundary, and an update below half an ulp may stick on
    # one side and not the other: a few ulps of a value of magnitude ~1.
    "float16": dict(rtol=2.0 ** -9, atol=2.0 ** -9),
    "bfloat16": dict(rtol=2.0 ** -6, atol=2.0 ** -6),
    # fastopt vs torch.optim, both in fp32.
    "torch": dict(rtol=1e-6, atol=1e-7),
    # the float64 reference vs torch.optim in float64.
    "reference_vs_torch": dict(rtol=1e-12, atol=1e-13),
}


def tol(kind: str) -> dict[str, float]:
    return TOLERANCES[kind]


# ---- dtypes, ISAs, data -----------------------------------------------------------------

DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
          "bfloat16": np.dtype(ml_dtypes.bfloat16)}
HALF_DTYPES = ["float16", "bfloat16"]

ALL_ISAS = ("scalar", "avx2", "avx512")


def supported_isas() -> list[str]:
    return [n for n in ALL_ISAS if fastopt._core.cpu_isa_supported(n)]


@pytest.fixture
def isa_switch():
    """Yields a function that makes an ISA target active (optimizers bound afterwards use
    it); the target active before the test is restored afterwards. Import it into a test
    module to use it."""
    original = fastopt._core.cpu_isa()
    yield fastopt._core.set_cpu_isa
    fastopt._core.set_cpu_isa(original)


def bits(a: np.ndarray) -> np.ndarray:
    """The raw storage bits of a float array, for bit-exact comparisons (-0 != +0, NaN == NaN)."""
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray, msg: str = "") -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    np.testing.assert_array_equal(bits(actual), bits(expected), err_msg=msg)


def grad_scale(t: int) -> float:
    """A step-dependent gradient scale: bursts of large grads, so that Adam's second moment
    rises and falls (AMSGrad's running max then matters) and momentum sees changes."""
    return 3.0 if t % 23 < 4 else 0.5


def random_params(rng: np.random.Generator, shapes: Sequence[tuple], dtype: str = "float32") -> list[np.ndarray]:
    return [np.asarray(rng.standard_normal(s), np.float32).astype(DTYPES[dtype]) for s in shapes]


def grad_steps(seed: int, shapes: Sequence[tuple], steps: int, dtype: str = "float32") -> Iterator[list[np.ndarray]]:
    """Fresh gradients for every step (deterministic in ``seed``), in ``dtype``."""
    rng = np.random.default_rng(seed)
    for t in range(1, steps + 1):
        # np.asarray: a 0-d product is a NumPy scalar, and grads must be arrays.
        yield [np.asarray(grad_scale(t) * rng.standard_normal(s), np.float32).astype(DTYPES[dtype])
               for s in shapes]


def refill(buffers: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> None:
    """Copies values into the bound grad buffers in place (fastopt binds buffers once)."""
    for b, v in zip(buffers, values):
        np.copyto(b, v)
