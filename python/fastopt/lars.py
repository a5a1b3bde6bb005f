"""LARS."""

from __future__ import annotations

from .optimizer import Optimizer


class LARS(Optimizer):
    """LARS (You, Gitman & Ginsburg, 2017, "Large Batch Training of Convolutional Networks"),
    in place: SGD with momentum whose lr is scaled per tensor by a trust ratio.

    Per tensor, with ``g`` its grad (negated when ``maximize``) and L2 norms over the tensor::

        local = trust_coefficient * ||p|| / (||g|| + weight_decay * ||p|| + eps)
                (1 where ||p|| or the denominator is 0)
        v = momentum * v + lr * local * (g + weight_decay * p)
        p = p - v

    With ``exclude_1d``, tensors of at most one dimension (biases, norm scales) are updated as
    plain SGD with momentum: no trust ratio and no weight decay (``v = momentum * v + lr * g``).

    Args:
        lr: global learning rate (>= 0; default 1e-3).
        momentum: momentum factor (>= 0; default 0.9; 0 keeps no buffer).
        weight_decay: L2 penalty inside the trust ratio and the update (>= 0; default 0).
        trust_coefficient: eta of the paper (>= 0; default 1e-3).
        eps: added to the ratio's denominator (>= 0; default 1e-8).
        exclude_1d: exempt tensors of at most one dimension, see above (default False).
        maximize: ascend the objective instead of descending it.

    Two passes per step: the per-tensor norms of p and g (deterministic, fastopt/reduce.h),
    then the update. State per param (float32): ``momentum_buffer`` when momentum != 0.
    Bytes moved per fp32 param and step: 28 (norm pass: read p, g = 8; update: read p, g, v,
    write p, v = 20).
    """

    rule = "lars"
    hyper_defaults = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0, "trust_coefficient": 1e-3, "eps": 1e-8,
                      "exclude_1d": False, "maximize": False}
    optional_state = {"momentum_buffer": "momentum != 0"}
    step_dependent = False
    functional_note = "The norm pass, then the update."
    bench_hypers = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}
    doc_rows = (
        ('`LARS` (You et al. 2017)',
         ('`local = eta*‖p‖/(‖g‖ + wd*‖p‖ + eps)` (1 if ‖p‖ or the denominator is 0), '
          '`v = mu*v + lr*local*(g + wd*p)`, `p -= v`; '
          '`exclude_1d`: 1-D tensors take plain SGD momentum (no ratio, no decay)'),
         '28 (norm pass 8 + update 20)'),
    )
    extra_pass = ("norm pass", ("p", "grad"))
