"""Sophia."""

from __future__ import annotations

from typing import Any, Sequence

from .ema import _EmaStep
from .optimizer import Optimizer
from .utility import naming


class Sophia(Optimizer):
    """Sophia (Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for
    Language Model Pre-training", Algorithm 3), in place.

    Per element, with ``g`` the grad (negated when ``maximize``) and ``h`` the average of the
    diagonal Hessian estimates handed to :meth:`update_hessian`::

        m = beta1 * m + (1 - beta1) * g
        p = p * (1 - lr * weight_decay)
        p = p - lr * clip(m / max(rho * h, eps), 1)          clip(z, 1) = max(min(z, 1), -1)

    and every k steps (the paper: k = 10), :meth:`update_hessian` with the estimates ``est``::

        h = beta2 * h + (1 - beta2) * est

    ``h`` starts at 0. The estimate is the user's (computed by their framework, e.g. with
    :func:`fastopt.torch.gauss_newton_bartlett` or :func:`fastopt.torch.hutchinson`):
    Gauss-Newton-Bartlett ``B * g_hat * g_hat`` (``g_hat`` the grad of the mean loss on labels
    sampled from the model's own output distribution, B the batch size: the official SophiaG's
    ``bs`` is folded into the estimate here, so ``rho`` is the paper's gamma), or Hutchinson's
    ``u * (H u)`` (u ~ N(0, I)). As the paper writes it, ``max(rho * h, eps)``: a negative
    estimate (Hutchinson's may be) moves the param by lr in the direction of ``m``.

    Args:
        lr: learning rate (>= 0; default 1e-4).
        betas: (beta1, beta2), each in [0, 1) (default (0.965, 0.99)): beta1 of the grads'
            average, beta2 of the Hessian estimates'.
        rho: the clipping scale gamma (>= 0; default 0.04).
        eps: the denominator's floor (> 0; default 1e-15).
        weight_decay: decoupled weight decay (>= 0; default 0.1).
        maximize: ascend the objective instead of descending it.

    State per param (float32, or bfloat16; not 8-bit: the Hessian average is updated by a
    pass of its own): ``exp_avg`` (m), ``hessian`` (h).
    Bytes moved per fp32 param and step: 24 (read p, g, m, h; write p, m); per
    :meth:`update_hessian`: 16 (the estimates' finiteness pass 4; read h, the estimate; write h).
    """

    rule = "sophia"
    hyper_defaults = {"lr": 1e-4, "betas": (0.965, 0.99), "rho": 0.04, "eps": 1e-15, "weight_decay": 0.1,
                      "maximize": False}
    eight_bit_state = False
    step_dependent = False
    functional_note = ("``hessians`` are the caller's: every k steps fold the estimates in with "
                       "``fastopt.ParamEMA(estimates, hessians, decay=beta2, first_copies=False).update()`` "
                       "(bind it once: h = beta2 * h + (1 - beta2) * estimate).")
    bench_hypers = {"lr": 1e-4}
    doc_rows = (
        ('`Sophia` (Liu et al. 2023)',
         ('`m = b1*m + (1-b1)g`, `p = p*(1 - lr*wd) - lr*clip(m / max(rho*h, eps), 1)`; '
          '`h = b2*h + (1-b2)*est` every k steps (`update_hessian`)'),
         '24'),
    )

    def update_hessian(self, estimates: Sequence[Any], stream: Any = None) -> Any:
        """``h = beta2 * h + (1 - beta2) * estimate`` for every param (its group's beta2), in
        place, in one fused pass (fastopt's EMA rule over the ``hessian`` arrays); not a step:
        the step counts do not change. An estimate holding an inf or NaN skips the whole update
        (h unchanged; the estimates' norm pass decides, as ``skip_nonfinite`` skips a step):
        returns whether it was skipped (on CUDA a 0-d bool array on the device, never waited for).

        ``estimates``: the diagonal Hessian estimates, one per param in order (arrays shaped like
        the params, float32, float16 or bfloat16, on their device), only read. Passing the same
        arrays every time binds them once. With ``state_precision="bfloat16_stochastic"`` the
        averages round stochastically, with this optimizer's seed and step count.

        Raises ValueError (a count that differs from the params'), :class:`fastopt.TensorError`
        (an estimate fastopt cannot take, named ``estimate i``); nothing is written then."""
        estimates = list(estimates)
        if len(estimates) != len(self._params):
            raise ValueError(f"{type(self).__name__}.update_hessian: got {len(estimates)} estimates for "
                             f"{len(self._params)} params")
        if self._stale:
            self._refresh()
        hessians = [s["hessian"] for s in self._state]
        bound = getattr(self, "_hessian_ema", None)
        if bound is None or not all(a is b for a, b in zip(bound._params, hessians)):
            bound = self._hessian_ema = self._bind_hessian_ema(hessians, estimates)
        elif not all(a is b for a, b in zip(bound._grads, estimates)):
            with naming("hessian", "estimate"):
                bound._take_grads(estimates, stream)
        for group, mine in zip(bound.param_groups, self.param_groups):
            group["decay"] = mine["betas"][1]
        if bound._seed or any(s.state_precision == "bfloat16_stochastic" for s in self._storage):
            bound._start_at(self.steps)  # (stochastic rounding draws the bits of this step)
        return bound.step(stream=stream).skipped

    def _bind_hessian_ema(self, hessians: list, estimates: list) -> Optimizer:
        groups, at = [], 0
        for j, n in enumerate(self._group_sizes):
            stochastic = self._storage[j].state_precision == "bfloat16_stochastic"
            groups.append({"params": hessians[at:at + n], "grads": estimates[at:at + n],
                           "decay": self.param_groups[j]["betas"][1],
                           "master_weights": "stochastic" if stochastic else False})
            at += n
        random = any(g["master_weights"] for g in groups)
        with naming("hessian", "estimate"):
            return _EmaStep(groups, first_copies=False, seed=self._seed if random else 0, skip_nonfinite=True)
