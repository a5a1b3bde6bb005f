"""RMSprop."""

from __future__ import annotations

from .optimizer import Optimizer


class RMSprop(Optimizer):
    """RMSprop (Hinton, 2012; centered: Graves, 2013) with ``torch.optim.RMSprop``
    semantics, in place.

    Per element, with ``g`` the grad (negated when ``maximize``)::

        g = g + weight_decay * p
        v = alpha * v + (1 - alpha) * g * g
        a = a + (1 - alpha) * (g - a)            (centered)
        avg = sqrt(v - a * a) + eps              (centered; else sqrt(v) + eps)
        b = momentum * b + g / avg; p = p - lr * b    (momentum > 0)
        p = p - lr * g / avg                          (momentum = 0)

    Args:
        lr: learning rate (>= 0; default 1e-2).
        alpha: smoothing constant of the averages (in [0, 1]; default 0.99).
        eps: added to the denominator, outside the square root (>= 0; default 1e-8).
        weight_decay: L2 penalty (>= 0; default 0).
        momentum: momentum factor (>= 0; default 0, no momentum buffer).
        centered: divide by the estimated standard deviation rather than the RMS.
        maximize: ascend the objective instead of descending it.

    State per param (float32): ``square_avg`` (v); ``momentum_buffer`` (b) when
    momentum > 0; ``grad_avg`` (a) when centered. Streams are bound as a prefix of
    (square_avg, momentum_buffer, grad_avg), so a centered RMSprop without momentum also
    holds a momentum_buffer, left untouched at zero.
    Bytes moved per fp32 param and step: 20; 28 with momentum; 36 when centered (with or
    without momentum).
    """

    rule = "rmsprop"
    hyper_defaults = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
                      "centered": False, "maximize": False}
    optional_state = {"momentum_buffer": "momentum > 0 or centered", "grad_avg": "centered"}
    in_torch = True
    step_dependent = False
    functional_note = ("State is bound as a prefix of the state lists: centered without momentum leaves\n"
                       "    ``momentum_buffers`` untouched.")
    bench_hypers = {"lr": 1e-3}
    doc_rows = (
        ('',
         ('`v = alpha*v + (1-alpha)g²`; '
          'centered: `a += (1-alpha)(g-a)`, `avg = sqrt(v - a²) + eps` (else `sqrt(v) + eps`); '
          'momentum: `b = mu*b + g/avg`, `p -= lr*b` (else `p -= lr*g/avg`); L2'),
         '20; 28 momentum; 36 centered'),
    )
