"""Functional in-place steps for engines that own their optimizer state.

Each call binds the given arrays (validating them as an optimizer does) and runs the same
kernels as the optimizer classes. Nothing is allocated; every array is updated in place.
"""

from __future__ import annotations

from typing import Any, Sequence

from . import _core
from .adam import Adam, AdamW
from .sgd import SGD

Array = Any


def _run(cls, params, grads, states, names, master_params, step: int, hypers: dict) -> None:
    h = cls._to_hyper({**cls.default_hypers(), **hypers})
    n = len(params)
    for s, name in zip(states, names):
        if len(s) != n:
            raise ValueError(f"got {n} params but {len(s)} {name}s")
    masters = list(master_params) if master_params is not None else [None] * n
    if len(masters) != n:
        raise ValueError(f"got {n} params but {len(masters)} master_params")
    per_param = [[s[i] for s in states] for i in range(n)]
    group = _core.Group(cls.rule, list(params), list(grads), masters, per_param, list(names), [n])
    group.step([h], [int(step)])


def sgd_(params: Sequence[Array], grads: Sequence[Array],
         momentum_buffers: Sequence[Array] | None = None, *, step: int, lr: float,
         momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
         nesterov: bool = False, maximize: bool = False,
         master_params: Sequence[Array | None] | None = None) -> None:
    """One SGD step in place (see :class:`fastopt.SGD` for the update).

    ``momentum_buffers`` (float32, one per param) are required when momentum != 0; ``step``
    counts their updates, this one included: at ``step=1`` they are set to the gradient.
    ``master_params`` holds fp32 master weights for float16/bfloat16 params (or None each).
    """
    if momentum != 0 and momentum_buffers is None:
        raise ValueError("momentum != 0 needs momentum_buffers")
    states = [list(momentum_buffers)] if momentum != 0 else []
    _run(SGD, params, grads, states, SGD.state_names, master_params, step,
         dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
              nesterov=nesterov, maximize=maximize))


def _adam(cls, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, master_params, hypers):
    if hypers["amsgrad"] and max_exp_avg_sqs is None:
        raise ValueError("amsgrad needs max_exp_avg_sqs")
    states = [list(exp_avgs), list(exp_avg_sqs)]
    if hypers["amsgrad"]:
        states.append(list(max_exp_avg_sqs))
    _run(cls, params, grads, states, cls.state_names, master_params, step, hypers)


def adam_(params: Sequence[Array], grads: Sequence[Array], exp_avgs: Sequence[Array],
          exp_avg_sqs: Sequence[Array], max_exp_avg_sqs: Sequence[Array] | None = None, *,
          step: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
          maximize: bool = False, master_params: Sequence[Array | None] | None = None) -> None:
    """One Adam step in place (see :class:`fastopt.Adam`); ``step`` is 1-based, this one included."""
    _adam(Adam, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, master_params,
          dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
               maximize=maximize))


def adamw_(params: Sequence[Array], grads: Sequence[Array], exp_avgs: Sequence[Array],
           exp_avg_sqs: Sequence[Array], max_exp_avg_sqs: Sequence[Array] | None = None, *,
           step: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
           eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
           maximize: bool = False, master_params: Sequence[Array | None] | None = None) -> None:
    """One AdamW step in place (see :class:`fastopt.AdamW`); ``step`` is 1-based, this one included."""
    _adam(AdamW, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, master_params,
          dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
               maximize=maximize))
