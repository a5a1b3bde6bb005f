"""Lion."""

from __future__ import annotations

from .optimizer import Optimizer


class Lion(Optimizer):
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"), in place.

    Per element, with ``g`` the grad (negated when ``maximize``)::

        c = beta1 * m + (1 - beta1) * g
        p = p * (1 - lr * weight_decay) - lr * sign(c)
        m = beta2 * m + (1 - beta2) * g

    Every coordinate moves by exactly lr (or not at all where c is exactly 0), so lr is
    typically 3-10x smaller and weight_decay 3-10x larger than for AdamW.

    Args:
        lr: learning rate (>= 0; default 1e-4).
        betas: (beta1, beta2), each in [0, 1) (default (0.9, 0.99)).
        weight_decay: decoupled weight decay (>= 0; default 0).
        maximize: ascend the objective instead of descending it.

    State per param (float32): ``exp_avg`` (m).
    Bytes moved per fp32 param and step: 20 (read p, g, m; write p, m).
    """

    rule = "lion"
    hyper_defaults = {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0, "maximize": False}
    step_dependent = False
    bench_hypers = {"lr": 1e-4, "weight_decay": 1e-2}
    doc_rows = (
        ('',
         '`c = b1*m + (1-b1)g`, `p = p*(1 - lr*wd) - lr*sign(c)`, `m = b2*m + (1-b2)g`',
         '20'),
    )
