"""Adam and AdamW."""

from __future__ import annotations

from .optimizer import Optimizer


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with ``torch.optim.Adam`` semantics, in place.

    Per element at step t, with ``g`` the grad (negated when ``maximize``)::

        g = g + weight_decay * p                 (Adam: L2 penalty in the gradient)
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v); v = vmax            (amsgrad)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Args:
        lr: learning rate (>= 0; default 1e-3).
        betas: (beta1, beta2), each in [0, 1) (default (0.9, 0.999)).
        eps: added to the denominator (>= 0; default 1e-8).
        weight_decay: L2 penalty (>= 0; default 0).
        amsgrad: use the running maximum of v (Reddi et al., 2018).
        maximize: ascend the objective instead of descending it.

    State per param (float32): ``exp_avg``, ``exp_avg_sq`` and, with amsgrad, ``max_exp_avg_sq``.
    Bytes moved per fp32 param and step: 28 (36 with amsgrad).
    """

    rule = "adam"
    hyper_defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                      "maximize": False}
    fixed_fields = {"decoupled": False}
    optional_state = {"max_exp_avg_sq": "amsgrad"}
    in_torch = True
    bench_hypers = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    doc_rows = (
        ('',
         ('`m += (1-b1)(g-m)`, `v = b2*v + (1-b2)g²`, `p -= lr/(1-b1^t) * m / (sqrt(v/(1-b2^t)) + eps)`; '
          'L2; amsgrad'),
         '28; 36 amsgrad'),
    )


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019) with ``torch.optim.AdamW`` semantics, in place.

    As :class:`Adam`, except that weight decay is decoupled from the gradient. Per element
    at step t, with ``g`` the grad (negated when ``maximize``)::

        p = p * (1 - lr * weight_decay)
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v); v = vmax            (amsgrad)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Args:
        lr: learning rate (>= 0; default 1e-3).
        betas: (beta1, beta2), each in [0, 1) (default (0.9, 0.999)).
        eps: added to the denominator (>= 0; default 1e-8).
        weight_decay: decoupled weight decay (>= 0; default 1e-2).
        amsgrad: use the running maximum of v (Reddi et al., 2018).
        maximize: ascend the objective instead of descending it.

    State per param (float32): ``exp_avg``, ``exp_avg_sq`` and, with amsgrad, ``max_exp_avg_sq``.
    Bytes moved per fp32 param and step: 28 (36 with amsgrad).
    """

    hyper_defaults = {**Adam.hyper_defaults, "weight_decay": 1e-2}
    fixed_fields = {"decoupled": True}
    bench_hypers = {**Adam.bench_hypers, "weight_decay": 1e-2}
    doc_rows = (("", "as Adam, with decoupled weight decay", "28; 36 amsgrad"),)
