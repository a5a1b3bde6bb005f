"""Functional in-place steps for engines that own their optimizer state.

Each call binds the given arrays (validating them as an optimizer does) and runs the same
kernels as the optimizer classes. Nothing is allocated; every array is updated in place.
CUDA arrays (PyTorch, CuPy, any DLPack tensor) run on the CUDA engine, enqueued on the
current stream of their library.

In a loop, bind once: ``step = adamw_.bind(params, grads, exp_avgs, exp_avg_sqs)`` validates
and binds the arrays (on CUDA: the device table, allocated and uploaded once), then
``step(step=t, lr=...)`` runs the same update as ``adamw_(..., step=t, lr=...)`` with no
binding per call: on CUDA one launch, no allocation, no host synchronisation.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from .binding import Keeps
from .catalog import OPTIMIZERS
from .engine import engine_for
from .optimizer import Optimizer

class BoundStep:
    """A functional form's arrays bound once (``<form>.bind(...)``); calling it with ``step=``
    and hyperparameters (the form's keywords and defaults) runs one update in place. The
    hyperparameters may change from call to call, but not beyond the state bound (amsgrad
    needs ``max_exp_avg_sqs`` bound, ...): ValueError then, before anything is written."""

    def __init__(self, cls: type[Optimizer], params, grads, given: Mapping[str, Any], master_params,
                 keywords: Mapping[str, Any]):
        self._cls, self._keywords = cls, dict(keywords)
        n = len(params)
        names = []
        for name in cls.state_names:  # the state bound: the lists given, a prefix of state_names
            if given[name] is None:
                break
            names.append(name)
        states = [list(given[name]) for name in names]
        for s, name in zip(states, names):
            if len(s) != n:
                raise ValueError(f"got {n} params but {len(s)} {_state_arg(cls, name)}")
        masters = list(master_params) if master_params is not None else [None] * n
        if len(masters) != n:
            raise ValueError(f"got {n} params but {len(masters)} master_params")
        self._like = params[0] if n else None
        self._engine = engine_for(self._like)
        self._bound = names
        keeps = Keeps.none(n)
        keeps.masters = list(masters)
        self._group = self._engine.bind(cls.rule, list(params), list(grads), keeps,
                                        [[s[i] for s in states] for i in range(n)], [n])
        self._group.watch_state()  # the state is the caller's: checked before each step as the params

    def __call__(self, *, step: int | None = None, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self._keywords)
        if unknown:
            raise TypeError(f"unknown hyperparameters {sorted(unknown)}")
        cls = self._cls
        if step is None:
            if cls.step_dependent:
                raise TypeError("step= is required: the update depends on the step count")
            step = 1
        h = cls._to_hyper({**cls.default_hypers(), **_betas(cls, {**self._keywords, **kwargs})})  # validates first
        for name in cls.state_names[len(self._bound):h.num_state()]:
            raise ValueError(f"{cls.optional_state[name]} needs {_state_arg(cls, name)}, which were not bound")
        self._engine.step(self._group, [h], [int(step)], None, self._like)


def _betas(cls: type[Optimizer], hypers: dict[str, Any]) -> dict[str, Any]:
    """The functional keywords as the class's hyperparameters (beta1, beta2 as betas)."""
    if "betas" not in cls.hyper_defaults:
        return hypers
    out = dict(hypers)
    out["betas"] = (out.pop("beta1"), out.pop("beta2"))
    return out


def _state_arg(cls: type[Optimizer], name: str) -> str:
    return cls.functional_state_args.get(name, name + "s")


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
            if cls.step_dependent else "the update does not depend on it (default 1).")
    betas = " (betas as beta1, beta2)" if "betas" in cls.hyper_defaults else ""
    note = f"\n    {cls.functional_note}\n" if cls.functional_note else ""
    state_lines = (f"        {states}: the state: float32 arrays shaped like the params,\n"
                   f"            one per param, updated in place (positional, in this order).{needs}\n"
                   if states else "")
    return f"""One {name} step in place (see :class:`fastopt.{name}` for the update and its source).

    Args:
        params, grads: sequences of arrays, one grad per param, shaped like it; the params are
            updated in place, the grads only read.
{state_lines}        step: {step}
        {", ".join(keywords)}:
            the hyperparameters and their defaults, as in :class:`fastopt.{name}`{betas}.
        master_params: fp32 master weights of float16/bfloat16 params (None each, or None).
{note}
    Raises:
        TypeError, ValueError: a bad argument, a missing or short state list, or a tensor
            fastopt cannot take (:class:`fastopt.TensorError`); nothing is written then.
    """


def _functional_form(cls: type[Optimizer]) -> Callable[..., None]:
    """fastopt.functional.<name>_ for the optimizer class ``cls``."""
    P = inspect.Parameter
    args = [P("params", P.POSITIONAL_OR_KEYWORD), P("grads", P.POSITIONAL_OR_KEYWORD)]
    for name in cls.state_names:
        args.append(P(_state_arg(cls, name), P.POSITIONAL_OR_KEYWORD,
                      default=None if name in cls.optional_state else P.empty))
    args.append(P("step", P.KEYWORD_ONLY, default=P.empty if cls.step_dependent else 1))
    keywords = _keywords(cls)
    args += [P(k, P.KEYWORD_ONLY, default=P.empty if k in cls.functional_required else v)
             for k, v in keywords.items()]
    args.append(P("master_params", P.KEYWORD_ONLY, default=None))
    signature = inspect.Signature(args)

    arrays = inspect.Signature([p for p in args if p.kind is P.POSITIONAL_OR_KEYWORD] +
                               [P("master_params", P.KEYWORD_ONLY, default=None)])

    def bind(*args: Any, **kwargs: Any) -> BoundStep:
        try:
            bound = arrays.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{form.__name__}.bind() {e}") from None
        bound.apply_defaults()
        a = bound.arguments
        given = {name: a[_state_arg(cls, name)] for name in cls.state_names}
        return BoundStep(cls, a["params"], a["grads"], given, a["master_params"], keywords)

    def form(*args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:  # a missing or unknown argument
            raise TypeError(f"{form.__name__}() {e}") from None
        bound.apply_defaults()
        a = bound.arguments
        given = {name: a[_state_arg(cls, name)] for name in cls.state_names}
        hypers = {k: a[k] for k in keywords}
        h = cls._to_hyper({**cls.default_hypers(), **_betas(cls, hypers)})  # validates first
        for name in cls.state_names[:h.num_state()]:
            if given[name] is None:
                raise ValueError(f"{cls.optional_state[name]} needs {_state_arg(cls, name)}")
        given = {name: (given[name] if i < h.num_state() else None) for i, name in enumerate(cls.state_names)}
        BoundStep(cls, a["params"], a["grads"], given, a["master_params"], keywords)(step=a["step"], **hypers)

    form.__name__ = form.__qualname__ = cls.__name__.lower() + "_"
    form.__module__ = __name__
    form.__doc__ = _doc(cls, keywords)
    form.__signature__ = signature  # type: ignore[attr-defined]
    bind.__name__ = bind.__qualname__ = "bind"
    bind.__doc__ = (f"Binds the arrays of :func:`{form.__name__}` once (validated as it validates them); returns "
                    f"a :class:`BoundStep`: call it with step= and the hyperparameters.")
    bind.__signature__ = arrays  # type: ignore[attr-defined]
    form.bind = bind  # type: ignore[attr-defined]
    return form


FORMS: dict[str, Callable[..., None]] = {f.__name__: f for f in map(_functional_form, OPTIMIZERS)}
globals().update(FORMS)
__all__ = [*FORMS, "BoundStep"]
