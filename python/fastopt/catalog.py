"""The optimizers, found through the C++ registry of rules.

For each rule id of ``_core.rules`` (``FASTOPT_RULES``' order) but the utility rules, the optimizers are the
:class:`~fastopt.Optimizer` subclasses that ``fastopt/<rule id>.py`` defines (``adam.py``:
Adam and AdamW), in their order there. Each class is its optimizer's one description (rule,
state, hyperparameters and their defaults, docstring, functional form, benchmark entry; see
the class attributes of :class:`~fastopt.Optimizer`): the package's exports, the functional
forms, the benchmark's entries and the CLI's list are all derived from :data:`OPTIMIZERS`.
Adding an optimizer is its rule header and registry line in C++ and that one Python module.
"""

from __future__ import annotations

import importlib

from . import _core
from .optimizer import Optimizer


def _load() -> tuple[type[Optimizer], ...]:
    found: list[type[Optimizer]] = []
    for rule in _core.rules:
        if rule in _core.utility_rules:  # (not optimizers: fastopt/ema.py, fastopt/accumulate.py)
            continue
        try:
            module = importlib.import_module(f"{__package__}.{rule}")
        except ModuleNotFoundError as e:
            raise ImportError(f"the C++ rule '{rule}' has no Python description ({e})") from None
        classes = [c for name, c in vars(module).items()
                   if isinstance(c, type) and issubclass(c, Optimizer) and c.__module__ == module.__name__
                   and not name.startswith("_")]
        if not classes:
            raise ImportError(f"{module.__name__} defines no optimizer for the C++ rule '{rule}'")
        for c in classes:
            if c.rule != rule:
                raise ImportError(f"{c.__name__} in {module.__name__} names the rule '{c.rule}', not '{rule}'")
        found += classes
    return tuple(found)


OPTIMIZERS: tuple[type[Optimizer], ...] = _load()


def markdown_table() -> str:
    """The README's table of optimizers, a row per ``doc_rows`` entry of each class, its state
    from ``state_names``. To refresh the README: ``python -c "from fastopt import catalog;
    print(catalog.markdown_table(), end='')"``."""
    lines = ["| class | update | state | B/param |", "|---|---|---|---|"]
    for cls in OPTIMIZERS:
        notes = dict(cls.optional_state)
        if cls.factored:  # (the state of a param depends on its dims)
            notes.update({s: "params of < 2 dims" for s in cls.state_shapes(())})
            notes.update({s: "per row" if k == 0 else "per column" for k, s in enumerate(cls.state_shapes((1, 1)))})
        state = ", ".join(f"`{s}`" + (f" ({notes[s]})" if s in notes else "") for s in cls.state_names) or "none"
        for label, update, nbytes in cls.doc_rows:
            lines.append(f"| {label or f'`{cls.__name__}`'} | {update} | {state} | {nbytes} |")
    return "\n".join(lines) + "\n"

