"""Learning-rate schedules: pure functions of the step, the same on the host and on a GPU.

Each function below returns an immutable :class:`Schedule`. ``sched(step)`` is the lr (an
absolute value, not a factor) of the optimizer step taken after ``step`` steps: ``sched(0)``
is the lr of the first step. This is torch's ``last_epoch`` after ``step`` calls of
``scheduler.step()``, i.e. ``scheduler.get_last_lr()`` read just before optimizer step
``step + 1``. Where ``torch.optim.lr_scheduler`` has the schedule, fastopt uses torch's
closed form (``_get_closed_form_lr``), operation for operation; torch's default
(recursive) form multiplies the previous lr each step and so drifts from it by a few ulps.

Every lr is computed by the C++ function ``lr_at`` of ``fastopt/schedule.h`` in double, from
a small POD that fits in a CUDA kernel argument, so that a CUDA-graph-captured step can
compute its lr on the device from a device-resident step count.

Engine hook: ``sched._pod`` is the ``fastopt._core.Schedule`` holding that POD. C++
bindings accept it as ``const fastopt::Schedule&``; ``sched._pod.to_bytes()`` gives its
``fastopt._core.schedule_nbytes`` raw bytes (host byte order) for an engine that copies it
into a kernel argument. It holds at most ``_core.schedule_max_segments`` chained segments
and ``_core.schedule_max_milestones`` multistep milestones.

Kinds: :func:`constant`, :func:`step`, :func:`multistep`, :func:`exponential`,
:func:`cosine`, :func:`linear`, :func:`polynomial`, :func:`one_cycle` (torch's), and
:func:`anneal`, :func:`warmup_cosine`, :func:`wsd`, combined with :func:`chain`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import numpy as np

from . import _core

__all__ = [
    "Schedule", "constant", "step", "multistep", "exponential", "cosine", "linear", "polynomial",
    "one_cycle", "anneal", "warmup_cosine", "wsd", "chain",
]

_SHAPES = {"linear": 0, "cosine": 1, "1-sqrt": 2}  # AnnealShape in schedule.h
_build = _core.schedules


class Schedule:
    """An immutable lr schedule; ``sched(step) -> lr``. Build one with this module's functions.

    Attributes:
        kind: the function that built it (``"cosine"``, ``"chain"``, ...).
        params: the arguments it was built with (a copy).
    """

    __slots__ = ("_kind", "_params", "_pod")

    def __init__(self, kind: str, params: dict[str, Any], pod: Any):
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_params", params)
        object.__setattr__(self, "_pod", pod)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Schedule is immutable: build a new one")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Schedule is immutable: build a new one")

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def __call__(self, step: int) -> float:
        """The lr of the step taken after ``step`` optimizer steps (``step >= 0``)."""
        return self._pod(_int("step", step, 0))

    def lrs(self, n: int, start: int = 0) -> np.ndarray:
        """``[sched(start), ..., sched(start + n - 1)]`` as a float64 NumPy array."""
        return self._pod.lrs(_int("n", n, 0), _int("start", start, 0))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"fastopt.schedules.{self._kind}({args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self._kind == other._kind and self._params == other._params

    def __hash__(self) -> int:
        return hash(repr(self))

    def __reduce__(self) -> tuple[Callable[..., Schedule], tuple[Any, ...]]:
        return _rebuild, (self._kind, self._params)  # rebuilt (and re-validated) from its arguments


def _rebuild(kind: str, params: dict[str, Any]) -> Schedule:
    return _KINDS[kind](**params)


# ---- argument checks: each names the argument and what it must be -------------------------

def _int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if v >= 2**63:
        raise ValueError(f"{name} must be < 2**63, got {v}")
    return int(v)


def _real(name: str, v: Any, *, positive: bool = False, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    x = float(v)
    if not math.isfinite(x) or x < 0 or (positive and x == 0) or (hi is not None and x > hi):
        rule = "> 0" if positive else ">= 0"
        rule += f" and <= {hi}" if hi is not None else ""
        raise ValueError(f"{name} must be finite and {rule}, got {v}")
    return x


def _choice(name: str, v: Any, options: Sequence[str]) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{name} must be a str, got {type(v).__name__}")
    if v not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {v!r}")
    return v


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


# ---- torch.optim.lr_scheduler's schedules -------------------------------------------------

def constant(base_lr: float, factor: float = 1.0, total_iters: int = 0) -> Schedule:
    """``base_lr * factor`` for steps ``< total_iters``, then ``base_lr`` (torch's ConstantLR;
    the defaults give a plain constant ``base_lr``). Unlike torch, any ``factor >= 0`` is
    accepted, and ``total_iters=0`` means no phase at ``factor`` (as torch's closed form; its
    recursive form would stay at ``base_lr * factor`` forever)."""
    p = dict(base_lr=_real("base_lr", base_lr), factor=_real("factor", factor),
             total_iters=_int("total_iters", total_iters, 0))
    return Schedule("constant", p, _build.constant(p["base_lr"], p["factor"], p["total_iters"]))


def step(base_lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``base_lr * gamma ** (step // step_size)`` (torch's StepLR)."""
    p = dict(base_lr=_real("base_lr", base_lr), step_size=_int("step_size", step_size, 1),
             gamma=_real("gamma", gamma))
    return Schedule("step", p, _build.step(p["base_lr"], p["step_size"], p["gamma"]))


def multistep(base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """``base_lr * gamma ** (number of milestones <= step)`` (torch's MultiStepLR: a
    milestone given twice decays twice). At most ``_core.schedule_max_milestones``."""
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
        raise TypeError(f"milestones must be a sequence of ints, got {type(milestones).__name__}")
    ms = sorted(_int(f"milestones[{i}]", m, 0) for i, m in enumerate(milestones))
    if len(ms) > _core.schedule_max_milestones:
        raise ValueError(f"milestones: at most {_core.schedule_max_milestones}, got {len(ms)}")
    p = dict(base_lr=_real("base_lr", base_lr), milestones=ms, gamma=_real("gamma", gamma))
    return Schedule("multistep", p, _build.multistep(p["base_lr"], ms, p["gamma"]))


def exponential(base_lr: float, gamma: float) -> Schedule:
    """``base_lr * gamma ** step`` (torch's ExponentialLR)."""
    p = dict(base_lr=_real("base_lr", base_lr), gamma=_real("gamma", gamma))
    return Schedule("exponential", p, _build.exponential(p["base_lr"], p["gamma"]))


def cosine(base_lr: float, T_max: int, eta_min: float = 0.0) -> Schedule:
    """``eta_min + (base_lr - eta_min) * (1 + cos(pi * step / T_max)) / 2`` (torch's
    CosineAnnealingLR in closed form): ``base_lr`` at step 0, ``eta_min`` at step ``T_max``,
    and, as in torch, rising again past ``T_max`` (period ``2 * T_max``). For a cosine that
    stays at its floor, use :func:`anneal` or :func:`warmup_cosine`."""
    p = dict(base_lr=_real("base_lr", base_lr), T_max=_int("T_max", T_max, 1),
             eta_min=_real("eta_min", eta_min))
    return Schedule("cosine", p, _build.cosine(p["base_lr"], p["T_max"], p["eta_min"]))


def linear(base_lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
           total_iters: int = 5) -> Schedule:
    """``base_lr`` times a factor going linearly from ``start_factor`` (step 0) to
    ``end_factor`` (step ``total_iters``, and held after): torch's LinearLR. Unlike torch,
    any factors >= 0 are accepted (``start_factor=0``: a warmup from zero)."""
    p = dict(base_lr=_real("base_lr", base_lr), start_factor=_real("start_factor", start_factor),
             end_factor=_real("end_factor", end_factor), total_iters=_int("total_iters", total_iters, 1))
    return Schedule("linear", p, _build.linear(p["base_lr"], p["start_factor"], p["end_factor"],
                                               p["total_iters"]))


def polynomial(base_lr: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    """``base_lr * (1 - min(step, total_iters) / total_iters) ** power`` (torch's
    PolynomialLR): 0 from step ``total_iters`` on."""
    p = dict(base_lr=_real("base_lr", base_lr), total_iters=_int("total_iters", total_iters, 1),
             power=_real("power", power))
    return Schedule("polynomial", p, _build.polynomial(p["base_lr"], p["total_iters"], p["power"]))


def one_cycle(max_lr: float, total_steps: int, pct_start: float = 0.3, anneal_strategy: str = "cos",
              div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False) -> Schedule:
    """torch's OneCycleLR (lr only; momentum is not cycled): from ``max_lr / div_factor`` up
    to ``max_lr`` over the first ``pct_start`` of ``total_steps``, then down to
    ``max_lr / div_factor / final_div_factor`` at step ``total_steps - 1`` (``three_phase``:
    back to the initial lr symmetrically, then down). Torch extrapolates at step
    ``total_steps`` and raises past it; fastopt holds the last lr from ``total_steps - 1`` on.
    ``pct_start * total_steps == 1`` is rejected: torch's first phase would then span zero
    steps (it divides 0 by 0)."""
    p = dict(max_lr=_real("max_lr", max_lr), total_steps=_int("total_steps", total_steps, 1),
             pct_start=_real("pct_start", pct_start, hi=1.0),
             anneal_strategy=_choice("anneal_strategy", anneal_strategy, ("cos", "linear")),
             div_factor=_real("div_factor", div_factor, positive=True),
             final_div_factor=_real("final_div_factor", final_div_factor, positive=True),
             three_phase=_bool("three_phase", three_phase))
    if p["pct_start"] * p["total_steps"] == 1.0:
        raise ValueError(f"pct_start * total_steps must not be 1 (the warm-up phase would span zero steps), "
                         f"got pct_start={pct_start}, total_steps={total_steps}")
    return Schedule("one_cycle", p, _build.one_cycle(
        p["max_lr"], p["total_steps"], p["pct_start"], p["anneal_strategy"] == "linear", p["div_factor"],
        p["final_div_factor"], p["three_phase"]))


# ---- schedules torch has no class for -------------------------------------------------------

def anneal(start_lr: float, end_lr: float, steps: int, shape: str = "cosine") -> Schedule:
    """From ``start_lr`` (step 0) to ``end_lr`` (step ``steps``, and held after), with
    ``f = step / steps`` going 0 -> 1 and lr ``end + (start - end) * g``:
    ``"linear"``: ``g = 1 - f``; ``"cosine"``: ``g = (1 + cos(pi f)) / 2`` (CosineAnnealingLR's
    formula, but held at ``end_lr``); ``"1-sqrt"``: ``g = 1 - sqrt(f)`` (the cooldown of Hägele
    et al., 2024). A building block for :func:`chain`: a decay, or a warmup (end > start)."""
    p = dict(start_lr=_real("start_lr", start_lr), end_lr=_real("end_lr", end_lr),
             steps=_int("steps", steps, 1), shape=_choice("shape", shape, tuple(_SHAPES)))
    return Schedule("anneal", p, _build.anneal(p["start_lr"], p["end_lr"], p["steps"], _SHAPES[p["shape"]]))


def _warmup(base_lr: float, steps: int, start_factor: float) -> Any:
    """The POD of a linear warmup from base_lr * start_factor (step 0) to base_lr (step
    ``steps``, held after): torch's LinearLR(start_factor, 1.0, steps)."""
    return _build.linear(base_lr, start_factor, 1.0, steps)


def warmup_cosine(base_lr: float, warmup_steps: int, total_steps: int, eta_min: float = 0.0,
                  warmup_start_factor: float = 0.0) -> Schedule:
    """Linear warmup then cosine decay, held at ``eta_min`` after ``total_steps``:

    - steps ``[0, W)``, ``W = warmup_steps``: ``base_lr * (s + (1 - s) * step / W)``,
      ``s = warmup_start_factor`` (0 by default: the first step has lr 0, as in Hugging Face's
      ``get_cosine_schedule_with_warmup``);
    - steps ``[W, total_steps)``: ``cosine(base_lr, T_max=total_steps - W, eta_min)`` at
      ``step - W``, which is ``base_lr`` at step ``W``;
    - steps ``>= total_steps``: ``eta_min``.

    The same as torch's ``SequentialLR([LinearLR(s, 1, W), CosineAnnealingLR(total_steps -
    W, eta_min)], [W])`` up to ``total_steps``, where torch's cosine would rise again."""
    p = dict(base_lr=_real("base_lr", base_lr), warmup_steps=_int("warmup_steps", warmup_steps, 0),
             total_steps=_int("total_steps", total_steps, 1), eta_min=_real("eta_min", eta_min),
             warmup_start_factor=_real("warmup_start_factor", warmup_start_factor))
    W, T = p["warmup_steps"], p["total_steps"]
    if T <= W:
        raise ValueError(f"total_steps must exceed warmup_steps, got total_steps={T}, warmup_steps={W}")
    decay = _build.anneal(p["base_lr"], p["eta_min"], T - W, _SHAPES["cosine"])
    pod = decay if W == 0 else _build.chain([_warmup(p["base_lr"], W, p["warmup_start_factor"]), decay], [W])
    return Schedule("warmup_cosine", p, pod)


def wsd(base_lr: float, warmup_steps: int, total_steps: int, decay_steps: int, final_lr: float = 0.0,
        decay: str = "linear", warmup_start_factor: float = 0.0) -> Schedule:
    """Warmup-stable-decay (trapezoidal): a linear warmup over ``W = warmup_steps`` (as in
    :func:`warmup_cosine`), ``base_lr`` until step ``D0 = total_steps - decay_steps``, then
    ``anneal(base_lr, final_lr, decay_steps, decay)`` at ``step - D0`` (``decay``:
    ``"linear"``, ``"cosine"`` or ``"1-sqrt"``), reaching ``final_lr`` at ``total_steps`` and
    held after. Needs ``warmup_steps + decay_steps <= total_steps``."""
    p = dict(base_lr=_real("base_lr", base_lr), warmup_steps=_int("warmup_steps", warmup_steps, 0),
             total_steps=_int("total_steps", total_steps, 1), decay_steps=_int("decay_steps", decay_steps, 1),
             final_lr=_real("final_lr", final_lr), decay=_choice("decay", decay, tuple(_SHAPES)),
             warmup_start_factor=_real("warmup_start_factor", warmup_start_factor))
    W, T, D = p["warmup_steps"], p["total_steps"], p["decay_steps"]
    if W + D > T:
        raise ValueError(f"warmup_steps + decay_steps must be <= total_steps, got {W} + {D} > {T}")
    tail = _build.anneal(p["base_lr"], p["final_lr"], D, _SHAPES[p["decay"]])
    # The warmup's LinearLR holds base_lr after W steps: it is also the stable phase.
    head = _warmup(p["base_lr"], W, p["warmup_start_factor"]) if W else _build.constant(p["base_lr"], 1.0, 0)
    pod = tail if T - D == 0 else _build.chain([head, tail], [T - D])
    return Schedule("wsd", p, pod)


def chain(schedules: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    """torch's SequentialLR: ``schedules[i]`` runs from step ``milestones[i - 1]`` (0 for the
    first) and sees the step counted from there, so each starts at its own ``sched(0)``.
    ``len(milestones) == len(schedules) - 1``, strictly increasing, >= 1. Each schedule has
    its own (absolute) lrs: torch's children share the optimizer's base lr, so give them the
    same ``base_lr`` to match it. Nested chains are flattened; a schedule's segments past the
    next milestone are dropped. At most ``_core.schedule_max_segments`` segments in all."""
    if isinstance(schedules, Schedule) or not isinstance(schedules, Sequence):
        raise TypeError(f"schedules must be a sequence of Schedule, got {type(schedules).__name__}")
    for i, s in enumerate(schedules):
        if not isinstance(s, Schedule):
            raise TypeError(f"schedules[{i}] must be a Schedule, got {type(s).__name__}")
    if not schedules:
        raise ValueError("schedules must not be empty")
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
        raise TypeError(f"milestones must be a sequence of ints, got {type(milestones).__name__}")
    ms = [_int(f"milestones[{i}]", m, 1) for i, m in enumerate(milestones)]
    if len(ms) != len(schedules) - 1:
        raise ValueError(f"milestones must have len(schedules) - 1 = {len(schedules) - 1} entries, got {len(ms)}")
    for i in range(1, len(ms)):
        if ms[i] <= ms[i - 1]:
            raise ValueError(f"milestones must be strictly increasing, got {ms}")
    p = dict(schedules=list(schedules), milestones=ms)
    return Schedule("chain", p, _build.chain([s._pod for s in schedules], ms))


_KINDS: dict[str, Callable[..., Schedule]] = {
    f.__name__: f for f in (constant, step, multistep, exponential, cosine, linear, polynomial, one_cycle,
                            anneal, warmup_cosine, wsd, chain)
}
