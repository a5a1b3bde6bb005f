"""RAdam."""

from __future__ import annotations

from .optimizer import Optimizer


class RAdam(Optimizer):
    """RAdam (Liu et al., 2020) with ``torch.optim.RAdam`` semantics, in place.

    Per element at step t (1-based), with ``g`` the grad (negated when ``maximize``)::

        p = p * (1 - lr * weight_decay)                (decoupled_weight_decay)
        g = g + weight_decay * p                       (otherwise)
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
        if rho_t > 5:
            r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            p = p - lr * r * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
        else:
            p = p - lr / (1 - beta1^t) * m

    The branch depends on t alone (with the default betas the first 5 steps are plain
    momentum steps); eps is added to sqrt(v), not to the bias-corrected sqrt(v_hat).

    Args:
        lr: learning rate (>= 0; default 1e-3).
        betas: (beta1, beta2), each in [0, 1) (default (0.9, 0.999)).
        eps: added to the denominator (>= 0; default 1e-8).
        weight_decay: weight decay (>= 0; default 0): an L2 penalty in the gradient, or
            decoupled (applied to the param) with ``decoupled_weight_decay``.
        decoupled_weight_decay: decay the param directly, as AdamW does.
        maximize: ascend the objective instead of descending it.

    State per param (float32): ``exp_avg`` (m) and ``exp_avg_sq`` (v).
    Bytes moved per fp32 param and step: 28 (read p, g, m, v; write p, m, v).
    """

    rule = "radam"
    hyper_defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                      "decoupled_weight_decay": False, "maximize": False}
    hyper_fields = {"decoupled_weight_decay": "decoupled"}
    in_torch = True
    bench_hypers = {"lr": 1e-3}
    doc_rows = (
        ('',
         ("Adam's m, v; `rho_t = rho_inf - 2t*b2^t/(1-b2^t)`, `rho_inf = 2/(1-b2) - 1`; "
          'if `rho_t > 5`: `p -= lr*r_t*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v) + eps)`, '
          'else `p -= lr/(1-b1^t) * m`; L2 or decoupled'),
         '28'),
    )
