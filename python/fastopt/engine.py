"""The engine a group of tensors runs on — CPU or CUDA, decided by where its params live —
and, on CUDA, the stream a step is enqueued on."""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any, Sequence

from . import _core
from ._arrays import library
from .cuda import engine as cuda_module

if TYPE_CHECKING:
    from .binding import Keeps

CPU, CUDA = 1, 2  # DLPack device types


class Engine:
    """Binds groups and runs steps on one device. ``kind`` is ``"cpu"`` or ``"cuda"``."""

    def __init__(self, kind: str, device: int = 0, module: Any = None):
        self.kind, self.device, self._module = kind, device, module

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def bind(self, rule: str, params: Sequence, grads: Sequence, keeps: "Keeps", states: Sequence,
             group_sizes: Sequence[int]) -> Any:
        """A bound group (validates every tensor; raises TensorError naming the bad one). The
        state arrays of each param are in the order of ``_core.state_names[rule]``."""
        module = self._module if self.is_cuda else _core
        return module.Group(rule, list(params), list(grads), keeps, list(states), list(group_sizes))

    def rebind_grads(self, group: Any, grads: Sequence, like: Any, stream: Any = None) -> None:
        """Binds new grad tensors into a bound group, where they are not the bound ones (on CUDA
        the device table is rewritten on ``stream``, default the current stream of ``like``'s
        library)."""
        if self.is_cuda:
            group.rebind_grads(list(grads), self.stream(stream, like))
        else:
            group.rebind_grads(list(grads))

    def step(self, group: Any, hypers: list, steps: list[int], stream: Any, like: Any, round_step: int = 0) -> None:
        """One plain step at the given step counts (the functional forms). Stochastic rounding
        draws the random bits of step ``round_step`` (0: the group's largest count + 1)."""
        if self.is_cuda:
            group.step(hypers, self.stream(stream, like), steps=list(steps), round_step=round_step)
        else:
            group.step(hypers, steps, round_step=round_step)

    def bind_switch(self, rule: str, params: Sequence, zs: Sequence, keeps: "Keeps", group_sizes: Sequence[int]) -> Any:
        """A mode switch (fastopt::ModeSwitch) over ``params``, their z arrays and the arrays
        ``keeps`` keeps beside them (no state), in groups of ``group_sizes``; validated as
        :meth:`bind` validates (TensorError naming the bad tensor)."""
        module = self._module if self.is_cuda else _core
        try:
            return module.ModeSwitch(rule, list(params), list(zs), keeps, list(group_sizes))
        except _core.TensorError as e:  # (z is bound as the grad)
            raise _core.TensorError(re.sub(r"\bgrad (\d+)", r"z \1", str(e))) from None

    def switch(self, switch: Any, hypers: list, steps: Sequence[int], to_eval: bool, seed: int, stream: Any,
               like: Any) -> None:
        """Moves the params of a bound mode switch to their eval point (``to_eval``) or back, in
        the groups whose ``steps`` (taken so far) are > 0; on CUDA enqueued on ``stream`` (default:
        the current stream of ``like``'s library)."""
        if self.is_cuda:
            switch.run(hypers, list(steps), to_eval, seed, self.stream(stream, like))
        else:
            switch.run(hypers, list(steps), to_eval, seed)

    def stream(self, stream: Any, like: Any) -> int:
        """The CUDA stream handle to use: ``stream`` when given (an int handle, a
        ``torch.cuda.Stream`` or a ``cupy.cuda.Stream``), else the current stream of the
        library that ``like`` (a param) belongs to."""
        if stream is not None:
            return stream_handle(stream)
        lib = library(like)
        if lib == "other":  # a DLPack producer of a third library: use whichever is loaded
            lib = next((m for m in ("torch", "cupy") if m in sys.modules), "other")
        if lib == "torch":
            import torch
            return torch.cuda.current_stream(self.device).cuda_stream
        if lib == "cupy":
            import cupy
            with cupy.cuda.Device(self.device):
                return cupy.cuda.get_current_stream().ptr
        raise TypeError("cannot tell the current CUDA stream of these tensors: pass stream=")

    def capturing(self, stream: int) -> bool:
        """Whether ``stream`` is being captured into a CUDA graph."""
        return self.is_cuda and self._module.stream_is_capturing(stream)

    def __repr__(self) -> str:
        return f"Engine({self.kind}:{self.device})" if self.is_cuda else "Engine(cpu)"


def stream_handle(stream: Any) -> int:
    """The cudaStream_t of an int, a torch.cuda.Stream (``cuda_stream``) or a cupy Stream (``ptr``)."""
    if isinstance(stream, int) and not isinstance(stream, bool):
        return stream
    for attr in ("cuda_stream", "ptr"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    raise TypeError(f"stream must be an int handle, a torch.cuda.Stream or a cupy.cuda.Stream, got {stream!r}")


def engine_for(array: Any, name: str = "param 0") -> Engine:
    """The engine for a group whose first tensor is ``array`` (None: an empty group, CPU),
    named ``name`` in errors. The binding then checks that every other tensor is on the same
    device."""
    if array is None:
        return Engine("cpu")
    kind, device = _core.device_of(array, name)
    if kind != CUDA:
        return Engine("cpu")  # the CPU engine rejects other devices with its own error
    module = cuda_module()
    if module is None:  # the CPU engine's binding reports it (after any mix of devices)
        return Engine("cpu")
    return Engine("cuda", device, module)
