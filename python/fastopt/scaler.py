"""Dynamic loss scaling for fp16 training."""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import numpy as np

from ._arrays import assign, device_array, to_host
from .optimizer import Optimizer, StepResult, real


class DynamicLossScaler:
    """Dynamic loss scaling, with ``torch.amp.GradScaler``'s policy.

    Multiply the loss by :attr:`scale` before the backward pass, then call :meth:`step` with
    the optimizer: the grads are unscaled inside the update (never rewritten), and a step whose
    grads hold an inf or NaN is skipped (nothing written, the step count unchanged). Then the
    scale adapts: after a skipped step it is multiplied by ``backoff_factor``; after
    ``growth_interval`` steps in a row without one, by ``growth_factor``.

    Args:
        init_scale: the first scale (default 2**16).
        growth_factor: > 1 (default 2).
        backoff_factor: in (0, 1) (default 0.5).
        growth_interval: clean steps before growing (>= 1; default 2000).

    Its state (scale and the count of clean steps) is in :meth:`state_dict`, for checkpoints.

    With an optimizer of CUDA params, the scale and the count move to that GPU at the first
    :meth:`step` and stay there: the step reads the scale there, the skip decision and the
    update are taken there, and nothing waits for the GPU. :attr:`scale` is then a 0-d float32
    array of the params' library (multiply the loss by it).
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        self._scale = float(np.float32(_positive("init_scale", init_scale)))
        self.growth_factor = real("growth_factor", growth_factor)
        if not (self.growth_factor > 1 and math.isfinite(self.growth_factor)):
            raise ValueError(f"growth_factor must be finite and > 1, got {growth_factor!r}")
        self.backoff_factor = real("backoff_factor", backoff_factor)
        if not 0 < self.backoff_factor < 1:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, numbers.Integral) \
                or not 1 <= growth_interval < 2 ** 31:
            raise ValueError(f"growth_interval must be an integer in [1, 2**31), got {growth_interval!r}")
        self.growth_interval = int(growth_interval)
        self._clean_steps = 0
        self._device: tuple[Any, Any] | None = None  # (scale, clean steps) on a GPU, once used there

    @property
    def scale(self) -> Any:
        """The current loss scale (on CUDA: a 0-d float32 array on the GPU)."""
        return self._scale if self._device is None else self._device[0]

    def step(self, optimizer: Optimizer, **kwargs: Any) -> StepResult:
        """``optimizer.step`` with the grads unscaled by :attr:`scale` and non-finite steps
        skipped, then :meth:`update` with the outcome (on CUDA, both on the device). Other
        keyword arguments (``stream``) go to the optimizer's step."""
        if optimizer.device == "cpu":
            if self._device is not None:
                raise ValueError("this scaler lives on a GPU now; use one scaler per device")
            result = optimizer.step(grad_scale=self._scale, skip_nonfinite=True, **kwargs)
            self.update(result.skipped)
            return result
        if self._device is None:
            like = optimizer._params[0]
            self._device = (device_array(like, np.array(self._scale, np.float32)),
                            device_array(like, np.array(self._clean_steps, np.int32)))
        scale, clean = self._device
        result = optimizer.step(grad_scale=scale, skip_nonfinite=True, **kwargs)
        optimizer._update_loss_scale(scale, clean, self.growth_factor, self.backoff_factor, self.growth_interval,
                                     kwargs.get("stream"))
        return result

    def update(self, found_nonfinite: bool) -> None:
        """Adapts the scale to one step's outcome (done by :meth:`step`; on the host only)."""
        if self._device is not None:
            raise RuntimeError("this scaler lives on a GPU: its step() updates it there")
        # In float32, as torch keeps its scale; a growth that would overflow is not taken.
        if found_nonfinite:
            self._scale = float(np.float32(self._scale * self.backoff_factor))
            self._clean_steps = 0
        else:
            self._clean_steps += 1
            if self._clean_steps == self.growth_interval:
                grown = self._scale * self.growth_factor
                if grown <= _F32_MAX:
                    self._scale = float(np.float32(grown))
                self._clean_steps = 0

    def state_dict(self) -> dict[str, Any]:
        """The scale and the count of clean steps (read from the GPU where they live there)."""
        if self._device is not None:
            self._scale = float(to_host(self._device[0]))
            self._clean_steps = int(to_host(self._device[1]))
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "clean_steps": self._clean_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict` (validated first: nothing changes on a bad one)."""
        other = DynamicLossScaler(state["scale"], state["growth_factor"], state["backoff_factor"],
                                  state["growth_interval"])
        clean = state["clean_steps"]
        if isinstance(clean, bool) or not isinstance(clean, numbers.Integral) or not 0 <= clean < other.growth_interval:
            raise ValueError(f"clean_steps must be an integer in [0, growth_interval), got {clean!r}")
        other._clean_steps = int(clean)
        if self._device is not None:  # stays on its GPU
            assign(self._device[0], np.array(other._scale, np.float32))
            assign(self._device[1], np.array(other._clean_steps, np.int32))
            other._device = self._device
        self.__dict__.update(other.__dict__)


_F32_MAX = float(np.finfo(np.float32).max)


def _positive(name: str, value: Any) -> float:
    v = real(name, value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return v
