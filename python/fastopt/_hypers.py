"""Building a rule's hyperparameter struct from a param group, shared by the optimizers."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .optimizer import flag, real


def betas(value: Any) -> tuple[float, float]:
    """(beta1, beta2) from a pair, or TypeError."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {value!r}")
    return real("beta1", value[0]), real("beta2", value[1])


def build(struct: type, group: Mapping[str, Any], reals: Iterable[str] = (), flags: Iterable[str] = (),
          renames: Mapping[str, str] | None = None, **fixed: Any) -> Any:
    """``struct()`` filled from ``group``: ``reals`` as floats, ``flags`` as bools, ``betas``
    (when the group has it) split into beta1/beta2, ``renames`` mapping a group key to the
    struct's field name, ``fixed`` set as given. Raises TypeError for a wrong type and
    ValueError (the rule's own message) for a value out of range."""
    renames = renames or {}
    h = struct()
    for key in reals:
        setattr(h, renames.get(key, key), real(key, group[key]))
    for key in flags:
        setattr(h, renames.get(key, key), flag(key, group[key]))
    if "betas" in group:
        h.beta1, h.beta2 = betas(group["betas"])
    for key, value in fixed.items():
        setattr(h, key, value)
    err = h.check()
    if err:
        raise ValueError(err)
    return h
