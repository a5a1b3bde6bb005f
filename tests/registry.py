"""The one registry of optimizer x option combinations and of per-dtype tolerances.

Every parametrized rule test (reference, master weights, ISA parity, sizes, in-place,
functional, torch parity) is driven by ``CASES``; every comparison of trajectories takes its
tolerance from one stated rounding bound (:func:`assert_rounding_close`), or for params
stored in fp16/bf16 from ``HALF_TOLERANCES``. Shared data helpers live here too, so
that all test modules feed the optimizers the same kind of inputs.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np
import pytest

import fastopt
import fastopt.functional as F

# ---- cases ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    cls: type            # fastopt.SGD, Adam, ...; torch.optim has a class of the same name when it has one
    fn: Callable         # the functional form: fastopt.functional.sgd_, adam_, ...
    kwargs: dict         # hyperparameters, spelled as torch.optim spells them

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def in_torch(self) -> bool:
        """Whether torch.optim has this optimizer with these options (the Sutskever momentum
        form, AdaBelief and Lion it has not)."""
        return self.name not in NOT_IN_TORCH and self.kwargs.get("momentum_form", "torch") == "torch"

    @property
    def idle_state(self) -> tuple[str, ...]:
        """State arrays fastopt binds but this case never changes (they stay at zero): bound
        streams are a prefix of ``state_names``, so a centered RMSprop without momentum
        holds a momentum_buffer too."""
        if self.name == "RMSprop" and self.kwargs.get("centered") and not self.kwargs.get("momentum"):
            return ("momentum_buffer",)
        return ()

    @property
    def seed(self) -> int:
        return zlib.crc32(self.id.encode())

    def __repr__(self) -> str:  # shown by pytest on failure
        return f"Case({self.id}: {self.name}{self.kwargs})"


# Optimizers from papers that torch.optim does not implement: float64 references only.
NOT_IN_TORCH = ("AdaBelief", "Lion", "LARS", "LAMB", "Sophia", "AdamWScheduleFree", "SGDScheduleFree")


def _sgd(id_: str, **kw: Any) -> Case:
    return Case(id_, fastopt.SGD, F.sgd_, {"lr": 0.05, **kw})


def _case(cls: type, fn: Callable, suffix: str, **kw: Any) -> Case:
    return Case(f"{cls.__name__.lower()}-{suffix}", cls, fn, kw)


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
    _sgd("sgd-sutskever", momentum=0.9, momentum_form="sutskever"),
    _sgd("sgd-sutskever_nesterov_wd_maximize", momentum=0.8, nesterov=True, weight_decay=0.05, maximize=True,
         momentum_form="sutskever"),
    *_adam_family(fastopt.Adam, F.adam_),
    *_adam_family(fastopt.AdamW, F.adamw_),
    # The new optimizers: their defaults, an option-free baseline with an lr that moves the
    # params visibly in the tests' step counts, each option alone, and options combined.
    _case(fastopt.Adagrad, F.adagrad_, "default"),
    _case(fastopt.Adagrad, F.adagrad_, "plain", lr=0.1),
    _case(fastopt.Adagrad, F.adagrad_, "lr_decay", lr=0.1, lr_decay=0.05),
    _case(fastopt.Adagrad, F.adagrad_, "initial_accumulator", lr=0.1, initial_accumulator_value=0.5),
    _case(fastopt.Adagrad, F.adagrad_, "eps", lr=0.1, eps=0.1),
    _case(fastopt.Adagrad, F.adagrad_, "all", lr=0.1, lr_decay=0.02, weight_decay=0.125,
          initial_accumulator_value=0.25, maximize=True),
    _case(fastopt.Adadelta, F.adadelta_, "default"),
    _case(fastopt.Adadelta, F.adadelta_, "rho_eps", rho=0.5, eps=1e-4),
    _case(fastopt.Adadelta, F.adadelta_, "weight_decay", weight_decay=0.5),
    _case(fastopt.Adadelta, F.adadelta_, "all", lr=2.0, rho=0.8, eps=1e-5, weight_decay=0.5, maximize=True),
    _case(fastopt.RMSprop, F.rmsprop_, "default"),
    _case(fastopt.RMSprop, F.rmsprop_, "alpha_eps", alpha=0.9, eps=0.1),
    _case(fastopt.RMSprop, F.rmsprop_, "momentum", momentum=0.9),
    _case(fastopt.RMSprop, F.rmsprop_, "centered", centered=True),
    _case(fastopt.RMSprop, F.rmsprop_, "centered_momentum", centered=True, momentum=0.5),
    _case(fastopt.RMSprop, F.rmsprop_, "all", lr=0.005, alpha=0.95, weight_decay=0.125, momentum=0.8,
          centered=True, maximize=True),
    _case(fastopt.Adamax, F.adamax_, "default"),
    _case(fastopt.Adamax, F.adamax_, "plain", lr=0.02),
    _case(fastopt.Adamax, F.adamax_, "betas_eps", lr=0.02, betas=(0.8, 0.99), eps=0.1),
    _case(fastopt.Adamax, F.adamax_, "all", lr=0.02, betas=(0.9, 0.95), weight_decay=0.125, maximize=True),
    _case(fastopt.NAdam, F.nadam_, "default"),
    _case(fastopt.NAdam, F.nadam_, "plain", lr=0.02),
    _case(fastopt.NAdam, F.nadam_, "momentum_decay", lr=0.02, momentum_decay=0.1),
    _case(fastopt.NAdam, F.nadam_, "weight_decay", lr=0.02, weight_decay=0.125),
    _case(fastopt.NAdam, F.nadam_, "decoupled_wd_maximize", lr=0.02, betas=(0.8, 0.99), weight_decay=0.5,
          decoupled_weight_decay=True, maximize=True),
    _case(fastopt.RAdam, F.radam_, "default"),
    _case(fastopt.RAdam, F.radam_, "plain", lr=0.02),
    _case(fastopt.RAdam, F.radam_, "betas_eps", lr=0.02, betas=(0.8, 0.9), eps=1e-2),
    _case(fastopt.RAdam, F.radam_, "weight_decay", lr=0.02, weight_decay=0.125),
    _case(fastopt.RAdam, F.radam_, "decoupled_wd_maximize", lr=0.02, betas=(0.9, 0.99), weight_decay=0.5,
          decoupled_weight_decay=True, maximize=True),
    _case(fastopt.AdaBelief, F.adabelief_, "default"),
    _case(fastopt.AdaBelief, F.adabelief_, "plain", lr=0.02),
    _case(fastopt.AdaBelief, F.adabelief_, "betas_eps", lr=0.02, betas=(0.8, 0.99), eps=1e-3),
    _case(fastopt.AdaBelief, F.adabelief_, "weight_decay", lr=0.02, weight_decay=0.125),
    _case(fastopt.AdaBelief, F.adabelief_, "amsgrad", lr=0.02, betas=(0.9, 0.99), amsgrad=True),
    _case(fastopt.AdaBelief, F.adabelief_, "amsgrad_decouple_maximize", lr=0.02, betas=(0.9, 0.99),
          weight_decay=0.5, amsgrad=True, weight_decouple=True, maximize=True),
    _case(fastopt.Lion, F.lion_, "default"),
    _case(fastopt.Lion, F.lion_, "plain", lr=0.01),
    _case(fastopt.Lion, F.lion_, "betas", lr=0.01, betas=(0.5, 0.9)),
    _case(fastopt.Lion, F.lion_, "weight_decay_maximize", lr=0.01, weight_decay=0.5, maximize=True),
    _case(fastopt.LARS, F.lars_, "plain", lr=0.5),
    _case(fastopt.LARS, F.lars_, "weight_decay", lr=0.5, weight_decay=0.05, trust_coefficient=0.02),
    _case(fastopt.LARS, F.lars_, "exclude_1d", lr=0.05, weight_decay=0.05, exclude_1d=True),
    _case(fastopt.LARS, F.lars_, "no_momentum_maximize", lr=0.5, momentum=0.0, maximize=True),
    _case(fastopt.LAMB, F.lamb_, "plain", lr=0.01),
    _case(fastopt.LAMB, F.lamb_, "weight_decay_betas", lr=0.01, weight_decay=0.1, betas=(0.8, 0.99)),
    _case(fastopt.LAMB, F.lamb_, "max_trust", lr=0.01, weight_decay=0.01, max_trust=0.5),
    _case(fastopt.LAMB, F.lamb_, "no_bias_correction_maximize", lr=0.01, bias_correction=False, maximize=True),
    # (eps >= rho * h keeps the update m itself while h is 0, clipped at 1: the registry's runs
    # take no Hessian estimates; tests/test_sophia.py does)
    _case(fastopt.Sophia, F.sophia_, "plain", lr=0.01, eps=1.0),
    _case(fastopt.Sophia, F.sophia_, "betas_eps", lr=0.01, betas=(0.8, 0.95), eps=0.25),
    _case(fastopt.Sophia, F.sophia_, "weight_decay_maximize", lr=0.01, weight_decay=0.5, eps=0.5, maximize=True),
    # Schedule-Free: warmup 30 of the tests' 100 steps (the weights' ramp and the plateau after it).
    _case(fastopt.AdamWScheduleFree, F.adamwschedulefree_, "default"),
    _case(fastopt.AdamWScheduleFree, F.adamwschedulefree_, "plain", lr=0.02),
    _case(fastopt.AdamWScheduleFree, F.adamwschedulefree_, "warmup", lr=0.02, warmup_steps=30),
    _case(fastopt.AdamWScheduleFree, F.adamwschedulefree_, "betas_eps", lr=0.02, betas=(0.5, 0.99), eps=1e-2),
    _case(fastopt.AdamWScheduleFree, F.adamwschedulefree_, "weight_decay", lr=0.02, weight_decay=0.125),
    _case(fastopt.AdamWScheduleFree, F.adamwschedulefree_, "weights", lr=0.02, r=1.0, weight_lr_power=0.5),
    _case(fastopt.AdamWScheduleFree, F.adamwschedulefree_, "all", lr=0.02, betas=(0.8, 0.95), warmup_steps=30, r=0.5,
          weight_lr_power=3.0, weight_decay=0.125, maximize=True),
    _case(fastopt.SGDScheduleFree, F.sgdschedulefree_, "default"),
    _case(fastopt.SGDScheduleFree, F.sgdschedulefree_, "plain", lr=0.05),
    _case(fastopt.SGDScheduleFree, F.sgdschedulefree_, "warmup", lr=0.05, warmup_steps=30),
    _case(fastopt.SGDScheduleFree, F.sgdschedulefree_, "momentum", lr=0.05, momentum=0.5),
    _case(fastopt.SGDScheduleFree, F.sgdschedulefree_, "weight_decay", lr=0.05, weight_decay=0.125),
    _case(fastopt.SGDScheduleFree, F.sgdschedulefree_, "all", lr=0.05, momentum=0.8, warmup_steps=30, r=2.0,
          weight_lr_power=1.0, weight_decay=0.125, maximize=True),
    # Adafactor: rho = min(lr, 1/sqrt(t)) is lr (default 1e-2) below 1/sqrt(t) up to t = 10^4, and
    # 1/sqrt(t) from t = 4 with lr = 0.5; eps1 = 0.5 floors v (eps1^2 = 0.25, about g^2 at the
    # grads' small scale) and the row means, eps2 = 2 floors RMS(p) (~1); d = 2 clips only the
    # bursts of large grads. Matrices and 3-D tensors keep factored state, vectors a variance.
    _case(fastopt.Adafactor, F.adafactor_, "default"),
    _case(fastopt.Adafactor, F.adafactor_, "lr_above_rho", lr=0.5),
    _case(fastopt.Adafactor, F.adafactor_, "weight_decay", lr=0.05, weight_decay=0.5),
    _case(fastopt.Adafactor, F.adafactor_, "eps_d_decay", eps=(0.5, 2.0), d=2.0, beta2_decay=-0.5),
    _case(fastopt.Adafactor, F.adafactor_, "maximize", maximize=True),
    _case(fastopt.Adafactor, F.adafactor_, "all", lr=0.2, beta2_decay=-0.6, eps=(0.1, 0.5), d=1.5,
          weight_decay=0.1, maximize=True),
]

CASE_IDS = [c.id for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"

# The option-free case of each optimizer, which every other case must differ from.
BASELINE = {"SGD": "sgd-plain", "Adam": "adam-no_weight_decay", "AdamW": "adamw-no_weight_decay",
            "Adagrad": "adagrad-plain", "Adadelta": "adadelta-default", "RMSprop": "rmsprop-default",
            "Adamax": "adamax-plain", "NAdam": "nadam-plain", "RAdam": "radam-plain",
            "AdaBelief": "adabelief-plain", "Lion": "lion-plain", "LARS": "lars-plain", "LAMB": "lamb-plain",
            "Sophia": "sophia-plain", "AdamWScheduleFree": "adamwschedulefree-plain",
            "SGDScheduleFree": "sgdschedulefree-plain", "Adafactor": "adafactor-default"}


def kept_in(case: Case, dtype: str) -> dict:
    """The case's hyperparameters for a run whose values are float32 (master weights) that is to
    step as a run of params kept in ``dtype`` steps: Adafactor's eps1 None is the machine epsilon
    of the dtype a param's value is kept in (a float32 master's, or a bfloat16 param's own)."""
    if case.name == "Adafactor" and case.kwargs.get("eps", (None,))[0] is None:
        eps = case.kwargs.get("eps", case.cls.default_hypers()["eps"])
        return {**case.kwargs, "eps": (float(ml_dtypes.finfo(DTYPES[dtype]).eps), eps[1])}
    return dict(case.kwargs)


def case_by_id(id_: str) -> Case:
    return next(c for c in CASES if c.id == id_)


def functional_step(case: Case, params: Sequence, grads: Sequence, state: dict, step: int,
                    masters: Sequence | None = None, **overrides: Any) -> None:
    """One step of ``case`` through its functional form.

    ``state`` maps fastopt's state names (``momentum_buffer``, ``exp_avg``, ...) to lists of
    float32 arrays, one per param (None where a param keeps no such array: Adafactor's vectors
    and matrices keep different state, ``cls.state_shapes``); on the first call it is filled
    with fresh arrays (at the initial accumulator value for Adagrad's ``sum``, zero otherwise).
    The functional forms take their state lists positionally, in ``state_names`` order, and the
    lists a case binds are a prefix of each param's.
    """
    kw = {**case.kwargs, **overrides}
    hyper = case.cls._to_hyper({**case.cls.default_hypers(), **kw})
    layouts = [dict(list(case.cls.state_shapes(np.shape(p)).items())[: hyper.num_state()]) for p in params]
    names = [n for n in case.cls.state_names if any(n in layout for layout in layouts)]
    if "betas" in kw:
        kw["beta1"], kw["beta2"] = kw.pop("betas")
    initial = kw.pop("initial_accumulator_value", 0.0)  # the caller's business in the functional form
    for n in names:
        state.setdefault(n, [np.full(layout[n], initial if n == "sum" else 0.0, np.float32) if n in layout else None
                             for layout in layouts])
    last = max((case.cls.state_names.index(n) for n in names), default=-1)
    case.fn(params, grads, *[state.get(n) for n in case.cls.state_names[: last + 1]], step=step,
            master_params=masters, **kw)


# ---- tolerances -------------------------------------------------------------------------
#
# fp32 (and float64) trajectories are compared by one stated bound, never by a tolerance
# tuned to one machine's rounding. Model, for a value of a kind (the params, or one state
# stream, over all tensors of a run together) whose largest exact magnitude is S:
#
#   |computed - exact| <= (CHAIN + GROWTH * t) * u * S     after t steps
#
# - u is the unit roundoff (2^-24 for float32, 2^-53 for float64): a correctly rounded
#   operation errs by at most u times its result.
# - CHAIN = 16: the longest chain of rounded operations a step applies to a freshly computed
#   value, each adding at most u relative error (a square doubles the error it is given, a
#   square root halves it): Adadelta's acc_delta, the square of a quotient of square roots of
#   two moving averages, ~12 u, plus the hyperparameters' own rounding to fp32.
# - GROWTH = 2 per step: a running value (param, moving average) is rounded once more by its
#   decay product and once by its add; the chain's error of each step enters it scaled by a
#   factor below 1 (1 - beta, lr), and earlier errors are carried forward by factors <= 1.
#   Where a rule feeds a value's own error back undiminished, the whole chain adds up every
#   step (COMPOUNDING): Adadelta's acc_delta enters its next update through a square root and
#   leaves it squared.
# - S, not the value itself: errors are relative to the magnitudes a value was computed from,
#   which the final value understates where terms cancel (a momentum buffer or a param passing
#   near zero): S is the largest exact magnitude of the kind over the whole run where the test
#   tracks it (``scale=``, see :class:`Magnitudes`), else over the final values.
#
# The model is held to torch.optim too: torch's fp32 trajectory must meet it against torch's
# float64 one (test_torch_parity), so a failure means fastopt rounds worse than a correct fp32
# implementation may, not that the two round differently. Two fp32 implementations that each
# meet it differ by at most twice the bound (``implementations=2``). Measured over the registry
# (params and state, fastopt and torch alike): at most 7.7 u S at t = 1 (Adadelta's state),
# 26 u S at t = 3 (Adadelta's acc_delta, the worst of 2^20 elements), 74 u S at t = 100 (the
# bound: 216). test_registry checks that the bound still exposes a 1% error of the lr.
U = {"float32": 2.0 ** -24, "float64": 2.0 ** -53}
CHAIN = 16
GROWTH = 2
COMPOUNDING = {"Adadelta": CHAIN}  # optimizer -> its growth per step where not GROWTH


def rounding_bound(steps: int, dtype: str = "float32", implementations: int = 1, extra_per_step: float = 0.0,
                   optimizer: str = "") -> float:
    """The bound above, relative to S, after ``steps`` steps of ``optimizer`` (a class name);
    ``extra_per_step`` adds an error source of the caller's (in units of u S per step), stated
    where it is used."""
    growth = COMPOUNDING.get(optimizer, GROWTH) + extra_per_step
    return implementations * (CHAIN + growth * steps) * U[dtype]


class Magnitudes(dict):
    """The largest magnitude seen per kind ("param", or a state name) over a run's steps:
    ``m.see(kind, arrays)`` after each step, ``m.get(kind)`` for :func:`assert_rounding_close`."""

    def see(self, kind: str, arrays: Sequence) -> None:
        values = [float(np.max(np.abs(np.asarray(a, np.float64)))) for a in arrays if np.size(a)]
        self[kind] = max([self.get(kind, 0.0), *values])


def assert_rounding_close(actual: Sequence, expected: Sequence, steps: int, *, optimizer: str = "",
                          dtype: str = "float32", implementations: int = 1, extra_per_step: float = 0.0,
                          scale: float | None = None, slack: Sequence | None = None, msg: str = "") -> None:
    """Arrays ``actual`` within :func:`rounding_bound` of ``expected``, all of one kind: S is
    the largest magnitude among them (with two implementations, among both sides) or ``scale``
    (the kind's largest over the run) where larger. ``slack`` adds a per-array elementwise
    allowance (Lion's sign toss-ups)."""
    actual = [np.asarray(a, np.float64) for a in actual]
    expected = [np.asarray(e, np.float64) for e in expected]
    assert len(actual) == len(expected), f"{msg}: {len(actual)} arrays vs {len(expected)}"
    sides = expected + (actual if implementations > 1 else [])
    scale = max([float(np.max(np.abs(e))) for e in sides if e.size] + [scale or 0.0])
    bound = rounding_bound(steps, dtype, implementations, extra_per_step, optimizer) * scale
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"{msg} [{i}]: shape {a.shape} != {e.shape}"
        allowed = bound + (0.0 if slack is None or slack[i] is None else slack[i])
        err = np.abs(a - e)
        if not np.all(err <= allowed):  # NaN fails too
            k = int(np.argmax(np.where(np.isnan(err), np.inf, err)))
            raise AssertionError(
                f"{msg} [{i}]: |actual - expected| = {err.flat[k]:.3g} at element {k} ({a.flat[k]!r} vs "
                f"{e.flat[k]!r}) exceeds the rounding bound {bound:.3g} = {bound / scale / U[dtype]:.0f} u x S "
                f"(S = {scale:.3g}, {steps} steps, {implementations} implementation(s))")


def sumsq_error(n: int, tensors: int = 1) -> float:
    """A bound on the relative error of fastopt's sum of squares of a tensor of n values (fp32,
    fp16 or bf16; reduce.h's canonical order), or of the global sum over ``tensors`` tensors of
    at most n values each. Each square is exact in double (two 24-bit significands, exponents
    within double's range), so only additions of non-negative terms round, each by at most u
    (float64) of its result, and a sum whose every term passes through at most k additions errs
    by at most k u / (1 - k u) (Higham, "Accuracy and Stability of Numerical Algorithms", 4.2).
    k: ceil(min(n, 2048) / 64) lane adds, 6 fold levels, ceil(min(n, 131072) / 2048) adds of
    block sums into the super-block's, ceil(n / 131072) of super-blocks into the tensor's; a
    global sum adds min(tensors, 64) into a run of tensors and ceil(tensors / 64) of runs.
    Under 2e-14 for a tensor of up to 2^23 values (k <= 166)."""
    k = math.ceil(min(n, 2048) / 64) + 6 + math.ceil(min(n, 131072) / 2048) + math.ceil(n / 131072)
    if tensors > 1:
        k += min(tensors, 64) + math.ceil(tensors / 64)
    return k * U["float64"] / (1 - k * U["float64"])


def norm_error(n: int, tensors: int = 1) -> float:
    """The same for the norm, the square root of that sum (in double): half its error, plus
    the square root's rounding."""
    return sumsq_error(n, tensors) / 2 + U["float64"]


def exact_sumsq(arrays: Sequence) -> float:
    """The sum of squares of all values of ``arrays``, correctly rounded to float64 (squares
    of fp32 values are exact in float64; math.fsum adds them exactly): a reference that
    :func:`sumsq_error` can be held to, as a float64 np.linalg.norm (rounding errors up to
    ~n u) cannot."""
    return math.fsum(v for a in arrays for v in np.square(np.asarray(a, np.float64)).ravel().tolist())


# fp16/bf16 params rounded at every step (no master weights) vs a float64 reference that
# rounds its params to the same dtype after every step: the two disagree where an update
# lands near a rounding boundary, and an update below half an ulp may stick on one side and
# not the other. Bound: 2 ulps of a value of magnitude 1 (params start ~N(0, 1)), relative and
# absolute: fp16's ulp at 1 is 2^-10, bf16's 2^-7. Their fp32 state is compared alike.
HALF_TOLERANCES: dict[str, dict[str, float]] = {
    "float16": dict(rtol=2.0 ** -9, atol=2.0 ** -9),
    "bfloat16": dict(rtol=2.0 ** -6, atol=2.0 ** -6),
}


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
    """The raw storage bits of an array (float, or 8-bit codes), for bit-exact comparisons (-0 != +0, NaN == NaN)."""
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


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


def step_through(opt, buffers: Sequence[np.ndarray], steps: Iterable[Sequence[np.ndarray]]) -> None:
    """One step of ``opt`` per entry of ``steps``, its grads refilled into ``buffers`` first."""
    for grads in steps:
        refill(buffers, grads)
        opt.step()
