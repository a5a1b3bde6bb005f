"""AdaBelief."""

from __future__ import annotations

from .optimizer import Optimizer


class AdaBelief(Optimizer):
    """AdaBelief (Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the
    Belief in Observed Gradients", Algorithm 2), in place.

    Adam with the second moment replaced by the EMA of the squared deviation of the grad
    from its EMA (the "belief"). Per element at step t (1-based), with ``g`` the grad
    (negated when ``maximize``)::

        p = p * (1 - lr * weight_decay)                (weight_decouple)
        g = g + weight_decay * p                       (otherwise: L2, the default)
        m = m + (1 - beta1) * (g - m)
        s = beta2 * s + (1 - beta2) * (g - m)^2 + eps  (m: the updated one)
        smax = max(smax, s); s_used = smax             (amsgrad; else s_used = s)
        p = p - lr / (1 - beta1^t) * m / (sqrt(s_used / (1 - beta2^t)) + eps)

    eps enters twice, as in the paper: added to s at every step, and to the denominator.
    Its default, 1e-16, is the authors' (in s it plays the part of Adam's 1e-8 under the
    square root).

    Args:
        lr: learning rate (>= 0; default 1e-3).
        betas: (beta1, beta2), each in [0, 1) (default (0.9, 0.999)).
        eps: see above (>= 0; default 1e-16).
        weight_decay: weight decay (>= 0; default 0), an L2 penalty in the gradient unless
            ``weight_decouple``.
        amsgrad: use the running maximum of s (as AMSGrad does for Adam's v).
        weight_decouple: decay the param directly, as AdamW does.
        maximize: ascend the objective instead of descending it.

    State per param (float32): ``exp_avg`` (m), ``exp_avg_var`` (s) and, with amsgrad,
    ``max_exp_avg_var``.
    Bytes moved per fp32 param and step: 28 (36 with amsgrad).
    """

    rule = "adabelief"
    hyper_defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-16, "weight_decay": 0.0, "amsgrad": False,
                      "weight_decouple": False, "maximize": False}
    hyper_fields = {"weight_decouple": "decoupled"}
    optional_state = {"max_exp_avg_var": "amsgrad"}
    bench_hypers = {"lr": 1e-3}
    doc_rows = (
        ('',
         ('`m += (1-b1)(g-m)`, `s = b2*s + (1-b2)(g-m)² + eps`, `p -= lr/(1-b1^t) * m / (sqrt(s/(1-b2^t)) + eps)`; '
          'L2 or decoupled (`weight_decouple`); amsgrad over s'),
         '28; 36 amsgrad'),
    )
