"""Binding: the optimizer's arrays (params, grads, fp32 masters, state) bound to one engine
group, rebound when the state streams the groups need change; on CUDA, the group's device
values (lrs, schedules, step counts), written and read on the params' current stream."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from ._arrays import device_array, fill, master_copy, state_like, to_host
from .hyperparams import Array
from .storage import absmax_blocks, absmax_name
from .schedules import Schedule


class _StateView(Mapping):
    """An optimizer's ``state``: reading param i's entry costs one param, not all of them (a
    loop over ``opt.state[i]`` stays linear in the number of params)."""

    def __init__(self, owner: "Binding"):
        self._owner = owner

    def __getitem__(self, i: int) -> dict[str, Array]:
        states = self._owner._state
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(states):
            raise KeyError(i)
        return {**states[i], **self._owner._kept_beside(int(i))}

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._owner._state)))

    def __len__(self) -> int:
        return len(self._owner._state)

    def __repr__(self) -> str:
        return repr(dict(self))

    def copy(self) -> dict[int, dict[str, Array]]:
        return dict(self)

    def __reduce__(self):  # (copy, deepcopy and pickle take a dict of the entries, as of a dict before)
        return dict, (dict(self),)


@dataclass
class Keeps:
    """How each param's fp32 value is kept beside it, by param index (None where it is not):
    fp32 master weights, uint16 remainders (the master's low halves), bfloat16 Kahan
    compensations; or whether it is rounded stochastically (see ``master_weights`` of
    :class:`~fastopt.Optimizer`). And how its state is kept, where not in float32 arrays (see
    ``state_precision``): the float32 absmax arrays of 8-bit state ([] for none), and whether
    bfloat16 state rounds stochastically."""

    masters: list
    remainders: list
    compensations: list
    stochastic: list
    absmaxes: list
    state_stochastic: list

    @classmethod
    def none(cls, n: int) -> "Keeps":
        return cls([None] * n, [None] * n, [None] * n, [False] * n, [[] for _ in range(n)], [False] * n)


class Binding:
    """The binding side of :class:`~fastopt.Optimizer` (its arrays and its engine group).
    Every array the optimizer owns is allocated here."""

    def _keeps(self) -> Keeps:
        """Per param, by its group's ``master_weights``: with True an exact fp32 copy of each
        float16/bfloat16 param; with ``"remainder"`` a zeroed uint16 remainder for each bfloat16
        param (its master is exactly the param then); with ``"kahan"`` a zeroed bfloat16
        compensation for each bfloat16 param; with ``"stochastic"`` each float16/bfloat16 param
        rounds stochastically. Float32 params keep nothing. Where the group's
        ``state_precision`` is ``"bfloat16_stochastic"`` its state rounds stochastically (the
        absmax arrays of 8-bit state are bound with the state: _bind)."""
        n = len(self._params)
        keeps = Keeps.none(n)
        stream = self._engine.stream(None, self._params[0]) if self._engine.is_cuda and n else 0
        for i, p in enumerate(self._params):
            storage = self._storage[self._group_of[i]]
            keeps.state_stochastic[i] = storage.state_precision == "bfloat16_stochastic"
            dtype = _core.describe(p, f"param {i}")[1]
            storage.check_param(dtype, f"param {i}")
            mode = storage.master_weights
            if dtype == "float32" or mode is False:
                continue
            if mode is True:
                keeps.masters[i] = self._new_master(i, stream)
            elif mode == "stochastic":
                keeps.stochastic[i] = True
            elif mode == "remainder":
                keeps.remainders[i] = self._new_kept(i, "master_remainder", "uint16")
            else:
                keeps.compensations[i] = self._new_kept(i, "kahan_compensation", "bfloat16")
        return keeps

    def _new_master(self, i: int, stream: int):
        """Param i's fp32 master weights: its exact value (written on ``stream`` on CUDA)."""
        return master_copy(self._params[i], f"param {i}", stream)

    def _new_kept(self, i: int, name: str, dtype: str):
        """A zeroed array of ``dtype`` kept beside param i (a remainder or a compensation: zero
        leaves the param's own value), ``name`` being its name in :attr:`state`."""
        return state_like(self._params[i], f"param {i}", dtype)

    def _new_state(self, i: int, name: str):
        """A fresh state array ``name`` for param i, at its initial value, in its group's
        state_precision (8-bit state: its absmax array too, in self._state[i], all zero: each
        element reads 0)."""
        storage = self._storage[self._group_of[i]]
        shape = self._layouts[i][name]
        a = state_like(self._params[i], f"param {i}", storage.state_dtype, shape)
        value = self._initial_value(name, self._group_of[i])
        if storage.quantized:
            if value != 0:  # (Adagrad alone starts elsewhere, and it keeps no 8-bit state)
                raise ValueError(f"{type(self).__name__} cannot keep 8-bit state")
            numel = int(np.prod(shape, dtype=np.int64))
            self._state[i][absmax_name(name)] = state_like(self._params[i], f"param {i}", "float32",
                                                           (absmax_blocks(numel),))
        elif value != 0:
            fill(a, value)
        return a

    def _state_created(self, group: int) -> None:
        """Called when a group's state arrays are allocated."""

    def _initial_value(self, name: str, group: int) -> float:
        """The value a fresh state array ``name`` of a param in ``group`` starts at."""
        return 0.0

    def _refresh(self) -> None:
        """Rebuilds the hyperparameter structs (cheap, per group); rebinds only when the
        state streams some group needs have changed (momentum or amsgrad switched)."""
        self._hypers = [self._hyper_at(g, s) for g, s in zip(self.param_groups, self._steps)]
        self._scheduled = [j for j, g in enumerate(self.param_groups) if isinstance(g.get("lr"), Schedule)]
        need = [h.num_state() for h in self._hypers]
        if need != self._bound_states:
            self._bind(need)
        if self._engine.is_cuda:  # schedules are evaluated on the device, from its step counts
            stream = self._cuda_stream()
            for j, g in enumerate(self.param_groups):
                lr = g.get("lr")  # (the utility rules have none)
                self._core.set_schedule(j, lr._pod.to_bytes() if isinstance(lr, Schedule) else None, stream)
                if self._capturable and lr is not None:  # the lrs live on the device: enqueue the current ones
                    self._core.set_lr(j, self._hypers[j].lr, stream)
        self._stale = False

    def _changed(self) -> None:
        """A hyperparameter changed: the next step rebuilds the structs. On CUDA the new lrs
        and schedules are enqueued now, so that a graph replayed next sees them."""
        self._stale = True
        if self._engine.is_cuda:
            self._refresh()

    def _take_grads(self, grads: list, stream: Any = None) -> None:
        """New grad tensors for the bound params, in order (torch replaced their ``.grad``):
        only those that changed are bound again, validated as at construction. On CUDA, kernels
        write them into the device table on the step's ``stream`` (default: the params'
        library's current one): captured in a graph (torch's whole-network capture:
        ``zero_grad(set_to_none=True)``, then backward and step captured), each replay writes the
        graph's grads."""
        self._engine.rebind_grads(self._core, grads, self._params[0], stream)
        self._grads = list(grads)

    def _start_at(self, steps: list[int]) -> None:
        """Sets the step counts of the groups (on CUDA, the device's too)."""
        self._steps = list(steps)
        if self._engine.is_cuda:
            self._core.set_steps(self._steps, self._cuda_stream())
            self._steps_exact = not self._captured
            self._skip_pending = False

    def _settle(self) -> None:
        """CUDA: takes the last step's skip decision where it is back on the host (it never
        waits): a skipped step did not advance the counts. Not back yet: the host's counts are
        no longer known to be exact (the device's are read, or used, from then on)."""
        if not self._skip_pending:
            return
        self._skip_pending = False
        skipped = self._core.poll_skip()
        if skipped < 0:
            self._steps_exact = False
        elif skipped:
            self._steps = [s - 1 for s in self._steps]

    def _exact_steps(self) -> list[int]:
        """The step counts, read from the device only when a step may have been skipped there
        and its decision is not back on the host."""
        self._settle()
        return list(self._steps) if self._steps_exact else self._device_steps()

    def _device_steps(self) -> list[int]:
        """A CUDA group's step counts, read from the device (waits for the current stream); the
        host's counts are exact again, unless a step was captured (its graph's replays advance
        the device's counts unseen)."""
        self._steps_exact = not self._captured
        self._skip_pending = False
        return list(self._core.read_steps(self._cuda_stream()))

    def _cuda_stream(self) -> int:
        """The params' library's current stream: device values (lrs, schedules, step counts)
        are written and read there, in order with steps and graph replays enqueued there."""
        return self._engine.stream(None, self._params[0])

    def _bind(self, need: list[int]) -> None:
        """Binds every param with the first need[group] state streams, allocating any that
        are missing. Arrays no longer needed stay in the state, unbound and untouched."""
        if self._engine.is_cuda and self._engine.capturing(self._cuda_stream()):
            raise RuntimeError(f"{type(self).__name__}: binding (after a change of amsgrad, momentum or the params) "
                               "allocates device memory and waits for its uploads, which a CUDA graph capture "
                               "cannot hold: take one step outside the capture first")
        created = set()
        for i, j in enumerate(self._group_of):
            for name in list(self._layouts[i])[: need[j]]:
                if name not in self._state[i]:
                    self._state[i][name] = self._new_state(i, name)
                    created.add(j)
        for j in sorted(created):
            self._state_created(j)
        if self._engine.is_cuda and self._bound_states is not None:
            self._steps = self._device_steps()  # the new group starts from the old one's counts
            if self._captured:  # a graph captured before may replay the old group: keep its device memory
                self._retired.append(self._core)
        names = [list(self._layouts[i])[: need[j]] for i, j in enumerate(self._group_of)]
        self._kept.absmaxes = [[self._state[i][absmax_name(n)] for n in names[i]]
                               if self._storage[self._group_of[i]].quantized else [] for i in range(len(names))]
        self._core = self._engine.bind(self.rule, self._params, self._grads, self._kept,
                                       [[self._state[i][n] for n in names[i]] for i in range(len(names))],
                                       self._group_sizes)
        self._bound_states = need
        self._core.set_seed(self._seed)
        if self._engine.is_cuda:  # the kernels count steps on the device
            self._core.set_steps(self._steps, self._cuda_stream())

    @property
    def state(self) -> Mapping[int, dict[str, Array]]:
        """Live state arrays by param index, a read-only mapping whose entry i (a dict of param
        i's arrays by name) is made when read: ``"master_param"`` for fp32 master weights,
        ``"master_remainder"`` for the uint16 low halves of a master kept as a remainder,
        ``"kahan_compensation"`` for a Kahan-compensated param's bfloat16 compensation."""
        return _StateView(self)

    def _kept_beside(self, i: int) -> dict[str, Array]:
        """The array kept beside param i for its fp32 value, by its name in :attr:`state` (none
        for a float32 param, or without master_weights)."""
        kept = {"master_param": self._masters[i], "master_remainder": self._kept.remainders[i],
                "kahan_compensation": self._kept.compensations[i]}
        return {name: a for name, a in kept.items() if a is not None}

    @property
    def master_params(self) -> list[np.ndarray | None]:
        """The fp32 master weights by param index (None where the param has none; a copy, joined
        from the param and its remainder, where the master is kept as a remainder)."""
        return [self._master_value(i) for i in range(len(self._params))]

    def _master_value(self, i: int):
        """Param i's fp32 master: the live array, a joined copy (remainder) or None."""
        if self._kept.remainders[i] is None:
            return self._masters[i]
        if not self._engine.is_cuda:
            out = state_like(self._params[i], f"param {i}")
            _core.join_master(self._params[i], self._kept.remainders[i], out)
            return out
        # (on the host: a checkpoint's copy, not the step loop)
        high, low = to_host(self._params[i]), to_host(self._kept.remainders[i])
        out = np.empty(high.shape, np.float32)
        _core.join_master(high, low, out)
        return device_array(self._params[i], out)

    @property
    def device(self) -> str:
        """Where the params live and the steps run: ``"cpu"`` or ``"cuda:N"``."""
        return f"cuda:{self._engine.device}" if self._engine.is_cuda else "cpu"
