"""What a step returns: :class:`StepResult` and its per-tensor :class:`Diagnostics`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import to_host


@dataclass(frozen=True)
class Diagnostics:
    """Per-tensor numbers of one step, by param index (arrays of float64, counts int64).

    ``grad_norm``: L2 norm of each grad after unscaling, before clipping; ``nonfinite_grads``:
    its count of inf/NaN elements; ``param_norm``: L2 norm of the param's fp32 value before
    the update; ``update_norm``: L2 norm of the change the update made; ``update_ratio``:
    update_norm / param_norm (inf where the param was 0). The last three are None for a
    skipped step. All norms come from the deterministic fused reductions.

    On the CUDA engine every field is an array of the params' library on their GPU, filled by
    the step's kernels without a host sync; a skipped step's last three are NaN there."""

    grad_norm: np.ndarray
    nonfinite_grads: np.ndarray
    param_norm: np.ndarray | None = None
    update_norm: np.ndarray | None = None
    update_ratio: np.ndarray | None = None

    def report(self, top: int = 5) -> str:
        """Text naming the tensors to look at: those with non-finite grads, then those with
        the largest update/param ratios (a training run blowing up) and the smallest (a
        tensor not learning). (On CUDA this waits for the step's results.)"""
        grad_norm, nonfinite = to_host(self.grad_norm), to_host(self.nonfinite_grads)
        ratio = None if self.update_ratio is None else to_host(self.update_ratio)
        lines = [f"param {i}: {nonfinite[i]} non-finite grad values (grad norm {grad_norm[i]:.3g})"
                 for i in np.flatnonzero(nonfinite)]
        if ratio is not None and len(ratio) and not np.isnan(ratio).all():
            order = np.argsort(-np.nan_to_num(ratio, nan=np.inf), kind="stable")
            for label, picks in (("largest", order[:top]), ("smallest", order[::-1][:top])):
                lines.append(f"{label} update/param ratios: " + ", ".join(
                    f"param {i} {ratio[i]:.3g}" for i in picks))
        return "\n".join(lines) or "no tensors"


@dataclass(frozen=True)
class StepResult:
    """What a step did. ``grad_norm``: the global L2 norm of the grads after unscaling and
    before any clipping (None when the step computed none); ``skipped``: True when the step
    was skipped for a non-finite grad (nothing was written and the step count did not advance);
    ``diagnostics``: per-tensor numbers when the optimizer's ``diagnostics`` is on.

    On the CUDA engine the step never waits for the GPU, so ``grad_norm`` (float64) and
    ``skipped`` (bool) are 0-d arrays of the params' library on their GPU, written by the
    step's kernels on the step's stream (``float()``/``bool()`` on them waits for the current
    stream: after ``step(stream=...)`` on another, synchronise that stream first), wherever the
    step computed the norm; otherwise ``grad_norm`` is None and ``skipped`` the plain False."""

    grad_norm: float | None
    skipped: bool
    diagnostics: Diagnostics | None = None
    value_sums: tuple | None = None  # (GradAccumulator's: the new values' sums, as GradSums holds them)
