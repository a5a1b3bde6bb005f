"""Storage modes: how a param group keeps its params' fp32 values (``master_weights``) and its
optimizer state (``state_precision``). The rules compute in float32 whatever the storage; these
choose the bytes each param costs (README: "Bytes per param")."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Iterable

from . import _core

MASTER_WEIGHTS = (True, False, "remainder", "kahan", "stochastic")
STATE_PRECISIONS = ("float32", "bfloat16", "bfloat16_stochastic", "8bit")
QUANT_BLOCK = _core.numeric.quant_block  # elements per absmax of 8-bit state (fastopt/numeric/quantize8.h)


@dataclass(frozen=True)
class Storage:
    """One param group's storage modes (see ``master_weights`` and ``state_precision`` of
    :class:`~fastopt.Optimizer`)."""

    master_weights: bool | str = False
    state_precision: str = "float32"

    @property
    def state_dtype(self) -> str:
        """The dtype of the state arrays."""
        return {"float32": "float32", "8bit": "uint8"}.get(self.state_precision, "bfloat16")

    @property
    def quantized(self) -> bool:
        return self.state_precision == "8bit"

    @property
    def random(self) -> bool:
        """Whether anything rounds stochastically (with the optimizer's seed)."""
        return self.master_weights == "stochastic" or self.state_precision == "bfloat16_stochastic"

    def check_param(self, dtype: str, where: str) -> None:
        """ValueError naming ``where`` (a param) where these modes cannot keep a param of ``dtype``."""
        if dtype == "float16" and self.master_weights in ("remainder", "kahan"):
            raise ValueError(f"{where}: master_weights={self.master_weights!r} is for bfloat16 params; this param is "
                             "float16: use master_weights=True")


def check_storage(master_weights: Any, state_precision: Any, where: str = "") -> Storage:
    """A Storage from the given values; ValueError naming ``where`` (a param group) otherwise."""
    at = f"{where}: " if where else ""
    if isinstance(master_weights, bool) or master_weights in MASTER_WEIGHTS[2:]:
        pass
    else:
        raise ValueError(f"{at}master_weights must be True, False, 'remainder', 'kahan' or 'stochastic', "
                         f"got {master_weights!r}")
    if state_precision not in STATE_PRECISIONS:
        raise ValueError(f"{at}state_precision must be one of {', '.join(map(repr, STATE_PRECISIONS))}, "
                         f"got {state_precision!r}")
    return Storage(master_weights, state_precision)


def absmax_name(state: str) -> str:
    """The name of the absmax array of 8-bit state array ``state``."""
    return state + "_absmax"


def absmax_blocks(numel: int) -> int:
    """The absmax count of an 8-bit state array of ``numel`` elements."""
    return -(-numel // QUANT_BLOCK)


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed of stochastic rounding as an int; ValueError (naming it ``name``) unless it is an
    integer in [0, 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def check_seed_used(seed: int, storages: Iterable[Storage]) -> None:
    """ValueError for a nonzero seed given where nothing rounds stochastically: it would do nothing."""
    if seed and not any(s.random for s in storages):
        raise ValueError("seed is the seed of stochastic rounding (master_weights='stochastic' or "
                         "state_precision='bfloat16_stochastic')")
