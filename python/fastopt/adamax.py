"""Adamax."""

from __future__ import annotations

from .optimizer import Optimizer


class Adamax(Optimizer):
    """Adamax (Kingma & Ba, 2015, section 7.1) with ``torch.optim.Adamax`` semantics, in place.

    Per element at step t (1-based), with ``g`` the grad (negated when ``maximize``)::

        g = g + weight_decay * p
        m = m + (1 - beta1) * (g - m)
        u = max(beta2 * u, |g| + eps)
        p = p - lr / (1 - beta1^t) * m / u

    Args:
        lr: learning rate (>= 0; default 2e-3).
        betas: (beta1, beta2), each in [0, 1) (default (0.9, 0.999)).
        eps: added to |g| inside the max (>= 0; default 1e-8).
        weight_decay: L2 penalty (>= 0; default 0).
        maximize: ascend the objective instead of descending it.

    State per param (float32): ``exp_avg`` (m) and ``exp_inf`` (u).
    Bytes moved per fp32 param and step: 28 (read p, g, m, u; write p, m, u).
    """

    rule = "adamax"
    hyper_defaults = {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "maximize": False}
    in_torch = True
    bench_hypers = {"lr": 2e-3}
    doc_rows = (
        ('',
         '`m += (1-b1)(g-m)`, `u = max(b2*u, abs(g) + eps)`, `p -= lr/(1-b1^t) * m/u`; L2',
         '28'),
    )
