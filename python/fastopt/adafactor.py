"""Adafactor."""

from __future__ import annotations

from typing import Any, Mapping

from .hyperparams import real
from .optimizer import Optimizer


class Adafactor(Optimizer):
    """Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost") with ``torch.optim.Adafactor`` semantics (torch >= 2.5), in place.

    At step t, per tensor, with ``g`` the grad (negated when ``maximize``) and RMS the root mean
    square over the tensor::

        beta2_t = 1 - t^beta2_decay
        rho = min(lr, 1 / sqrt(t));  alpha = max(eps2, RMS(p)) * rho
        p = p * (1 - lr * weight_decay)
        params of >= 2 dims, as a batch of (rows, cols) matrices (the last two dims):
            row_var = lerp(row_var, mean(g^2 over each row), 1 - beta2_t)        shape (..., rows, 1)
            col_var = lerp(col_var, mean(g^2 over each column), 1 - beta2_t)     shape (..., 1, cols)
            v = row_var * col_var / max(mean(row_var over the rows), eps1)
        params of < 2 dims:
            variance = lerp(variance, g^2, 1 - beta2_t);  v = variance          the param's shape
        u = g / sqrt(max(v, eps1^2))
        p = p - alpha / max(1, RMS(u) / d) * u

    Args:
        lr: the largest relative step size rho, and the weight decay's factor (>= 0; default 1e-2).
        beta2_decay: the decay of beta2's complement, t^beta2_decay (<= 0; default -0.8).
        eps: (eps1, eps2) (default (None, 1e-3)): eps1 (>= 0) floors the row mean and the
            second moment (squared); None: the machine epsilon of the dtype the param's value is
            kept in: float32 for float32 params and params with fp32 master weights
            (``master_weights=True`` or ``"remainder"``), else the param's own (float16 2^-10,
            bfloat16 2^-7), as torch's ``finfo(param.dtype).eps`` (torch takes the group's first
            param's; here each param's own). eps2 (>= 0) floors RMS(p) in the step size.
        d: the update clipping threshold (>= 1; default 1).
        weight_decay: decoupled weight decay, scaled by lr (>= 0; default 0).
        maximize: ascend the objective instead of descending it.
        Out of range: ValueError when set (the group keeps its old value).

    State per param: a param of >= 2 dims keeps ``row_var`` (the param's shape with its last dim
    1) and ``col_var`` (its second-to-last dim 1): 4 * (1/cols + 1/rows) bytes per param in float32
    (a 4096 x 4096 matrix: 0.002 B/param; a batch of matrices keeps a pair per matrix); a param of
    < 2 dims keeps ``variance``, its shape (4 B/param). Storage modes: every ``master_weights``;
    ``state_precision`` float32, bfloat16 and bfloat16_stochastic, but not "8bit" (TensorError at
    construction: factored state is already a few floats per matrix row and column, and 8-bit
    codes in blocks of 2048 would save nothing there).

    Passes per step (the row, column and tensor sums in the canonical orders of fastopt/reduce.h:
    the same bits on every CPU target, thread count and the GPU): for matrices, a factor pass
    sums g^2 per row and per column (read g) and a step per matrix updates row_var and col_var;
    then a first pass sums p^2 and u^2 (read p, g; vectors also update variance), and the update
    recomputes u (read p, g, write p). Bytes moved per fp32 param and step: 24 for matrices, 32
    for vectors (first pass: read p, g, variance, write variance = 16; update: read p, g,
    variance, write p = 16). A tensor of at most 131,072 elements takes its passes in one CPU
    task, from cache. Not in fastopt.distributed (ZeroOptimizer and OffloadOptimizer step flat
    pieces of params, and Adafactor's state depends on each matrix's rows and columns).
    """

    rule = "adafactor"
    hyper_defaults = {"lr": 1e-2, "beta2_decay": -0.8, "eps": (None, 1e-3), "d": 1.0, "weight_decay": 0.0,
                      "maximize": False}
    custom_hypers = ("eps",)
    in_torch = True
    eight_bit_state = False
    functional_note = ("Each param takes the state of its shape: ``row_vars[i]`` and ``col_vars[i]`` (the\n"
                       "    param's shape with its last, or second-to-last, dim 1) for a param of >= 2 dims,\n"
                       "    ``variances[i]`` (its shape) for one of < 2 dims, and None in the other lists\n"
                       "    (torch.optim.adafactor's lists); all start at zero.")
    bench_hypers = {"lr": 1e-2}
    extra_pass = ("update pass", ("p", "g", "variance"))
    doc_rows = (
        ('`Adafactor` (Shazeer & Stern 2018)',
         ('`rho = min(lr, 1/sqrt(t))`, `alpha = max(eps2, RMS(p))*rho`; matrices: `row_var`, `col_var` lerp toward '
          'the row and column means of g² by `t^beta2_decay`, `v = row_var*col_var / max(mean(row_var), eps1)`; '
          'vectors: `variance` likewise, `v = variance`; `u = g/sqrt(max(v, eps1²))`, '
          '`p = p*(1 - lr*wd) - alpha/max(1, RMS(u)/d) * u`'),
         '24 matrices (factor pass: g; pass 1: p, g; pass 2: p, g, writes p); 32 vectors (pass 1: p, g, variance, '
         'writes variance; pass 2: p, g, variance, writes p)'),
    )

    @classmethod
    def _to_hyper(cls, group: Mapping[str, Any], **fields: Any) -> Any:
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise TypeError(f"eps must be a pair (eps1, eps2), eps1 None for the param dtype's epsilon, got {eps!r}")
        eps1 = None if eps[0] is None else real("eps1", eps[0])
        return super()._to_hyper(group, eps1=0.0 if eps1 is None else eps1, eps2=real("eps2", eps[1]),
                                 eps1_from_dtype=eps1 is None, **fields)
