"""LAMB."""

from __future__ import annotations

from .optimizer import Optimizer


class LAMB(Optimizer):
    """LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes"), in place: Adam's direction with decoupled weight decay, scaled per tensor by a
    trust ratio.

    At step t, with ``g`` the grad (negated when ``maximize``) and L2 norms over each tensor::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p
        ratio = ||p|| / ||u||   (1 where either is 0; at most max_trust when max_trust > 0)
        p = p - lr * ratio * u

    Args:
        lr: learning rate (>= 0; default 1e-3).
        betas: (beta1, beta2), each in [0, 1) (default (0.9, 0.999)).
        eps: added to the denominator (>= 0; default 1e-6).
        weight_decay: decoupled weight decay, part of u (>= 0; default 0).
        max_trust: clamp of the trust ratio (> 0), or 0 for none (default 0).
        bias_correction: divide the moments by (1 - beta^t) (default True).
        maximize: ascend the objective instead of descending it.

    Two passes over the state per step: the first updates m and v and sums ||p||^2 and ||u||^2
    per tensor (deterministic, fastopt/reduce.h); the second recomputes u from m and v with
    the same operations and updates p. State per param (float32): ``exp_avg``, ``exp_avg_sq``.
    Bytes moved per fp32 param and step: 40 (first pass: read p, g, m, v, write m, v = 24;
    second: read p, m, v, write p = 16), against 28 for AdamW.
    """

    rule = "lamb"
    hyper_defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0, "max_trust": 0.0,
                      "bias_correction": True, "maximize": False}
    bench_hypers = {"lr": 1e-3, "weight_decay": 1e-2}
    doc_rows = (
        ('`LAMB` (You et al. 2019)',
         ('Adam moments, `u = m̂/(sqrt(v̂) + eps) + wd*p`, `ratio = ‖p‖/‖u‖` (1 if a norm is 0; '
          'clamped to `max_trust` when > 0), `p -= lr*ratio*u`'),
         '40 (pass 1: p, g, m, v, writes m, v = 24; pass 2: p, m, v, writes p = 16)'),
    )
    extra_pass = ("second pass", ("p", "exp_avg", "exp_avg_sq"))
