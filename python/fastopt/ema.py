"""A fused exponential moving average of params (the engine's "ema" rule, C++
``rules/ema.h``): one pass over every tensor per update, bound once, on the params' engine."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ._arrays import assign, copy, copy_into, master_copy, to_host
from ._core import MemoryMoved
from .optimizer import Optimizer
from .utility import bind_rule


class _EmaStep(Optimizer):
    """The rule over (the averages as its params, the model's params as its grads)."""

    rule = "ema"
    hyper_defaults = {"decay": 0.9999, "min_decay": 0.0, "update_after_step": 0, "warmup": False,
                      "warmup_gamma": 1.0, "warmup_power": 2.0 / 3.0, "first_copies": True}


class ParamEMA:
    """Exponential moving average of params (EMA weights for evaluation), with timm's
    ``ModelEmaV3`` semantics, updated in place in one fused pass over every tensor.

    At the t-th :meth:`update` (1-based), per element, with ``e`` the average and ``p`` the
    param::

        e = decay_t * e + (1 - decay_t) * p

    where ``decay_t`` is timm's ``ModelEmaV3.get_decay(t)``: 0 while ``t <= update_after_step + 1``
    (the average is then a copy of the param), then ``decay``, or with ``warmup``
    ``1 - (1 + s / warmup_gamma) ** -warmup_power`` (``s = t - update_after_step - 1``)
    clamped to ``[min_decay, decay]``. Computed in float32 (the decay in double, rounded once).

    Args:
        params: the model's params: arrays of float32, float16 or bfloat16 (NumPy, PyTorch,
            CuPy, any DLPack tensor; all on one device), only read. With PyTorch, add the
            floating-point buffers (BatchNorm's running statistics) to average them too.
        averages: arrays shaped like the params that hold the averages, updated in place
            (float32 for half-precision params: bf16 params with fp32 averages); None
            (default): fastopt allocates them on the params' device, with their library, as
            exact float32 copies of the params.
        decay: the decay once warmed up, in [0, 1] (default 0.9999).
        min_decay: the least decay during warmup, in [0, 1] (default 0).
        update_after_step: updates that only copy the params, an integer >= 0 (default 0: the
            first update copies them).
        warmup: warm the decay up as above (default False: ``decay`` from the start).
        warmup_gamma: > 0 (default 1); warmup_power: >= 0 (default 2/3; timm's values: the decay
            reaches 0.999 at about 31.6k updates and 0.9999 at 1M).
        first_copies: True (default): the schedule above (timm's ``update(model, step=t)``);
            False: ``decay`` from the first update, which then averages into the initial
            averages (timm's ``update(model)`` without a step).

    Bytes moved per param and update: 4 + 4 + (param's bytes): the average read and written, the
    param read (12 for fp32 params, 10 for bf16).

    Raises:
        TypeError, ValueError: a hyperparameter out of range; :class:`fastopt.TensorError` for an
            array fastopt cannot take (a bad dtype, shapes that differ, arrays on several
            devices), naming it; nothing is written then.
    """

    def __init__(self, params: Sequence[Any], averages: Sequence[Any] | None = None, *, decay: float = 0.9999,
                 min_decay: float = 0.0, update_after_step: int = 0, warmup: bool = False, warmup_gamma: float = 1.0,
                 warmup_power: float = 2.0 / 3.0, first_copies: bool = True):
        params = list(params)
        hypers = {"decay": decay, "min_decay": min_decay, "update_after_step": update_after_step, "warmup": warmup,
                  "warmup_gamma": warmup_gamma, "warmup_power": warmup_power, "first_copies": first_copies}
        _EmaStep._to_hyper({**_EmaStep.hyper_defaults, **hypers})  # (bad hyperparameters: before any allocation)
        if averages is None:
            averages = [master_copy(p, f"param {i}") for i, p in enumerate(params)]
        self.averages = list(averages)
        self.params = params
        self._step = bind_rule(_EmaStep, self.averages, self.params, "average", "param", **hypers)
        self._stored: list[Any] | None = None

    def update(self, stream: Any = None) -> None:
        """One update of every average from its param, in place (on CUDA: enqueued on
        ``stream``, default the params' library's current stream, never waiting for the GPU).
        RuntimeError when a param's memory moved (``model.to(...)``, ``p.data = ...``): build a
        ParamEMA over the params as they are now (``load_state_dict`` carries the averages over).
        A param replaced by a new tensor (a module's ``load_state_dict(assign=True)``) is not
        seen: the old one is averaged; build the ParamEMA after such a load."""
        try:
            self._step.step(stream=stream)
        except MemoryMoved as e:
            raise RuntimeError(f"ParamEMA.update: a param's memory moved since the ParamEMA was built "
                               f"({str(e).split(':')[0].replace('grad', 'param')}): build a ParamEMA over the "
                               "params as they are now and load this one's state_dict into it") from None

    @property
    def num_updates(self) -> int:
        """The updates taken (t of the last one)."""
        return self._step.steps[0] if self._step.steps else 0

    @property
    def decay(self) -> float:
        return self._step.param_groups[0]["decay"]

    def copy_to(self, params: Sequence[Any] | None = None) -> None:
        """Writes the averages into ``params`` (default: the params averaged), rounded to their
        dtype (to nearest even)."""
        targets = self.params if params is None else list(params)
        if len(targets) != len(self.averages):
            raise ValueError(f"got {len(targets)} params for {len(self.averages)} averages")
        for i, (dst, src) in enumerate(zip(targets, self.averages)):  # (all checked before any is written)
            if tuple(dst.shape) != tuple(src.shape):
                raise ValueError(f"param {i}: shape {tuple(dst.shape)} differs from average {i}'s {tuple(src.shape)}")
        for dst, src in zip(targets, self.averages):
            copy_into(dst, src)

    def store(self) -> None:
        """Keeps a copy of the params (exact, their dtype) for :meth:`restore`; RuntimeError when
        a copy is already kept (average_parameters() inside another)."""
        if self._stored is not None:
            raise RuntimeError("ParamEMA.store: params are stored already (restore() them first)")
        self._stored = [copy(p) for p in self.params]

    def restore(self) -> None:
        """Writes the params kept by :meth:`store` back (exactly); RuntimeError without one."""
        if self._stored is None:
            raise RuntimeError("ParamEMA.restore: nothing stored (call store() first)")
        for dst, src in zip(self.params, self._stored):
            copy_into(dst, src)
        self._stored = None

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """``with ema.average_parameters(): evaluate(model)``: the params hold the averages inside,
        their own values again after (also when the block raises)."""
        self.store()
        self.copy_to()
        try:
            yield
        finally:
            self.restore()

    def state_dict(self) -> dict[str, Any]:
        """``{"num_updates", "averages", "hypers"}``: the averages are copies (of the averages'
        library, on their device: ``torch.save``/``torch.load`` take those of torch tensors)."""
        return {"num_updates": self.num_updates, "averages": [copy(a) for a in self.averages],
                "hypers": {k: self._step.param_groups[0][k] for k in _EmaStep.hyper_defaults}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Loads a :meth:`state_dict` (same number and shapes of averages): the averages, the
        update count and the hyperparameters. Checked before anything is written."""
        averages = [np.asarray(to_host(a)) for a in state["averages"]]
        if len(averages) != len(self.averages):
            raise ValueError(f"the state holds {len(averages)} averages, this ParamEMA {len(self.averages)}")
        for i, (a, mine) in enumerate(zip(averages, self.averages)):
            host = to_host(mine)
            if a.shape != host.shape or a.dtype != host.dtype:
                raise ValueError(f"average {i}: the state's is {a.dtype} {a.shape}, this one's {host.dtype} {host.shape}")
        hypers = dict(state["hypers"])
        unknown = set(hypers) - set(_EmaStep.hyper_defaults)
        if unknown:
            raise ValueError(f"ParamEMA.load_state_dict: unknown hyperparameters {sorted(unknown)}")
        _EmaStep._to_hyper({**_EmaStep.hyper_defaults, **hypers})
        count = state["num_updates"]
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"num_updates must be an integer >= 0, got {count!r}")
        for a, mine in zip(averages, self.averages):
            assign(mine, a)
        for k, v in hypers.items():
            self._step.param_groups[0][k] = v
        self._step._start_at([count])
