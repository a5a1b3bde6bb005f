"""tests/cpp/rule_cases.inc (the C++ tests' expected values) is what tests/cpp/make_rule_cases.py
writes from the Python API now: regenerated in memory and compared, so it can never go stale."""

import importlib.util
import sys
from pathlib import Path

CPP_TESTS = Path(__file__).resolve().parent / "cpp"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_rule_cases", CPP_TESTS / "make_rule_cases.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_rule_cases_inc_is_current():
    gen = load_generator()
    committed = (CPP_TESTS / "rule_cases.inc").read_text()
    regenerated = gen.generate()
    assert committed == regenerated, (
        "tests/cpp/rule_cases.inc is stale: run python tests/cpp/make_rule_cases.py and commit it")


def test_every_rule_has_a_case():
    from fastopt import _core

    gen = load_generator()
    assert {c.cls.rule for c in gen.CASES} == set(_core.rules)
