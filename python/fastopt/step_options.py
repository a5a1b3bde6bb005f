"""Step options: clipping by global norm and by value, skipping non-finite steps, reporting
the grad norm, diagnostics, and the loss scale a step's grads carry."""

from __future__ import annotations

import math
from typing import Any


from . import _core
from ._arrays import data_ptr, library
from .hyperparams import flag, optional_positive, real


class StepOptions:
    """The step options of :class:`~fastopt.Optimizer` (see its docstring), validated when set."""

    @property
    def max_grad_norm(self) -> float | None:
        """Clip by global grad norm (None: off); see the class docstring."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: float | None) -> None:
        self._max_grad_norm = optional_positive("max_grad_norm", value)

    @property
    def clip_value(self) -> float | None:
        """Clamp every grad element to +-clip_value (None: off)."""
        return self._clip_value

    @clip_value.setter
    def clip_value(self, value: float | None) -> None:
        self._clip_value = optional_positive("clip_value", value)

    @property
    def skip_nonfinite(self) -> bool:
        """Skip a step whose grads hold an inf or NaN."""
        return self._skip_nonfinite

    @skip_nonfinite.setter
    def skip_nonfinite(self, value: bool) -> None:
        self._skip_nonfinite = flag("skip_nonfinite", value)

    @property
    def report_grad_norm(self) -> bool:
        """Compute the global grad norm at every step."""
        return self._report_grad_norm

    @report_grad_norm.setter
    def report_grad_norm(self, value: bool) -> None:
        self._report_grad_norm = flag("report_grad_norm", value)

    @property
    def diagnostics(self) -> bool:
        """Report per-tensor :class:`Diagnostics` with every step."""
        return self._diagnostics

    @diagnostics.setter
    def diagnostics(self, value: bool) -> None:
        self._diagnostics = flag("diagnostics", value)

    def _grad_scale(self, grad_scale: Any) -> tuple[float, int]:
        """(the loss scale, validated: the engine unscales by float32(1 / grad_scale); the
        device address of a loss scale held in GPU memory or 0)."""
        if grad_scale is None:
            return 1.0, 0
        if self._engine.is_cuda and library(grad_scale) in ("torch", "cupy"):
            try:
                shape, dtype, _ = _core.describe(grad_scale, "grad_scale")
                got = f"{dtype}{list(shape)} on {tuple(_core.device_of(grad_scale))}"
                fits = dtype == "float32" and math.prod(shape) == 1 and \
                    tuple(_core.device_of(grad_scale)) == (2, self._engine.device)
            except _core.TensorError as e:
                got, fits = str(e), False
            if not fits:
                raise ValueError(f"grad_scale must be a number or a one-element float32 array on {self.device}, "
                                 f"got {got}")
            return 1.0, data_ptr(grad_scale)
        return real("grad_scale", grad_scale), 0  # its range is checked by the step (C++)
