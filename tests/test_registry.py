"""The tests' rounding bound (registry.assert_rounding_close) itself: where it draws the line,
and that it is tight enough to tell a wrong trajectory from rounding."""

from __future__ import annotations

import numpy as np
import pytest

from reference import reference_for
from registry import CASES, U, assert_rounding_close, grad_steps, random_params, rounding_bound

SHAPES = [(37,), (4, 9), (128,), (2, 3, 5)]
STEPS = 100


@pytest.mark.parametrize("implementations", [1, 2])
def test_the_line_is_the_stated_bound(implementations):
    expected = [np.array([2.0, -1.0, 0.5]), np.array([0.25])]  # S = 2
    bound = rounding_bound(7, implementations=implementations) * 2.0
    assert bound == implementations * (16 + 2 * 7) * U["float32"] * 2.0
    assert rounding_bound(7, optimizer="Adadelta") == (16 + 16 * 7) * U["float32"]
    inside = [expected[0] + np.array([0.99 * bound, 0, 0]), expected[1] - 0.99 * bound]
    assert_rounding_close(inside, expected, 7, implementations=implementations)
    outside = [expected[0], expected[1] + 1.01 * bound]
    with pytest.raises(AssertionError, match="exceeds the rounding bound"):
        assert_rounding_close(outside, expected, 7, implementations=implementations)


def test_scale_of_the_run_and_nan():
    expected = [np.array([1e-3])]
    with pytest.raises(AssertionError):  # 1e-8 is far above 18 u * 1e-3 ...
        assert_rounding_close([expected[0] + 1e-8], expected, 1)
    assert_rounding_close([expected[0] + 1e-8], expected, 1, scale=1.0)  # ... not above 18 u * 1
    with pytest.raises(AssertionError):
        assert_rounding_close([np.array([np.nan])], expected, 1, scale=1.0)
    with pytest.raises(AssertionError, match="shape"):
        assert_rounding_close([np.zeros(2)], expected, 1)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_one_percent_lr_error_exceeds_the_bound(case):
    """The bound is loose enough for any correct fp32 run, yet over the tests' 100 steps a run
    whose lr is off by 1% (a float64 one: no rounding at all) lies outside it for every case."""
    lr = case.kwargs.get("lr", case.cls.default_hypers()["lr"])
    initial = random_params(np.random.default_rng(case.seed), SHAPES)
    finals = []
    for factor in (1.0, 1.01):
        ref = reference_for(case.name, {**case.kwargs, "lr": lr * factor})
        params = [p.astype(np.float64) for p in initial]
        for gs in grad_steps(case.seed + 1, SHAPES, STEPS):
            ref.step(params, gs)
        finals.append(params)
    with pytest.raises(AssertionError, match="exceeds the rounding bound"):
        assert_rounding_close(finals[1], finals[0], STEPS, optimizer=case.name)
