"""Checks that every rank passes or every rank fails: a rank that raised alone would leave the
others waiting in the next collective."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist

_KINDS = {k.__name__: k for k in (TypeError, ValueError, NotImplementedError, RuntimeError)}


def comm_device(group: Any) -> torch.device:
    """Where the group's collectives take their tensors (NCCL: the current GPU)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Agreement:
    """``agree(what, fn, *args)``: ``fn(*args)`` on every rank of ``group``; when it raised on any
    rank, every rank raises the error of the first rank that failed, as ``"<what>: rank <r>:
    <message>"`` (TypeError, ValueError, NotImplementedError, or RuntimeError naming any other
    exception). One small all-reduce when every rank passed."""

    def __init__(self, group: Any):
        self._group = group
        self._device = comm_device(group)

    def __call__(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        error, out = None, None
        try:
            out = fn(*args)
        except Exception as e:  # (any: a rank that raised alone would leave the others waiting)
            kind = next((k for k in _KINDS.values() if isinstance(e, k)), None)
            error = (kind.__name__, str(e)) if kind else ("RuntimeError", f"{type(e).__name__}: {e}")
        failed = torch.tensor([error is not None], dtype=torch.int32, device=self._device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=self._group)
        if failed.item():
            errors = [None] * dist.get_world_size(self._group)
            dist.all_gather_object(errors, error, group=self._group)
            rank, (kind, message) = next((r, e) for r, e in enumerate(errors) if e is not None)
            raise _KINDS[kind](f"{what}: rank {rank}: {message}")
        return out
