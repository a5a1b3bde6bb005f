"""What ZeroOptimizer and OffloadOptimizer share: a fastopt optimizer (or several) stepping
pieces of the params (layout.Piece: a run of one param's elements), torch.optim's face for
hyperparameters, and checkpoints in ``fastopt.torch``'s format assembled from the pieces."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch

from .. import _core
from .. import torch as _torch
from ..optimizer import Optimizer as _Bound
from ..optimizer import alone
from ..storage import QUANT_BLOCK, absmax_name
from .layout import Piece

# (param index, first element, the piece's state arrays by name)
PieceState = tuple[int, int, dict[str, Any]]


def fastopt_class(optimizer_class: Any) -> type[_Bound]:
    """The fastopt optimizer that ``optimizer_class`` names (``fastopt.AdamW`` or
    ``fastopt.torch.AdamW``), or TypeError (for one with factored state: pieces are flat)."""
    cls = getattr(optimizer_class, "fastopt_class", optimizer_class)
    if not (isinstance(cls, type) and issubclass(cls, _Bound) and hasattr(cls, "rule")):
        raise TypeError(f"optimizer_class must be one of fastopt's optimizers (fastopt.AdamW, fastopt.torch.AdamW, "
                        f"...), got {optimizer_class!r}")
    if _core.eval_point[cls.rule]:  # (its params would be evaluated at y: wrong, and silently)
        raise TypeError(f"{cls.__name__} is evaluated at another point than it trains at (eval()/train()), which "
                        "fastopt.distributed does not switch yet: use fastopt.torch on one process")
    if hasattr(cls, "update_hessian"):  # (its Hessian average would stay 0: sign descent, silently)
        raise TypeError(f"{cls.__name__} takes Hessian estimates (update_hessian), which fastopt.distributed does "
                        f"not pass on to its pieces yet: use fastopt.torch.{cls.__name__} on each process")
    if cls.factored:
        raise TypeError(f"{cls.__name__} keeps one value per row and per column of each matrix, and "
                        "fastopt.distributed steps flat pieces of params: use fastopt.torch."
                        f"{cls.__name__} on each process")
    return cls


class PieceOptimizer(torch.optim.Optimizer):
    """Base of the optimizers that step pieces of their params. A subclass sets ``_params``
    (in param order), ``_steps`` (per group), ``_options`` (``seed``, ``clip_value``),
    ``_state_device`` (where the state lives) and
    ``_local`` / ``_piece_states`` (its pieces and their state dicts, adopted by the fastopt
    optimizers it binds in ``_bind(states)``, states keyed by (param, first element))."""

    _hypers = _torch.Optimizer._hypers
    _check_group = _torch.Optimizer._check_group
    _storage_of = _torch.Optimizer._storage_of
    _check_state = _torch.Optimizer._check_state

    def __init__(self, params: Iterable[Any], optimizer_class: Any, hypers: dict[str, Any],
                 master_weights: bool | str, state_precision: str):
        self.fastopt_class = cls = fastopt_class(optimizer_class)
        defaults = cls.default_hypers()
        for k in hypers:
            if k not in defaults:
                raise TypeError(f"{type(self).__name__}({cls.__name__}) got an unknown hyperparameter '{k}'")
        defaults.update(hypers, master_weights=master_weights, state_precision=state_precision)
        super().__init__(params, defaults)
        self._params = [p for g in self.param_groups for p in g["params"]]
        self._group_of = [j for j, g in enumerate(self.param_groups) for _ in g["params"]]

    def _check_params(self) -> None:
        """ValueError/TypeError for groups and params fastopt cannot step together."""
        for i, p in enumerate(self._params):
            if p.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                raise TypeError(f"param {i}: dtype {p.dtype}; fastopt steps float32, float16 and bfloat16 params")
        for j, g in enumerate(self.param_groups):
            self._check_group(g, sum(len(h["params"]) for h in self.param_groups[:j]))
        if not self._params:
            raise ValueError(f"{type(self).__name__} got no params")
        devices = {p.device for p in self._params}
        if len(devices) > 1:
            raise ValueError(f"the params are on several devices {sorted(map(str, devices))}: "
                             f"{type(self).__name__} needs one")
        if len({id(p) for p in self._params}) != len(self._params):
            raise ValueError("a param appears twice")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step (see the class); returns ``closure()``'s loss where given (run first, with
        grad enabled). ValueError/TypeError where a param has no grad or a malformed one, was
        moved, or a group's hyperparameters cannot be taken: nothing is written (ZeroOptimizer:
        every rank must call it, and every rank raises when any rank's input is bad)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        alone(self._busy, f"{type(self).__name__}.step", self._step)  # (each subclass's)
        return loss

    def _check_hypers(self) -> None:
        """ValueError/TypeError, naming the group, for hyperparameters set in param_groups (by a
        scheduler, by hand) that a step cannot take: checked before anything is written."""
        for j, g in enumerate(self.param_groups):
            try:
                self.fastopt_class._hyper_at(self._hypers(g), self._steps[j])
            except (TypeError, ValueError) as e:
                raise type(e)(f"param group {j}: {e}") from None

    def _adopt(self, p: torch.Tensor, flat: torch.Tensor, offset: int) -> None:
        """Makes param ``p`` live in ``flat`` from element ``offset`` (its values copied there): the
        same storage, but its own version counter, which only writes through ``p`` advance (a
        module's load_state_dict, an init): see _refresh_written."""
        with torch.no_grad():
            flat[offset:offset + p.numel()].copy_(p.reshape(-1))
            p.set_(flat.untyped_storage(), flat.storage_offset() + offset, p.shape, torch.empty(p.shape).stride())

    def _refresh_written(self) -> None:
        """Params written through since the last step (a module's load_state_dict, an init, ``copy_``)
        have their fp32 value taken from them again, in this process's pieces: the master copied
        from the param, a remainder or a Kahan compensation zeroed (they belong to its old value),
        as fastopt.torch does."""
        for i, p in enumerate(self._params):
            if p._version != self._versions[i]:
                self._written(i)
                self._versions[i] = p._version

    def _written(self, i: int) -> None:
        """Param i was written through: its pieces here take their fp32 value from it."""
        for k, piece in enumerate(self._local):
            if piece.param == i:
                for name, kept in self._piece_states[k].items():
                    if name == "master_param":
                        kept.copy_(self._local_params[k])
                    elif name in _torch._KEPT:
                        kept.zero_()

    def _inner_groups(self, pieces: list[tuple[Piece, Any, Any]]) -> tuple[list[int], list[dict[str, Any]]]:
        """The fastopt param groups over (piece, param array, grad array): one per param group
        that has pieces, in group order; returns the groups' indices and the groups."""
        by_group: dict[int, list[tuple[Piece, Any, Any]]] = {}
        for item in pieces:
            by_group.setdefault(self._group_of[item[0].param], []).append(item)
        order = sorted(by_group)
        groups = []
        for j in order:
            storage = self._storage_of(self.param_groups[j])
            groups.append({**self._hypers(self.param_groups[j]), "master_weights": storage.master_weights,
                           "state_precision": storage.state_precision,
                           "params": [p for _, p, _ in by_group[j]], "grads": [g for _, _, g in by_group[j]]})
        return order, groups

    def _seed_used(self) -> int:
        """The seed for the fastopt optimizers (taken only where something rounds stochastically)."""
        return self._options["seed"] if self._random() else 0

    def _random(self) -> bool:
        return any(self._storage_of(g).random for g in self.param_groups)

    def _push(self, inner: _Bound, groups: list[int], snapshot: dict[tuple[int, int], tuple]) -> None:
        """Hyperparameters changed in param_groups (a scheduler's lr) go to ``inner``'s groups
        (``groups``: their param groups); ``snapshot`` remembers what each has."""
        for b, j in enumerate(groups):
            values = self._hypers(self.param_groups[j])
            snap = tuple(values.values())
            if snapshot.get((id(inner), b)) != snap:
                inner.param_groups[b].update(values)
                snapshot[(id(inner), b)] = snap

    # ---- checkpoints --------------------------------------------------------------------
    def _mine(self) -> list[PieceState]:
        """This process's pieces and their state (on the CPU)."""
        return [(p.param, p.start, {k: v.cpu() for k, v in st.items()}) for p, st in zip(self._local, self._piece_states)]

    def _groups_saved(self) -> list[dict[str, Any]]:
        first, out = 0, []
        for g in self.param_groups:
            out.append({**{k: v for k, v in g.items() if k != "params"},
                        "params": list(range(first, first + len(g["params"])))})
            first += len(g["params"])
        return out

    def _whole(self, everyone: Iterable[list[PieceState]]) -> dict[str, Any]:
        """``fastopt.torch``'s checkpoint of the params from all their pieces' state."""
        pieces: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        for got in everyone:
            for param, start, st in got:
                pieces.setdefault(param, []).append((start, st))
        state = {}
        for i, p in enumerate(self._params):
            j = self._group_of[i]
            parts = [st for _, st in sorted(pieces.get(i, []), key=lambda x: x[0])]
            count = self._steps[j]
            if not count or not parts or not parts[0]:
                continue
            entry = {"step": torch.tensor(float(count)),
                     **self.fastopt_class.torch_state(self._hypers(self.param_groups[j]), count)}
            for name in parts[0]:
                whole = torch.cat([st[name].reshape(-1) for st in parts])
                entry[name] = whole if name.endswith("_absmax") else whole.view(p.shape)
            state[i] = entry
        out = {"state": state, "param_groups": self._groups_saved()}
        if self._random():
            out["seed"] = self._options["seed"]
        return out

    def _loader(self, sd: Mapping[str, Any]) -> Callable[[], None]:
        """Validates a checkpoint in ``fastopt.torch``'s format (``_sharded`` may take others);
        returns what commits it: hyperparameters (the storage modes stay this optimizer's), step
        counts, seed and the pieces' state, bound afresh."""
        if not isinstance(sd, Mapping):
            raise ValueError(f"a checkpoint is a mapping, got {type(sd).__name__} (consolidated_state_dict(to=r) "
                             "returns None but on rank r: load the saved file on every rank, or use to=None)")
        missing = [k for k in ("param_groups", *(("zero", "steps", "pieces") if "zero" in sd else ("state",)))
                   if k not in sd]
        if missing:
            raise ValueError(f"the checkpoint lacks {', '.join(missing)}")
        try:
            return self._validated(sd)
        except (KeyError, IndexError, AttributeError, TypeError) as e:
            raise ValueError(f"a malformed checkpoint ({type(e).__name__}: {e})") from None

    def _validated(self, sd: Mapping[str, Any]) -> Callable[[], None]:
        groups = sd["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(own["params"]) for g, own in zip(groups, self.param_groups)):
            raise ValueError("the checkpoint's param groups do not match this optimizer's (their count or sizes)")
        merged = []
        for g, own in zip(groups, self.param_groups):
            group = {**own, **{k: v for k, v in g.items() if k not in ("params", "master_weights", "state_precision")}}
            self._check_group(group)
            merged.append(group)
        steps, states = self._sharded(sd) or self._slice(sd["state"], groups)
        seed = sd.get("seed", self._options["seed"])

        def commit() -> None:
            for own, group in zip(self.param_groups, merged):
                own.update({k: v for k, v in group.items() if k != "params"})
            self._options["seed"] = seed
            self._steps = steps
            self._bind(states)
            self._versions = [p._version for p in self._params]  # (the loaded fp32 values hold)
        return commit

    def _sharded(self, sd: Mapping[str, Any]) -> tuple[list[int], dict] | None:
        """(steps, states) of a checkpoint in a subclass's own format; None for fastopt.torch's."""
        return None

    def _slice(self, saved: Mapping[Any, Any], groups: list[dict[str, Any]]) -> tuple[list[int], dict]:
        """The step counts and this process's pieces' state from a checkpoint in fastopt.torch's
        format (ValueError for state that its storage modes do not keep, or that a resumed step
        lacks)."""
        names = self.fastopt_class.state_names
        known = {*names, *map(absmax_name, names), *_torch._KEPT}
        steps, states = [], {}
        mine: dict[int, list[Piece]] = {}
        for p in self._local:
            mine.setdefault(p.param, []).append(p)
        first = 0
        for j, g in enumerate(groups):
            counts = set()
            storage = self._storage_of(self.param_groups[j])
            hyper = self.fastopt_class._hyper_at(self._hypers(self.param_groups[j]), 0)
            for i, key in enumerate(g["params"], first):
                entry = saved.get(key, {})
                arrays = {k: v for k, v in entry.items() if k in known}
                count = _torch._step_count(key, entry["step"]) if "step" in entry else int(bool(arrays))
                counts.add(count)
                self._check_state(key, j, self._params[i], arrays, storage, "")
                missing = [n for n in self.fastopt_class._required_state(hyper, count, tuple(self._params[i].shape))
                           if n not in arrays and n not in self.fastopt_class.optional_state]
                if missing:
                    raise ValueError(f"param {key!r}: the checkpoint lacks {', '.join(missing)} at step {count}")
                for piece in mine.get(i, []):
                    elems = slice(piece.start, piece.start + piece.numel)
                    blocks = slice(piece.start // QUANT_BLOCK, -(-(piece.start + piece.numel) // QUANT_BLOCK))
                    states[(i, piece.start)] = {
                        k: (v[blocks] if k.endswith("_absmax") else v.reshape(-1)[elems])
                        .to(self._state_device, copy=True)
                        for k, v in arrays.items()}
            if len(counts) > 1:
                raise ValueError(f"param group {j}: the params have different step counts {sorted(counts)}")
            steps.append(counts.pop() if counts else 0)
            first += len(g["params"])
        return steps, states

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "_steps"):
            raise NotImplementedError(f"{type(self).__name__} lays its params out once: build a new one with every "
                                      "group")
        super().add_param_group(param_group)


def take_grads(params: list[Any], views: list[tuple[torch.Tensor, int]], owner: str) -> None:
    """Checks every param (still in the memory ``owner`` gave it) and its grad, then copies the
    grads into their flat buffer (``views``: each param's grad view and param address); each
    param's grad becomes its view there."""
    for i, p in enumerate(params):
        view, ptr = views[i]
        if p.data_ptr() != ptr or p.shape != view.shape or p.dtype != view.dtype:
            raise ValueError(f"param {i} no longer uses the memory {owner} gave it (its .data was replaced or the "
                             f"module moved); build a new {owner} after moving the model")
        g = p.grad
        if g is None:
            raise ValueError(f"param {i} has no grad: {owner} steps every param it holds (give it only the trained "
                             f"ones)")
        if g.is_sparse or g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
            raise ValueError(f"param {i}: its grad is {'sparse ' if g.is_sparse else ''}{g.dtype}"
                             f"{list(g.shape)} on {g.device}, expected {p.dtype}{list(p.shape)} on {p.device}")
    dst, src = [], []
    for (view, _), p in zip(views, params):
        if p.grad.data_ptr() != view.data_ptr() or not p.grad.is_contiguous():
            dst.append(view)
            src.append(p.grad)
            p.grad = view
    if dst:
        torch._foreach_copy_(dst, src)
