"""Adadelta."""

from __future__ import annotations

from .optimizer import Optimizer


class Adadelta(Optimizer):
    """Adadelta (Zeiler, 2012) with ``torch.optim.Adadelta`` semantics, in place.

    Per element, with ``g`` the grad (negated when ``maximize``)::

        g = g + weight_decay * p
        v = rho * v + (1 - rho) * g * g
        delta = sqrt(u + eps) / sqrt(v + eps) * g
        u = rho * u + (1 - rho) * delta * delta
        p = p - lr * delta

    Args:
        lr: scales the step (>= 0; default 1.0, the paper's unscaled update).
        rho: decay of both running averages (in [0, 1]; default 0.9).
        eps: added inside both square roots (>= 0; default 1e-6).
        weight_decay: L2 penalty (>= 0; default 0).
        maximize: ascend the objective instead of descending it.

    State per param (float32): ``square_avg`` (v) and ``acc_delta`` (u).
    Bytes moved per fp32 param and step: 28 (read p, g, v, u; write p, v, u).
    """

    rule = "adadelta"
    hyper_defaults = {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0, "maximize": False}
    in_torch = True
    step_dependent = False
    bench_hypers = {"lr": 1.0}
    doc_rows = (
        ('',
         ('`v = rho*v + (1-rho)g²`, `d = sqrt(u+eps)/sqrt(v+eps) * g`, `u = rho*u + (1-rho)d²`, `p -= lr*d`; '
          'L2'),
         '28'),
    )
