"""Functional in-place steps for engines that own their optimizer state.

Each call binds the given arrays (validating them as an optimizer does) and runs the same
kernels as the optimizer classes. Nothing is allocated; every array is updated in place.
CUDA arrays (PyTorch, CuPy, any DLPack tensor) run on the CUDA engine, enqueued on the
current stream of their library.
"""

from __future__ import annotations

from typing import Any, Sequence

from .engine import engine_for
from .adabelief import AdaBelief
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .lamb import LAMB
from .lars import LARS
from .lion import Lion
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSprop
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
    engine = engine_for(params[0] if n else None)
    group = engine.bind(cls.rule, params, grads, masters, per_param, names, [n])
    engine.step(group, [h], [int(step)], None, params[0] if n else None)


def sgd_(params: Sequence[Array], grads: Sequence[Array],
         momentum_buffers: Sequence[Array] | None = None, *, step: int, lr: float,
         momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
         nesterov: bool = False, maximize: bool = False, momentum_form: str = "torch",
         master_params: Sequence[Array | None] | None = None) -> None:
    """One SGD step in place (see :class:`fastopt.SGD` for the update and the two momentum forms).

    ``momentum_buffers`` (float32, one per param) are required when momentum != 0; ``step``
    counts their updates, this one included: at ``step=1`` they are set to the gradient
    (torch form) or to -lr times it (Sutskever form), whatever they held.
    ``master_params`` holds fp32 master weights for float16/bfloat16 params (or None each).
    """
    if momentum != 0 and momentum_buffers is None:
        raise ValueError("momentum != 0 needs momentum_buffers")
    states = [list(momentum_buffers)] if momentum != 0 else []
    _run(SGD, params, grads, states, SGD.state_names, master_params, step,
         dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
              nesterov=nesterov, maximize=maximize, momentum_form=momentum_form))


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


def _stateful(cls, params, grads, given: dict, reasons: dict, step, master_params, hypers) -> None:
    """Runs ``cls``'s rule with the state lists its hyperparameters bind: a prefix of
    ``cls.state_names``; ``given`` maps each name to the caller's list (or None), ``reasons``
    says which option needs a name that is optional."""
    n = cls._to_hyper({**cls.default_hypers(), **hypers}).num_state()  # validates first
    names = cls.state_names[:n]
    for name in names:
        if given[name] is None:
            raise ValueError(f"{reasons[name]} needs {name}s")
    _run(cls, params, grads, [list(given[name]) for name in names], cls.state_names, master_params, step, hypers)


def adagrad_(params: Sequence[Array], grads: Sequence[Array], state_sums: Sequence[Array], *,
             step: int, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
             eps: float = 1e-10, maximize: bool = False,
             master_params: Sequence[Array | None] | None = None) -> None:
    """One Adagrad step in place (see :class:`fastopt.Adagrad`); ``step`` is 1-based, this
    one included (it sets the lr decay). ``state_sums`` start at the initial accumulator
    value, which the caller fills in."""
    _stateful(Adagrad, params, grads, {"sum": state_sums}, {}, step, master_params,
              dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize))


def adadelta_(params: Sequence[Array], grads: Sequence[Array], square_avgs: Sequence[Array],
              acc_deltas: Sequence[Array], *, step: int = 1, lr: float = 1.0, rho: float = 0.9,
              eps: float = 1e-6, weight_decay: float = 0.0, maximize: bool = False,
              master_params: Sequence[Array | None] | None = None) -> None:
    """One Adadelta step in place (see :class:`fastopt.Adadelta`); the update does not
    depend on ``step``."""
    _stateful(Adadelta, params, grads, {"square_avg": square_avgs, "acc_delta": acc_deltas}, {}, step,
              master_params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize))


def rmsprop_(params: Sequence[Array], grads: Sequence[Array], square_avgs: Sequence[Array],
             momentum_buffers: Sequence[Array] | None = None, grad_avgs: Sequence[Array] | None = None, *,
             step: int = 1, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
             weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
             maximize: bool = False, master_params: Sequence[Array | None] | None = None) -> None:
    """One RMSprop step in place (see :class:`fastopt.RMSprop`); the update does not depend
    on ``step``. ``momentum_buffers`` are needed when momentum > 0 or centered (state is
    bound as a prefix: centered without momentum leaves them untouched); ``grad_avgs`` when
    centered."""
    _stateful(RMSprop, params, grads,
              {"square_avg": square_avgs, "momentum_buffer": momentum_buffers, "grad_avg": grad_avgs},
              {"momentum_buffer": "momentum > 0 or centered", "grad_avg": "centered"}, step, master_params,
              dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                   centered=centered, maximize=maximize))


def adamax_(params: Sequence[Array], grads: Sequence[Array], exp_avgs: Sequence[Array],
            exp_infs: Sequence[Array], *, step: int, lr: float = 2e-3, beta1: float = 0.9,
            beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, maximize: bool = False,
            master_params: Sequence[Array | None] | None = None) -> None:
    """One Adamax step in place (see :class:`fastopt.Adamax`); ``step`` is 1-based, this one included."""
    _stateful(Adamax, params, grads, {"exp_avg": exp_avgs, "exp_inf": exp_infs}, {}, step, master_params,
              dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, maximize=maximize))


def nadam_(params: Sequence[Array], grads: Sequence[Array], exp_avgs: Sequence[Array],
           exp_avg_sqs: Sequence[Array], *, step: int, lr: float = 2e-3, beta1: float = 0.9,
           beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
           momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, maximize: bool = False,
           master_params: Sequence[Array | None] | None = None) -> None:
    """One NAdam step in place (see :class:`fastopt.NAdam`); ``step`` is 1-based, this one
    included. The momentum product of the steps so far is computed from ``step``."""
    _stateful(NAdam, params, grads, {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}, {}, step, master_params,
              dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                   decoupled_weight_decay=decoupled_weight_decay, maximize=maximize))


def radam_(params: Sequence[Array], grads: Sequence[Array], exp_avgs: Sequence[Array],
           exp_avg_sqs: Sequence[Array], *, step: int, lr: float = 1e-3, beta1: float = 0.9,
           beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
           decoupled_weight_decay: bool = False, maximize: bool = False,
           master_params: Sequence[Array | None] | None = None) -> None:
    """One RAdam step in place (see :class:`fastopt.RAdam`); ``step`` is 1-based, this one included."""
    _stateful(RAdam, params, grads, {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}, {}, step, master_params,
              dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
                   decoupled_weight_decay=decoupled_weight_decay, maximize=maximize))


def adabelief_(params: Sequence[Array], grads: Sequence[Array], exp_avgs: Sequence[Array],
               exp_avg_vars: Sequence[Array], max_exp_avg_vars: Sequence[Array] | None = None, *,
               step: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-16,
               weight_decay: float = 0.0, amsgrad: bool = False, weight_decouple: bool = False,
               maximize: bool = False, master_params: Sequence[Array | None] | None = None) -> None:
    """One AdaBelief step in place (see :class:`fastopt.AdaBelief`); ``step`` is 1-based,
    this one included. ``max_exp_avg_vars`` are needed with amsgrad."""
    _stateful(AdaBelief, params, grads,
              {"exp_avg": exp_avgs, "exp_avg_var": exp_avg_vars, "max_exp_avg_var": max_exp_avg_vars},
              {"max_exp_avg_var": "amsgrad"}, step, master_params,
              dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                   weight_decouple=weight_decouple, maximize=maximize))


def lion_(params: Sequence[Array], grads: Sequence[Array], exp_avgs: Sequence[Array], *, step: int = 1,
          lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.99, weight_decay: float = 0.0,
          maximize: bool = False, master_params: Sequence[Array | None] | None = None) -> None:
    """One Lion step in place (see :class:`fastopt.Lion`); the update does not depend on ``step``."""
    _stateful(Lion, params, grads, {"exp_avg": exp_avgs}, {}, step, master_params,
              dict(lr=lr, betas=(beta1, beta2), weight_decay=weight_decay, maximize=maximize))


def lars_(params: Sequence[Array], grads: Sequence[Array], momentum_buffers: Sequence[Array] | None = None, *,
          step: int = 1, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
          trust_coefficient: float = 1e-3, eps: float = 1e-8, exclude_1d: bool = False, maximize: bool = False,
          master_params: Sequence[Array | None] | None = None) -> None:
    """One LARS step in place (see :class:`fastopt.LARS`): the norm pass, then the update.
    ``momentum_buffers`` are required when momentum != 0; the update does not depend on ``step``."""
    _stateful(LARS, params, grads, {"momentum_buffer": momentum_buffers}, {"momentum_buffer": "momentum != 0"},
              step, master_params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                        trust_coefficient=trust_coefficient, eps=eps, exclude_1d=exclude_1d,
                                        maximize=maximize))


def lamb_(params: Sequence[Array], grads: Sequence[Array], exp_avgs: Sequence[Array],
          exp_avg_sqs: Sequence[Array], *, step: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
          eps: float = 1e-6, weight_decay: float = 0.0, max_trust: float = 0.0, bias_correction: bool = True,
          maximize: bool = False, master_params: Sequence[Array | None] | None = None) -> None:
    """One LAMB step in place (see :class:`fastopt.LAMB`); ``step`` is 1-based, this one included."""
    _stateful(LAMB, params, grads, {"exp_avg": exp_avgs, "exp_avg_sq": exp_avg_sqs}, {}, step, master_params,
              dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, max_trust=max_trust,
                   bias_correction=bias_correction, maximize=maximize))
