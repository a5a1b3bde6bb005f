"""The optimizer base class: param groups, binding, stepping and checkpoints."""

from __future__ import annotations

import abc
import numbers
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from . import _core
from ._arrays import aligned_zeros, master_copy

Array = Any  # a NumPy array, or any object with __dlpack__ (a PyTorch tensor, ...)


def real(name: str, value: Any) -> float:
    """``value`` as a float, or TypeError naming the hyperparameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


class ParamGroup(dict):
    """One param group's hyperparameters, as in ``torch.optim``.

    Setting a hyperparameter validates it first: an out-of-range value raises ValueError
    (a wrong type TypeError) and leaves the group unchanged. ``params`` and ``grads`` are
    bound once and cannot be replaced.
    """

    def __init__(self, owner: "Optimizer", values: Mapping[str, Any]):
        super().__init__(values)
        self._owner = owner

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Sets several hyperparameters at once: all are validated together, then applied."""
        changes = dict(*args, **kwargs)
        for key in changes:
            if key in ("params", "grads"):
                raise KeyError(f"'{key}' of a bound optimizer cannot change; build a new optimizer")
            if key not in self._owner.defaults:
                raise KeyError(f"unknown hyperparameter '{key}' for {type(self._owner).__name__}")
        self._owner._to_hyper({**self, **changes})  # raises, leaving the group as it was
        dict.update(self, changes)
        self._owner._dirty = True

    def __ior__(self, other: Mapping[str, Any]) -> "ParamGroup":
        self.update(other)
        return self

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def _no_removal(self, *args: Any) -> Any:
        raise KeyError("param group entries cannot be removed")

    __delitem__ = pop = popitem = clear = _no_removal


class Optimizer(abc.ABC):
    """Base of fastopt's optimizers: binds params, grads and state once, steps many times.

    Args:
        params: a list of arrays (NumPy arrays, PyTorch tensors, any DLPack tensor), or a
            list of param-group dicts, each with ``"params"``, optionally ``"grads"`` and any
            hyperparameters that override the defaults for that group.
        grads: the gradient buffers, one per param in order (across groups when the groups
            carry no ``"grads"``). They are read at every step, so they must stay the same
            buffers: refill them in place (e.g. ``zero_grad(set_to_none=False)`` in PyTorch).
        master_weights: keep an fp32 master copy of every float16/bfloat16 param, owned by
            the optimizer, initialised exactly from the param; each step updates the master
            and rewrites the param from it, rounded to nearest even. float32 params need none.
    """

    rule: ClassVar[str]
    state_names: ClassVar[tuple[str, ...]]
    defaults: dict[str, Any]

    def __init__(self, params: Sequence[Array] | Sequence[Mapping[str, Any]],
                 grads: Sequence[Array] | None = None, *, master_weights: bool = False,
                 **defaults: Any):
        self.defaults = dict(type(self).default_hypers())
        for k in defaults:
            if k not in self.defaults:
                raise TypeError(f"{type(self).__name__} got an unknown hyperparameter '{k}'")
        self.defaults.update(defaults)
        self._to_hyper(self.defaults)
        raw_groups = _split_groups(params, grads)
        self.param_groups: list[ParamGroup] = []
        for j, (values, _, _) in enumerate(raw_groups):
            for k in values:
                if k not in self.defaults:
                    raise TypeError(f"param group {j}: unknown hyperparameter '{k}'")
            merged = {**self.defaults, **values}
            try:
                self._to_hyper(merged)
            except (TypeError, ValueError) as e:
                raise type(e)(f"param group {j}: {e}") from None
            self.param_groups.append(ParamGroup(self, merged))
        self._params = [p for _, ps, _ in raw_groups for p in ps]
        self._grads = [g for _, _, gs in raw_groups for g in gs]
        self._group_sizes = [len(ps) for _, ps, _ in raw_groups]
        self._group_of = [j for j, n in enumerate(self._group_sizes) for _ in range(n)]
        # Bind the user's arrays alone first: every bad input is reported before anything
        # is allocated or written.
        _core.Group(self.rule, self._params, self._grads, [None] * len(self._params),
                    [[] for _ in self._params], list(self.state_names), self._group_sizes)
        self._masters: list[np.ndarray | None] = [
            master_copy(p, f"param {i}") if master_weights and _core.describe(p, f"param {i}")[1] != "float32"
            else None
            for i, p in enumerate(self._params)]
        self._state: list[dict[str, np.ndarray]] = [{} for _ in self._params]
        self._steps = [0] * len(self.param_groups)
        self._core: Any = None
        self._dirty = True
        self._sync()

    # ---- what each optimizer defines --------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def default_hypers(cls) -> dict[str, Any]:
        """The hyperparameters and their defaults."""

    @classmethod
    @abc.abstractmethod
    def _to_hyper(cls, group: Mapping[str, Any]) -> Any:
        """The engine's hyperparameter struct for ``group``; raises on a bad value."""

    def _rule_steps(self) -> list[int]:
        """The step count the rule sees for each group at the step being taken."""
        return [s + 1 for s in self._steps]

    def _state_created(self, group: int) -> None:
        """Called when a group's state arrays are (re)allocated."""

    # ---- binding -----------------------------------------------------------------------
    def _sync(self) -> None:
        """Rebuilds the hyperparameter structs; allocates missing state and rebinds."""
        self._hypers = [self._to_hyper(g) for g in self.param_groups]
        grown = set()
        for i, j in enumerate(self._group_of):
            for name in self.state_names[: self._hypers[j].num_state()]:
                if name not in self._state[i]:
                    self._state[i][name] = aligned_zeros(tuple(_core.describe(self._params[i], "param")[0]))
                    grown.add(j)
        for j in grown:
            self._state_created(j)
        if grown or self._core is None:
            self._core = _core.Group(
                self.rule, self._params, self._grads, self._masters,
                [[s[n] for n in self.state_names if n in s] for s in self._state],
                list(self.state_names), self._group_sizes)
        self._dirty = False

    # ---- public API --------------------------------------------------------------------
    def step(self) -> None:
        """Applies one update to every param, in place (one C++ call, GIL released)."""
        if self._dirty:
            self._sync()
        self._core.step(self._hypers, self._rule_steps())
        self._steps = [s + 1 for s in self._steps]

    @property
    def lr(self) -> float:
        """The learning rate of every group (setting it sets every group's)."""
        lrs = {g["lr"] for g in self.param_groups}
        if len(lrs) != 1:
            raise ValueError("param groups have different learning rates; use param_groups[j]['lr']")
        return lrs.pop()

    @lr.setter
    def lr(self, value: float) -> None:
        for g in self.param_groups:
            self._to_hyper({**g, "lr": value})
        for g in self.param_groups:
            g["lr"] = value

    @property
    def state(self) -> dict[int, dict[str, np.ndarray]]:
        """Live state arrays by param index (``"master_param"`` for fp32 master weights)."""
        out = {}
        for i, s in enumerate(self._state):
            d = dict(s)
            if self._masters[i] is not None:
                d["master_param"] = self._masters[i]
            out[i] = d
        return out

    @property
    def master_params(self) -> list[np.ndarray | None]:
        """The fp32 master weights by param index (None where the param has none)."""
        return list(self._masters)

    @property
    def steps(self) -> list[int]:
        """Steps taken by each param group."""
        return list(self._steps)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot: copies of the state arrays, hyperparameters and step counts."""
        state: dict[int, dict[str, Any]] = {}
        for i, j in enumerate(self._group_of):
            entry: dict[str, Any] = {"step": self._steps[j]}
            entry.update({k: v.copy() for k, v in self._saved_state(i).items()})
            if self._masters[i] is not None:
                entry["master_param"] = self._masters[i].copy()
            state[i] = entry
        groups = []
        first = 0
        for g, n in zip(self.param_groups, self._group_sizes):
            groups.append({**g, "params": list(range(first, first + n))})
            first += n
        return {"state": state, "param_groups": groups}

    def _saved_state(self, i: int) -> dict[str, np.ndarray]:
        """The state of param i worth saving."""
        return self._state[i]

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict`. Everything is validated before anything changes."""
        groups = list(state_dict["param_groups"])
        saved = state_dict["state"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, this optimizer {len(self.param_groups)}")
        new_hypers = []
        steps = []
        for j, (g, n) in enumerate(zip(groups, self._group_sizes)):
            if len(g["params"]) != n:
                raise ValueError(f"param group {j}: state_dict has {len(g['params'])} params, this optimizer {n}")
            values = {k: v for k, v in g.items() if k != "params"}
            unknown = set(values) - set(self.defaults)
            if unknown:
                raise ValueError(f"param group {j}: unknown hyperparameters {sorted(unknown)}")
            merged = {**self.param_groups[j], **values}
            self._to_hyper(merged)
            new_hypers.append(merged)
        arrays: list[dict[str, np.ndarray]] = []
        first = 0
        for j, (g, n) in enumerate(zip(groups, self._group_sizes)):
            group_steps = set()
            for i, key in zip(range(first, first + n), g["params"]):
                entry = saved.get(key, {})
                group_steps.add(int(entry.get("step", 0)))
                shape = tuple(_core.describe(self._params[i], f"param {i}")[0])
                got = {}
                for name, value in entry.items():
                    if name == "step":
                        continue
                    if name not in self.state_names and name != "master_param":
                        raise ValueError(f"param {i}: unknown state '{name}'")
                    if name == "master_param" and self._masters[i] is None:
                        raise ValueError(f"param {i}: state_dict has master weights, this optimizer none")
                    a = np.asarray(value)
                    if a.dtype != np.float32 or a.shape != shape:
                        raise ValueError(f"param {i}: state '{name}' is {a.dtype}{list(a.shape)}, "
                                         f"expected float32{list(shape)}")
                    got[name] = a
                if self._masters[i] is not None and "master_param" not in got:
                    raise ValueError(f"param {i}: state_dict lacks its master weights")
                arrays.append(got)
            if len(group_steps) > 1:
                raise ValueError(f"param group {j}: params have different step counts {sorted(group_steps)}")
            steps.append(group_steps.pop() if group_steps else 0)
            first += n
        # Validated: now commit.
        for g, merged in zip(self.param_groups, new_hypers):
            dict.update(g, merged)
        for i, got in enumerate(arrays):
            for name, a in got.items():
                if name == "master_param":
                    np.copyto(self._masters[i], a)
                    continue
                if name not in self._state[i]:
                    self._state[i][name] = aligned_zeros(a.shape)
                    self._core = None
                np.copyto(self._state[i][name], a)
        self._sync()
        self._steps = steps
        self._loaded(arrays)

    def _loaded(self, arrays: list[dict[str, np.ndarray]]) -> None:
        """Called after load_state_dict copied the arrays in."""


def _split_groups(params: Iterable[Any], grads: Sequence[Array] | None):
    """[(hyperparameters, params, grads)] from the constructor's arguments."""
    params = list(params)
    if not params or not all(isinstance(p, Mapping) for p in params):
        if any(isinstance(p, Mapping) for p in params):
            raise TypeError("params must be all arrays or all param-group dicts")
        if grads is None:
            raise TypeError("grads are required: fastopt binds every param to its grad buffer once")
        return [({}, params, list(grads))]
    flat = list(grads) if grads is not None else None
    used = 0
    out = []
    for j, d in enumerate(params):
        values = dict(d)
        if "params" not in values:
            raise TypeError(f"param group {j} has no 'params'")
        ps = list(values.pop("params"))
        gs = values.pop("grads", None)
        if gs is None:
            if flat is None:
                raise TypeError(f"param group {j} has no 'grads' and no grads list was given")
            gs = flat[used:used + len(ps)]
            used += len(ps)
        gs = list(gs)
        if len(gs) != len(ps):
            raise ValueError(f"param group {j}: {len(ps)} params but {len(gs)} grads")
        out.append((values, ps, gs))
    if flat is not None and used != len(flat):
        raise ValueError(f"got {len(flat)} grads for {used} params without group grads")
    return out
