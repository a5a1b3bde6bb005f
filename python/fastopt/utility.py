"""What the utility rules' classes share (fastopt/ema.py, fastopt/accumulate.py, Sophia's Hessian
average): each binds its rule as an optimizer over its own arrays (as the rule's params) and
the model's tensors (as its grads), and names them as its user knows them."""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator, Sequence

from ._core import TensorError


@contextlib.contextmanager
def naming(own_role: str, their_role: str) -> Iterator[None]:
    """Re-raises a TensorError of the block with "param i" named ``own_role`` and "grad i"
    ``their_role``."""
    try:
        yield
    except TensorError as e:
        roles = {"param": own_role, "grad": their_role}
        raise TensorError(re.sub(r"\b(param|grad)('s)? (\d+)", lambda m: f"{roles[m[1]]}{m[2] or ''} {m[3]}",
                                 str(e))) from None


def bind_rule(cls: type, own: Sequence[Any], theirs: Sequence[Any], own_role: str, their_role: str,
              **hypers: Any) -> Any:
    """``cls(own, theirs, **hypers)``, its errors named as :func:`naming` names them."""
    if len(own) != len(theirs):
        raise ValueError(f"got {len(theirs)} {their_role}s but {len(own)} {own_role}s")
    with naming(own_role, their_role):
        return cls(list(own), list(theirs), **hypers)
