"""Schedule-Free AdamW and SGD, and their switch between the training and the eval point."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from .optimizer import Optimizer, StepResult


class _ScheduleFree(Optimizer):
    """What the Schedule-Free optimizers share: the rule, and ``train()`` / ``eval()``."""

    rule = "schedule_free"
    eight_bit_state = False  # z is the weights' own sequence (the rule's no_8bit_state)
    functional_note = ("``step`` counts the updates, this one included; at ``step=1`` z is set to the params, whatever\n"
                       "    it held. The eval point: ``<form>.eval(params, zs, step=t, ...)`` (and ``.train``), or\n"
                       "    ``bound.eval(step=t)`` of ``<form>.bind(...)``: see :mod:`fastopt.functional`.")

    def __init__(self, *args: Any, **kwargs: Any):
        self._eval_mode = False   # the params hold x (eval()), not y
        self._switcher: Any = None  # the mode switch over the bound params and z, made on first use
        super().__init__(*args, **kwargs)

    @property
    def training(self) -> bool:
        """Whether the params hold the training point y (True: after construction and train()) or
        the eval point x (False: after eval())."""
        return not self._eval_mode

    def train(self) -> None:
        """Moves every param back from the eval point x to the training point y, in place:
        ``y = x + (1 - beta1) * (z - x)`` on its fp32 value (its master where it has one), stored
        as a step stores it. Nothing happens in train mode. Call it with ``model.train()``."""
        self._alone("train", self._switch, False)

    def eval(self) -> None:
        """Moves every param to the eval point x, in place: ``x = y + (1 - 1/beta1) * (z - y)``
        (the average of the z sequence), on its fp32 value (its master where it has one), stored
        as a step stores it (rounded to nearest, into its remainder or Kahan compensation, or
        stochastically with the optimizer's seed). One pass over params and z, not a step: the
        grads are not read, the state and the step counts stay. Nothing happens in eval mode, or
        to a group that has not stepped (x = y = z then). Call it with ``model.eval()``, before
        evaluating or saving the model; :meth:`step` refuses to run until :meth:`train`."""
        self._alone("eval", self._switch, True)

    def _switch(self, to_eval: bool) -> None:
        if self._eval_mode == to_eval:
            return
        if self._stale:
            self._refresh()
        steps = self._exact_steps()
        if any(steps):
            if self._switcher is None:
                keeps = no_state_keeps(self._kept)
                self._switcher = self._engine.bind_switch(self.rule, self._params, [s["z"] for s in self._state],
                                                          keeps, self._group_sizes)
            self._engine.switch(self._switcher, self._hypers, steps, to_eval, self._seed, None,
                                self._params[0] if self._params else None)
        self._eval_mode = to_eval

    def _bind(self, need: list[int]) -> None:
        super()._bind(need)
        self._switcher = None  # (new state arrays: bound again at the next switch)

    def _step(self, *args: Any, **kwargs: Any) -> StepResult:
        if self._eval_mode:
            raise RuntimeError(f"{type(self).__name__}.step: the params hold the eval point x (eval() was called); "
                               "call train() before stepping")
        return super()._step(*args, **kwargs)

    def _state_dict(self) -> dict[str, Any]:
        return {**super()._state_dict(), "train_mode": not self._eval_mode}

    def _load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        mode = train_mode_of(state_dict.get("train_mode", True), "state_dict's train_mode")
        super()._load_state_dict(state_dict)
        self._eval_mode = not mode


def train_mode_of(value: Any, name: str) -> bool:
    """A checkpoint's train mode as a bool (ValueError naming it ``name`` otherwise)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True (the params hold y) or False (they hold x), got {value!r}")
    return value


def no_state_keeps(keeps: Any) -> Any:
    """The arrays kept beside the params (masters, remainders, compensations, stochastic
    rounding) without the state's (absmax arrays, its rounding): a mode switch binds no state."""
    n = len(keeps.masters)
    return dataclasses.replace(keeps, absmaxes=[[] for _ in range(n)], state_stochastic=[False] * n)


_SOURCE = ('Defazio et al. 2024, "The Road Less Scheduled", arXiv 2405.15682; the authors\' '
           'facebookresearch/schedule_free, 1.3+')

_WEIGHTS = """The average's weights: ``c_t = w_t / (w_1 + ... + w_t)`` with ``w_i = i^r * lr_i^weight_lr_power``
    and ``lr_i = lr * min(1, i / warmup_steps)``, computed from the step count alone (in O(1):
    the sum has a closed form, exact to 2e-12) with the peak lr taken as constant. They match the
    reference's running ``lr_max`` while lr never rises above a value it had (a constant lr, or one
    lowered later): raising lr (by hand or with a schedule) scales the later steps but not their
    weights here, where the reference would weigh them more; an lr of 0 gives ``c_t = 0``."""

_MODES = """Train and eval: the params hold y, where grads are taken. Evaluate (and save a model to
    evaluate) at x: call :meth:`eval` where you call ``model.eval()`` and :meth:`train` where
    you call ``model.train()``; :meth:`step` raises RuntimeError in eval mode. ``state_dict()``
    carries the mode (``"train_mode"``) and ``load_state_dict`` takes it: load the model saved
    with it. A ``train()`` after ``eval()`` gives y back within a few float32 roundings of the
    values involved (|y' - y| <= 2^-21 (|y| + |z|) / beta1), not bit for bit: the pass rounds."""


class AdamWScheduleFree(_ScheduleFree):
    __doc__ = f"""Schedule-Free AdamW ({_SOURCE}), in place.

    Per element at step t (1-based), with ``g`` the grad (negated when ``maximize``), y the
    param and z, v its state (z set to y at the first step)::

        lr_t = lr * min(1, t / warmup_steps)                      (lr without warmup)
        v = beta2 * v + (1 - beta2) * g * g
        u = g / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * y
        y = y + c_t * (z - y) + lr_t * (beta1 * (1 - c_t) - 1) * u
        z = z - lr_t * u

    {_WEIGHTS}

    {_MODES}

    Args:
        lr: the peak learning rate (>= 0; default 0.0025).
        betas: (beta1, beta2): beta1 the interpolation between z and x, in (0, 1); beta2 in [0, 1)
            (default (0.9, 0.999)).
        eps: added to the denominator (>= 0; default 1e-8).
        weight_decay: weight decay at y, in the update (>= 0; default 0).
        warmup_steps: steps of linear lr warmup (a whole number >= 0; default 0).
        r: the power of t in the weights (>= 0; default 0).
        weight_lr_power: the power of lr in the weights (>= 0, r + weight_lr_power <= 32; default 2).
        maximize: ascend the objective instead of descending it.

    State per param: ``z`` and ``exp_avg_sq`` (v), float32 or bfloat16 (``state_precision``; no
    8-bit state: z is the weights' own sequence). Not the reference's ``inner_momentum``.
    Bytes moved per fp32 param and step: 28 (read y, g, z, v; write y, z, v); train()/eval(): 12.
    """

    hyper_defaults = {"lr": 0.0025, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "warmup_steps": 0,
                      "r": 0.0, "weight_lr_power": 2.0, "maximize": False}
    fixed_fields = {"adaptive": True}
    bench_hypers = {"lr": 0.0025, "weight_decay": 0.01, "warmup_steps": 100}
    doc_rows = (
        ('`AdamWScheduleFree` (Defazio et al. 2024)',
         ('`v = b2*v + (1-b2)g²`, `u = g/(sqrt(v/(1-b2^t)) + eps) + wd*y`, `y = y + c_t(z-y) + lr_t(b1(1-c_t) - 1)u`, '
          '`z -= lr_t*u`; `lr_t` warmed up, `c_t = w_t/Σw_i`, `w_i = i^r lr_i^p`; `eval()`: '
          '`x = y + (1-1/b1)(z-y)`, `train()`: back'),
         '28; 12 per switch'),
    )


class SGDScheduleFree(_ScheduleFree):
    __doc__ = f"""Schedule-Free SGD ({_SOURCE}), in place.

    Per element at step t (1-based), with ``g`` the grad (negated when ``maximize``), y the
    param and z its state (set to y at the first step)::

        lr_t = lr * min(1, t / warmup_steps)                      (lr without warmup)
        u = g + weight_decay * y
        y = y + c_t * (z - y) + lr_t * (momentum * (1 - c_t) - 1) * u
        z = z - lr_t * u

    {_WEIGHTS}

    {_MODES} (Here beta1 is ``momentum``.)

    Args:
        lr: the peak learning rate (>= 0; default 1.0).
        momentum: the interpolation between z and x, in (0, 1) (default 0.9).
        weight_decay: weight decay at y, in the update (>= 0; default 0).
        warmup_steps: steps of linear lr warmup (a whole number >= 0; default 0).
        r: the power of t in the weights (>= 0; default 0).
        weight_lr_power: the power of lr in the weights (>= 0, r + weight_lr_power <= 32; default 2).
        maximize: ascend the objective instead of descending it.

    State per param: ``z``, float32 or bfloat16 (``state_precision``; no 8-bit state).
    Bytes moved per fp32 param and step: 20 (read y, g, z; write y, z); train()/eval(): 12.
    """

    state_names = ("z",)  # the rule's first state array alone: SGD keeps no second moment
    hyper_defaults = {"lr": 1.0, "momentum": 0.9, "weight_decay": 0.0, "warmup_steps": 0, "r": 0.0,
                      "weight_lr_power": 2.0, "maximize": False}
    hyper_fields = {"momentum": "beta1"}
    fixed_fields = {"adaptive": False, "beta2": 0.0, "eps": 0.0}  # (AdamW's second moment: unused)
    bench_hypers = {"lr": 1.0, "momentum": 0.9, "warmup_steps": 100}
    doc_rows = (
        ('`SGDScheduleFree` (Defazio et al. 2024)',
         '`u = g + wd*y`, then y and z as AdamWScheduleFree with `b1 = momentum`',
         '20; 12 per switch'),
    )
