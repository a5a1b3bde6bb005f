"""Functional in-place steps for engines that own their optimizer state.

Each call binds the given arrays (validating them as an optimizer does) and runs the same
kernels as the optimizer classes. Every array is the caller's and is updated in place: no state
is allocated (on CUDA each call binds a device table: bind once, below).
CUDA arrays (PyTorch, CuPy, any DLPack tensor) run on the CUDA engine, enqueued on the
current stream of their library.

In a loop, bind once: ``step = adamw_.bind(params, grads, exp_avgs, exp_avg_sqs)`` validates
and binds the arrays (on CUDA: the device table, allocated and uploaded once), then
``step(step=t, lr=...)`` runs the same update as ``adamw_(..., step=t, lr=...)`` with no
binding per call: on CUDA one launch, no allocation, no host synchronisation.

Schedule-Free's eval point (see :class:`fastopt.AdamWScheduleFree`): the params hold y during
training; ``adamwschedulefree_.eval(params, zs, step=t, ...)`` moves them to x after t steps, in
place, and ``adamwschedulefree_.train(...)`` back (the same keywords as the step: the hyperparameters,
``master_params``, ``remainders``, ``compensations``, ``stochastic_rounding``, ``seed``); a bound
step has the same as methods, ``bound.eval(step=t)`` and ``bound.train(step=t)``. The caller
keeps track of the mode: a step taken at x trains from the wrong point. At ``step=0`` (no step
taken: z is not set yet) they change nothing.

Every storage mode of the classes (``master_weights``, ``state_precision``) is the caller's
choice of arrays: the dtype of the state arrays (float32, bfloat16, or uint8 codes with float32
absmax arrays: 8-bit), ``master_params``, ``remainders`` or ``compensations`` beside
half-precision params, and stochastic rounding of the params or of bfloat16 state with
``seed``. Its random bits are keyed by ``seed``, ``step`` and the param's index in ``params``:
the class's bits at the same step, and a loop resumed at step t continues bit for bit.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable, Mapping, Sequence

from . import _core
from .binding import Keeps
from .catalog import OPTIMIZERS
from .engine import engine_for
from .hyperparams import flag
from .optimizer import Optimizer
from .schedule_free import no_state_keeps
from .storage import QUANT_BLOCK, absmax_name, check_seed

KEPT = ("master_params", "remainders", "compensations")  # per param: a half-precision param's fp32 value
ROUNDING = ("stochastic_rounding", "state_stochastic_rounding")

class BoundStep:
    """A functional form's arrays bound once (``<form>.bind(...)``); calling it with ``step=``
    and hyperparameters (the form's keywords and defaults) runs one update in place. The
    hyperparameters may change from call to call, but not beyond the state bound (amsgrad
    needs ``max_exp_avg_sqs`` bound, ...): ValueError then, before anything is written. With
    stochastic rounding ``step`` keys the random bits, and is required. On CUDA a call is
    enqueued on ``stream`` (an int handle, a ``torch.cuda.Stream`` or a ``cupy.cuda.Stream``;
    default: the arrays' library's current stream), as the classes' ``step(stream=...)``."""

    def __init__(self, cls: type[Optimizer], arrays: Mapping[str, Any], keywords: Mapping[str, Any],
                 num_state: int | None = None):
        """``arrays``: the arguments of ``<form>.bind`` by name. The state bound for each param: the
        state lists given, a prefix of the param's state (``cls.state_shapes``), at most
        ``num_state`` of them."""
        self._cls, self._keywords = cls, dict(keywords)
        params = list(arrays["params"])
        n = len(params)
        lists = {name: _per_param(arrays, _state_arg(cls, name), n) for name in cls.state_names}
        self._layouts = [_layout(cls, p, i) for i, p in enumerate(params)]
        self._bound: list[list[str]] = []  # each param's state bound
        for i, layout in enumerate(self._layouts):
            for name in cls.state_names:
                if name not in layout and lists[name][i] is not None:
                    raise ValueError(f"param {i}: {_state_arg(cls, name)}[{i}] must be None: a param of shape "
                                     f"{tuple(_core.describe(params[i], f'param {i}')[0])} keeps {', '.join(layout)}")
            names = []
            for name in layout[:num_state]:
                if arrays[_state_arg(cls, name)] is None:
                    break
                if lists[name][i] is None:
                    raise ValueError(f"param {i}: {_state_arg(cls, name)}[{i}] is None, and a param of shape "
                                     f"{tuple(_core.describe(params[i], f'param {i}')[0])} keeps {', '.join(layout)}")
                names.append(name)
            self._bound.append(names)
        states = [[lists[name][i] for name in names] for i, names in enumerate(self._bound)]
        keeps, seed = _keeps(cls, arrays, params, self._bound, states)
        self._like = params[0] if n else None
        self._engine = engine_for(self._like)
        self._random = any(keeps.stochastic) or any(keeps.state_stochastic)
        self._group = self._engine.bind(cls.rule, params, list(arrays["grads"]), keeps, states, [n])
        self._group.watch_state()  # the state is the caller's: checked before each step as the params
        self._group.set_seed(seed)
        self._seed, self._switch_arrays = seed, (params, [s[0] for s in states] if all(states) else [], keeps)
        self._switcher: Any = None  # a mode switch over the params and z (eval/train), bound on first use

    def __call__(self, *, step: int | None = None, stream: Any = None, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self._keywords)
        if unknown:
            raise TypeError(f"unknown hyperparameters {sorted(unknown)}")
        cls = self._cls
        if step is None:
            if cls.step_dependent:
                raise TypeError("step= is required: the update depends on the step count")
            if self._random:
                raise TypeError("step= is required with stochastic rounding: its random bits are the step's")
            step = 1
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or not 1 <= step <= 2**63 - 1:
            raise ValueError(f"step must be >= 1 and <= 2**63 - 1, an integer (the 1-based count of updates), "
                             f"got {step!r}")
        h = cls._to_hyper({**cls.default_hypers(), **_betas(cls, {**self._keywords, **kwargs})})  # validates first
        for layout, names in zip(self._layouts, self._bound):
            for name in layout[len(names):h.num_state()]:
                raise ValueError(f"{_needs(cls, name)} {_state_arg(cls, name)}, which were not bound")
        step = int(step)
        self._engine.step(self._group, [h], [step], stream, self._like, round_step=step)

    def eval(self, *, step: int, stream: Any = None, **kwargs: Any) -> None:
        """Moves the params to the eval point x after ``step`` steps (Schedule-Free; the
        hyperparameters as a step takes them): see :mod:`fastopt.functional`."""
        self._move(True, step, stream, kwargs)

    def train(self, *, step: int, stream: Any = None, **kwargs: Any) -> None:
        """Moves the params back from the eval point x to y: see :meth:`eval`."""
        self._move(False, step, stream, kwargs)

    def _move(self, to_eval: bool, step: Any, stream: Any, kwargs: Mapping[str, Any]) -> None:
        cls = self._cls
        _needs_eval_point(cls)
        unknown = set(kwargs) - set(self._keywords)
        if unknown:
            raise TypeError(f"unknown hyperparameters {sorted(unknown)}")
        h = cls._to_hyper({**cls.default_hypers(), **_betas(cls, {**self._keywords, **kwargs})})
        step = _steps_taken(step)
        if self._switcher is None:
            params, zs, keeps = self._switch_arrays
            self._switcher = self._engine.bind_switch(cls.rule, params, zs, no_state_keeps(keeps), [len(params)])
        self._engine.switch(self._switcher, [h], [step], to_eval, self._seed, stream, self._like)


def _needs_eval_point(cls: type[Optimizer]) -> None:
    if not _core.eval_point[cls.rule]:
        raise TypeError(f"{cls.__name__} trains and is evaluated at its params: it has no eval point to switch to")


def _steps_taken(step: Any) -> int:
    """The steps taken before a mode switch: an integer in [0, 2**63 - 1] (ValueError otherwise)."""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or not 0 <= step <= 2**63 - 1:
        raise ValueError(f"step must be the steps taken so far, an integer >= 0 (the last step's step=), got {step!r}")
    return int(step)


def _layout(cls: type[Optimizer], param: Any, i: int) -> list[str]:
    """The names of the state arrays param i binds, in order: every class's state_names, but a
    factored class's, whose state depends on the param's dims (its shape read as the engine reads it)."""
    if not cls.factored:
        return list(cls.state_names)
    return list(cls.state_shapes(_core.describe(param, f"param {i}")[0]))


def _needs(cls: type[Optimizer], name: str) -> str:
    """Why state ``name`` is needed: its option, for optional state."""
    return f"{cls.optional_state[name]} needs" if name in cls.optional_state else f"{cls.__name__} needs"


def _per_param(arrays: Mapping[str, Any], arg: str, n: int) -> list:
    """The list argument ``arg``, one entry per param ([None] * n where it is None)."""
    given = arrays[arg]
    if given is None:
        return [None] * n
    out = list(given)
    if len(out) != n:
        raise ValueError(f"got {n} params but {len(out)} {arg}")
    return out


def _keeps(cls: type[Optimizer], arrays: Mapping[str, Any], params: Sequence, names: Sequence[list[str]],
           states: Sequence[list]) -> tuple[Keeps, int]:
    """How each param's fp32 value and its state (param i's ``names[i]``, bound as
    ``states[i]``) are kept, from the storage keywords in ``arrays``; and the seed. The engine
    validates the arrays themselves (dtypes, shapes, which keeps go together) and names the bad one."""
    n = len(params)
    keeps = Keeps.none(n)
    keeps.masters, keeps.remainders, keeps.compensations = (_per_param(arrays, k, n) for k in KEPT)
    stochastic, state_stochastic = (flag(k, arrays[k]) for k in ROUNDING)
    seed = check_seed(arrays["seed"])
    if seed and not (stochastic or state_stochastic):
        raise ValueError("seed is the seed of stochastic rounding (stochastic_rounding=True or "
                         "state_stochastic_rounding=True)")
    absmaxes = ({name: _per_param(arrays, _absmax_arg(cls, name), n) for name in cls.state_names}
                if cls.eight_bit_state else {})
    for i, p in enumerate(params):
        keeps.stochastic[i] = stochastic and _dtype(p, f"param {i}") != "float32"
        state_dtype = _dtype(states[i][0], f"{names[i][0]} {i}") if names[i] else None
        keeps.state_stochastic[i] = state_stochastic and state_dtype == "bfloat16"
        given = [absmaxes[name][i] for name in names[i] if name in absmaxes]
        if state_dtype == "uint8" and any(a is None for a in given):  # (the engine would not name the keyword)
            missing = [_absmax_arg(cls, name) for name, a in zip(names[i], given) if a is None]
            raise ValueError(f"param {i}: its state is 8-bit (uint8), which needs {' and '.join(missing)} "
                             f"(float32, shape (ceil(numel / {QUANT_BLOCK}),), zero initially)")
        keeps.absmaxes[i] = [a for a in given if a is not None]  # (with other state: the engine refuses them)
    # A flag that rounds nothing is a mistake, refused as the class refuses a seed it would not use.
    if stochastic and not any(keeps.stochastic):
        raise ValueError("stochastic_rounding=True rounds float16/bfloat16 params, and every param is float32")
    if state_stochastic and not any(keeps.state_stochastic):
        raise ValueError("state_stochastic_rounding=True rounds bfloat16 state, and no param has bfloat16 state")
    return keeps, seed


def _dtype(array: Any, name: str) -> str:
    """The dtype name of an array fastopt takes (TensorError naming it ``name`` otherwise)."""
    return _core.describe(array, name)[1]


def _betas(cls: type[Optimizer], hypers: dict[str, Any]) -> dict[str, Any]:
    """The functional keywords as the class's hyperparameters (beta1, beta2 as betas)."""
    if "betas" not in cls.hyper_defaults:
        return hypers
    out = dict(hypers)
    out["betas"] = (out.pop("beta1"), out.pop("beta2"))
    return out


def _state_arg(cls: type[Optimizer], name: str) -> str:
    return cls.functional_state_args.get(name, name + "s")


def _absmax_arg(cls: type[Optimizer], name: str) -> str:
    """The keyword of the absmax arrays of 8-bit state ``name``, named as the state lists are."""
    return _state_arg(cls, absmax_name(name))


def _storage_parameters(cls: type[Optimizer]) -> list[inspect.Parameter]:
    """The keywords that choose how the params' fp32 values and the state are kept (all off by
    default: float32 state as passed, half-precision params rounded to nearest even)."""
    P = inspect.Parameter
    lists = [*KEPT, *(_absmax_arg(cls, s) for s in cls.state_names if cls.eight_bit_state)]
    return ([P(k, P.KEYWORD_ONLY, default=None) for k in lists] +
            [P(k, P.KEYWORD_ONLY, default=False) for k in ROUNDING] + [P("seed", P.KEYWORD_ONLY, default=0)])


def _keywords(cls: type[Optimizer]) -> dict[str, Any]:
    """The functional form's hyperparameter keywords and defaults: the class's, betas split."""
    out: dict[str, Any] = {}
    for key, value in cls.default_hypers().items():
        if key == "betas":
            out["beta1"], out["beta2"] = value
        elif key not in cls.functional_excluded:
            out[key] = value
    return out


def _doc(cls: type[Optimizer], keywords: Mapping[str, Any]) -> str:
    name = cls.__name__
    states = ", ".join(_state_arg(cls, s) for s in cls.state_names)
    needs = "".join(f"\n            {_state_arg(cls, s)} are needed when {option} (else None)."
                    for s, option in cls.optional_state.items())
    step = ("the 1-based count of updates of the state passed in, this one included (required)."
            if cls.step_dependent else
            "the update does not depend on it (default 1; required with stochastic rounding).")
    betas = " (betas as beta1, beta2)" if "betas" in cls.hyper_defaults else ""
    note = f"\n    {cls.functional_note}\n" if cls.functional_note else ""
    dtypes = ("float32, bfloat16, or uint8 (8-bit: block-wise\n"
              "            quantized codes, zero initially, with absmax arrays)" if cls.eight_bit_state
              else "float32 or bfloat16")
    shaped = "arrays shaped as the note below says" if cls.factored else "arrays shaped like the params"
    state_lines = (f"        {states}: the state: {shaped},\n"
                   f"            one per param, updated in place (positional, in this order). Their dtype (one per\n"
                   f"            param) decides how it is kept: {dtypes}.{needs}\n"
                   if states else "")
    absmax_lines = ""
    if cls.eight_bit_state and cls.state_names:
        absmaxes = ", ".join(_absmax_arg(cls, s) for s in cls.state_names)
        absmax_lines = (f"        {absmaxes}:\n"
                        f"            the absmax arrays of uint8 state, one list per state list: float32\n"
                        f"            arrays of shape (ceil(numel / {QUANT_BLOCK}),), zero initially, updated in\n"
                        f"            place (None for a param whose state is not uint8, or None). Needed with\n"
                        f"            uint8 state (ValueError).\n")
    return f"""One {name} step in place (see :class:`fastopt.{name}` for the update and its source).

    Args:
        params, grads: sequences of arrays, one grad per param, shaped like it; the params are
            updated in place, the grads only read.
{state_lines}        step: {step}
        {", ".join(keywords)}:
            the hyperparameters and their defaults, as in :class:`fastopt.{name}`{betas}.
        master_params: fp32 master weights of float16/bfloat16 params (None each, or None).
        remainders: instead of masters, for bfloat16 params: uint16 arrays shaped like them,
            the low halves of fp32 masters whose high halves are the params (zero: the masters
            are the params' values); ``master_weights="remainder"`` of the class. None each, or None.
        compensations: instead, for bfloat16 params: bfloat16 Kahan compensations shaped like
            them, zero initially (``master_weights="kahan"``). None each, or None.
{absmax_lines}        stochastic_rounding: round every float16/bfloat16 param stochastically (those
            then take no master, remainder or compensation; ``master_weights="stochastic"``).
            Default False.
        state_stochastic_rounding: round bfloat16 state stochastically, not to nearest even
            (``state_precision="bfloat16_stochastic"``). Default False.
        seed: the seed of stochastic rounding, an integer in [0, 2**64) (default 0). Its random
            bits are keyed by seed, step and the param's index in params (and the element):
            :class:`fastopt.{name}` with this seed draws the same bits at its step ``step``.
{note}
    Raises:
        TypeError, ValueError: a bad argument, a missing or short state list, uint8 state
            without its absmax arrays, a seed without stochastic rounding, or a tensor fastopt
            cannot take (:class:`fastopt.TensorError`: a bad dtype or shape, keeps that do not
            go together); nothing is written then.
    """


def _switch_form(cls: type[Optimizer], to_eval: bool, keywords: Mapping[str, Any]) -> Callable[..., None]:
    """``<form>.eval`` (to_eval) or ``<form>.train`` of a class with an eval point."""
    P = inspect.Parameter
    z = _state_arg(cls, cls.state_names[0])
    storage = [P(k, P.KEYWORD_ONLY, default=None) for k in KEPT] + [
        P("stochastic_rounding", P.KEYWORD_ONLY, default=False), P("seed", P.KEYWORD_ONLY, default=0)]
    signature = inspect.Signature([P("params", P.POSITIONAL_OR_KEYWORD), P(z, P.POSITIONAL_OR_KEYWORD),
                                   P("step", P.KEYWORD_ONLY)] +
                                  [P(k, P.KEYWORD_ONLY, default=v) for k, v in keywords.items()] + storage)
    name = cls.__name__.lower() + "_." + ("eval" if to_eval else "train")

    def switch(*args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{name}() {e}") from None
        bound.apply_defaults()
        a = bound.arguments
        h = cls._to_hyper({**cls.default_hypers(), **_betas(cls, {k: a[k] for k in keywords})})  # validates first
        step = _steps_taken(a["step"])
        params = list(a["params"])
        zs = _per_param(a, z, len(params))
        keeps, seed = _keeps(cls, {**a, "state_stochastic_rounding": False}, params,
                             [list(cls.state_names[:1])] * len(params), [[zi] for zi in zs])
        like = params[0] if params else None
        engine = engine_for(like)
        switcher = engine.bind_switch(cls.rule, params, zs, no_state_keeps(keeps), [len(params)])
        engine.switch(switcher, [h], [step], to_eval, seed, None, like)

    point = "the eval point x = y + (1 - 1/beta1) (z - y)" if to_eval else "the training point y = x + (1 - beta1) (z - x)"
    switch.__name__ = switch.__qualname__ = "eval" if to_eval else "train"
    switch.__doc__ = (f"Moves every param to {point}, in place, after ``step`` steps of\n"
                      f"    :func:`{cls.__name__.lower()}_` (none at step 0); one pass, not a step (see :mod:`fastopt.functional`\n"
                      f"    and :meth:`fastopt.{cls.__name__}.eval`). ``{z}``, the hyperparameters and the storage\n"
                      f"    keywords as the step's; ``seed`` keys stochastic rounding (with ``step``).")
    switch.__signature__ = signature  # type: ignore[attr-defined]
    return switch


def _functional_form(cls: type[Optimizer]) -> Callable[..., None]:
    """fastopt.functional.<name>_ for the optimizer class ``cls``."""
    P = inspect.Parameter
    arrays = [P("params", P.POSITIONAL_OR_KEYWORD), P("grads", P.POSITIONAL_OR_KEYWORD)]
    for name in cls.state_names:  # (a factored rule's: each param takes those of its shape, the others None)
        arrays.append(P(_state_arg(cls, name), P.POSITIONAL_OR_KEYWORD,
                        default=None if name in cls.optional_state or cls.factored else P.empty))
    keywords = _keywords(cls)
    hypers = [P("step", P.KEYWORD_ONLY, default=P.empty if cls.step_dependent else None)]
    hypers += [P(k, P.KEYWORD_ONLY, default=P.empty if k in cls.functional_required else v)
               for k, v in keywords.items()]
    storage = _storage_parameters(cls)
    signature = inspect.Signature(arrays + hypers + storage)
    bind_signature = inspect.Signature(arrays + storage)

    def bind(*args: Any, **kwargs: Any) -> BoundStep:
        try:
            bound = bind_signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{form.__name__}.bind() {e}") from None
        bound.apply_defaults()
        return BoundStep(cls, bound.arguments, keywords)

    def form(*args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:  # a missing or unknown argument
            raise TypeError(f"{form.__name__}() {e}") from None
        bound.apply_defaults()
        a = bound.arguments
        hyper_values = {k: a[k] for k in keywords}
        h = cls._to_hyper({**cls.default_hypers(), **_betas(cls, hyper_values)})  # validates first
        needed = ({n for i, p in enumerate(a["params"]) for n in _layout(cls, p, i)[:h.num_state()]}
                  if cls.factored else set(cls.state_names[:h.num_state()]))
        for name in cls.state_names:
            if name in needed and a[_state_arg(cls, name)] is None:
                raise ValueError(f"{_needs(cls, name)} {_state_arg(cls, name)}")
        BoundStep(cls, a, keywords, h.num_state())(step=a["step"], **hyper_values)

    form.__name__ = form.__qualname__ = cls.__name__.lower() + "_"
    form.__module__ = __name__
    form.__doc__ = _doc(cls, keywords)
    form.__signature__ = signature  # type: ignore[attr-defined]
    bind.__name__ = bind.__qualname__ = "bind"
    bind.__doc__ = (f"Binds the arrays of :func:`{form.__name__}` once (validated as it validates them); returns "
                    f"a :class:`BoundStep`: call it with step= and the hyperparameters.")
    bind.__signature__ = bind_signature  # type: ignore[attr-defined]
    form.bind = bind  # type: ignore[attr-defined]
    if _core.eval_point[cls.rule]:
        form.eval = _switch_form(cls, True, keywords)  # type: ignore[attr-defined]
        form.train = _switch_form(cls, False, keywords)  # type: ignore[attr-defined]
    return form


FORMS: dict[str, Callable[..., None]] = {f.__name__: f for f in map(_functional_form, OPTIMIZERS)}
globals().update(FORMS)
__all__ = [*FORMS, "BoundStep"]
