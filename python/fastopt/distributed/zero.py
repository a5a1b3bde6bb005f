"""ZeRO stage 1 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models"): each rank keeps the optimizer state and fp32 master of its shard only,
steps its shard with one fused fastopt step, and the ranks exchange the updated params."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.distributed as dist

from .. import _core
from .. import torch as _torch
from ..norms import combine
from ..optimizer import alone
from ..results import StepResult
from ..storage import check_seed
from .agree import Agreement
from .layout import Piece, plan
from .pieces import PieceOptimizer, take_grads

__all__ = ["ZeroOptimizer"]


class ZeroOptimizer(PieceOptimizer):
    """A fastopt optimizer sharded over the ranks of a torch.distributed process group (ZeRO
    stage 1: optimizer state partitioning), as a ``torch.optim.Optimizer``.

    The params are gathered into one flat buffer per dtype (each param's memory moves into
    it: keep using the model as is; a param written in place between steps, by a module's
    load_state_dict or an init, is taken as written, its fp32 master from it as fastopt.torch
    does) and cut into pieces of at most 131072 elements
    (fastopt's reduction super-blocks); each rank owns a balanced, contiguous run of pieces of
    each buffer, with their optimizer state and fp32 master (``master_weights``), and nothing
    of the others. A step:

    1. checks every rank's grads and hyperparameters (a rank with a bad input raises the same
       error on every rank: none is left waiting in a collective) and copies the grads into the flat grad buffer (no copy
       where ``p.grad`` is already its view: after the first step, until ``zero_grad()`` sets
       the grads to None);
    2. reduces each rank's shard of the grads to it (sum, then scaled by 1 / world size with
       ``average_grads``, folded into the update), unless ``grads_reduced`` (the grads are
       already reduced, e.g. by DistributedDataParallel); the reduction works in the grad
       buffer, so after a step the grads hold partial sums: read them before ``step()``;
    3. where ``max_grad_norm`` or ``skip_nonfinite`` need it, the global grad norm: each rank
       sums its pieces, the sums are combined over the ranks in fastopt's canonical order, so
       the norm, the clip factor and the skip decision have the same bits for any world size
       and as the non-distributed optimizer;
    4. one fused fastopt step over the rank's pieces (one parallel region); a two-pass rule
       (LAMB, LARS) combines its per-tensor sums over the ranks between its passes, so the trust
       ratio of a param cut across ranks is the whole param's;
    5. each rank broadcasts its updated shard into every rank's params.

    Where the reduced grads have the same bits as the non-distributed optimizer's (grads
    already reduced, or summed exactly), the params after any number of steps have the same bits
    for any world size and as the non-distributed fastopt optimizer (``fastopt.torch``), but for
    stochastic rounding (its random bits are drawn per piece). (A mean of ranks' grads is their
    sum times float32(1 / world size): at world sizes that are not powers of two it rounds.)

    Args:
        params: an iterable of tensors or of param-group dicts (float32, float16 or bfloat16
            params, all on one device: CPU with gloo, CUDA with NCCL). The same shapes, dtypes,
            groups, hyperparameters and options on every rank (ValueError on every rank
            otherwise). Every param must have a grad at every step: leave frozen params out
            (``[p for p in model.parameters() if p.requires_grad]``).
        optimizer_class: the fastopt optimizer to shard (``fastopt.AdamW`` or
            ``fastopt.torch.AdamW``, ...).
        process_group: the torch.distributed group (default: the default group).
        grads_reduced: the grads are already reduced over the ranks (no reduction here).
        average_grads: the reduced grad is the ranks' mean (True, as DistributedDataParallel's),
            or their sum.
        master_weights, state_precision, seed, max_grad_norm, clip_value, skip_nonfinite,
            **hypers: as for :class:`fastopt.torch.Optimizer` (storage modes per group too).

    On CUDA params, global-norm clipping, skipping and the two-pass rules are not available yet
    (NotImplementedError): the CUDA engine cannot take sums combined across ranks mid-step.
    :attr:`last_step` is the last step's :class:`fastopt.StepResult` (its norm where computed).
    Checkpoints: :meth:`state_dict` is this rank's shard (loads into the same world size and
    layout); :meth:`consolidated_state_dict` gathers fastopt.torch's format (loads into any
    world size, and into ``fastopt.torch`` optimizers).
    """

    def __init__(self, params: Iterable[Any], optimizer_class: Any, *, process_group: Any = None,
                 grads_reduced: bool = False, average_grads: bool = True, master_weights: bool | str = False,
                 state_precision: str = "float32", seed: int = 0, max_grad_norm: float | None = None,
                 clip_value: float | None = None, skip_nonfinite: bool = False, **hypers: Any):
        self._group = process_group
        self._agree = Agreement(process_group)
        self._world = dist.get_world_size(process_group)
        self._rank = dist.get_rank(process_group)

        def construct() -> None:  # (every check that may fail on one rank only, agreed)
            PieceOptimizer.__init__(self, params, optimizer_class, hypers, master_weights, state_precision)
            self._grads_reduced = bool(grads_reduced)
            self._average = bool(average_grads)
            self._options = {"seed": check_seed(seed), "clip_value": clip_value}
            self._max_grad_norm = max_grad_norm
            self._skip_nonfinite = bool(skip_nonfinite)
            self._sums = _core.num_sums[self.fastopt_class.rule]
            self._check()
        self._agree("ZeroOptimizer", construct)
        self._busy = threading.Lock()
        self.last_step: StepResult | None = None
        self._state_device = self._params[0].device
        setups = [None] * self._world
        dist.all_gather_object(setups, self._setup(), group=process_group)
        for r, other in enumerate(setups):
            if other != setups[0]:
                raise ValueError(f"ZeroOptimizer: rank {r} has other params (groups, shapes or dtypes), "
                                 f"hyperparameters or options than rank 0")
        self._buckets = plan([tuple(p.shape) for p in self._params], [str(p.dtype)[6:] for p in self._params],
                             self._world)
        self._flatten()
        self._steps = [0] * len(self.param_groups)
        self._bind({})

    # ---- construction -------------------------------------------------------------------
    def _layout(self) -> list:
        return [(j, tuple(p.shape), str(p.dtype)) for j, g in enumerate(self.param_groups) for p in g["params"]]

    def _setup(self) -> str:
        """What every rank must have alike: the layout, the groups' hyperparameters and the options."""
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        options = (self._options, self._max_grad_norm, self._skip_nonfinite, self._average, self._grads_reduced)
        return repr((self._layout(), groups, options))

    def _check(self) -> None:
        """The checks every rank must pass before anything is allocated or moved."""
        if self._max_grad_norm is not None and not 0 <= self._max_grad_norm < float("inf"):
            raise ValueError(f"max_grad_norm must be finite and >= 0, got {self._max_grad_norm}")
        self._check_params()
        if self._params[0].is_cuda and (self._max_grad_norm or self._skip_nonfinite or self._sums):
            raise NotImplementedError("on CUDA params, ZeroOptimizer cannot yet clip by global norm, skip non-finite "
                                      f"steps or run {self.fastopt_class.__name__} (a two-pass rule)")

    def _flatten(self) -> None:
        """One flat param buffer and one flat grad buffer per bucket; every param lives in its
        buffer (its values copied in)."""
        self._flat, self._flat_grads, self._views = [], [], [None] * len(self._params)
        device = self._params[0].device
        for b in self._buckets:
            dtype = getattr(torch, b.dtype)
            flat = torch.empty(b.numel, dtype=dtype, device=device)
            grads = torch.zeros(b.numel, dtype=dtype, device=device)
            for i, at in zip(b.params, b.offsets):
                p = self._params[i]
                self._adopt(p, flat, at)
                self._views[i] = (grads[at:at + p.numel()].view(p.shape), p.data_ptr())
            self._flat.append(flat)
            self._flat_grads.append(grads)
        self._versions = [p._version for p in self._params]

    def _owned(self) -> list[tuple[int, Piece]]:
        """This rank's pieces: (bucket index, piece), by bucket, in bucket order."""
        return [(k, piece) for k, b in enumerate(self._buckets)
                for piece in b.pieces[b.bounds[self._rank]:b.bounds[self._rank + 1]]]

    def _bind(self, states: Mapping[tuple[int, int], dict[str, Any]]) -> None:
        """Binds the fastopt optimizer over this rank's pieces (one param group per param group
        that has pieces here), adopting ``states``: the pieces' state by (param, first element)."""
        owned = self._owned()
        self._inner_order, groups = self._inner_groups(
            [(p, self._flat[k][p.offset:p.offset + p.numel], self._flat_grads[k][p.offset:p.offset + p.numel])
             for k, p in owned])
        self._local = [p for j in self._inner_order for _, p in owned if self._group_of[p.param] == j]
        self._local_params = [a for g in groups for a in g["params"]]
        self._piece_states = [dict(states.get((p.param, p.start), {})) for p in self._local]
        self._inner = None
        if groups:
            self._inner = _torch._inner_class(self.fastopt_class)(
                groups, self._piece_states, clip_value=self._options["clip_value"], seed=self._seed_used())
            self._inner._start_at([self._steps[j] for j in self._inner_order])
        # Every piece's place among all pieces (the order of the combined sums), and each param's
        # pieces there.
        every = [p for b in self._buckets for p in b.pieces]
        index = {(p.param, p.start): n for n, p in enumerate(every)}
        self._pieces_of: list[list[int]] = [[] for _ in self._params]
        for n, p in enumerate(every):
            self._pieces_of[p.param].append(n)
        self._local_index = np.array([index[(p.param, p.start)] for p in self._local], np.int64)
        self._num_pieces = len(every)
        self._snapshot: dict = {}

    # ---- the step -----------------------------------------------------------------------
    def _step(self) -> None:
        self._agree("ZeroOptimizer.step", self._take_inputs)
        self._refresh_written()
        if not self._grads_reduced:
            self._exchange(dist.reduce)
        inv = float(np.float32(1.0 / self._world)) if self._average and not self._grads_reduced else 1.0
        norm, factor, skip = None, inv, False
        if self._max_grad_norm or self._skip_nonfinite:
            norm, factor, skip = self._control(inv)
        if skip:
            self.last_step = StepResult(norm, True, None)
            return
        self._push_hypers()
        combine_sums = self._combine_sums if self._sums else None
        if self._inner is not None:
            if self._params[0].is_cuda:
                self._inner._alone("step", self._inner._step, 1.0 / inv, None, False)
            else:
                self._inner._alone("step", self._inner._step, None, None, False, factor, combine_sums)
        elif combine_sums:  # (no piece here: the other ranks still combine their sums with this one's)
            combine_sums(np.zeros((0, self._sums)))
        self._steps = [s + 1 for s in self._steps]
        self._exchange(dist.broadcast)
        self.last_step = StepResult(norm, False, None)

    def _take_inputs(self) -> None:
        self._check_hypers()
        take_grads(self._params, self._views, "ZeroOptimizer")

    def _exchange(self, op: Callable[..., Any]) -> None:
        """``dist.reduce`` of each rank's shard of the grads to it, or ``dist.broadcast`` of each
        rank's shard of the params from it (shards of uneven sizes: one call per rank)."""
        flats = self._flat_grads if op is dist.reduce else self._flat
        works = []
        for flat, b in zip(flats, self._buckets):
            for r in range(self._world):
                begin, end = b.shard(r)
                if end > begin:
                    peer = r if self._group is None else dist.get_global_rank(self._group, r)
                    works.append(op(flat[begin:end], peer, group=self._group, async_op=True))
        for w in works:
            w.wait()

    def _gather_sums(self, local: np.ndarray, width: int) -> np.ndarray:
        """Every piece's values (``width`` per piece, this rank's in ``local``, by fastopt param),
        summed over the ranks: each piece is one rank's, so the sum adds zeros to it, exactly."""
        full = torch.zeros((self._num_pieces, width), dtype=torch.float64)
        full[torch.from_numpy(self._local_index)] = torch.from_numpy(np.asarray(local, np.float64).reshape(-1, width))
        device = self._params[0].device
        full = full.to(device)
        dist.all_reduce(full, group=self._group)
        return full.cpu().numpy()

    def _fold(self, pieces: np.ndarray) -> np.ndarray:
        """Each param's sums from its pieces' sums (rows), added in order as the canonical sums
        add a tensor's super-blocks."""
        out = np.empty((len(self._params), pieces.shape[1]))
        for i, idx in enumerate(self._pieces_of):
            total = np.zeros(pieces.shape[1])
            for n in idx:
                total = total + pieces[n]
            out[i] = total
        return out

    def _control(self, inv: float) -> tuple[float, float, bool]:
        """The global grad norm, clip factor and skip decision (fastopt/step_control.h), the same on
        every rank."""
        local = np.zeros((len(self._local), 2))
        if self._inner is not None:
            sums, bad = self._inner._core.sumsq("grads")
            local[:, 0], local[:, 1] = sums, bad
        per_param = self._fold(self._gather_sums(local, 2))
        return _core.step_control(inv, combine(list(per_param[:, 0])), int(per_param[:, 1].sum()),
                                  self._skip_nonfinite, self._max_grad_norm or 0.0)

    def _combine_sums(self, sums: np.ndarray) -> None:
        """A two-pass rule's per-tensor sums (this rank's pieces), replaced in place by their
        whole params' sums over every rank."""
        per_param = self._fold(self._gather_sums(sums, self._sums))
        for row, piece in enumerate(self._local):
            sums[row] = per_param[piece.param]

    def _push_hypers(self) -> None:
        if self._inner is not None:
            self._push(self._inner, self._inner_order, self._snapshot)

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This rank's shard: copies of its pieces' state (keyed by (param index, first element)),
        the step counts and the param groups. Loads into a ZeroOptimizer of the same world size,
        rank and params (:meth:`consolidated_state_dict` loads anywhere)."""
        return alone(self._busy, "ZeroOptimizer.state_dict", lambda: {
            "zero": {"world_size": self._world, "rank": self._rank, "layout": self._layout()},
            "steps": list(self._steps), "param_groups": self._groups_saved(),
            "pieces": {(p.param, p.start): {k: v.clone() for k, v in st.items()}
                       for p, st in zip(self._local, self._piece_states)},
            **({"seed": self._options["seed"]} if self._random() else {})})

    def consolidated_state_dict(self, to: int | None = 0) -> dict[str, Any] | None:
        """The whole optimizer's state in ``fastopt.torch``'s format (torch.optim's: ``{"state":
        {param index: {"step": tensor, <state>: tensor shaped as the param, ...}},
        "param_groups": [...]}``, on the CPU), gathered on rank ``to`` of the group (None on the
        others), or on every rank (``to=None``). Every rank must call it. It loads into a
        ZeroOptimizer of any world size and into the ``fastopt.torch`` optimizer of the same class."""
        mine = self._mine()
        if to is None:
            everyone = [None] * self._world
            dist.all_gather_object(everyone, mine, group=self._group)
        else:
            everyone = [None] * self._world if to == self._rank else None
            peer = to if self._group is None else dist.get_global_rank(self._group, to)
            dist.gather_object(mine, everyone, dst=peer, group=self._group)
        return None if everyone is None else self._whole(everyone)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads this rank's :meth:`state_dict` (the same world size, rank and params), or a
        :meth:`consolidated_state_dict` (any world size; also a ``fastopt.torch`` optimizer's
        checkpoint of the same class). Every rank must call it; it is validated on every rank
        before anything changes (ValueError on every rank when any rank's is bad). The param
        groups' hyperparameters are taken from it; the storage modes stay this optimizer's."""
        alone(self._busy, "ZeroOptimizer.load_state_dict",
              lambda: self._agree("ZeroOptimizer.load_state_dict", self._loader, state_dict)())

    def _sharded(self, sd: Mapping[str, Any]) -> tuple[list[int], dict] | None:
        if "zero" not in sd:
            return None
        saved = sd["zero"]
        if (saved["world_size"], saved["rank"]) != (self._world, self._rank) or saved["layout"] != self._layout():
            raise ValueError(f"the shard of rank {saved['rank']} of {saved['world_size']} (or of other params) does "
                             f"not load into rank {self._rank} of {self._world}: load a consolidated_state_dict")
        return list(sd["steps"]), {key: dict(st) for key, st in sd["pieces"].items()}
