"""A step's decision from its global grad norm (fastopt/step_control.h, shared by the engines):
norms beyond float32's range clip correctly, and unscaled grads that may overflow float32 count
as non-finite (issue 12, failure 6 and "the non-finite check covers the unscaled values")."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt

FLT_MAX = float(np.finfo(np.float32).max)


def sgd(grads, **options):
    params = [np.zeros_like(g) for g in grads]
    return params, fastopt.SGD(params, [g.copy() for g in grads], lr=1.0, **options)


def test_norm_beyond_float32_clips_by_the_float64_norm():
    """Grads of 3e38: the norm (6e38) overflows float32, where torch's coefficient would be 0
    and nothing would move; the clipped step is lr * max_grad_norm * g / norm."""
    grads = [np.full(4, 3e38, np.float32)]
    params, opt = sgd(grads, max_grad_norm=2.0)
    result = opt.step()
    norm = float(np.sqrt(np.sum(np.float64(grads[0]) ** 2)))
    assert result.grad_norm == pytest.approx(norm, rel=1e-15) and not result.skipped
    np.testing.assert_allclose(params[0], -2.0 * np.float64(grads[0]) / norm, rtol=1e-6)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_unscaled_grads_beyond_float32(clip):
    """Finite grads of 1e36 with a loss scale of 1e-3: unscaled they reach 1e39, beyond float32.
    Unclipped, the step counts as non-finite (skipped, nothing written); clipped, it is taken."""
    grads = [np.full(4, 1e36, np.float32)]
    params, opt = sgd(grads, skip_nonfinite=True, max_grad_norm=clip)
    result = opt.step(grad_scale=1e-3)
    assert result.grad_norm == pytest.approx(2e39, rel=1e-6)
    if clip is None:
        assert result.skipped and opt.steps == [0]
        np.testing.assert_array_equal(params[0], 0.0)
    else:
        assert not result.skipped
        np.testing.assert_allclose(params[0], -0.5, rtol=1e-6)  # each element g / ||g|| = 1/2


def test_step_control_is_torchs_coefficient_within_float32():
    """Within float32's range the coefficient is torch's, in float32: max / (norm + 1e-6)."""
    norm, factor, skip = fastopt._core.step_control(np.float32(0.5), 16.0, 0, True, 1.0)
    assert norm == 2.0 and not skip
    assert factor == np.float32(0.5) * (np.float32(1.0) * (np.float32(1) / (np.float32(2.0) + np.float32(1e-6))))
    assert fastopt._core.step_control(1.0, 1.0, 3, True, 0.0)[2]
    assert not fastopt._core.step_control(1.0, 1.0, 3, False, 0.0)[2]
    assert fastopt._core.step_control(2.0, FLT_MAX ** 2, 0, True, 0.0)[2]
    assert not fastopt._core.step_control(1.0, (2 * FLT_MAX) ** 2, 0, True, 0.0)[2]  # |g * 1| <= |g|
