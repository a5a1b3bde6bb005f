"""Adam and AdamW."""

from __future__ import annotations

from typing import Any, Mapping

from . import _core
from .optimizer import Optimizer, flag, real


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
    state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    decoupled = False

    @classmethod
    def default_hypers(cls) -> dict[str, Any]:
        return {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                "weight_decay": 1e-2 if cls.decoupled else 0.0, "amsgrad": False, "maximize": False}

    @classmethod
    def _to_hyper(cls, group: Mapping[str, Any]) -> Any:
        h = _core.AdamHyper()
        h.lr = real("lr", group["lr"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        h.beta1 = real("beta1", betas[0])
        h.beta2 = real("beta2", betas[1])
        h.eps = real("eps", group["eps"])
        h.weight_decay = real("weight_decay", group["weight_decay"])
        h.amsgrad = flag("amsgrad", group["amsgrad"])
        h.maximize = flag("maximize", group["maximize"])
        h.decoupled = cls.decoupled
        err = h.check()
        if err:
            raise ValueError(err)
        return h


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019) with ``torch.optim.AdamW`` semantics, in place.

    As :class:`Adam`, except that weight decay is decoupled from the gradient: the param
    is first scaled by ``1 - lr * weight_decay`` (default weight_decay 1e-2).
    """

    decoupled = True
