"""Functional in-place steps for engines that own their optimizer state.

Each call binds the given arrays (validating them as an optimizer does) and runs the same
kernels as the optimizer classes. Nothing is allocated; every array is updated in place.
CUDA arrays (PyTorch, CuPy, any DLPack tensor) run on the CUDA engine, enqueued on the
current stream of their library.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from .catalog import OPTIMIZERS
from .engine import engine_for
from .optimizer import Optimizer

def _run(cls, h, params, grads, states, names, master_params, step: int) -> None:
    n = len(params)
    for s, name in zip(states, names):
        if len(s) != n:
            raise ValueError(f"got {n} params but {len(s)} {name}s")
    masters = list(master_params) if master_params is not None else [None] * n
    if len(masters) != n:
        raise ValueError(f"got {n} params but {len(masters)} master_params")
    per_param = [[s[i] for s in states] for i in range(n)]
    engine = engine_for(params[0] if n else None)
    group = engine.bind(cls.rule, params, grads, masters, per_param, names, [n])
    engine.step(group, [h], [int(step)], None, params[0] if n else None)


def _stateful(cls: type[Optimizer], params, grads, given: Mapping[str, Any], step, master_params, hypers) -> None:
    """Runs ``cls``'s rule with the state lists its hyperparameters bind: a prefix of
    ``cls.state_names``; ``given`` maps each name to the caller's list (or None)."""
    h = cls._to_hyper({**cls.default_hypers(), **hypers})  # validates first
    names = cls.state_names[:h.num_state()]
    for name in names:
        if given[name] is None:
            raise ValueError(f"{cls.optional_state[name]} needs {_state_arg(cls, name)}")
    _run(cls, h, params, grads, [list(given[name]) for name in names], cls.state_names, master_params, step)


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

    def form(*args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:  # a missing or unknown argument
            raise TypeError(f"{form.__name__}() {e}") from None
        bound.apply_defaults()
        a = bound.arguments
        hypers = {k: a[k] for k in keywords}
        if "betas" in cls.hyper_defaults:
            hypers["betas"] = (hypers.pop("beta1"), hypers.pop("beta2"))
        given = {name: a[_state_arg(cls, name)] for name in cls.state_names}
        _stateful(cls, a["params"], a["grads"], given, a["step"], a["master_params"], hypers)

    form.__name__ = form.__qualname__ = cls.__name__.lower() + "_"
    form.__module__ = __name__
    form.__doc__ = _doc(cls, keywords)
    form.__signature__ = signature  # type: ignore[attr-defined]
    return form


FORMS: dict[str, Callable[..., None]] = {f.__name__: f for f in map(_functional_form, OPTIMIZERS)}
globals().update(FORMS)
__all__ = list(FORMS)
