"""The optimizer base class: param groups, binding, stepping and checkpoints."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from . import _core
from ._arrays import (assign, copy, data_ptr, device_empty, fill, library, master_copy, state_like,
                      to_host)
from .engine import engine_for
from .norms import combine
from .schedules import Schedule

Array = Any  # a NumPy array, or any object with __dlpack__ (a PyTorch tensor, ...)


def real(name: str, value: Any) -> float:
    """``value`` as a float, or TypeError naming the hyperparameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def betas(value: Any) -> tuple[float, float]:
    """(beta1, beta2) from a pair, or TypeError."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {value!r}")
    return real("beta1", value[0]), real("beta2", value[1])


@dataclass(frozen=True)
class Diagnostics:
    """Per-tensor numbers of one step, by param index (arrays of float64, counts int64).

    ``grad_norm``: L2 norm of each grad after unscaling, before clipping; ``nonfinite_grads``:
    its count of inf/NaN elements; ``param_norm``: L2 norm of the param's fp32 value before
    the update; ``update_norm``: L2 norm of the change the update made; ``update_ratio``:
    update_norm / param_norm (inf where the param was 0). The last three are None for a
    skipped step. All norms come from the deterministic fused reductions.

    On the CUDA engine every field is an array of the params' library on their GPU, filled by
    the step's kernels without a host sync; a skipped step's last three are NaN there."""

    grad_norm: np.ndarray
    nonfinite_grads: np.ndarray
    param_norm: np.ndarray | None = None
    update_norm: np.ndarray | None = None
    update_ratio: np.ndarray | None = None

    def report(self, top: int = 5) -> str:
        """Text naming the tensors to look at: those with non-finite grads, then those with
        the largest update/param ratios (a training run blowing up) and the smallest (a
        tensor not learning). (On CUDA this waits for the step's results.)"""
        grad_norm, nonfinite = to_host(self.grad_norm), to_host(self.nonfinite_grads)
        ratio = None if self.update_ratio is None else to_host(self.update_ratio)
        lines = [f"param {i}: {nonfinite[i]} non-finite grad values (grad norm {grad_norm[i]:.3g})"
                 for i in np.flatnonzero(nonfinite)]
        if ratio is not None and len(ratio) and not np.isnan(ratio).all():
            order = np.argsort(-np.nan_to_num(ratio, nan=np.inf), kind="stable")
            for label, picks in (("largest", order[:top]), ("smallest", order[::-1][:top])):
                lines.append(f"{label} update/param ratios: " + ", ".join(
                    f"param {i} {ratio[i]:.3g}" for i in picks))
        return "\n".join(lines) or "no tensors"


@dataclass(frozen=True)
class StepResult:
    """What a step did. ``grad_norm``: the global L2 norm of the grads after unscaling and
    before any clipping (None when the step computed none); ``skipped``: True when the step
    was skipped for a non-finite grad (nothing was written and the step count did not advance);
    ``diagnostics``: per-tensor numbers when the optimizer's ``diagnostics`` is on.

    On the CUDA engine the step never waits for the GPU, so ``grad_norm`` (float64) and
    ``skipped`` (bool) are 0-d arrays of the params' library on their GPU, written by the
    step's kernels on the step's stream (``float()``/``bool()`` on them waits for the current
    stream: after ``step(stream=...)`` on another, synchronise that stream first), wherever the
    step computed the norm; otherwise ``grad_norm`` is None and ``skipped`` the plain False."""

    grad_norm: float | None
    skipped: bool
    diagnostics: Diagnostics | None = None


def optional_positive(name: str, value: Any) -> float | None:
    if value is None:
        return None
    v = real(name, value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be finite and > 0 (or None), got {value!r}")
    return v


class ParamGroup(dict):
    """One param group's hyperparameters, as in ``torch.optim``.

    Setting a hyperparameter validates it first: an out-of-range value raises ValueError
    (a wrong type TypeError) and leaves the group unchanged. ``params`` and ``grads`` are
    bound once and cannot be replaced.
    """

    def __init__(self, owner: "Optimizer", values: Mapping[str, Any]):
        super().__init__(values)
        self._owner = owner

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Sets several hyperparameters at once: all are validated together, then applied."""
        changes = dict(*args, **kwargs)
        for key in changes:
            if key in ("params", "grads"):
                raise KeyError(f"'{key}' of a bound optimizer cannot change; build a new optimizer")
            if key not in self._owner.defaults:
                raise KeyError(f"unknown hyperparameter '{key}' for {type(self._owner).__name__}")
        self._owner._hyper_at({**self, **changes}, 0)  # raises, leaving the group as it was
        dict.update(self, changes)
        self._owner._changed()

    def __reduce__(self):  # copies and pickles are plain dicts
        return (dict, (dict(self),))

    def __ior__(self, other: Mapping[str, Any]) -> "ParamGroup":
        self.update(other)
        return self

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def _no_removal(self, *args: Any) -> Any:
        raise KeyError("param group entries cannot be removed")

    __delitem__ = pop = popitem = clear = _no_removal


class Optimizer:
    """Base of fastopt's optimizers: binds params, grads and state once, steps many times.

    Args:
        params: a list of arrays (NumPy arrays, PyTorch tensors, any DLPack tensor), or a
            list of param-group dicts, each with ``"params"``, optionally ``"grads"`` and any
            hyperparameters that override the defaults for that group.
        grads: the gradient buffers, one per param in order (across groups when the groups
            carry no ``"grads"``). They are read at every step, so they must stay the same
            buffers: refill them in place (e.g. ``zero_grad(set_to_none=False)`` in PyTorch).
        master_weights: keep an fp32 master copy of every float16/bfloat16 param, owned by
            the optimizer, initialised exactly from the param; each step updates the master
            and rewrites the param from it, rounded to nearest even. float32 params need none.
        max_grad_norm: clip by global norm, as ``torch.nn.utils.clip_grad_norm_`` (norm 2) before
            each step: when the grads' global L2 norm exceeds it, every grad is scaled by
            ``max_grad_norm / (norm + 1e-6)``. Folded into the update (one norm pass, then the
            update pass); the grad buffers are never rewritten. None: no clipping.
        clip_value: clamp every grad element to [-clip_value, clip_value] (after unscaling and
            norm clipping), as ``torch.nn.utils.clip_grad_value_``; None: no clamping.
        skip_nonfinite: skip the whole step when any grad holds an inf or NaN: nothing is
            written and the step count does not advance (``step()`` reports it).
        report_grad_norm: compute the global grad norm at every step even when neither
            clipping nor skipping needs it.
        diagnostics: report per-tensor grad, param and update norms, update/param ratios and
            non-finite grad counts with every step (:class:`Diagnostics`), from fused
            reductions (a norm pass over the grads, and the update pass summing as it goes).
            Off by default, and then free: the plain update kernels run.
        capturable: (CUDA params only) keep each group's lr in device memory too (the step
            counts always are, on CUDA), so that :meth:`step` can be captured in a CUDA graph
            and replayed; lr changes made between replays (``opt.lr = ...``, enqueued on the
            current stream) are seen by the next replay. A captured graph holds the device
            group it was captured with: switching momentum or amsgrad on or off, or loading a
            checkpoint that brings new state arrays, rebinds it, and the step must then be
            captured again. A number ``grad_scale`` and the step options are fixed in a
            captured step (a loss scale in device memory is read at every replay).

    Any group's ``lr`` may be a :mod:`fastopt.schedules` schedule instead of a number: each
    step then uses ``lr(steps taken by the group)``, and checkpoints carry the schedule. On
    CUDA the schedule is evaluated on the device from its step counts, so graph replays and
    skipped steps follow it.

    The engine follows the params: CPU memory (NumPy arrays, CPU tensors) runs on the CPU
    engine, CUDA memory (PyTorch CUDA tensors, CuPy arrays, any DLPack CUDA tensor) on the
    CUDA engine, where state and master weights are allocated with the params' library and a
    step is one kernel launch on the caller's current stream (or ``step(stream=...)``); each
    step option adds a pass (the grad norm, a two-pass rule's first pass, the diagnostics'
    sums), all enqueued on that stream. Between steps, lrs, schedules and step counts are
    written and read on the current stream (after ``step(stream=...)`` on another stream,
    synchronise it before reading ``steps`` or a checkpoint). The CUDA engine counts steps on
    the device, per group: SGD with momentum switched on after the first step (and dampening
    != 0) starts its buffer as if momentum had been on, unlike torch.
    """

    # ---- the description each optimizer gives (in fastopt/<rule>.py; see catalog.py) -------
    rule: ClassVar[str]                       # its C++ rule id, a key of _core.rules
    state_names: ClassVar[tuple[str, ...]]    # its float32 state arrays, in binding order
    hyper_defaults: ClassVar[dict[str, Any]]  # hyperparameters (torch.optim's names) -> default;
    # a float default makes a real-valued field of the rule's Hyper struct, a bool a flag,
    # "betas" its beta1/beta2; other types are the class's own _to_hyper's to map.
    hyper_fields: ClassVar[dict[str, str]] = {}  # a hyperparameter whose Hyper field is named otherwise
    fixed_fields: ClassVar[dict[str, Any]] = {}  # Hyper fields the class sets (AdamW: decoupled)
    optional_state: ClassVar[dict[str, str]] = {}  # state bound only under an option -> that option
    in_torch: ClassVar[bool] = False  # torch.optim has this optimizer, with these semantics
    # The functional form (fastopt.functional.<name>_): whether the update depends on the step
    # count (then `step` is required), hyperparameters it takes no keyword for, and those it
    # requires, and what its docstring adds to the generic one.
    step_dependent: ClassVar[bool] = True
    functional_excluded: ClassVar[tuple[str, ...]] = ()
    functional_required: ClassVar[tuple[str, ...]] = ()
    functional_note: ClassVar[str] = ""
    # The functional form's name for a state list where not the state's name + "s".
    functional_state_args: ClassVar[dict[str, str]] = {}
    # The benchmark: its hyperparameters, and for a two-pass rule its other pass: a name and the
    # fp32 streams that pass reads beyond those of the elementwise update.
    bench_hypers: ClassVar[dict[str, Any]] = {}
    extra_pass: ClassVar[tuple[str, tuple[str, ...]] | None] = None
    defaults: dict[str, Any]

    def __init__(self, params: Sequence[Array] | Sequence[Mapping[str, Any]],
                 grads: Sequence[Array] | None = None, *, master_weights: bool = False,
                 max_grad_norm: float | None = None, clip_value: float | None = None,
                 skip_nonfinite: bool = False, report_grad_norm: bool = False, diagnostics: bool = False,
                 capturable: bool = False, **defaults: Any):
        self.defaults = dict(type(self).default_hypers())
        for k in defaults:
            if k not in self.defaults:
                raise TypeError(f"{type(self).__name__} got an unknown hyperparameter '{k}'")
        self.defaults.update(defaults)
        self._hyper_at(self.defaults, 0)
        raw_groups = _split_groups(params, grads)
        self.param_groups: list[ParamGroup] = []
        for j, (values, _, _) in enumerate(raw_groups):
            for k in values:
                if k not in self.defaults:
                    raise TypeError(f"param group {j}: unknown hyperparameter '{k}'")
            merged = {**self.defaults, **values}
            try:
                self._hyper_at(merged, 0)
            except (TypeError, ValueError) as e:
                raise type(e)(f"param group {j}: {e}") from None
            self.param_groups.append(ParamGroup(self, merged))
        self._params = [p for _, ps, _ in raw_groups for p in ps]
        self._grads = [g for _, _, gs in raw_groups for g in gs]
        self._group_sizes = [len(ps) for _, ps, _ in raw_groups]
        self._group_of = [j for j, n in enumerate(self._group_sizes) for _ in range(n)]
        self.max_grad_norm = max_grad_norm
        self.clip_value = clip_value
        self.skip_nonfinite = skip_nonfinite
        self.report_grad_norm = report_grad_norm
        self.diagnostics = diagnostics
        self._engine = engine_for(self._params[0] if self._params else None)
        self._capturable = flag("capturable", capturable)
        if self._capturable and not self._engine.is_cuda:
            raise ValueError("capturable=True needs CUDA params (it keeps lr and step on the GPU)")
        # Bind the user's arrays alone first: every bad input is reported before anything
        # is allocated or written.
        self._engine.bind(self.rule, self._params, self._grads, [None] * len(self._params),
                          [[] for _ in self._params], self.state_names, self._group_sizes)
        stream = self._engine.stream(None, self._params[0]) if self._engine.is_cuda else 0
        self._masters: list[Array | None] = [
            master_copy(p, f"param {i}", stream)
            if master_weights and _core.describe(p, f"param {i}")[1] != "float32" else None
            for i, p in enumerate(self._params)]
        self._state: list[dict[str, Array]] = [{} for _ in self._params]
        self._steps = [0] * len(self.param_groups)
        self._steps_exact = True  # CUDA: whether self._steps are the device's counts
        self._bound_states: list[int] | None = None  # state streams bound per group
        self._refresh()

    # ---- what the description gives --------------------------------------------------------
    @classmethod
    def default_hypers(cls) -> dict[str, Any]:
        """The hyperparameters and their defaults."""
        return dict(cls.hyper_defaults)

    @classmethod
    def _to_hyper(cls, group: Mapping[str, Any], **fields: Any) -> Any:
        """The engine's hyperparameter struct for ``group`` (plus ``fields``, set as given);
        TypeError for a value of the wrong type, ValueError (the rule's message) for one out
        of range."""
        h = _core.rules[cls.rule]()
        for key, default in cls.hyper_defaults.items():
            if key == "betas":
                h.beta1, h.beta2 = betas(group[key])
            elif isinstance(default, bool):
                setattr(h, cls.hyper_fields.get(key, key), flag(key, group[key]))
            elif isinstance(default, float):
                setattr(h, cls.hyper_fields.get(key, key), real(key, group[key]))
        for key, value in {**cls.fixed_fields, **fields}.items():
            setattr(h, key, value)
        err = h.check()
        if err:
            raise ValueError(err)
        return h

    def _rule_steps(self) -> list[int]:
        """The step count the rule sees for each group at the step being taken."""
        return [s + 1 for s in self._steps]

    @classmethod
    def _hyper_at(cls, group: Mapping[str, Any], step: int) -> Any:
        """The hyperparameter struct of ``group`` for a step taken after ``step`` steps: an lr
        given as a :class:`fastopt.schedules.Schedule` is evaluated there."""
        lr = group["lr"]
        return cls._to_hyper({**group, "lr": lr(step)} if isinstance(lr, Schedule) else group)

    def _state_created(self, group: int) -> None:
        """Called when a group's state arrays are allocated."""

    def _initial_value(self, name: str, group: int) -> float:
        """The value a fresh state array ``name`` of a param in ``group`` starts at."""
        return 0.0

    def _required_state(self, group: int, hyper: Any, step: int) -> tuple[str, ...]:
        """The state arrays a checkpoint must hold for a group at ``step`` steps."""
        return self.state_names[: hyper.num_state()] if step > 0 else ()

    def _check_loaded(self, group: int, arrays: list[dict[str, np.ndarray]]) -> None:
        """Raises ValueError for a group's loaded arrays that cannot be resumed from."""

    # ---- binding -----------------------------------------------------------------------
    def _refresh(self) -> None:
        """Rebuilds the hyperparameter structs (cheap, per group); rebinds only when the
        state streams some group needs have changed (momentum or amsgrad switched)."""
        self._hypers = [self._hyper_at(g, s) for g, s in zip(self.param_groups, self._steps)]
        self._scheduled = [j for j, g in enumerate(self.param_groups) if isinstance(g["lr"], Schedule)]
        need = [h.num_state() for h in self._hypers]
        if need != self._bound_states:
            self._bind(need)
        if self._engine.is_cuda:  # schedules are evaluated on the device, from its step counts
            stream = self._cuda_stream()
            for j, g in enumerate(self.param_groups):
                lr = g["lr"]
                self._core.set_schedule(j, lr._pod.to_bytes() if isinstance(lr, Schedule) else None, stream)
                if self._capturable:  # the lrs live on the device: enqueue the current ones
                    self._core.set_lr(j, self._hypers[j].lr, stream)
        self._stale = False

    def _changed(self) -> None:
        """A hyperparameter changed: the next step rebuilds the structs. On CUDA the new lrs
        and schedules are enqueued now, so that a graph replayed next sees them."""
        self._stale = True
        if self._engine.is_cuda:
            self._refresh()

    def _device_steps(self) -> list[int]:
        """A CUDA group's step counts, read from the device (waits for the current stream); the
        host's counts are exact again."""
        self._steps_exact = True
        return list(self._core.read_steps(self._cuda_stream()))

    def _cuda_stream(self) -> int:
        """The params' library's current stream: device values (lrs, schedules, step counts)
        are written and read there, in order with steps and graph replays enqueued there."""
        return self._engine.stream(None, self._params[0])

    def _bind(self, need: list[int]) -> None:
        """Binds every param with the first need[group] state streams, allocating any that
        are missing. Arrays no longer needed stay in the state, unbound and untouched."""
        created = set()
        for i, j in enumerate(self._group_of):
            for name in self.state_names[: need[j]]:
                if name not in self._state[i]:
                    self._state[i][name] = state_like(self._params[i], f"param {i}")
                    if self._initial_value(name, j) != 0:
                        fill(self._state[i][name], self._initial_value(name, j))
                    created.add(j)
        for j in sorted(created):
            self._state_created(j)
        if self._engine.is_cuda and self._bound_states is not None:
            self._steps = self._device_steps()  # the new group starts from the old one's counts
        self._core = self._engine.bind(
            self.rule, self._params, self._grads, self._masters,
            [[self._state[i][n] for n in self.state_names[: need[j]]] for i, j in enumerate(self._group_of)],
            self.state_names, self._group_sizes)
        self._bound_states = need
        if self._engine.is_cuda:  # the kernels count steps on the device
            stream = self._cuda_stream()
            for j, s in enumerate(self._steps):
                self._core.set_step(j, s, stream)

    # ---- step options ----------------------------------------------------------------
    @property
    def max_grad_norm(self) -> float | None:
        """Clip by global grad norm (None: off); see the class docstring."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: float | None) -> None:
        self._max_grad_norm = optional_positive("max_grad_norm", value)

    @property
    def clip_value(self) -> float | None:
        """Clamp every grad element to +-clip_value (None: off)."""
        return self._clip_value

    @clip_value.setter
    def clip_value(self, value: float | None) -> None:
        self._clip_value = optional_positive("clip_value", value)

    @property
    def skip_nonfinite(self) -> bool:
        """Skip a step whose grads hold an inf or NaN."""
        return self._skip_nonfinite

    @skip_nonfinite.setter
    def skip_nonfinite(self, value: bool) -> None:
        self._skip_nonfinite = flag("skip_nonfinite", value)

    @property
    def report_grad_norm(self) -> bool:
        """Compute the global grad norm at every step."""
        return self._report_grad_norm

    @report_grad_norm.setter
    def report_grad_norm(self, value: bool) -> None:
        self._report_grad_norm = flag("report_grad_norm", value)

    @property
    def diagnostics(self) -> bool:
        """Report per-tensor :class:`Diagnostics` with every step."""
        return self._diagnostics

    @diagnostics.setter
    def diagnostics(self, value: bool) -> None:
        self._diagnostics = flag("diagnostics", value)

    # ---- public API --------------------------------------------------------------------
    def step(self, grad_scale: Any = None, stream: Any = None, *,
             skip_nonfinite: bool | None = None) -> StepResult:
        """Applies one update to every param, in place (one C++ call, GIL released).

        ``grad_scale``: the loss scale the grads carry; they are unscaled (multiplied by
        ``1 / grad_scale``, in float32 as torch's GradScaler does) inside the update, never
        rewritten. On CUDA it may also be a one-element float32 array on the params' GPU (read
        by the step's kernels, as :class:`DynamicLossScaler` keeps it). Then the step options
        apply (``max_grad_norm``, ``clip_value``, ``skip_nonfinite``): a norm pass over the
        grads first when one of them (or ``report_grad_norm``) needs the norm, then the update
        pass.

        On CUDA the step is enqueued on ``stream`` (an int handle, a ``torch.cuda.Stream`` or a
        ``cupy.cuda.Stream``; default: the params' library's current stream) and never waits
        for the GPU: the norm, the clip factor and the skip decision are taken on the device,
        and a skipped step leaves the device step counts as they were. A plain step is one
        kernel launch. ``skip_nonfinite`` overrides the optimizer's setting for this step (a
        loss scaler needs it on)."""
        if self._stale:
            self._refresh()
        skip = self._skip_nonfinite if skip_nonfinite is None else flag("skip_nonfinite", skip_nonfinite)
        inv, loss_scale = self._grad_scale(grad_scale)
        if self._engine.is_cuda:
            return self._step_cuda(inv, loss_scale, stream, skip)
        for j in self._scheduled:  # an lr schedule gives this step's lr
            self._hypers[j] = self._hyper_at(self.param_groups[j], self._steps[j])
        norm = diag = None
        factor = np.float32(inv)
        if self._max_grad_norm is not None or skip or self._report_grad_norm or self._diagnostics:
            sums, bad = self._core.sumsq("grads")
            norm = math.sqrt(combine(sums)) * inv
            if self._diagnostics:
                diag = Diagnostics(np.sqrt(np.asarray(sums)) * inv, np.asarray(bad, np.int64))
            if skip and sum(bad) > 0:
                return StepResult(norm, True, diag)
            if self._max_grad_norm is not None:  # torch's clip coefficient, in float32 as torch computes it
                coef = np.float32(self._max_grad_norm) * (np.float32(1) / (np.float32(norm) + np.float32(1e-6)))
                factor = np.float32(factor * min(coef, np.float32(1.0)))
        clip = self._clip_value or 0.0
        if self._diagnostics:
            out = np.asarray(self._core.step(self._hypers, self._rule_steps(), float(factor), clip, True))
            update_norm, param_norm = np.sqrt(out[0::2]), np.sqrt(out[1::2])
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = update_norm / param_norm
            diag = Diagnostics(diag.grad_norm, diag.nonfinite_grads, param_norm, update_norm, ratio)
        else:
            self._core.step(self._hypers, self._rule_steps(), float(factor), clip)
        self._steps = [s + 1 for s in self._steps]
        return StepResult(norm, False, diag)

    def _grad_scale(self, grad_scale: Any) -> tuple[float, int]:
        """(the float32 unscale factor 1 / grad_scale, the device address of a loss scale held
        in GPU memory or 0)."""
        if grad_scale is None:
            return 1.0, 0
        if self._engine.is_cuda and library(grad_scale) in ("torch", "cupy"):
            try:
                shape, dtype, _ = _core.describe(grad_scale, "grad_scale")
                got = f"{dtype}{list(shape)} on {tuple(_core.device_of(grad_scale))}"
                fits = dtype == "float32" and math.prod(shape) == 1 and \
                    tuple(_core.device_of(grad_scale)) == (2, self._engine.device)
            except _core.TensorError as e:
                got, fits = str(e), False
            if not fits:
                raise ValueError(f"grad_scale must be a number or a one-element float32 array on {self.device}, "
                                 f"got {got}")
            return 1.0, data_ptr(grad_scale)
        scale = real("grad_scale", grad_scale)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"grad_scale must be finite and > 0, got {grad_scale!r}")
        return float(np.float32(1.0 / scale)), 0

    def _step_cuda(self, inv: float, loss_scale: int, stream: Any, skip: bool) -> StepResult:
        """step() on the CUDA engine: every option decided on the device, nothing waited for.
        The coefficients are computed on the host, as the CPU engine's, while the host knows the
        step counts (no step could have been skipped since they were last read) and the step is
        neither capturable nor being captured (a graph replays it: it must read the device's
        counts, lrs and schedules)."""
        like = self._params[0]
        handle = self._engine.stream(stream, like)
        need_norm = self._max_grad_norm is not None or skip or self._report_grad_norm or self._diagnostics
        n = len(self._params)
        norm = device_empty(like, (), "float64", handle) if need_norm else None
        skipped = device_empty(like, (), "bool", handle) if need_norm else None
        diag = device_empty(like, (4, n), "float64", handle) if self._diagnostics else None
        nonfinite = device_empty(like, (n,), "int64", handle) if self._diagnostics else None
        capturing = self._engine.capturing(handle)
        host = self._steps_exact and not self._capturable and not capturing
        if host:  # the CPU engine's lrs and coefficients, at the device's step counts
            for j in self._scheduled:
                self._hypers[j] = self._hyper_at(self.param_groups[j], self._steps[j])
        self._core.step(self._hypers, handle, steps=[s + 1 for s in self._steps] if host else None, grad_scale=inv,
                        loss_scale=loss_scale, clip_value=self._clip_value or 0.0, capturable=self._capturable,
                        grad_norm=need_norm, skip_nonfinite=skip, max_grad_norm=self._max_grad_norm or 0.0,
                        grad_norm_out=data_ptr(norm) if need_norm else 0,
                        skipped_out=data_ptr(skipped) if need_norm else 0,
                        diagnostics=data_ptr(diag) if diag is not None else 0,
                        nonfinite=data_ptr(nonfinite) if diag is not None else 0)
        self._rule_steps()  # host bookkeeping only (SGD's momentum count): the device counts the steps
        self._steps = [s + 1 for s in self._steps]
        # A skip is known on the device only; a captured step advances the counts at each replay.
        self._steps_exact = self._steps_exact and not skip and not capturing
        diagnostics = None if diag is None else Diagnostics(diag[0], nonfinite, diag[2], diag[1], diag[3])
        return StepResult(norm, skipped if need_norm else False, diagnostics)

    def _update_loss_scale(self, scale: Any, clean_steps: Any, growth: float, backoff: float, interval: int,
                           stream: Any) -> None:
        """On CUDA: a loss scaler's update from the last step's skip decision, on the device."""
        self._core.update_loss_scale(data_ptr(scale), data_ptr(clean_steps), growth, backoff, interval,
                                     self._engine.stream(stream, self._params[0]) if stream is not None
                                     else self._cuda_stream())

    @property
    def lr(self) -> float:
        """The learning rate of every group (setting it sets every group's)."""
        lrs = {g["lr"] for g in self.param_groups}
        if len(lrs) != 1:
            raise ValueError("param groups have different learning rates; use param_groups[j]['lr']")
        return lrs.pop()

    @lr.setter
    def lr(self, value: float) -> None:
        for g in self.param_groups:
            self._hyper_at({**g, "lr": value}, 0)
        for g in self.param_groups:
            g["lr"] = value

    @property
    def state(self) -> dict[int, dict[str, np.ndarray]]:
        """Live state arrays by param index (``"master_param"`` for fp32 master weights)."""
        out = {}
        for i, s in enumerate(self._state):
            d = dict(s)
            if self._masters[i] is not None:
                d["master_param"] = self._masters[i]
            out[i] = d
        return out

    @property
    def master_params(self) -> list[np.ndarray | None]:
        """The fp32 master weights by param index (None where the param has none)."""
        return list(self._masters)

    @property
    def steps(self) -> list[int]:
        """Steps taken by each param group (CUDA: read from the device, so that graph replays
        and steps skipped on the device count; this waits for the GPU)."""
        if self._engine.is_cuda:
            self._steps = self._device_steps()
        return list(self._steps)

    @property
    def device(self) -> str:
        """Where the params live and the steps run: ``"cpu"`` or ``"cuda:N"``."""
        return f"cuda:{self._engine.device}" if self._engine.is_cuda else "cpu"

    def state_dict(self) -> dict[str, Any]:
        """A snapshot: copies of the state arrays (on the params' device), hyperparameters and
        step counts."""
        if self._engine.is_cuda:
            self._steps = self._device_steps()
        state: dict[int, dict[str, Any]] = {}
        for i, j in enumerate(self._group_of):
            entry: dict[str, Any] = {"step": self._steps[j]}
            entry.update({k: copy(v) for k, v in self._saved_state(i).items()})
            if self._masters[i] is not None:
                entry["master_param"] = copy(self._masters[i])
            state[i] = entry
        groups = []
        first = 0
        for g, n in zip(self.param_groups, self._group_sizes):
            groups.append({**g, "params": list(range(first, first + n))})
            first += n
        return {"state": state, "param_groups": groups}

    def _saved_state(self, i: int) -> dict[str, Array]:
        """The state of param i worth saving."""
        return self._state[i]

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict`. Everything is validated before anything changes:
        the groups and their params, every array's shape and dtype (float32), step counts
        (integers >= 0, equal within a group), and that every state array a resumed step
        needs is present. State absent from a checkpoint at step 0 is reset to zero."""
        groups = list(state_dict["param_groups"])
        saved = dict(state_dict["state"])
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, this optimizer {len(self.param_groups)}")
        keys = [k for g in groups for k in g["params"]]
        if len(set(keys)) != len(keys):
            raise ValueError("state_dict lists a param key twice")
        unknown = set(saved) - set(keys)
        if unknown:
            raise ValueError(f"state_dict has state for unknown param keys {sorted(map(repr, unknown))}")
        merged_groups, steps, arrays = [], [], []
        first = 0
        for j, (g, n) in enumerate(zip(groups, self._group_sizes)):
            if len(g["params"]) != n:
                raise ValueError(f"param group {j}: state_dict has {len(g['params'])} params, this optimizer {n}")
            values = {k: v for k, v in g.items() if k != "params"}
            bad = set(values) - set(self.defaults)
            if bad:
                raise ValueError(f"param group {j}: unknown hyperparameters {sorted(bad)}")
            merged = {**self.param_groups[j], **values}
            hyper = self._hyper_at(merged, 0)
            group_steps, group_arrays = set(), []
            for i, key in zip(range(first, first + n), g["params"]):
                entry = dict(saved.get(key, {}))
                step = entry.pop("step", 0)
                if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
                    raise ValueError(f"param {i}: step must be an integer >= 0, got {step!r}")
                group_steps.add(int(step))
                group_arrays.append(self._loaded_arrays(i, entry))
            if len(group_steps) > 1:
                raise ValueError(f"param group {j}: params have different step counts {sorted(group_steps)}")
            step = group_steps.pop()
            for i, got in zip(range(first, first + n), group_arrays):
                missing = [s for s in self._required_state(j, hyper, step) if s not in got]
                if missing:
                    raise ValueError(f"param {i}: state_dict lacks {', '.join(missing)} at step {step}")
            self._check_loaded(j, group_arrays)
            merged_groups.append(merged)
            steps.append(step)
            arrays += group_arrays
            first += n
        # Validated: now commit.
        for g, merged in zip(self.param_groups, merged_groups):
            dict.update(g, merged)
        created = False
        for i, got in enumerate(arrays):
            for name, a in got.items():
                if name == "master_param":
                    assign(self._masters[i], a)
                    continue
                if name not in self._state[i]:
                    self._state[i][name] = state_like(self._params[i], f"param {i}")
                    created = True
                assign(self._state[i][name], a)
            for name, a in self._state[i].items():
                if name not in got:  # absent from a step-0 checkpoint: as a fresh optimizer has it
                    fill(a, self._initial_value(name, self._group_of[i]))
        self._steps = steps
        if created:
            self._bound_states = None  # new arrays: rebind
        elif self._engine.is_cuda:  # same device group (a captured graph stays valid): new step counts
            stream = self._cuda_stream()
            for j, s in enumerate(steps):
                self._core.set_step(j, s, stream)
            self._steps_exact = True
        self._refresh()
        self._loaded(arrays)

    def _loaded_arrays(self, i: int, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Param i's arrays from a checkpoint entry, each checked for name, dtype and shape."""
        shape = tuple(_core.describe(self._params[i], f"param {i}")[0])
        got = {}
        for name, value in entry.items():
            if name not in self.state_names and name != "master_param":
                raise ValueError(f"param {i}: unknown state '{name}'")
            if name == "master_param" and self._masters[i] is None:
                raise ValueError(f"param {i}: state_dict has master weights, this optimizer none")
            a = to_host(value)
            if a.dtype != np.float32 or a.shape != shape:
                raise ValueError(f"param {i}: state '{name}' is {a.dtype}{list(a.shape)}, "
                                 f"expected float32{list(shape)}")
            got[name] = a
        if self._masters[i] is not None and "master_param" not in got:
            raise ValueError(f"param {i}: state_dict lacks its master weights")
        return got

    def _loaded(self, arrays: list[dict[str, np.ndarray]]) -> None:
        """Called after load_state_dict copied the arrays in."""


def _split_groups(params: Iterable[Any], grads: Sequence[Array] | None):
    """[(hyperparameters, params, grads)] from the constructor's arguments."""
    params = list(params)
    if not params or not all(isinstance(p, Mapping) for p in params):
        if any(isinstance(p, Mapping) for p in params):
            raise TypeError("params must be all arrays or all param-group dicts")
        if grads is None:
            raise TypeError("grads are required: fastopt binds every param to its grad buffer once")
        return [({}, params, list(grads))]
    flat = list(grads) if grads is not None else None
    used = 0
    out = []
    for j, d in enumerate(params):
        values = dict(d)
        if "params" not in values:
            raise TypeError(f"param group {j} has no 'params'")
        ps = list(values.pop("params"))
        gs = values.pop("grads", None)
        if gs is None:
            if flat is None:
                raise TypeError(f"param group {j} has no 'grads' and no grads list was given")
            gs = flat[used:used + len(ps)]
            used += len(ps)
        gs = list(gs)
        if len(gs) != len(ps):
            raise ValueError(f"param group {j}: {len(ps)} params but {len(gs)} grads")
        out.append((values, ps, gs))
    if flat is not None and used != len(flat):
        raise ValueError(f"got {len(flat)} grads for {used} params without group grads")
    return out
