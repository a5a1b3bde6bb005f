"""Dynamic loss scaling for fp16 training."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Mapping

import numpy as np

from ._arrays import assign, device_array, to_host
from .optimizer import Optimizer, StepResult, real


class DynamicLossScaler:
    """Dynamic loss scaling, with ``torch.amp.GradScaler``'s policy.

    Multiply the loss by :attr:`scale` before the backward pass, then call :meth:`step` with
    the optimizer: the grads are unscaled inside the update (never rewritten), and a step whose
    grads hold an inf or NaN is skipped (nothing written, the step count unchanged). Then the
    scale adapts: after a skipped step it is multiplied by ``backoff_factor``, but never taken
    below ``min_scale``; after ``growth_interval`` steps in a row without one, by
    ``growth_factor``. The scale is a float32, as torch keeps it.

    torch backs off without bound: from 2**16, 143 skipped steps in a row make its scale
    subnormal and 166 make it 0. The floor comes from DeepSpeed's ``min_loss_scale`` and
    Megatron-LM's ``min_scale`` (both 1 by default). At scale 1 the grads are the unscaled ones: a scale below it shrinks them,
    which brings the underflow that loss scaling is there to prevent, and helps only grads
    past float16's maximum (65504), a divergence more than a scaling problem. From the
    default init_scale, 16 skipped steps in a row reach the floor.

    A step skipped with the scale already at ``min_scale`` had non-finite grads at the
    smallest scale allowed: every further step will be skipped, the params no longer change,
    until the grads are finite. :attr:`skipped_at_min_scale` counts such steps in a row, and
    the first one raises a ``RuntimeWarning`` (once per scaler, again after
    :meth:`load_state_dict`). Stop the run on it, or look for the inf or NaN in the model.

    Args:
        init_scale: the first scale (default 2**16), rounded to float32; a normal float32
            >= min_scale.
        growth_factor: > 1 (default 2).
        backoff_factor: in (0, 1) (default 0.5).
        growth_interval: clean steps before growing (>= 1; default 2000).
        min_scale: the lowest scale a backoff reaches (default 1.0), rounded to float32; a
            normal float32 (>= 2**-126, so that neither the scale nor its reciprocal leaves
            float32's normal range) and <= init_scale.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an argument out of its range.

    Its state (scale, the count of clean steps, the hyperparameters) is in :meth:`state_dict`,
    for checkpoints.

    With an optimizer of CUDA params, the scale and the count move to that GPU at the first
    :meth:`step` and stay there: the step reads the scale there, the skip decision and the
    update are taken there, and nothing waits for the GPU. :attr:`scale` is then a 0-d float32
    array of the params' library (multiply the loss by it). As a step never reads the device
    state back, the warning comes when the scaler does: :meth:`state_dict` and
    :attr:`skipped_at_min_scale`.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, min_scale: float = 1.0):
        self.min_scale = _normal_float32("min_scale", min_scale)
        self._scale = _normal_float32("init_scale", init_scale)
        if self._scale < self.min_scale:
            raise ValueError(f"init_scale must be >= min_scale ({self.min_scale!r}), got {init_scale!r}")
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
        self._floor_skips = 0
        self._warned = False
        # (scale, clean steps, floor skips) on a GPU, once used there
        self._device: tuple[Any, Any, Any] | None = None

    @property
    def scale(self) -> Any:
        """The current loss scale (on CUDA: a 0-d float32 array on the GPU)."""
        return self._scale if self._device is None else self._device[0]

    @property
    def skipped_at_min_scale(self) -> int:
        """The steps skipped in a row with the scale already at ``min_scale`` (0 after a step
        is taken or skipped above the floor). On CUDA, reading it waits for the GPU."""
        self._read_device()
        return self._floor_skips

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
                            device_array(like, np.array(self._clean_steps, np.int32)),
                            device_array(like, np.array(self._floor_skips, np.int32)))
        scale, clean, floor_skips = self._device
        result = optimizer.step(grad_scale=scale, skip_nonfinite=True, **kwargs)
        optimizer._update_loss_scale(scale, clean, floor_skips, self.growth_factor, self.backoff_factor,
                                     self.growth_interval, self.min_scale, kwargs.get("stream"))
        return result

    def update(self, found_nonfinite: bool) -> None:
        """Adapts the scale to one step's outcome (done by :meth:`step`; on the host only)."""
        if self._device is not None:
            raise RuntimeError("this scaler lives on a GPU: its step() updates it there")
        # In float32, as torch keeps its scale; a growth that would overflow is not taken.
        if found_nonfinite:
            self._floor_skips = self._floor_skips + 1 if self._scale == self.min_scale else 0
            self._scale = max(float(np.float32(self._scale * self.backoff_factor)), self.min_scale)
            self._clean_steps = 0
            self._warn_at_floor()
        else:
            self._floor_skips = 0
            self._clean_steps += 1
            if self._clean_steps == self.growth_interval:
                grown = self._scale * self.growth_factor
                if grown <= _F32_MAX:
                    self._scale = float(np.float32(grown))
                self._clean_steps = 0

    def _read_device(self) -> None:
        """Copies the state from the GPU where it lives there (waits for it), then warns if
        steps were skipped at the floor."""
        if self._device is not None:
            scale, clean, floor_skips = (to_host(a) for a in self._device)
            self._scale, self._clean_steps, self._floor_skips = float(scale), int(clean), int(floor_skips)
            self._warn_at_floor()

    def _warn_at_floor(self) -> None:
        if self._floor_skips and not self._warned:
            self._warned = True
            warnings.warn(f"DynamicLossScaler: {self._floor_skips} step(s) skipped with the loss scale at "
                          f"min_scale={self.min_scale!r}: the grads are not finite even at the smallest scale "
                          f"allowed, so every step is skipped and the params no longer change; look for the inf "
                          f"or NaN in the model or its loss (or lower min_scale)", RuntimeWarning, stacklevel=4)

    def state_dict(self) -> dict[str, Any]:
        """The scale, the count of clean steps and the hyperparameters (read from the GPU where
        they live there)."""
        self._read_device()
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "clean_steps": self._clean_steps,
                "min_scale": self.min_scale}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict` (validated first: nothing changes on a bad one). A state
        dict saved before ``min_scale`` existed keeps this scaler's ``min_scale``. The count of
        steps skipped at the floor restarts at 0."""
        other = DynamicLossScaler(state["scale"], state["growth_factor"], state["backoff_factor"],
                                  state["growth_interval"], state.get("min_scale", self.min_scale))
        clean = state["clean_steps"]
        if isinstance(clean, bool) or not isinstance(clean, numbers.Integral) or not 0 <= clean < other.growth_interval:
            raise ValueError(f"clean_steps must be an integer in [0, growth_interval), got {clean!r}")
        other._clean_steps = int(clean)
        if self._device is not None:  # stays on its GPU
            assign(self._device[0], np.array(other._scale, np.float32))
            assign(self._device[1], np.array(other._clean_steps, np.int32))
            assign(self._device[2], np.array(0, np.int32))
            other._device = self._device
        self.__dict__.update(other.__dict__)


_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)  # 2**-126, the smallest normal float32


def _normal_float32(name: str, value: Any) -> float:
    """``value`` rounded to float32, or ValueError unless that is finite and normal (>= 2**-126)."""
    v = real(name, value)
    rounded = float(np.float32(v)) if abs(v) <= _F32_MAX else math.inf  # NaN and inf too
    if not (_F32_TINY <= rounded <= _F32_MAX):
        raise ValueError(f"{name} must be a finite, normal float32 (>= 2**-126), got {value!r}")
    return rounded
