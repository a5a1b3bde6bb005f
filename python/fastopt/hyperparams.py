"""Hyperparameters: checking their values, param groups (torch.optim's dicts of them), and
the hyperparameter side of an optimizer (defaults, the rule's struct, lr schedules, ``lr``)."""

from __future__ import annotations

import math
import numbers
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from . import _core
from .schedules import Schedule

if TYPE_CHECKING:
    from .optimizer import Optimizer

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


def betas(value: Any) -> tuple[float, float]:
    """(beta1, beta2) from a pair, or TypeError."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {value!r}")
    return real("beta1", value[0]), real("beta2", value[1])


def optional_positive(name: str, value: Any) -> float | None:
    if value is None:
        return None
    v = real(name, value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be finite and > 0 (or None), got {value!r}")
    return v


class ParamGroup(dict):
    """One param group's hyperparameters, as in ``torch.optim``.

    Setting a hyperparameter validates it first: an out-of-range value raises ValueError
    (a wrong type TypeError) and leaves the group unchanged. ``params`` and ``grads`` are
    bound once and cannot be replaced.
    """

    def __init__(self, owner: "Optimizer", values: Mapping[str, Any]):
        super().__init__(values)
        # A weak reference: no cycle with the optimizer, which is then freed (and its memory
        # with it) as soon as its last reference goes, not at a later garbage collection.
        self._owner_ref = weakref.ref(owner)

    @property
    def _owner(self) -> "Optimizer":
        owner = self._owner_ref()
        if owner is None:
            raise ReferenceError("this param group's optimizer has been freed")
        return owner

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
        self._owner._hyper_at({**self, **changes}, 0)  # raises, leaving the group as it was
        dict.update(self, changes)
        self._owner._changed()

    def __reduce__(self):  # copies and pickles are plain dicts
        return (dict, (dict(self),))

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


class HyperParams:
    """The hyperparameters of :class:`~fastopt.Optimizer`: the description's defaults, the
    rule's Hyper struct built from a group (an lr schedule evaluated at the group's step), and
    ``lr`` across groups."""

    @classmethod
    def default_hypers(cls) -> dict[str, Any]:
        """The hyperparameters and their defaults."""
        return dict(cls.hyper_defaults)

    @classmethod
    def _to_hyper(cls, group: Mapping[str, Any], **fields: Any) -> Any:
        """The engine's hyperparameter struct for ``group`` (plus ``fields``, set as given);
        TypeError for a value of the wrong type, ValueError (the rule's message) for one out
        of range."""
        h = _core.rules[cls.rule]()
        for key, default in cls.hyper_defaults.items():
            if key == "betas":
                h.beta1, h.beta2 = betas(group[key])
            elif isinstance(default, bool):
                setattr(h, cls.hyper_fields.get(key, key), flag(key, group[key]))
            elif isinstance(default, numbers.Real):
                setattr(h, cls.hyper_fields.get(key, key), real(key, group[key]))
            elif key not in cls.custom_hypers:
                raise TypeError(f"{cls.__name__} describes no mapping of its hyperparameter '{key}' "
                                f"(default {default!r}) to the rule's fields")
        for key, value in {**cls.fixed_fields, **fields}.items():
            setattr(h, key, value)
        err = h.check()
        if err:
            raise ValueError(err)
        return h

    @classmethod
    def _hyper_at(cls, group: Mapping[str, Any], step: int) -> Any:
        """The hyperparameter struct of ``group`` for a step taken after ``step`` steps: an lr
        given as a :class:`fastopt.schedules.Schedule` is evaluated there."""
        lr = group.get("lr")  # (the utility rules have none)
        return cls._to_hyper({**group, "lr": lr(step)} if isinstance(lr, Schedule) else group)

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
            self._hyper_at({**g, "lr": value}, 0)
        for g in self.param_groups:
            g["lr"] = value


def split_groups(params: Iterable[Any], grads: Sequence[Array] | None):
    """[(hyperparameters, params, grads)] from the constructor's arguments."""
    for name, value in (("params", params), ("grads", grads)):
        if isinstance(value, np.ndarray) or hasattr(value, "__dlpack__") or hasattr(value, "__array_interface__"):
            raise TypeError(f"{name} must be a list of arrays (or params a list of param-group dicts), "
                            f"not one array: wrap it, [{name[:-1]}]")
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
