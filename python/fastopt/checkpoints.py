"""Checkpoints: ``state_dict`` (copies) and ``load_state_dict`` (validated before anything
changes, then copied into the bound arrays)."""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from . import _core
from ._arrays import assign, copy, fill, library, master_copy, to_host
from .hyperparams import Array
from .storage import absmax_blocks, absmax_name, check_seed


class Checkpoints:
    """The checkpoint side of :class:`~fastopt.Optimizer`."""

    @classmethod
    def _required_state(cls, hyper: Any, step: int, shape: Any) -> tuple[str, ...]:
        """The state arrays a checkpoint must hold for a param of ``shape`` in a group at ``step`` steps."""
        return tuple(cls.state_shapes(shape))[: hyper.num_state()] if step > 0 else ()

    def _check_loaded(self, group: int, arrays: list[dict[str, np.ndarray]]) -> None:
        """Raises ValueError for a group's loaded arrays that cannot be resumed from."""

    def state_dict(self) -> dict[str, Any]:
        """A snapshot: copies of the state arrays (on the params' device), hyperparameters and
        step counts (RuntimeError while another thread steps this optimizer: the copy would
        be torn)."""
        return self._alone("state_dict", self._state_dict)

    def _state_dict(self) -> dict[str, Any]:
        # (State is saved as stored: bfloat16 arrays, or 8-bit codes with their absmax arrays,
        # so that a resumed run continues bit for bit.)
        if self._engine.is_cuda:
            self._steps = self._device_steps()
        state: dict[int, dict[str, Any]] = {}
        for i, j in enumerate(self._group_of):
            entry: dict[str, Any] = {"step": self._steps[j]}
            entry.update({k: copy(v) for k, v in self._saved_state(i).items()})
            if self._masters[i] is not None or self._kept.remainders[i] is not None:
                entry["master_param"] = copy(self._master_value(i))
            if self._kept.compensations[i] is not None:  # (as float32, exactly)
                entry["kahan_compensation"] = master_copy(self._kept.compensations[i], f"param {i}")
            state[i] = entry
        groups = []
        first = 0
        for g, n in zip(self.param_groups, self._group_sizes):
            groups.append({**g, "params": list(range(first, first + n))})
            first += n
        out = {"state": state, "param_groups": groups}
        if any(s.random for s in self._storage):
            out["seed"] = self._seed  # (stochastic rounding resumes with the same bits)
        return out

    def _saved_state(self, i: int) -> dict[str, Array]:
        """The state of param i worth saving."""
        return self._state[i]

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict`. Everything is validated before anything changes:
        the groups and their params, every array's shape and dtype (float32 state, or as the
        group's ``state_precision`` stores it: bfloat16, or uint8 codes with float32 absmax
        arrays; master weights and Kahan compensations in float32), step counts (integers >= 0,
        equal within a group), and that every state array a resumed step needs is present.
        State absent from a checkpoint at step 0 is reset to zero."""
        self._alone("load_state_dict", self._load_state_dict, state_dict)

    def _load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        groups = list(state_dict["param_groups"])
        saved = dict(state_dict["state"])
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, this optimizer {len(self.param_groups)}")
        keys = [k for g in groups for k in g["params"]]
        if len(set(keys)) != len(keys):
            raise ValueError("state_dict lists a param key twice")
        unknown = set(saved) - set(keys)
        if unknown:
            raise ValueError(f"state_dict has state for unknown param keys {sorted(map(repr, unknown))}")
        merged_groups, steps, arrays = [], [], []
        first = 0
        for j, (g, n) in enumerate(zip(groups, self._group_sizes)):
            if len(g["params"]) != n:
                raise ValueError(f"param group {j}: state_dict has {len(g['params'])} params, this optimizer {n}")
            values = {k: v for k, v in g.items() if k != "params"}
            bad = set(values) - set(self.defaults)
            if bad:
                raise ValueError(f"param group {j}: unknown hyperparameters {sorted(bad)}")
            merged = {**self.param_groups[j], **values}
            hyper = self._hyper_at(merged, 0)
            group_steps, group_arrays = set(), []
            for i, key in zip(range(first, first + n), g["params"]):
                entry = dict(saved.get(key, {}))
                step = entry.pop("step", 0)
                if isinstance(step, bool) or not isinstance(step, numbers.Integral) or not 0 <= step <= 2**63 - 2:
                    raise ValueError(f"param {i}: step must be an integer >= 0 and <= 2**63 - 2, got {step!r}")
                group_steps.add(int(step))
                group_arrays.append(self._loaded_arrays(i, entry))
            if len(group_steps) > 1:
                raise ValueError(f"param group {j}: params have different step counts {sorted(group_steps)}")
            step = group_steps.pop()
            for i, got in zip(range(first, first + n), group_arrays):
                required = self._required_state(hyper, step, tuple(_core.describe(self._params[i], f"param {i}")[0]))
                if self._storage[j].quantized:
                    required += tuple(absmax_name(s) for s in required)
                missing = [s for s in required if s not in got]
                if missing:
                    raise ValueError(f"param {i}: state_dict lacks {', '.join(missing)} at step {step}")
            self._check_loaded(j, group_arrays)
            merged_groups.append(merged)
            steps.append(step)
            arrays += group_arrays
            first += n
        seed = check_seed(state_dict.get("seed", self._seed), "state_dict's seed")
        # Validated: now commit.
        self._seed = seed
        self._core.set_seed(self._seed)
        for g, merged in zip(self.param_groups, merged_groups):
            dict.update(g, merged)
        created = False
        for i, got in enumerate(arrays):
            for name, a in got.items():
                if name == "master_param":
                    if self._kept.remainders[i] is not None:  # (split on the host)
                        high, low = to_host(self._params[i]).copy(), to_host(self._kept.remainders[i]).copy()
                        _core.split_master(a, high, low)
                        assign(self._params[i], high)
                        assign(self._kept.remainders[i], low)
                    else:
                        assign(self._masters[i], a)
                    continue
                if name == "kahan_compensation":  # (bfloat16 values: narrowed exactly; torch narrows itself)
                    comp = self._kept.compensations[i]
                    assign(comp, a if library(comp) == "torch" else a.astype(ml_dtypes.bfloat16))
                    continue
                base = next((s for s in self.state_names if name == absmax_name(s)), name)
                if base not in self._state[i]:  # (with its absmax array, for 8-bit state)
                    self._state[i][base] = self._new_state(i, base)
                    created = True
                assign(self._state[i][name], a)
            for name, a in self._state[i].items():
                if name not in got:  # absent from a step-0 checkpoint: as a fresh optimizer has it
                    fill(a, self._initial_value(name, self._group_of[i]))
        if created:  # new arrays: rebind (which sets the device's step counts)
            self._steps = steps
            self._bound_states = None
        else:  # same device group (a captured graph stays valid): new step counts
            self._start_at(steps)
        self._refresh()
        self._loaded(arrays)

    def _loaded_arrays(self, i: int, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Param i's arrays from a checkpoint entry, each checked for name, dtype and shape."""
        shape = tuple(_core.describe(self._params[i], f"param {i}")[0])
        storage = self._storage[self._group_of[i]]
        expected = {name: (storage.state_dtype, at) for name, at in self._layouts[i].items()}
        if storage.quantized:
            expected.update({absmax_name(name): ("float32", (absmax_blocks(int(np.prod(at, dtype=np.int64))),))
                             for name, at in self._layouts[i].items()})
        expected.update({"master_param": ("float32", shape), "kahan_compensation": ("float32", shape)})
        got = {}
        for name, value in entry.items():
            if name not in expected and name in map(absmax_name, self.state_names):
                raise ValueError(f"param {i}: state_dict has 8-bit state ('{name}'), this optimizer's "
                                 f"state_precision is {storage.state_precision!r}")
            if name not in expected:
                raise ValueError(f"param {i}: unknown state '{name}'")
            if name == "kahan_compensation" and self._kept.compensations[i] is None:
                raise ValueError(f"param {i}: state_dict has a Kahan compensation, this optimizer none")
            if name == "master_param" and self._masters[i] is None and self._kept.remainders[i] is None:
                raise ValueError(f"param {i}: state_dict has master weights, this optimizer none")
            a = to_host(value)
            dtype, want = expected[name]
            if a.dtype != np.dtype(dtype) or a.shape != want:
                why = "" if name in ("master_param", "kahan_compensation") else \
                    f" (state_precision={storage.state_precision!r})"
                raise ValueError(f"param {i}: state '{name}' is {a.dtype}{list(a.shape)}, "
                                 f"expected {dtype}{list(want)}{why}")
            got[name] = a
        if (self._masters[i] is not None or self._kept.remainders[i] is not None) and "master_param" not in got:
            raise ValueError(f"param {i}: state_dict lacks its master weights")
        if self._kept.compensations[i] is not None and "kahan_compensation" not in got:
            raise ValueError(f"param {i}: state_dict lacks its Kahan compensation")
        return got

    def _loaded(self, arrays: list[dict[str, np.ndarray]]) -> None:
        """Called after load_state_dict copied the arrays in."""
