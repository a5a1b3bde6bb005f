"""SGD with momentum, dampening, Nesterov momentum and weight decay."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .optimizer import Optimizer


MOMENTUM_FORMS = ("torch", "sutskever")


class SGD(Optimizer):
    """Stochastic gradient descent, in place, with momentum in one of two forms.

    Per element, with ``g`` the grad (negated when ``maximize``)::

        g = g + weight_decay * p

    ``momentum_form="torch"`` (the default; ``torch.optim.SGD``): the buffer accumulates
    grads and lr scales it when it is applied::

        b = g                                   on the first momentum step
        b = momentum * b + (1 - dampening) * g  after it
        g = g + momentum * b if nesterov else b   (when momentum != 0)
        p = p - lr * g

    ``momentum_form="sutskever"`` (Sutskever et al., 2013; Keras): the buffer is a velocity
    and lr scales each grad as it enters it::

        v = -lr * g                             on the first momentum step
        v = momentum * v - lr * g               after it
        p = p + momentum * v - lr * g if nesterov else p + v

    While lr is constant the two are the same trajectory (v = -lr * b). They differ when lr
    changes: torch's form rescales all the accumulated momentum at once, the Sutskever form
    lets the new lr enter gradually, with the grads that follow.
    The buffer holds b or v accordingly: switching the form mid-run does not convert it.

    Args:
        lr: learning rate (>= 0; default 1e-3).
        momentum: momentum factor (>= 0; default 0, no momentum buffer).
        dampening: dampening of the momentum (in [0, 1]; default 0).
        weight_decay: L2 penalty (>= 0; default 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0).
        maximize: ascend the objective instead of descending it.
        momentum_form: ``"torch"`` (default) or ``"sutskever"`` (which has no dampening).

    State per param: ``momentum_buffer`` (float32) when momentum != 0.
    Bytes moved per fp32 param and step: 12 (read p, g; write p); 20 with momentum.
    """

    rule = "sgd"
    hyper_defaults = {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                      "nesterov": False, "maximize": False, "momentum_form": "torch"}
    custom_hypers = ("momentum_form",)
    optional_state = {"momentum_buffer": "momentum != 0"}
    in_torch = True
    functional_required = ("lr",)
    functional_note = ("``step`` counts the momentum buffers' updates, this one included: at ``step=1`` they\n"
                       "    are set to the gradient (torch form) or to -lr times it (Sutskever form), whatever\n"
                       "    they held.")
    bench_hypers = {"lr": 1e-3, "momentum": 0.9}
    doc_rows = (
        ('',
         ('torch form: `b = mu*b + (1-dampening)*g` (`b = g` at first), `p -= lr*b` (nesterov: `p -= lr*(g + mu*b)`); '
          'L2'),
         '12; 20 with momentum'),
        ('`SGD(momentum_form="sutskever")`',
         ('`v = mu*v - lr*g` (`v = -lr*g` at first), `p += v` (nesterov: `p += mu*v - lr*g`); '
          'no dampening; L2; the buffer holds v'),
         '20'),
    )

    @classmethod
    def _to_hyper(cls, group: Mapping[str, Any]) -> Any:
        form = group["momentum_form"]
        if not isinstance(form, str):
            raise TypeError(f"momentum_form must be a str, got {form!r}")
        if form not in MOMENTUM_FORMS:
            raise ValueError(f"momentum_form must be one of {', '.join(map(repr, MOMENTUM_FORMS))}, got {form!r}")
        return super()._to_hyper(group, sutskever=form == "sutskever")

    def __init__(self, params, grads=None, *, master_weights: bool = False, **hypers: Any):
        self._momentum_steps: dict[int, int] = {}  # updates of each group's buffers so far
        super().__init__(params, grads, master_weights=master_weights, **hypers)

    def _state_created(self, group: int) -> None:
        self._momentum_steps[group] = 0

    def _rule_steps(self) -> list[int]:
        # The rule's step is the buffer's update count: 1 sets the buffer to the gradient.
        return [max(self._momentum_steps.get(j, 0) + (1 if h.num_state() else 0), 1) for j, h in enumerate(self._hypers)]

    def _count_step(self) -> None:
        for j, h in enumerate(self._hypers):
            self._momentum_steps[j] = self._momentum_steps.get(j, 0) + (1 if h.num_state() else 0)

    def _saved_state(self, i: int) -> dict[str, np.ndarray]:
        # Like torch: no momentum_buffer until the first momentum step has filled it.
        return self._state[i] if self._momentum_steps.get(self._group_of[i], 0) > 0 else {}

    @classmethod
    def _required_state(cls, hyper: Any, step: int, shape: Any) -> tuple[str, ...]:
        return ()  # like torch: a checkpoint taken before any momentum step has no buffer

    def _check_loaded(self, group: int, arrays: list[dict[str, np.ndarray]]) -> None:
        has = {"momentum_buffer" in a for a in arrays}
        if len(has) > 1:
            raise ValueError(f"param group {group}: state_dict has momentum buffers for some params only")

    def _loaded(self, arrays: list[dict[str, np.ndarray]]) -> None:
        for j in range(len(self.param_groups)):
            has = [("momentum_buffer" in arrays[i]) for i, g in enumerate(self._group_of) if g == j]
            self._momentum_steps[j] = 1 if has and all(has) else 0
