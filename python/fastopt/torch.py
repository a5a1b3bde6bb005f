"""Drop-in ``torch.optim`` optimizers: ``fastopt.torch.AdamW(model.parameters(), lr=1e-3)``.

Each class is a ``torch.optim.Optimizer`` subclass running fastopt's fused step: grads are read
from ``p.grad`` at every step, params whose grad is None are skipped (no weight decay, no step
count), as torch does; ``zero_grad`` (either setting), ``add_param_group``, closures, step
hooks and ``torch.optim.lr_scheduler`` schedulers work unchanged; ``state_dict()`` is in
torch.optim's format and ``load_state_dict()`` takes a torch.optim checkpoint of the same
optimizer (and torch.optim takes ours, but for 8-bit state and remainders), so a run can switch
either way. Every storage mode of fastopt's optimizers (``master_weights``,
``state_precision``, ``seed``) is taken, per param group too.

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
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch

from . import _core
from .accumulate import GradAccumulator as _GradAccumulator
from .catalog import OPTIMIZERS
from .hessian import gauss_newton_bartlett, hutchinson
from .optimizer import Optimizer as _Bound
from .optimizer import alone
from .binding import Keeps
from .engine import engine_for
from .schedule_free import train_mode_of
from .storage import Storage, absmax_blocks, absmax_name, check_seed, check_storage

__all__ = ["Optimizer", "GradAccumulator", "gauss_newton_bartlett", "hutchinson", *(cls.__name__ for cls in OPTIMIZERS)]

_grad = operator.attrgetter("grad")

# The arrays kept beside a param for its fp32 value, by their names in its state: the
# master_weights that keeps each, and its dtype.
_KEPT = {"master_param": (True, torch.float32), "master_remainder": ("remainder", torch.uint16),
         "kahan_compensation": ("kahan", torch.bfloat16)}


class _Grads:
    """step()'s default ``accumulated``: the params' ``.grad``."""

    def __repr__(self) -> str:
        return "<the params' .grad>"


_NOT_ACCUMULATED = _Grads()
_MODES = ("master_weights", "state_precision")  # the storage modes: options of every param group


class Optimizer(torch.optim.Optimizer):
    """Base of the drop-in optimizers; ``fastopt_class`` is the fastopt optimizer it runs.

    Args:
        params: an iterable of tensors or of param-group dicts, as for ``torch.optim``
            (float32, float16 or bfloat16 params; CPU or CUDA).
        master_weights, state_precision: the storage modes of :class:`fastopt.Optimizer`
            (``master_weights``: False, True, ``"remainder"``, ``"kahan"`` or ``"stochastic"``;
            ``state_precision``: ``"float32"``, ``"bfloat16"``, ``"bfloat16_stochastic"`` or
            ``"8bit"``): the defaults of every param group, and options of each (keys of a
            param-group dict, as ``lr``). ValueError (naming the group, for a group's) for a value
            fastopt has not, for ``"remainder"`` or ``"kahan"`` with float16 params, and for 8-bit
            state where the rule keeps none (Adagrad). A group's modes may change until its params
            have state in them; then a step with other modes raises ValueError.
        seed: the seed of stochastic rounding (an integer in [0, 2**64); default 0), as for
            :class:`fastopt.Optimizer`, for every group that rounds stochastically, those added
            or switched to it later too (so it is taken even where none does yet); checkpoints
            carry it (``state_dict()["seed"]``).
        max_grad_norm, clip_value, skip_nonfinite: as for :class:`fastopt.Optimizer` (clipping
            covers the params that have a grad).
        **hypers: the optimizer's hyperparameters, torch.optim's names and defaults.

    The state of param ``p`` is in ``self.state[p]``, tensors named as fastopt names them (the
    names of torch.optim): float32, bfloat16 or uint8 codes with their float32
    ``"<name>_absmax"`` as ``state_precision`` stores them, plus the array its master_weights
    keeps beside a half-precision param (``"master_param"`` float32, ``"master_remainder"``
    uint16, ``"kahan_compensation"`` bfloat16); its ``"step"`` is written by :meth:`state_dict`.
    :attr:`last_step` is the :class:`fastopt.StepResult` of the last step.
    """

    fastopt_class: ClassVar[type[_Bound]]

    def __init__(self, params: Iterable[Any], *, master_weights: bool | str = False, state_precision: str = "float32",
                 seed: int = 0, max_grad_norm: float | None = None, clip_value: float | None = None,
                 skip_nonfinite: bool = False, **hypers: Any):
        cls = self.fastopt_class
        defaults = cls.default_hypers()
        for k in hypers:
            if k not in defaults and k not in _TORCH_OPTIONS:
                raise TypeError(f"{type(self).__name__} got an unknown hyperparameter '{k}'")
        defaults.update(hypers, master_weights=master_weights, state_precision=state_precision)
        self._check_group(defaults)
        self._options = {"max_grad_norm": max_grad_norm, "clip_value": clip_value, "skip_nonfinite": skip_nonfinite,
                         "seed": check_seed(seed)}
        self._unbind()
        self.last_step = None
        self._busy = threading.Lock()  # held by step, state_dict and load_state_dict
        super().__init__(params, defaults)
        self._changed = [False]
        self.state = _State(self._changed, self.state)
        _watch_replacements(self)

    def _unbind(self) -> None:
        old, retired = getattr(self, "_inner", None), getattr(self, "_retired", [])
        # A graph captured with the old binding replays on its device memory: keep it.
        self._retired: list[_Bound] = retired + [old] if old is not None and old._captured else retired
        self._inner: _Bound | None = None
        self._buckets: list[list[int]] = []  # the flat params of each bound group
        self._bound_params: list[Any] = []
        self._bound_grads: list[Any] = []
        self._bound_state: Any = None  # the self.state mapping bound
        self._ptrs: dict[Any, int] = {}  # each bound param's data_ptr when bound
        self._bound_modes: list[tuple[Any, Any]] | None = None  # each group's storage modes when bound
        # (param, the array kept beside it (_KEPT), the param's _version after a step)
        self._mastered: list[tuple[Any, Any, int]] = []
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

    def _check_group(self, group: dict[str, Any], first: int = 0) -> None:
        """TypeError/ValueError for hyperparameters fastopt cannot run as torch.optim would, and for
        storage modes it cannot keep for the group's params (the first of which is param ``first``)."""
        if group.get("differentiable"):
            raise ValueError("differentiable=True is not supported: fastopt's step is not part of the autograd graph")
        cls = self.fastopt_class
        if "decoupled_weight_decay" in group and "decoupled_weight_decay" not in cls.hyper_defaults:
            wanted = bool(group["decoupled_weight_decay"])
            if wanted != bool(cls.fixed_fields.get("decoupled", False)):  # torch's Adam and AdamW
                raise ValueError(f"{type(self).__name__} with decoupled_weight_decay={wanted} is not its update: "
                                 f"use fastopt.torch.{'AdamW' if wanted else 'Adam'}")
        cls._hyper_at(self._hypers(group), 0)
        if "seed" in group:
            raise ValueError("seed is the optimizer's, not a param group's: give it to the constructor")
        storage = self._storage_of(group)
        for k, p in enumerate(group.get("params", ()), first):
            storage.check_param(_dtype_name(p), f"param {k}")

    def _storage_of(self, group: Mapping[str, Any], where: str = "") -> Storage:
        """A group's storage modes (ValueError naming ``where`` for a value fastopt has not, or
        8-bit state for an optimizer that keeps none)."""
        storage = _storage(group, where)
        cls = self.fastopt_class
        if storage.quantized and not cls.eight_bit_state:
            raise ValueError(f"{where + ': ' if where else ''}state_precision='8bit': {cls.__name__} cannot keep "
                             f"8-bit state (see fastopt.{cls.__name__}): use 'bfloat16' or 'float32'")
        return storage

    def _storages(self) -> list[Storage]:
        """Each group's storage modes, checked before anything is allocated."""
        return [self._storage_of(g, f"param group {j}") for j, g in enumerate(self.param_groups)]

    def _modes(self) -> list[tuple[Any, Any]]:
        """Each group's storage modes as set, unchecked (compared at every step: a change binds again)."""
        return [(g["master_weights"], g["state_precision"]) for g in self.param_groups]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group (torch.optim's checks, then fastopt's check of its hyperparameters and
        storage modes)."""
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1], sum(len(g["params"]) for g in self.param_groups[:-1]))
        except (TypeError, ValueError) as e:
            self.param_groups.pop()
            raise type(e)(f"param group {len(self.param_groups)}: {e}") from None
        self._sync_counts()
        self._unbind()

    @torch.no_grad()
    def step(self, closure: Any = None, *, accumulated: Any = _NOT_ACCUMULATED) -> Any:
        """One fused step over every param that has a grad; returns ``closure()``'s loss (the
        closure runs first, with grad enabled), as torch.optim. One thread at a time: a step,
        ``state_dict`` or ``load_state_dict`` while another thread steps raises RuntimeError.

        ``accumulated``: what :meth:`GradAccumulator.add` returned for the last micro-batch: the
        step then reads the float32 accumulators as the grads of the accumulator's params (not
        their ``.grad``; the optimizer's other params are skipped) and takes their sums in place
        of its norm pass (clipping and skipping decide from them, with the same bits). None is
        refused (TypeError): ``add`` returns None but for ``last=True``, and a step on ``.grad``
        would then train on the last micro-batch alone."""
        if accumulated is None:
            raise TypeError(f"{type(self).__name__}.step: accumulated is None: GradAccumulator.add returns the "
                            "accumulated grads only with last=True (leave accumulated out to step on .grad)")
        if accumulated is _NOT_ACCUMULATED:
            accumulated = None
        return alone(self._busy, f"{type(self).__name__}.step", self._step, closure, accumulated)

    def _step(self, closure: Any, accumulated: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"]]
        if accumulated is None:
            grads = list(map(_grad, params))
        else:
            if not accumulated.params:
                raise TypeError(f"{type(self).__name__}.step: accumulated must come from fastopt.torch.GradAccumulator")
            of = {id(p): a for p, a in zip(accumulated.params, accumulated.accumulators)}
            grads = [of.get(id(p)) for p in params]
        if (self._inner is None or not self._state_unchanged() or self._modes() != self._bound_modes
                or len(params) != len(self._bound_params) or not all(map(operator.is_, params, self._bound_params))):
            self._bind(params, grads)  # first step; params, state or storage modes changed by the user
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
        sums = None if accumulated is None else accumulated.select(self._inner._grads)
        try:
            self.last_step = self._inner.step(grad_sums=sums)
        except _core.MemoryMoved:  # a param's memory moved (module.to, p.data = ...): follow it
            self._bind(params, grads)
            self.last_step = self._inner.step(grad_sums=sums)
        self._mastered = [(p, m, p._version) for p, m, _ in self._mastered]
        return loss

    def _state_unchanged(self) -> bool:
        """Whether ``self.state`` is the mapping bound, unchanged by the user since (a new
        ``state``, ``state.clear()``, ``state[p] = {}``, a state tensor or ``"step"`` replaced:
        the next step binds what the state then holds; state removed starts afresh)."""
        return self._bound_state is self.state and not self._changed[0]

    def _refresh_masters(self) -> None:
        """A param written in place since the last step (load_state_dict of its module,
        ``copy_``, ...) has its fp32 value taken from it again: its master would overwrite it, and
        its remainder or compensation belongs to its old value."""
        for k, (p, kept, version) in enumerate(self._mastered):
            if p._version != version:
                if kept.dtype == torch.float32:
                    kept.copy_(p)
                else:  # (zero: the param alone is the value)
                    kept.zero_()
                self._mastered[k] = (p, kept, p._version)

    def _bind(self, params: list[Any], grads: list[Any]) -> None:
        """Binds the params that have a grad, one fastopt group per (param group, step count).
        State the user reset (``opt.state.clear()``, ...) starts afresh; the fp32 value of a
        param whose memory moved is taken from it again. ValueError where a param's state is not
        in its group's storage modes; RuntimeError inside a CUDA graph capture (binding allocates
        device memory and waits for its uploads)."""
        if _capturing():
            raise RuntimeError(f"{type(self).__name__}.step: inside a CUDA graph capture the params, their grads "
                               "(None or not), state and storage modes must be those of the last step outside it "
                               "(binding them again allocates and waits for the GPU): take a step before capturing")
        storages = self._storages()
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
                _drop_kept(self.state[p])
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
                    storages[j].check_param(_dtype_name(p), f"param group {j}: param {flat}")
                    if p in self.state:
                        self._check_state(flat, j, p, self.state[p], storages[j],
                                          "; a group's storage modes are fixed once its params have state, and "
                                          "state set by hand must match them")
                    buckets.setdefault((j, self._counts.get(p, 0)), []).append(flat)
                flat += 1
        if not buckets:
            return
        self._buckets = list(buckets.values())
        groups = [{**self._hypers(self.param_groups[j]), "master_weights": storages[j].master_weights,
                   "state_precision": storages[j].state_precision, "params": [params[i] for i in idx],
                   "grads": [grads[i] for i in idx]} for (j, _), idx in buckets.items()]
        states = [self.state[params[i]] for idx in self._buckets for i in idx]
        names = [i for idx in self._buckets for i in idx]
        # (fastopt takes a seed only where something rounds stochastically)
        seed = self._options["seed"] if any(storages[j].random for j, _ in buckets) else 0
        try:
            inner = _inner_class(self.fastopt_class)(groups, states, **{**self._options, "seed": seed})
        except _core.TensorError as e:  # name the tensors by their place in this optimizer
            roles = "|".join(("param", "grad", "master", "remainder", "compensation",
                              *(f"{n}(?: absmax)?" for n in self.fastopt_class.state_names)))
            raise _core.TensorError(re.sub(rf"\b({roles}) (\d+)\b", lambda m: f"{m[1]} {names[int(m[2])]}",
                                           str(e))) from None
        inner._start_at([count for _, count in buckets])
        self._inner = inner
        self._ids = {id(p) for p in params}
        self._ptrs = {params[i]: params[i].data_ptr() for i in names}
        loaded = getattr(self, "_loaded_versions", {})
        self._mastered = [(p, kept, loaded.get(p, p._version)) for i, p in enumerate(inner._params)
                          for kept in inner._kept_beside(i).values()]
        self._loaded_versions = {}
        self._bound_state = self.state
        self._bound_modes = self._modes()
        self._changed[0] = False
        self._snapshot = [tuple(self._hypers(g).values()) for g in self.param_groups]
        self._group_of_bucket = [j for j, _ in buckets]

    def _check_state(self, key: Any, j: int, p: Any, state: Mapping[str, Any], storage: Storage, note: str) -> None:
        """ValueError (ending with ``note``) where the state of param ``key`` (``p``, in group j)
        holds an array that its group's storage modes do not keep, or not in their dtype and shape."""
        names = self.fastopt_class.state_names
        shape = tuple(p.shape)
        layout = self.fastopt_class.state_shapes(shape)
        forms = {n: (getattr(torch, storage.state_dtype), at) for n, at in layout.items()}  # name -> (dtype, shape)
        if storage.quantized:
            forms.update({absmax_name(n): (torch.float32, (absmax_blocks(math.prod(at)),)) for n, at in layout.items()})
        forms.update({k: (dtype, shape) for k, (mode, dtype) in _KEPT.items() if mode == storage.master_weights})
        # the arrays of other modes -> (the mode, its value that keeps them)
        owners = {**{absmax_name(n): ("state_precision", "8bit") for n in names},
                  **{k: ("master_weights", mode) for k, (mode, _) in _KEPT.items()}}
        for name, v in state.items():
            if name in forms:
                dtype, want = forms[name]
                if not torch.is_tensor(v) or tuple(v.shape) != want:
                    got = f"{v.dtype}{list(v.shape)}" if torch.is_tensor(v) else f"a {type(v).__name__}"
                    raise ValueError(f"param {key}: state '{name}' is {got}, expected a tensor of shape {list(want)}")
                if v.dtype != dtype:
                    mode = "master_weights" if name in _KEPT else "state_precision"
                    raise ValueError(f"param {key}: state '{name}' is {v.dtype}; param group {j} keeps {dtype} "
                                     f"({mode}={getattr(storage, mode)!r}){note}")
            elif name in owners:
                mode, value = owners[name]
                raise ValueError(f"param {key}: state '{name}' is kept with {mode}={value!r}; param group {j} has "
                                 f"{mode}={getattr(storage, mode)!r}{note}")
        for n in names if storage.quantized else ():
            if (n in state) != (absmax_name(n) in state):
                raise ValueError(f"param {key}: state '{n}' and '{absmax_name(n)}' (8-bit codes and their absmax) "
                                 f"go together{note}")

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
        if any(s.random for s in self._storages()):
            out["seed"] = self._options["seed"]  # (stochastic rounding resumes with the same bits)
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a :meth:`state_dict`, or a torch.optim checkpoint of the same optimizer:
        validated before anything changes (ValueError); state tensors are copied onto their
        params' devices; a missing ``"step"`` counts 1 where state is present (Schedule-Free: the
        group's ``"k"``, the step count of the authors' optimizers, where it has one); torch's derived
        state (NAdam's ``mu_product``) is recomputed from the step count; a ``"seed"`` is taken.

        The groups keep this optimizer's storage modes, and the state must be stored as they
        store it (ValueError otherwise, naming the group's and the checkpoint's modes), but for
        what converts exactly: half-precision state into float32 state (torch.optim's, for
        half-precision params), ``"bfloat16"`` and ``"bfloat16_stochastic"`` state into each
        other, and a checkpoint without the array its master_weights keeps (torch.optim's, or
        one of master_weights False or ``"stochastic"``): the param is its value (a master
        copied from it, a zero remainder or compensation)."""
        alone(self._busy, f"{type(self).__name__}.load_state_dict", self._load_state_dict, state_dict)

    def _load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = hook(self, state_dict) or state_dict
        groups, saved = state_dict["param_groups"], state_dict["state"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, this optimizer {len(self.param_groups)}")
        storages = self._storages()
        by_key, new_groups, group_of, notes = {}, [], {}, {}
        first = 0
        for j, (own, g) in enumerate(zip(self.param_groups, groups)):
            if len(g["params"]) != len(own["params"]):
                raise ValueError(f"param group {j}: state_dict has {len(g['params'])} params, "
                                 f"this optimizer {len(own['params'])}")
            by_key.update(zip(g["params"], own["params"]))
            # (the storage modes stay this optimizer's: the state is checked against them)
            group = {**self.defaults, **{k: v for k, v in g.items() if k != "params"},
                     **{k: own[k] for k in _MODES}, "params": own["params"]}
            try:
                self._check_group(group, first)
            except (TypeError, ValueError) as e:
                raise type(e)(f"param group {j}: {e}") from None
            new_groups.append(group)
            group_of.update({k: j for k in g["params"]})
            theirs = ", ".join(f"{k}={g[k]!r}" for k in _MODES if k in g and g[k] != own[k])
            notes[j] = f" (the checkpoint's group has {theirs})" if theirs else ""
            first += len(own["params"])
        state, counts = {}, {}
        names = self.fastopt_class.state_names
        known = {*names, *map(absmax_name, names), *_KEPT}
        for key, entry in saved.items():
            if key not in by_key:
                raise ValueError(f"state_dict has state for unknown param key {key!r}")
            p, j = by_key[key], group_of[key]
            arrays = {}
            for k, v in entry.items():
                if k not in known or v is None:
                    continue
                if torch.is_tensor(v):
                    # torch.optim keeps the state of half-precision params in their dtype: widened
                    # (float64 rounds)
                    widen = k in names and storages[j].state_precision == "float32" and v.is_floating_point()
                    v = v.detach().to(dtype=torch.float32 if widen else v.dtype, device=p.device,
                                      copy=True).contiguous()
                arrays[k] = v
            self._check_state(key, j, p, arrays, storages[j],
                              f"; a checkpoint loads into the storage modes it was saved with{notes[j]}")
            step = entry.get("step")
            if step is None and arrays and _core.eval_point[self.fastopt_class.rule] and "k" in groups[j]:
                step = groups[j]["k"]  # (the authors' Schedule-Free optimizers count steps per group, as k)
            count = _step_count(key, step) if step is not None else int(bool(arrays))
            hyper = self.fastopt_class._hyper_at(self._hypers(new_groups[j]), 0)
            missing = [n for n in self.fastopt_class._required_state(hyper, count, tuple(p.shape))
                       if n not in arrays and n not in self.fastopt_class.optional_state]
            if missing:
                raise ValueError(f"param {key!r}: state_dict lacks {', '.join(missing)} at step {count}")
            state[p] = arrays
            counts[p] = count
        seed = check_seed(state_dict.get("seed", self._options["seed"]), "state_dict's seed")
        self._options["seed"] = seed
        self.state = _State(self._changed, {p: _ParamState(self._changed, st) for p, st in state.items()})
        self.param_groups[:] = new_groups
        self._counts = counts
        self._unbind()
        self._changed[0] = True
        # A loaded fp32 value (master, remainder, compensation) holds until the param is written
        # after this (model.load_state_dict).
        self._loaded_versions = {p: p._version for p, st in state.items() if not _KEPT.keys().isdisjoint(st)}
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)


class GradAccumulator(_GradAccumulator):
    """Gradient accumulation for PyTorch params: after each micro-batch's ``backward()``,
    ``add()`` adds every param's ``.grad`` (float32, float16 or bfloat16) times ``scale`` into a
    float32 accumulator, in one fused pass (see :class:`fastopt.GradAccumulator`); ``.grad`` is
    read afresh at each call (``zero_grad()`` may set it to None in between, as it does by
    default). The last micro-batch: ``opt.step(accumulated=acc.add(scale, last=True))`` (a
    fastopt.torch optimizer): the step reads the accumulators and their sums, summed by that
    same pass. Bf16 params thus train on float32-accumulated grads without a float32 ``.grad``.

    Call ``zero_grad()`` between micro-batches (torch adds each backward into ``.grad``: without
    it every ``add`` would add the running sum again), clip with the optimizer's
    ``max_grad_norm`` (``torch.nn.utils.clip_grad_norm_`` clips ``.grad``, not the accumulators),
    and hand the step what the ``last=True`` call returned (``step()`` without it reads ``.grad``).

    Args:
        params: the params (an iterable of tensors, e.g. ``model.parameters()``; those that do
            not require grad are left out, as the optimizers skip them); the accumulators
            (``accumulators``, float32 zeros like them) are allocated on their devices.
    """

    def __init__(self, params: Iterable[torch.Tensor]):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("GradAccumulator got no params that require grad")
        self.accumulators = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.grads: list | None = None  # bound at the first add

    def add(self, scale: float = 1.0, *, first: bool = False, last: bool = False, stream: Any = None) -> Any:
        grads = list(map(_grad, self.params))
        missing = [i for i, g in enumerate(grads) if g is None]
        if missing:
            raise RuntimeError(f"GradAccumulator.add: param {missing[0]} has no grad (did backward() run?)")
        if self.grads is None:
            super().__init__(grads, self.accumulators)
        elif not all(map(operator.is_, grads, self.grads)):  # (new .grad tensors: bind those)
            self._step._take_grads(grads, stream)
            self.grads = grads
        return super().add(scale, first=first, last=last, stream=stream)

    def _params_of_grads(self) -> tuple:
        return tuple(self.params)


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
        # torch pickles a uint16 tensor but cannot unpickle it: a remainder travels as int16
        return (_unpickled_state, (self._changed, {k: v.view(torch.int16) if k == "master_remainder" else v
                                                   for k, v in self.items()}))


def _unpickled_state(changed: list, values: dict[str, Any]) -> _ParamState:
    state = _ParamState(changed, values)
    if "master_remainder" in state:
        dict.__setitem__(state, "master_remainder", state["master_remainder"].view(torch.uint16))
    return state


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


def _storage(group: Mapping[str, Any], where: str = "") -> Storage:
    """A group's storage modes (ValueError naming ``where`` for a value fastopt has not)."""
    return check_storage(group["master_weights"], group["state_precision"], where)


def _dtype_name(t: Any) -> str:
    """A tensor's dtype as fastopt names it: "float32", "bfloat16", ..."""
    return str(t.dtype).removeprefix("torch.")


def _drop_kept(state: dict[str, Any]) -> None:
    """Removes the array kept beside a param (_KEPT): the next binding takes its value from the
    param again."""
    for name in _KEPT:
        dict.pop(state, name, None)


def _capturing() -> bool:
    """Whether torch's current CUDA stream is being captured (never initialises CUDA)."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _value(v: Any) -> Any:
    """A hyperparameter given as a tensor (torch allows lr and betas as tensors) as its value."""
    if torch.is_tensor(v):
        if v.is_cuda and _capturing():
            raise RuntimeError("fastopt.torch: a hyperparameter given as a CUDA tensor is read on the host, which "
                               "a CUDA graph capture cannot do; give it as a number (a captured step keeps the "
                               "values it was captured with)")
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
    """Mixin of the fastopt optimizer a drop-in class binds: its state arrays (8-bit state's
    absmax arrays too) and the arrays kept beside its params (masters, remainders,
    compensations) are the torch state dicts' (param i's is ``torch_states[i]``), adopted where
    present and stored there when created."""

    def __init__(self, groups: list[dict[str, Any]], torch_states: list[dict[str, Any]], **options: Any):
        self._torch_states = torch_states
        super().__init__(groups, **options)

    def _bind(self, need: list[int]) -> None:
        names = {*self.state_names, *map(absmax_name, self.state_names)}
        adopted = []
        for i, st in enumerate(self._torch_states):
            got = {k: v for k, v in st.items() if k in names}
            for k, v in got.items():
                self._state[i].setdefault(k, v)
            adopted.append(got)
        super()._bind(need)
        if any(adopted):
            self._loaded(adopted)

    def _new_state(self, i: int, name: str):
        a = super()._new_state(i, name)
        dict.__setitem__(self._torch_states[i], name, a)
        absmax = self._state[i].get(absmax_name(name))
        if absmax is not None:  # (8-bit state: created with its codes)
            dict.__setitem__(self._torch_states[i], absmax_name(name), absmax)
        return a

    def _new_master(self, i: int, stream: int):
        return self._adopt(i, "master_param", functools.partial(super()._new_master, i, stream))

    def _new_kept(self, i: int, name: str, dtype: str):
        return self._adopt(i, name, functools.partial(super()._new_kept, i, name, dtype))

    def _adopt(self, i: int, name: str, make: Callable[[], Any]) -> Any:
        """Param i's array ``name`` from its torch state, or ``make()``'s, stored there."""
        st = self._torch_states[i]
        if name not in st:
            dict.__setitem__(st, name, make())
        return st[name]


class _EvalPoint:
    """``train()`` and ``eval()`` of the drop-in optimizers of rules with an eval point
    (Schedule-Free): see :meth:`fastopt.AdamWScheduleFree.eval`. The mode is each param group's
    ``"train_mode"`` (as the authors' optimizers keep it), so checkpoints carry it; a switch moves
    every param that has stepped (with or without a grad now), in one pass per call."""

    def train(self) -> None:
        """Moves every param back to the training point y (see :meth:`fastopt.AdamWScheduleFree.train`):
        call it where you call ``model.train()``. Nothing happens in train mode."""
        alone(self._busy, f"{type(self).__name__}.train", self._switch_mode, False)

    def eval(self) -> None:
        """Moves every param to the eval point x (see :meth:`fastopt.AdamWScheduleFree.eval`): call
        it where you call ``model.eval()``, before evaluating or saving the model; ``step()`` raises
        RuntimeError until :meth:`train`. Nothing happens in eval mode."""
        alone(self._busy, f"{type(self).__name__}.eval", self._switch_mode, True)

    @property
    def training(self) -> bool:
        """Whether the params hold the training point y (else the eval point x)."""
        return self.param_groups[0].get("train_mode", True) if self.param_groups else True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        mode = self.training
        super().add_param_group(param_group)
        self.param_groups[-1]["train_mode"] = mode

    def _step(self, closure: Any, accumulated: Any = None) -> Any:
        if not self.training:
            raise RuntimeError(f"{type(self).__name__}.step: the params hold the eval point x (eval() was called); "
                               "call train() before stepping")
        return super()._step(closure, accumulated)

    def _switch_mode(self, to_eval: bool) -> None:
        if self.training != to_eval:
            return
        self._sync_counts()
        self._refresh_masters()  # (a param written since the last step is its value: the switch starts from it)
        storages = self._storages()
        cls = self.fastopt_class
        # Every param that has stepped (its z is set), one fastopt group per param group.
        params, modes, sizes, hypers, steps = [], [], [], [], []
        for j, group in enumerate(self.param_groups):
            stepped = [p for p in group["params"] if self._counts.get(p, 0) > 0 and "z" in self.state.get(p, {})]
            if stepped:
                params += stepped
                modes += [storages[j].master_weights] * len(stepped)
                sizes.append(len(stepped))
                hypers.append(cls._to_hyper(self._hypers(group)))
                steps.append(max(self._counts[p] for p in stepped))
        if params:
            keeps = Keeps.none(len(params))
            for i, (p, mode) in enumerate(zip(params, modes)):
                st = self.state[p]
                keeps.masters[i], keeps.remainders[i] = st.get("master_param"), st.get("master_remainder")
                keeps.compensations[i] = st.get("kahan_compensation")
                keeps.stochastic[i] = mode == "stochastic" and p.dtype != torch.float32
            zs = [self.state[p]["z"] for p in params]
            engine = engine_for(params[0])
            switcher = engine.bind_switch(cls.rule, params, zs, keeps, sizes)
            engine.switch(switcher, hypers, steps, to_eval, self._options["seed"], None, params[0])
        for group in self.param_groups:
            group["train_mode"] = not to_eval

    def _load_state_dict(self, state_dict: dict[str, Any]) -> None:
        modes = {g.get("train_mode", True) for g in state_dict["param_groups"]}
        if len(modes) > 1:
            raise ValueError("state_dict's param groups disagree on train_mode")
        mode = train_mode_of(modes.pop() if modes else True, "state_dict's train_mode")
        super()._load_state_dict(state_dict)
        for group in self.param_groups:
            group["train_mode"] = mode


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
                    else:  # the new Parameter takes the old one's state (its fp32 value from itself)
                        group["params"][k] = new
                        if old in opt.state:
                            dict.__setitem__(opt.state, new, dict.pop(opt.state, old))
                            _drop_kept(opt.state[new])
                    if old in opt._counts:
                        count = opt._counts.pop(old)
                        if not held:
                            opt._counts[new] = count
                    break
        opt._ids = {id(p) for g in opt.param_groups for p in g["params"]}
        opt._unbind()


def _update_hessian(self: Optimizer, estimates: Any, stream: Any = None) -> Any:
    """Sophia's Hessian average, ``h = beta2 * h + (1 - beta2) * estimate``, in one fused pass
    (see :meth:`fastopt.Sophia.update_hessian`; a non-finite estimate skips it: returns whether
    it did). ``estimates``: one per param of ``param_groups``, in order (a list), or a dict param
    -> estimate; tensors shaped like the params (:func:`gauss_newton_bartlett`, :func:`hutchinson`).
    It updates the h of every param given an estimate (None in the list: none), which must
    include each param the last step stepped (ValueError otherwise; a dict key that is no param
    of the optimizer: ValueError); before the first step too (as the paper's Algorithm 3 may,
    at t = 1)."""
    def update() -> Any:
        params = [p for g in self.param_groups for p in g["params"]]
        if isinstance(estimates, Mapping):
            of = {id(p): e for p, e in estimates.items()}
            if len(set(of) - set(map(id, params))):
                raise ValueError(f"{type(self).__name__}.update_hessian: an estimate's key is not one of its params")
        else:
            given = list(estimates)
            if len(given) != len(params):
                raise ValueError(f"{type(self).__name__}.update_hessian: got {len(given)} estimates for "
                                 f"{len(params)} params")
            of = {id(p): e for p, e in zip(params, given)}
        if self._inner is not None and any(of.get(id(p)) is None for p in self._inner._params):
            raise ValueError(f"{type(self).__name__}.update_hessian: no estimate for a param it steps")
        given = [p for p in params if of.get(id(p)) is not None]
        if self._inner is None or len(given) != len(self._inner._params) or not all(
                map(operator.is_, given, self._inner._params)):
            # (nothing bound yet, or estimates for params the last step skipped: bound with the
            # estimates standing in for the grads, so that no estimate is dropped)
            self._bind(params, [of.get(id(p)) for p in params])
            if self._inner is None:
                raise ValueError(f"{type(self).__name__}.update_hessian: no estimate for any param")
        self._push_hypers()
        return self._inner.update_hessian([of[id(p)] for p in self._inner._params], stream)
    return alone(self._busy, f"{type(self).__name__}.update_hessian", update)


def _drop_in(cls: type[_Bound]) -> type[Optimizer]:
    hypers = ", ".join(f"{k}={v!r}" for k, v in cls.hyper_defaults.items())
    doc = (f"``{cls.__name__}`` as a ``torch.optim.Optimizer``: fastopt's fused step behind torch.optim's "
           f"interface (see :class:`fastopt.torch.Optimizer`; the update: :class:`fastopt.{cls.__name__}`).\n\n"
           f"    Hyperparameters and defaults: {hypers}.\n")
    attrs = {"fastopt_class": cls, "__doc__": doc, "__module__": __name__}
    if hasattr(cls, "update_hessian"):
        attrs["update_hessian"] = _update_hessian
    bases: tuple[type, ...] = (Optimizer,)
    if _core.eval_point[cls.rule]:
        bases = (_EvalPoint, Optimizer)
        attrs["__doc__"] += ("\n    Its params hold the training point y: call ``opt.eval()`` with ``model.eval()`` (the params\n"
                             "    move to the eval point x) and ``opt.train()`` with ``model.train()``; ``step()`` raises in\n"
                             "    eval mode. ``state_dict()`` carries the mode (each group's ``\"train_mode\"``).\n")
    return type(cls.__name__, bases, attrs)


globals().update({cls.__name__: _drop_in(cls) for cls in OPTIMIZERS})
