"""CPU offload (Ren et al. 2021, "ZeRO-Offload: Democratizing Billion-Scale Model Training"): the
params and grads stay on the GPU, the fp32 master and the optimizer state in host memory, and
each step runs on fastopt's CPU engine, bucket by bucket, as the grads arrive."""

from __future__ import annotations

import threading
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from .. import _core
from .. import torch as _torch
from ..norms import combine
from ..optimizer import alone
from ..results import StepResult
from ..storage import check_seed
from .layout import Piece
from .pieces import PieceOptimizer, take_grads

__all__ = ["OffloadOptimizer"]


class _Bucket:
    """A run of whole params of one dtype: their flat buffers where the params live (the params
    and their grads are views of them) and their copies in host memory (pinned where the params
    are on a GPU), which fastopt's CPU engine steps."""

    def __init__(self, params: list[tuple[int, Any]], device: torch.device):
        dtype = params[0][1].dtype
        self.indices = [i for i, _ in params]
        self.numel = sum(p.numel() for _, p in params)
        pinned = device.type == "cuda"
        self.param = torch.empty(self.numel, dtype=dtype, device=device)
        self.grad = torch.zeros(self.numel, dtype=dtype, device=device)
        self.host_param = torch.empty(self.numel, dtype=dtype, pin_memory=pinned)
        self.host_grad = torch.zeros(self.numel, dtype=dtype, pin_memory=pinned)
        self.pieces, at = [], 0
        for i, p in params:
            self.pieces.append(Piece(i, 0, p.numel(), at))
            at += p.numel()
        self.arrived: Any = None  # the event of the grads' copy to the host (GPU)
        self.inner: Any = None
        self.order: list[int] = []  # the inner optimizer's param groups' indices

    def view(self, flat: torch.Tensor, piece: Piece, shape: Any = None) -> torch.Tensor:
        v = flat[piece.offset:piece.offset + piece.numel]
        return v if shape is None else v.view(shape)


class OffloadOptimizer(PieceOptimizer):
    """A fastopt optimizer stepping GPU params on the CPU, as a ``torch.optim.Optimizer``.

    The params (and their grads) stay where they are, in their dtype (bfloat16, float16 or
    float32); each param's memory moves into a flat buffer per bucket (runs of whole params of
    one dtype, about ``bucket_numel`` elements each). A param written in place between steps (a
    module's load_state_dict, an init) is taken as written: its host copy and fp32 master are
    taken from it again (as fastopt.torch does). The fp32 master
    (``master_weights``) and the optimizer state live in host memory, the only copy of them; a
    copy of each bucket's params and grads sits in pinned host memory. A step:

    1. checks the grads (every param must have one) and gathers them into the buckets' flat
       grad buffers (no copy where ``p.grad`` is already its view: after the first step, until
       ``zero_grad()`` sets the grads to None);
    2. copies every bucket's grads to the host on a side stream, in order, each copy waiting
       only for the current stream's work so far (the backward pass);
    3. steps each bucket on fastopt's CPU engine as soon as its grads have arrived (while the
       next bucket's grads are still on their way), and copies its updated params back to the
       GPU on another side stream (while the next bucket is stepped);
    4. makes the current stream wait for those copies (the host thread never waits for the
       training stream: only for each bucket's grads).

    With ``max_grad_norm`` or ``skip_nonfinite``, every bucket's grads must have arrived before
    the first is stepped (the global norm needs them all; computed on the host in fastopt's
    canonical order). With CPU params the same steps run with plain copies (no streams): the
    results have the bits of the ``fastopt.torch`` optimizer on the same params.

    Args:
        params: an iterable of tensors or param-group dicts (one device for all).
        optimizer_class: the fastopt optimizer to run (``fastopt.AdamW`` or
            ``fastopt.torch.AdamW``, ...).
        bucket_numel: elements per bucket (default 2**22; a larger param is a bucket alone).
        master_weights: as for :class:`fastopt.torch.Optimizer`; default True (an fp32 master
            of every float16/bfloat16 param, in host memory).
        state_precision, seed, max_grad_norm, clip_value, skip_nonfinite, **hypers: as for
            :class:`fastopt.torch.Optimizer`.

    Checkpoints are in ``fastopt.torch``'s format (state on the CPU): they load into the
    ``fastopt.torch`` optimizer of the same class and into a ZeroOptimizer, and theirs into this.
    :attr:`last_step` is the last step's :class:`fastopt.StepResult`.
    """

    def __init__(self, params: Iterable[Any], optimizer_class: Any, *, bucket_numel: int = 1 << 22,
                 master_weights: bool | str = True, state_precision: str = "float32", seed: int = 0,
                 max_grad_norm: float | None = None, clip_value: float | None = None, skip_nonfinite: bool = False,
                 **hypers: Any):
        super().__init__(params, optimizer_class, hypers, master_weights, state_precision)
        self._check_params()
        if isinstance(bucket_numel, bool) or not isinstance(bucket_numel, int) or bucket_numel < 1:
            raise ValueError(f"bucket_numel must be an integer >= 1, got {bucket_numel!r}")
        if max_grad_norm is not None and not 0 <= max_grad_norm < float("inf"):
            raise ValueError(f"max_grad_norm must be finite and >= 0, got {max_grad_norm}")
        self._options = {"seed": check_seed(seed), "clip_value": clip_value}
        self._max_grad_norm = max_grad_norm
        self._skip_nonfinite = bool(skip_nonfinite)
        self._busy = threading.Lock()
        self.last_step: StepResult | None = None
        self._device = self._params[0].device
        self._state_device = torch.device("cpu")
        self._buckets = self._plan(bucket_numel)
        self._streams = (torch.cuda.Stream(self._device), torch.cuda.Stream(self._device)) \
            if self._device.type == "cuda" else None
        self._views = [None] * len(self._params)
        self._bucket_of = {}
        for b in self._buckets:
            for piece in b.pieces:
                p = self._params[piece.param]
                self._adopt(p, b.param, piece.offset)
                self._views[piece.param] = (b.view(b.grad, piece, p.shape), p.data_ptr())
                self._bucket_of[piece.param] = (b, piece)
            b.host_param.copy_(b.param)
        self._versions = [p._version for p in self._params]
        self._steps = [0] * len(self.param_groups)
        self._bind({})

    def _plan(self, bucket_numel: int) -> list[_Bucket]:
        """Runs of whole params of one dtype, in param order, about bucket_numel elements each."""
        buckets = []
        for dtype in dict.fromkeys(p.dtype for p in self._params):
            run: list[tuple[int, Any]] = []
            for i, p in enumerate(self._params):
                if p.dtype != dtype:
                    continue
                if run and sum(q.numel() for _, q in run) + p.numel() > bucket_numel:
                    buckets.append(_Bucket(run, self._device))
                    run = []
                run.append((i, p))
            if run:
                buckets.append(_Bucket(run, self._device))
        return buckets

    def _bind(self, states: Mapping[tuple[int, int], dict[str, Any]]) -> None:
        """Binds one fastopt optimizer per bucket over its host copies, adopting ``states``
        (by (param, 0))."""
        self._local, self._local_params, self._piece_states = [], [], []
        for b in self._buckets:
            b.order, groups = self._inner_groups([(pc, b.view(b.host_param, pc), b.view(b.host_grad, pc))
                                                  for pc in b.pieces])
            local = [pc for j in b.order for pc in b.pieces if self._group_of[pc.param] == j]
            piece_states = [dict(states.get((pc.param, 0), {})) for pc in local]
            b.inner = _torch._inner_class(self.fastopt_class)(
                groups, piece_states, clip_value=self._options["clip_value"], seed=self._seed_used())
            b.inner._start_at([self._steps[j] for j in b.order])
            self._local += local
            self._local_params += [a for g in groups for a in g["params"]]
            self._piece_states += piece_states
        self._snapshot: dict = {}

    # ---- the step -----------------------------------------------------------------------
    def _written(self, i: int) -> None:
        b, piece = self._bucket_of[i]
        b.view(b.host_param, piece).copy_(self._params[i].reshape(-1))  # (then its master, from it)
        super()._written(i)

    def _step(self) -> None:
        self._check_hypers()
        take_grads(self._params, self._views, "OffloadOptimizer")
        self._refresh_written()
        self._to_host()
        norm, factor, skip = None, None, False
        if self._max_grad_norm or self._skip_nonfinite:
            norm, factor, skip = self._control()
        if skip:
            self.last_step = StepResult(norm, True, None)
            return
        current = torch.cuda.current_stream(self._device) if self._streams else None
        for b in self._buckets:
            if b.arrived is not None:
                b.arrived.synchronize()
            self._push(b.inner, b.order, self._snapshot)
            b.inner._alone("step", b.inner._step, None, None, False, factor)
            if self._streams:
                with torch.cuda.stream(self._streams[1]):
                    b.param.copy_(b.host_param, non_blocking=True)
            else:
                b.param.copy_(b.host_param)
        if self._streams:
            current.wait_stream(self._streams[1])
            current.wait_stream(self._streams[0])
        self._steps = [s + 1 for s in self._steps]
        self.last_step = StepResult(norm, False, None)

    def _to_host(self) -> None:
        """Each bucket's grads to its host copy (GPU: on the first side stream, after the work
        enqueued so far on the current one; an event marks each bucket's arrival)."""
        if not self._streams:
            for b in self._buckets:
                b.host_grad.copy_(b.grad)
            return
        copies = self._streams[0]
        copies.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(copies):
            for b in self._buckets:
                b.host_grad.copy_(b.grad, non_blocking=True)
                b.arrived = torch.cuda.Event()
                b.arrived.record(copies)

    def _control(self) -> tuple[float, float, bool]:
        """The global grad norm, clip factor and skip decision over every bucket's grads (on the
        host, once they have all arrived)."""
        sums = np.zeros((len(self._params), 2))
        for b in self._buckets:
            if b.arrived is not None:
                b.arrived.synchronize()
            got, bad = b.inner._core.sumsq("grads")
            params = [pc.param for j in b.order for pc in b.pieces if self._group_of[pc.param] == j]
            sums[params, 0], sums[params, 1] = got, bad
        return _core.step_control(1.0, combine(list(sums[:, 0])), int(sums[:, 1].sum()), self._skip_nonfinite,
                                  self._max_grad_norm or 0.0)

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``fastopt.torch``'s format (torch.optim's), the state copied to the CPU."""
        return alone(self._busy, "OffloadOptimizer.state_dict", lambda: self._whole([self._mine()]))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads a checkpoint in ``fastopt.torch``'s format (this optimizer's, a ZeroOptimizer's
        consolidated one, a ``fastopt.torch`` optimizer's of the same class): validated before
        anything changes (ValueError); hyperparameters taken, storage modes kept."""
        alone(self._busy, "OffloadOptimizer.load_state_dict", lambda: self._loader(state_dict)())

