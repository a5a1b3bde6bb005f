"""Drop-in ``torch.optim`` optimizers: ``fastopt.torch.AdamW(model.parameters(), lr=1e-3)``.

Each class is a ``torch.optim.Optimizer`` subclass running fastopt's fused step: grads are read
from ``p.grad`` at every step, params whose grad is None are skipped (no weight decay, no step
count), as torch does; ``zero_grad`` (either setting), ``add_param_group``, closures, step
hooks and ``torch.optim.lr_scheduler`` schedulers work unchanged; ``state_dict()`` is in
torch.optim's format and ``load_state_dict()`` takes a torch.optim checkpoint of the same
optimizer (and torch.optim takes ours), so a run can switch either way.

The step binds its tensors once and reuses the binding while they stay where they are: it binds
again when a param gains or loses its grad, when torch hands over new grad tensors
(``zero_grad(set_to_none=True)``, ``backward(create_graph=True)``, DDP's bucket views), when
a param's memory moved (``module.to(...)``, ``p.data = ...``, ``share_memory_()``,
``resize_``), and when a module's ``load_state_dict(assign=True)`` (or any assignment of a
new ``Parameter`` to a module attribute) replaces a param this optimizer holds: it then steps
the new ``Parameter``, with the old one's state.
"""

from __future__ import annotations

import functools
import math
import operator
import threading
from collections import defaultdict
import re
import warnings
import weakref
from typing import Any, ClassVar, Iterable

import torch

from . import _core
from .catalog import OPTIMIZERS
from .optimizer import Optimizer as _Bound
from .optimizer import alone

__all__ = ["Optimizer", *(cls.__name__ for cls in OPTIMIZERS)]

_grad = operator.attrgetter("grad")


class Optimizer(torch.optim.Optimizer):
    """Base of the drop-in optimizers; ``fastopt_class`` is the fastopt optimizer it runs.

    Args:
        params: an iterable of tensors or of param-group dicts, as for ``torch.optim``
            (float32, float16 or bfloat16 params; CPU or CUDA).
        master_weights, max_grad_norm, clip_value, skip_nonfinite: as for
            :class:`fastopt.Optimizer` (clipping covers the params that have a grad).
        **hypers: the optimizer's hyperparameters, torch.optim's names and defaults.

    The state of param ``p`` is in ``self.state[p]``, float32 tensors named as torch.optim
    names them (plus ``"master_param"`` with ``master_weights``); its ``"step"`` is written by
    :meth:`state_dict`. :attr:`last_step` is the :class:`fastopt.StepResult` of the last step.
    """

    fastopt_class: ClassVar[type[_Bound]]

    def __init__(self, params: Iterable[Any], *, master_weights: bool = False, max_grad_norm: float | None = None,
                 clip_value: float | None = None, skip_nonfinite: bool = False, **hypers: Any):
        cls = self.fastopt_class
        defaults = cls.default_hypers()
        for k in hypers:
            if k not in defaults and k not in _TORCH_OPTIONS:
                raise TypeError(f"{type(self).__name__} got an unknown hyperparameter '{k}'")
        defaults.update(hypers)
        self._check_group(defaults)
        if master_weights in ("remainder", "kahan", "stochastic"):
            raise ValueError(f"master_weights={master_weights!r} is not yet supported by fastopt.torch: use the "
                             f"plain fastopt.{self.fastopt_class.__name__} over the module's parameters")
        self._options = {"master_weights": master_weights, "max_grad_norm": max_grad_norm,
                         "clip_value": clip_value, "skip_nonfinite": skip_nonfinite}
        self._unbind()
        self.last_step = None
        self._busy = threading.Lock()  # held by step, state_dict and load_state_dict
        super().__init__(params, defaults)
        self._changed = [False]
        self.state = _State(self._changed, self.state)
        _watch_replacements(self)

    def _unbind(self) -> None:
        self._inner: _Bound | None = None
        self._buckets: list[list[int]] = []  # the flat params of each bound group
        self._bound_params: list[Any] = []
        self._bound_grads: list[Any] = []
        self._bound_state: Any = None  # the self.state mapping bound
        self._ptrs: dict[Any, int] = {}  # each bound param's data_ptr when bound
        self._mastered: list[tuple[Any, Any, int]] = []  # (param, its master, its _version after a step)
        self._snapshot: list[tuple] = []
        self._counts: dict[Any, int] = getattr(self, "_counts", {})  # steps taken by each param

    def __getstate__(self) -> dict[str, Any]:
        self._sync_counts()
        return {**super().__getstate__(), "_options": self._options, "_counts": self._counts}

    def __setstate__(self, state: dict[str, Any]) -> None:  # unpickled or deep-copied: bind afresh
        super().__setstate__(state)
        self._busy = threading.Lock()
        self._changed = self.state._changed if isinstance(self.state, _State) else [False]
        self._unbind()
        self.last_step = None
        _watch_replacements(self)

    def _hypers(self, group: dict[str, Any]) -> dict[str, Any]:
        """The fastopt hyperparameters of a group (torch.optim adds keys of its own: foreach, ...;
        a 0-d tensor, as torch allows for lr and betas, is taken as its value)."""
        return {k: _value(group.get(k, v)) for k, v in self.fastopt_class.default_hypers().items()}

    def _check_group(self, group: dict[str, Any]) -> None:
        """TypeError/ValueError for hyperparameters fastopt cannot run as torch.optim would."""
        if group.get("differentiable"):
            raise ValueError("differentiable=True is not supported: fastopt's step is not part of the autograd graph")
        cls = self.fastopt_class
        if "decoupled_weight_decay" in group and "decoupled_weight_decay" not in cls.hyper_defaults:
            wanted = bool(group["decoupled_weight_decay"])
            if wanted != bool(cls.fixed_fields.get("decoupled", False)):  # torch's Adam and AdamW
                raise ValueError(f"{type(self).__name__} with decoupled_weight_decay={wanted} is not its update: "
                                 f"use fastopt.torch.{'AdamW' if wanted else 'Adam'}")
        cls._hyper_at(self._hypers(group), 0)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group (torch.optim's checks, then fastopt's check of its hyperparameters)."""
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1])
        except (TypeError, ValueError) as e:
            self.param_groups.pop()
            raise type(e)(f"param group {len(self.param_groups)}: {e}") from None
        self._sync_counts()
        self._unbind()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One fused step over every param that has a grad; returns ``closure()``'s loss (the
        closure runs first, with grad enabled), as torch.optim. One thread at a time: a step,
        ``state_dict`` or ``load_state_dict`` while another thread steps raises RuntimeError."""
        return alone(self._busy, f"{type(self).__name__}.step", self._step, closure)

    def _step(self, closure: Any) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"]]
        grads = list(map(_grad, params))
        if (self._inner is None or not self._state_unchanged()
                or len(params) != len(self._bound_params) or not all(map(operator.is_, params, self._bound_params))):
            self._bind(params, grads)  # first step, params or state changed by the user
        elif not all(map(operator.is_, grads, self._bound_grads)):
            if [g is None for g in grads] == [g is None for g in self._bound_grads]:
                try:  # torch handed over new .grad tensors: bind those alone
                    self._inner._take_grads([grads[i] for idx in self._buckets for i in idx])
                    self._bound_grads = grads
                except _core.TensorError:  # bind everything again, for the precise error if any
                    self._bind(params, grads)
            else:  # a param gained or lost its grad
                self._bind(params, grads)
        if self._inner is None:
            warnings.warn(f"{type(self).__name__}.step: no param has a grad (did backward() run? or do the "
                          "params belong to the model any more?); nothing was updated", RuntimeWarning,
                          stacklevel=2)
            return loss
        self._push_hypers()
        self._refresh_masters()
        try:
            self.last_step = self._inner.step()
        except _core.MemoryMoved:  # a param's memory moved (module.to, p.data = ...): follow it
            self._bind(params, grads)
            self.last_step = self._inner.step()
        self._mastered = [(p, m, p._version) for p, m, _ in self._mastered]
        return loss

    def _state_unchanged(self) -> bool:
        """Whether ``self.state`` is the mapping bound, unchanged by the user since (a new
        ``state``, ``state.clear()``, ``state[p] = {}``, a state tensor or ``"step"`` replaced:
        the next step binds what the state then holds; state removed starts afresh)."""
        return self._bound_state is self.state and not self._changed[0]

    def _refresh_masters(self) -> None:
        """A param written in place since the last step (load_state_dict of its module,
        ``copy_``, ...) has its master weights taken from it again: the master would overwrite it."""
        for k, (p, master, version) in enumerate(self._mastered):
            if p._version != version:
                master.copy_(p)
                self._mastered[k] = (p, master, p._version)

    def _bind(self, params: list[Any], grads: list[Any]) -> None:
        """Binds the params that have a grad, one fastopt group per (param group, step count).
        State the user reset (``opt.state.clear()``, ...) starts afresh; master weights of a
        param whose memory moved are taken from it again."""
        self._sync_counts()
        if not self._state_unchanged():  # the user changed the state: it says what the counts are now
            if not isinstance(self.state, _State):  # a new mapping: its "step" entries count
                self.state = _State(self._changed, {p: _ParamState(self._changed, st) for p, st in self.state.items()})
                for st in self.state.values():
                    st.user_step = st.get("step")
            counts = {}
            for p, st in self.state.items():
                if st:  # (state removed or emptied: the param starts afresh)
                    counts[p] = self._counts.get(p, 0) if st.user_step is None else _step_count(p, st.user_step)
                st.user_step = None
            self._counts = counts
        for p, ptr in self._ptrs.items():
            if p in self.state and p.data_ptr() != ptr:
                dict.pop(self.state[p], "master_param", None)
        self._unbind()
        self._bound_params, self._bound_grads = params, grads
        buckets: dict[tuple[int, int], list[int]] = {}
        flat = 0
        for j, group in enumerate(self.param_groups):
            for p in group["params"]:
                g = grads[flat]
                if g is not None:
                    if g.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (param {flat})")
                    buckets.setdefault((j, self._counts.get(p, 0)), []).append(flat)
                flat += 1
        if not buckets:
            return
        self._buckets = list(buckets.values())
        groups = [{**self._hypers(self.param_groups[j]), "params": [params[i] for i in idx],
                   "grads": [grads[i] for i in idx]} for (j, _), idx in buckets.items()]
        states = [self.state[params[i]] for idx in self._buckets for i in idx]
        names = [i for idx in self._buckets for i in idx]
        try:
            inner = _inner_class(self.fastopt_class)(groups, states, **self._options)
        except _core.TensorError as e:  # name the tensors by their place in this optimizer
            raise _core.TensorError(re.sub(r"\b([a-z_]+) (\d+)\b", lambda m: f"{m[1]} {names[int(m[2])]}",
                                           str(e))) from None
        inner._start_at([count for _, count in buckets])
        self._inner = inner
        self._ids = {id(p) for p in params}
        self._ptrs = {params[i]: params[i].data_ptr() for i in names}
        loaded = getattr(self, "_loaded_versions", {})
        self._mastered = [(p, m, loaded.get(p, p._version)) for p, m in zip(inner._params, inner._masters)
                          if m is not None]
        self._loaded_versions = {}
        self._bound_state = self.state
        self._changed[0] = False
        self._snapshot = [tuple(self._hypers(g).values()) for g in self.param_groups]
        self._group_of_bucket = [j for j, _ in buckets]

    def _push_hypers(self) -> None:
        """Hyperparameters changed in param_groups (a scheduler's lr) go to the bound groups."""
        for j, g in enumerate(self.param_groups):
            values = self._hypers(g)
            snap = tuple(values.values())
            if snap != self._snapshot[j]:
                for b, owner in enumerate(self._group_of_bucket):
                    if owner == j:
                        self._inner.param_groups[b].update(values)
                self._snapshot[j] = snap

    def _sync_counts(self) -> None:
        """Each bound param's step count, from the bound groups (CUDA: read from the device only
        when a step may have been skipped there)."""
        if self._inner is None:
            return
        params = self._bound_params
        for idx, count in zip(self._buckets, self._inner._exact_steps()):
            for i in idx:
                self._counts[params[i]] = count

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's format: ``{"state": {index: {"step": tensor, <state>: tensor}},
        "param_groups": [...]}``; the state tensors are the live ones, as torch.optim's. The
        step counts are written into ``self.state`` first (between calls they are kept by the
        bound groups)."""
        return alone(self._busy, f"{type(self).__name__}.state_dict", self._state_dict)

    def _state_dict(self) -> dict[str, Any]:
        self._sync_counts()
        for group in self.param_groups:
            for p in group["params"]:
                count = self._counts.get(p, 0)
                if count or p in self.state:
                    st = self.state[p] if p in self.state else dict.setdefault(self.state, p, _ParamState(self._changed))
                    dict.update(st, {"step": torch.tensor(float(count)),
                                     **self.fastopt_class.torch_state(self._hypers(group), count)})
        out = super().state_dict()
        out["state"] = {k: dict(v) for k, v in out["state"].items()}  # plain dicts: torch.load's defaults take them
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a :meth:`state_dict`, or a torch.optim checkpoint of the same optimizer:
        validated before anything changes (ValueError); state tensors are copied as float32
        onto their params' devices; a missing ``"step"`` counts 1 where state is present;
        torch's derived state (NAdam's ``mu_product``) is recomputed from the step count."""
        alone(self._busy, f"{type(self).__name__}.load_state_dict", self._load_state_dict, state_dict)

    def _load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = hook(self, state_dict) or state_dict
        groups, saved = state_dict["param_groups"], state_dict["state"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, this optimizer {len(self.param_groups)}")
        by_key, new_groups, group_of = {}, [], {}
        for j, (own, g) in enumerate(zip(self.param_groups, groups)):
            if len(g["params"]) != len(own["params"]):
                raise ValueError(f"param group {j}: state_dict has {len(g['params'])} params, "
                                 f"this optimizer {len(own['params'])}")
            by_key.update(zip(g["params"], own["params"]))
            group = {**self.defaults, **{k: v for k, v in g.items() if k != "params"}, "params": own["params"]}
            try:
                self._check_group(group)
            except (TypeError, ValueError) as e:
                raise type(e)(f"param group {j}: {e}") from None
            new_groups.append(group)
            group_of.update({k: group for k in g["params"]})
        state, counts = {}, {}
        names = (*self.fastopt_class.state_names, "master_param")
        for key, entry in saved.items():
            if key not in by_key:
                raise ValueError(f"state_dict has state for unknown param key {key!r}")
            p = by_key[key]
            arrays = {}
            for k, v in entry.items():
                if k in names and v is not None:
                    if not torch.is_tensor(v) or v.shape != p.shape:
                        raise ValueError(f"param {key!r}: state '{k}' is not a tensor of the param's shape "
                                         f"{list(p.shape)}")
                    arrays[k] = v.detach().to(dtype=torch.float32, device=p.device, copy=True).contiguous()
            step = entry.get("step")
            count = _step_count(key, step) if step is not None else int(bool(arrays))
            hyper = self.fastopt_class._hyper_at(self._hypers(group_of[key]), 0)
            missing = [n for n in self.fastopt_class._required_state(hyper, count)
                       if n not in arrays and n not in self.fastopt_class.optional_state]
            if missing:
                raise ValueError(f"param {key!r}: state_dict lacks {', '.join(missing)} at step {count}")
            state[p] = arrays
            counts[p] = count
        self.state = _State(self._changed, {p: _ParamState(self._changed, st) for p, st in state.items()})
        self.param_groups[:] = new_groups
        self._counts = counts
        self._unbind()
        self._changed[0] = True
        # Loaded master weights hold until the param is written after this (model.load_state_dict).
        self._loaded_versions = {p: p._version for p, st in state.items() if "master_param" in st}
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)


class _ParamState(dict):
    """One param's state. A change made by the user (a state tensor replaced, the dict cleared,
    ``"step"`` set) marks the binding stale (``changed[0]``), so the next step binds what the
    state holds then; fastopt's own writes go through ``dict``'s methods."""

    def __init__(self, changed: list, *args: Any):
        super().__init__(*args)
        self._changed = changed

    def _mark(self, result: Any = None) -> Any:
        self._changed[0] = True
        return result

    user_step: Any = None  # a "step" the user set, which the next binding takes

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if key == "step":
            self.user_step = value
        self._mark()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._mark()

    def clear(self) -> None:
        super().clear()
        self._mark()

    def pop(self, *args: Any) -> Any:
        return self._mark(super().pop(*args))

    def popitem(self) -> Any:
        return self._mark(super().popitem())

    def setdefault(self, *args: Any) -> Any:
        return self._mark(super().setdefault(*args))

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._mark()

    def __reduce__(self) -> Any:  # copies keep the shared flag
        return (type(self), (self._changed, dict(self)))


class _State(defaultdict):
    """``optimizer.state``: param -> :class:`_ParamState`; adding, replacing or removing a
    param's state marks the binding stale as well."""

    def __init__(self, changed: list, *args: Any):
        super().__init__(functools.partial(_ParamState, changed), *args)
        self._changed = changed

    def __setitem__(self, key: Any, value: Any) -> None:
        if not isinstance(value, _ParamState):
            value = _ParamState(self._changed, value)
            value.user_step = value.get("step")
        super().__setitem__(key, value)
        self._changed[0] = True

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._changed[0] = True

    def clear(self) -> None:
        super().clear()
        self._changed[0] = True

    def pop(self, *args: Any) -> Any:
        value = super().pop(*args)
        self._changed[0] = True
        return value

    def popitem(self) -> Any:
        item = super().popitem()
        self._changed[0] = True
        return item

    def __reduce__(self) -> Any:
        return (type(self), (self._changed, dict(self)))


# torch.optim's options that fastopt's step makes moot: always fused, on any device; kept in the
# groups so that checkpoints go both ways (differentiable=True is refused).
_TORCH_OPTIONS = {"foreach": None, "fused": None, "capturable": False, "differentiable": False,
                  "decoupled_weight_decay": False}


def _value(v: Any) -> Any:
    """A hyperparameter given as a tensor (torch allows lr and betas as tensors) as its value."""
    if torch.is_tensor(v):
        return v.item()
    if isinstance(v, tuple) and any(torch.is_tensor(x) for x in v):
        return tuple(_value(x) for x in v)
    return v


def _step_count(key: Any, step: Any) -> int:
    """A step count given as a tensor or a number (a checkpoint's, or set in the state), or
    ValueError naming ``key``."""
    value = step.item() if torch.is_tensor(step) else step
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise ValueError(f"param {key!r}: step must be a whole number in [0, 2**63 - 2], got {step!r}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**63 - 2:
        raise ValueError(f"param {key!r}: step must be a whole number in [0, 2**63 - 2], got {step!r}")
    return value


class _Adopting:
    """Mixin of the fastopt optimizer a drop-in class binds: its state arrays and master weights
    are the torch state dicts' (param i's is ``torch_states[i]``), adopted where present and
    stored there when created."""

    def __init__(self, groups: list[dict[str, Any]], torch_states: list[dict[str, Any]], **options: Any):
        self._torch_states = torch_states
        super().__init__(groups, **options)

    def _bind(self, need: list[int]) -> None:
        adopted = []
        for i, st in enumerate(self._torch_states):
            got = {k: v for k, v in st.items() if k in self.state_names}
            for k, v in got.items():
                self._state[i].setdefault(k, v)
            adopted.append(got)
        super()._bind(need)
        if any(adopted):
            self._loaded(adopted)

    def _new_state(self, i: int, name: str):
        a = super()._new_state(i, name)
        dict.__setitem__(self._torch_states[i], name, a)
        return a

    def _new_master(self, i: int, stream: int):
        st = self._torch_states[i]
        if "master_param" not in st:
            dict.__setitem__(st, "master_param", super()._new_master(i, stream))
        return st["master_param"]


_INNER: dict[type, type] = {}


def _inner_class(cls: type[_Bound]) -> type[_Bound]:
    if cls not in _INNER:
        _INNER[cls] = type(cls.__name__, (_Adopting, cls), {})  # named as the optimizer in its errors
    return _INNER[cls]


# Module attributes replaced by a new Parameter (a module's load_state_dict(assign=True)): the
# optimizers holding the old one step the new one instead, with its state.
_HOLDERS: "weakref.WeakSet[Optimizer]" = weakref.WeakSet()
_hook = None


def _watch_replacements(opt: Optimizer) -> None:
    global _hook
    opt._ids = {id(p) for g in opt.param_groups for p in g["params"]}
    _HOLDERS.add(opt)
    if _hook is None:
        _hook = torch.nn.modules.module.register_module_parameter_registration_hook(_replaced)


def _replaced(module: torch.nn.Module, name: str, new: Any) -> None:
    old = module._parameters.get(name)
    if old is None or new is None or old is new:
        return
    for opt in list(_HOLDERS):
        if id(old) not in opt._ids:
            continue
        opt._sync_counts()
        held = any(p is new for g in opt.param_groups for p in g["params"])
        for group in opt.param_groups:
            for k, p in enumerate(group["params"]):
                if p is old:
                    if held:  # tied to a param it already steps: the old one is gone from the model
                        del group["params"][k]
                        dict.pop(opt.state, old, None)
                    else:  # the new Parameter takes the old one's state (its master from itself)
                        group["params"][k] = new
                        if old in opt.state:
                            dict.__setitem__(opt.state, new, dict.pop(opt.state, old))
                            dict.pop(opt.state[new], "master_param", None)
                    if old in opt._counts:
                        count = opt._counts.pop(old)
                        if not held:
                            opt._counts[new] = count
                    break
        opt._ids = {id(p) for g in opt.param_groups for p in g["params"]}
        opt._unbind()


def _drop_in(cls: type[_Bound]) -> type[Optimizer]:
    hypers = ", ".join(f"{k}={v!r}" for k, v in cls.hyper_defaults.items())
    doc = (f"``{cls.__name__}`` as a ``torch.optim.Optimizer``: fastopt's fused step behind torch.optim's "
           f"interface (see :class:`fastopt.torch.Optimizer`; the update: :class:`fastopt.{cls.__name__}`).\n\n"
           f"    Hyperparameters and defaults: {hypers}.\n")
    return type(cls.__name__, (Optimizer,), {"fastopt_class": cls, "__doc__": doc, "__module__": __name__})


globals().update({cls.__name__: _drop_in(cls) for cls in OPTIMIZERS})
