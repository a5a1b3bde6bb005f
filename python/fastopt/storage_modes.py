"""The ways an optimizer can store params and their state, one row each: what
``fastopt bench --storage`` times and ``examples/storage_modes_digits.py`` trains with.
Adding a mode is adding its row to :data:`MODES`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["StorageMode", "MODES"]

F32, BF16 = np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16)


@dataclass(frozen=True)
class StorageMode:
    """One way of storing params and state (grads are float32 in every mode).

    Args:
        label: its name in tables.
        dtype: the params' dtype, float32 or bfloat16 (``ml_dtypes.bfloat16``).
        master_weights: the optimizer's ``master_weights`` (False, True, ``"remainder"``,
            ``"kahan"`` or ``"stochastic"``; see :class:`~fastopt.Optimizer`).
        state_precision: how the optimizer stores its state arrays (default ``"float32"``).
    """

    label: str
    dtype: np.dtype
    master_weights: bool | str = False
    state_precision: str = "float32"

    @property
    def options(self) -> dict[str, Any]:
        """The optimizer's keyword arguments for this mode. state_precision is passed only
        where it is not the default, so that the float32-state rows need no such option."""
        options: dict[str, Any] = {"master_weights": self.master_weights}
        if self.state_precision != "float32":
            options["state_precision"] = self.state_precision
        return options


MODES: tuple[StorageMode, ...] = (
    StorageMode("fp32", F32),
    StorageMode("bf16 + fp32 master", BF16, master_weights=True),
    StorageMode("bf16 + remainder", BF16, master_weights="remainder"),
    StorageMode("bf16 + Kahan", BF16, master_weights="kahan"),
    StorageMode("bf16 + stochastic rounding", BF16, master_weights="stochastic"),
    # No master: each update rounded to nearest, so that updates below half a bf16 step of the
    # param are lost. The baseline that shows why the modes above exist.
    StorageMode("bf16 round-to-nearest", BF16),
    StorageMode("fp32 + bf16 state", F32, state_precision="bfloat16"),
    StorageMode("fp32 + bf16 state, stochastic", F32, state_precision="bfloat16_stochastic"),
    StorageMode("fp32 + 8-bit state", F32, state_precision="8bit"),
    StorageMode("bf16 + remainder + 8-bit state", BF16, master_weights="remainder", state_precision="8bit"),
)
