"""The one description per optimizer (python/fastopt/catalog.py and each optimizer's class):
found through the C++ registry, and everything derived from it."""

from __future__ import annotations

import inspect
import pathlib
import types

import numpy as np
import pytest
import torch

import fastopt
from fastopt import _core, catalog, functional
from fastopt.bench import SPECS
from fastopt.optimizer import Optimizer

OPTIMIZERS = catalog.OPTIMIZERS
# struct fields a class's own _to_hyper sets (from momentum_form; from eps = (eps1 or None, eps2))
CUSTOM_FIELDS = {"SGD": {"sutskever"}, "Adafactor": {"eps1", "eps2", "eps1_from_dtype"}}
each = pytest.mark.parametrize("cls", OPTIMIZERS, ids=[c.__name__ for c in OPTIMIZERS])


def test_every_rule_of_the_registry_has_its_optimizers_in_order():
    rules = list(_core.rules)
    assert rules[:3] == ["sgd", "adam", "adagrad"]
    assert [c.rule for c in OPTIMIZERS] == sorted((c.rule for c in OPTIMIZERS), key=rules.index)
    assert {c.rule for c in OPTIMIZERS} == set(rules) - set(_core.utility_rules)
    assert set(_core.utility_rules) == {"ema", "accumulate"}  # (fastopt.ParamEMA, fastopt.GradAccumulator)
    assert [c.__name__ for c in OPTIMIZERS if c.rule == "adam"] == ["Adam", "AdamW"]


def test_every_optimizer_has_a_float64_reference_and_registry_cases():
    from reference import reference_for
    from registry import CASES
    assert {c.cls for c in CASES} == set(OPTIMIZERS)
    for cls in OPTIMIZERS:
        assert reference_for(cls.__name__, {}) is not None


def test_an_unmapped_hyperparameter_is_an_error_not_ignored():
    class Odd(fastopt.Lion):
        hyper_defaults = {**fastopt.Lion.hyper_defaults, "flavour": "mint"}
    with pytest.raises(TypeError, match="no mapping of its hyperparameter 'flavour'"):
        Odd._to_hyper(Odd.default_hypers())
    with pytest.raises(TypeError, match="base class"):
        Optimizer([np.zeros(2, np.float32)], [np.zeros(2, np.float32)])


def test_a_module_without_its_optimizer_or_with_another_rule_fails_the_import(monkeypatch):
    empty = types.ModuleType("fastopt.lion")
    monkeypatch.setattr(catalog.importlib, "import_module", lambda name: empty)
    with pytest.raises(ImportError, match="defines no optimizer for the C\\+\\+ rule 'sgd'"):
        catalog._load()

    class Stray(Optimizer):
        rule = "lion"
    Stray.__module__ = "fastopt.sgd"
    wrong = types.ModuleType("fastopt.sgd")
    wrong.Stray = Stray
    monkeypatch.setattr(catalog.importlib, "import_module", lambda name: wrong)
    with pytest.raises(ImportError, match="Stray in fastopt.sgd names the rule 'lion', not 'sgd'"):
        catalog._load()


@each
def test_exported(cls):
    assert getattr(fastopt, cls.__name__) is cls and cls.__name__ in fastopt.__all__


@each
def test_description_maps_to_the_rules_struct(cls):
    """Every hyperparameter default lands in its Hyper field (renamed where the class says)."""
    h = cls._to_hyper(cls.default_hypers())
    assert isinstance(h, _core.rules[cls.rule])
    for key, value in cls.hyper_defaults.items():
        if key == "betas":
            assert (h.beta1, h.beta2) == pytest.approx(value)
        elif isinstance(value, (bool, float)):
            assert getattr(h, cls.hyper_fields.get(key, key)) == pytest.approx(value), key
    for key, value in cls.fixed_fields.items():
        assert getattr(h, key) == value
    # ... and the other way: every field of the struct is set from the description.
    fields = {n for n, v in vars(type(h)).items() if isinstance(v, property)}
    mapped = {cls.hyper_fields.get(k, k) for k in cls.hyper_defaults if k not in ("betas", *cls.custom_hypers)}
    mapped |= {"beta1", "beta2"} if "betas" in cls.hyper_defaults else set()
    assert fields == mapped | set(cls.fixed_fields) | CUSTOM_FIELDS.get(cls.__name__, set())
    assert set(cls.optional_state) <= set(cls.state_names)
    # Public docstrings: the update, the arguments with defaults, state and bytes per param.
    assert cls.__doc__ and "Args:" in cls.__doc__ and "default" in cls.__doc__
    assert "Bytes moved per fp32 param" in cls.__doc__


@each
def test_functional_form_is_derived(cls):
    form = getattr(functional, cls.__name__.lower() + "_")
    assert form.__name__ in functional.__all__
    params = inspect.signature(form).parameters
    P = inspect.Parameter
    names = list(params)
    states = [cls.functional_state_args.get(s, s + "s") for s in cls.state_names]
    assert names[:2 + len(states)] == ["params", "grads", *states]
    for s, arg in zip(cls.state_names, states):
        assert params[arg].kind is P.POSITIONAL_OR_KEYWORD
        # (a factored class's params each take the lists of their dims, None in the others)
        assert (params[arg].default is None) == (s in cls.optional_state or cls.factored), arg
    assert params["step"].kind is P.KEYWORD_ONLY
    assert (params["step"].default is P.empty) == cls.step_dependent
    expected = {}
    for key, value in cls.hyper_defaults.items():
        if key == "betas":
            expected["beta1"], expected["beta2"] = value
        elif key not in cls.functional_excluded:
            expected[key] = P.empty if key in cls.functional_required else value
    storage = names.index("master_params")
    assert {k: params[k].default for k in names[3 + len(states):storage]} == expected
    absmaxes = [cls.functional_state_args.get(s + "_absmax", s + "_absmaxs") for s in cls.state_names]
    assert names[storage:] == ["master_params", "remainders", "compensations",
                               *(absmaxes if cls.eight_bit_state else []),
                               "stochastic_rounding", "state_stochastic_rounding", "seed"]
    assert [params[k].default for k in names[storage:]] == [None] * (len(names) - storage - 3) + [False, False, 0]
    assert f"fastopt.{cls.__name__}" in form.__doc__ and "in place" in form.__doc__
    with pytest.raises(TypeError):
        form([], [], *([[]] * len(states)), step=1, no_such_hyperparameter=1.0)


@each
def test_bench_entry_is_derived(cls):
    spec = SPECS[cls.__name__.lower()]
    assert spec.fastopt_cls is cls and spec.hypers == cls.bench_hypers
    assert (spec.torch_name is not None) == cls.in_torch == hasattr(torch.optim, cls.__name__)
    assert spec.extra_bytes == (4 * len(cls.extra_pass[1]) if cls.extra_pass else 0)


def test_readme_table_of_optimizers_is_the_catalogs():
    """The README's table is generated from the classes' doc_rows (see catalog.markdown_table)."""
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    table = catalog.markdown_table()
    assert table in readme
    assert table.count("\n| `") == sum(len(c.doc_rows) for c in OPTIMIZERS) >= len(OPTIMIZERS)
    assert all(c.doc_rows for c in OPTIMIZERS)
