"""NAdam."""

from __future__ import annotations

from typing import Any, Mapping

from .optimizer import Optimizer


class NAdam(Optimizer):
    """NAdam (Dozat, 2016) with ``torch.optim.NAdam`` semantics, in place.

    Per element at step t (1-based), with ``g`` the grad (negated when ``maximize``)::

        mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay));  P_t = mu_1 * ... * mu_t
        p = p * (1 - lr * weight_decay)                (decoupled_weight_decay)
        g = g + weight_decay * p                       (otherwise)
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        d = sqrt(v / (1 - beta2^t)) + eps
        p = p - lr * (1 - mu_t) / (1 - P_t) * g / d
              - lr * mu_{t+1} / (1 - P_t * mu_{t+1}) * m / d

    torch keeps the product P_t per param as running state (``mu_product``); fastopt
    computes it from t in closed form, in double, at every step (a series of ~55 terms,
    exact to double precision whatever t), so there is no such state: a resumed, functional
    or device-side step needs only its step count.

    Args:
        lr: learning rate (>= 0; default 2e-3).
        betas: (beta1, beta2), each in [0, 1) (default (0.9, 0.999)).
        eps: added to the denominator (>= 0; default 1e-8).
        weight_decay: weight decay (>= 0; default 0): an L2 penalty in the gradient, or
            decoupled (applied to the param) with ``decoupled_weight_decay``.
        momentum_decay: psi of the momentum schedule (>= 0; default 4e-3).
        decoupled_weight_decay: decay the param directly, as AdamW does (NAdamW).
        maximize: ascend the objective instead of descending it.

    State per param (float32): ``exp_avg`` (m) and ``exp_avg_sq`` (v).
    Bytes moved per fp32 param and step: 28 (read p, g, m, v; write p, m, v).
    """

    rule = "nadam"
    hyper_defaults = {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "momentum_decay": 4e-3,
                      "decoupled_weight_decay": False, "maximize": False}
    hyper_fields = {"decoupled_weight_decay": "decoupled"}
    in_torch = True
    functional_note = "The momentum product of the steps so far is computed from ``step``."
    bench_hypers = {"lr": 2e-3}
    doc_rows = (
        ('',
         ("`mu_t = b1(1 - 0.5*0.96^(t*momentum_decay))`, `P_t = mu_1...mu_t`; Adam's m, v; "
          '`d = sqrt(v/(1-b2^t)) + eps`; '
          '`p -= lr(1-mu_t)/(1-P_t) * g/d + lr*mu_{t+1}/(1-P_t*mu_{t+1}) * m/d`; L2 or decoupled'),
         '28'),
    )

    @classmethod
    def torch_state(cls, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        import torch
        beta1, psi, product = group["betas"][0], group["momentum_decay"], 1.0
        for t in range(1, step + 1):
            product *= beta1 * (1 - 0.5 * 0.96 ** (t * psi))
        return {"mu_product": torch.tensor(product)}
