"""Adagrad."""

from __future__ import annotations

from .optimizer import Optimizer


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011) with ``torch.optim.Adagrad`` semantics, in place.

    Per element at step t (1-based), with ``g`` the grad (negated when ``maximize``)::

        g = g + weight_decay * p
        sum = sum + g * g
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)

    Args:
        lr: learning rate (>= 0; default 1e-2).
        lr_decay: learning-rate decay per step (>= 0; default 0).
        weight_decay: L2 penalty (>= 0; default 0).
        initial_accumulator_value: the value ``sum`` starts at (>= 0; default 0). It is
            per param group here (torch applies the constructor's value to every group), and
            only fills arrays when they are created: changing it later does not touch them.
        eps: added to the denominator, outside the square root (>= 0; default 1e-10).
        maximize: ascend the objective instead of descending it.

    State per param (float32): ``sum``.
    Bytes moved per fp32 param and step: 20 (read p, g, sum; write p, sum).
    """

    rule = "adagrad"
    hyper_defaults = {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0,
                      "eps": 1e-10, "maximize": False}
    in_torch = True
    eight_bit_state = False
    functional_state_args = {"sum": "state_sums"}
    functional_excluded = ("initial_accumulator_value",)
    functional_note = "``state_sums`` start at the initial accumulator value, which the caller fills in."
    bench_hypers = {"lr": 1e-2}
    doc_rows = (
        ('',
         ('`sum += g²`, `p -= lr/(1+(t-1)*lr_decay) * g / (sqrt(sum) + eps)`; L2; '
          '`sum` starts at `initial_accumulator_value`'),
         '20'),
    )

    def _initial_value(self, name: str, group: int) -> float:
        return float(self.param_groups[group]["initial_accumulator_value"])
