"""Fused gradient accumulation over micro-batches (the engine's "accumulate" rule, C++
``rules/accumulate.h``): one pass over every tensor per micro-batch, bound once; the pass over
the last micro-batch also sums the accumulated grads' squares, so that the optimizer's step
after it takes no norm pass of its own."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import _core
from ._arrays import state_like, to_host
from ._core import TensorError
from .norms import combine
from .optimizer import Optimizer
from .utility import bind_rule


class _AccumulateStep(Optimizer):
    """The rule over (the accumulators as its params, the micro-batch grads as its grads)."""

    rule = "accumulate"
    hyper_defaults = {"scale": 1.0, "first": False}


@dataclass(frozen=True)
class GradSums:
    """The accumulated grads' per-tensor sums of squares (float64, the canonical order of
    ``fastopt/reduce.h``) and non-finite counts (int64), by accumulator index (NumPy arrays; on
    CUDA, arrays of the grads' library on their GPU, written by the pass without a host sync): what
    :meth:`GradAccumulator.add` returns for the last micro-batch, for ``step(grad_sums=...)`` of
    the optimizer whose grads are the accumulators (it then clips and skips from them, bit for
    bit as from its own norm pass)."""

    sumsq: np.ndarray
    nonfinite: np.ndarray
    accumulators: tuple  # (the arrays summed: an optimizer takes the sums of its own grads only)
    params: tuple = ()  # (fastopt.torch.GradAccumulator's: the params whose grads they are)

    def select(self, accumulators: Any) -> "GradSums":
        """The sums of ``accumulators`` (some of these, in any order), by identity."""
        where = {id(a): i for i, a in enumerate(self.accumulators)}
        index = [where[id(a)] for a in accumulators]
        return GradSums(self.sumsq[index], self.nonfinite[index], tuple(accumulators))

    @property
    def norm(self) -> float:
        """The global L2 norm of the accumulated grads (inf/NaN where one is not finite; on CUDA
        this waits for the pass)."""
        return math.sqrt(combine(to_host(self.sumsq)))

    @property
    def finite(self) -> bool:
        """No accumulated element is inf or NaN (on CUDA this waits for the pass)."""
        return not to_host(self.nonfinite).any()


class GradAccumulator:
    """Accumulates micro-batch grads into float32 accumulators in one fused pass per micro-batch.

    Per element, for each micro-batch's grad ``g`` (of any float dtype)::

        a = a + scale * g        (first=True: a = scale * g, whatever a held)

    in float32 (one fma). Bind the accumulators as the optimizer's grads; after the last
    micro-batch, ``sums = acc.add(scale, last=True)`` then ``opt.step(grad_sums=sums)``: the pass
    that adds the last micro-batch also sums the squares of the results (and counts non-finite
    ones), so the step's clipping (``max_grad_norm``), skipping (``skip_nonfinite``), reported
    norm and diagnostics' grad norms come from those sums with no norm pass over the
    accumulators: bit for bit the norm the step would have computed.

    Args:
        grads: the micro-batch grad arrays (float32, float16 or bfloat16; NumPy, PyTorch, CuPy,
            any DLPack tensor; one device), refilled in place by each backward; only read.
        accumulators: float32 arrays shaped like the grads, updated in place; None (default):
            fastopt allocates them (zeroed) on the grads' device with their library.

    Bytes moved per element and micro-batch: 8 (the accumulator read and written) + the grad's
    bytes (4 or 2).

    Raises:
        :class:`fastopt.TensorError`: an array fastopt cannot take (naming it).
    """

    def __init__(self, grads: Sequence[Any], accumulators: Sequence[Any] | None = None):
        grads = list(grads)
        if accumulators is None:
            accumulators = [state_like(g, f"grad {i}") for i, g in enumerate(grads)]
        accumulators = list(accumulators)
        for i, a in enumerate(accumulators):  # (a 16-bit accumulator would round every micro-batch's sum)
            dtype = _core.describe(a, f"accumulator {i}")[1]
            if dtype != "float32":
                raise TensorError(f"accumulator {i}: dtype {dtype}, expected float32")
        self.grads = grads
        self.accumulators = accumulators
        self._step = bind_rule(_AccumulateStep, self.accumulators, self.grads, "accumulator", "grad")

    def add(self, scale: float = 1.0, *, first: bool = False, last: bool = False,
            stream: Any = None) -> GradSums | None:
        """Adds ``scale`` times the grads into the accumulators, in place (``first``: sets them
        to it). ``scale`` is finite (e.g. 1 / number of micro-batches). ``last``: also returns the
        accumulated grads' :class:`GradSums`, summed by the same pass (else None)."""
        group = self._step.param_groups[0]
        group["scale"], group["first"] = scale, first
        result = self._step._alone("add", self._step._step, None, stream, False, None, None, None, last)
        if not last:
            return None
        sumsq, nonfinite = result.value_sums
        if not self._step._engine.is_cuda:
            sumsq, nonfinite = np.asarray(sumsq, np.float64), np.asarray(nonfinite, np.int64)
        return GradSums(sumsq, nonfinite, tuple(self.accumulators), self._params_of_grads())

    def _params_of_grads(self) -> tuple:
        return ()
