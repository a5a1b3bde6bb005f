"""Per-tensor step diagnostics (Optimizer(diagnostics=True)): fused, deterministic, and
without effect on the update."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastopt
from fastopt.lamb import LAMB
from registry import (U, assert_bits_equal, exact_sumsq, grad_steps, norm_error, random_params, refill,
                      supported_isas)
from registry import isa_switch  # noqa: F401  (a fixture)

SHAPES = [(37,), (40, 9), (131072 + 5,), (1,)]


def exact_norm(x) -> float:
    return math.sqrt(exact_sumsq([x]))


def make(cls, kwargs, seed=0, dtype="float32", **options):
    params = random_params(np.random.default_rng(seed), SHAPES, dtype)
    grads = [np.zeros(s, np.float32) for s in SHAPES]
    return cls(params, grads, master_weights=dtype != "float32", **kwargs, **options), params, grads


@pytest.mark.parametrize("cls, kwargs", [(fastopt.AdamW, {}), (fastopt.SGD, dict(lr=0.1, momentum=0.9)),
                                         (LAMB, dict(lr=0.01, weight_decay=0.1)),
                                         (fastopt.Adafactor, dict(lr=0.1, weight_decay=0.1))])
def test_values_match_numpy_and_leave_the_update_unchanged(cls, kwargs):
    opt, params, grads = make(cls, kwargs, diagnostics=True)
    plain, pparams, pgrads = make(cls, kwargs)
    for gs in grad_steps(3, SHAPES, 4):
        refill(grads, [g * 4 for g in gs])
        refill(pgrads, gs)
        before = [p.astype(np.float64) for p in params]
        d = opt.step(grad_scale=4.0).diagnostics
        assert plain.step().diagnostics is None
        after = [p.astype(np.float64) for p in params]
        for i, (b, a, g) in enumerate(zip(before, after, gs)):
            rtol = norm_error(g.size) + U["float64"]  # the exact norm, rounded once
            np.testing.assert_allclose(d.grad_norm[i], exact_norm(g), rtol=rtol)
            np.testing.assert_allclose(d.param_norm[i], exact_norm(b), rtol=rtol)
            # new - old is rounded once in fp32 (exact where they are within a factor 2).
            np.testing.assert_allclose(d.update_norm[i], exact_norm(a - b), rtol=rtol + U["float32"])
            np.testing.assert_allclose(d.update_ratio[i], d.update_norm[i] / d.param_norm[i], rtol=1e-12)
        assert (d.nonfinite_grads == 0).all()
    for p, q in zip(params, pparams):
        assert_bits_equal(p, q, "diagnostics changed the update")


def test_master_weights_param_norm_is_the_fp32_value():
    opt, params, grads = make(fastopt.Adam, {}, dtype="bfloat16", diagnostics=True)
    masters = [m.astype(np.float64) for m in opt.master_params]
    refill(grads, next(iter(grad_steps(1, SHAPES, 1))))
    d = opt.step().diagnostics
    for i, m in enumerate(masters):
        np.testing.assert_allclose(d.param_norm[i], exact_norm(m), rtol=norm_error(m.size) + U["float64"])


@pytest.mark.parametrize("magnitude", [2e19, 1e-30])
def test_norms_of_extreme_magnitudes(magnitude):
    """Params and grads of 2e19 or 1e-30 (and updates of half that): finite, nonzero norms
    within norm_error of the exact ones (fp32 squares made them inf or 0; issue 12)."""
    params = [np.asarray(magnitude * p, np.float32) for p in random_params(np.random.default_rng(4), SHAPES)]
    grads = [np.asarray(magnitude * g, np.float32) for g in random_params(np.random.default_rng(5), SHAPES)]
    before = [p.astype(np.float64) for p in params]
    d = fastopt.SGD(params, grads, lr=0.5, diagnostics=True).step().diagnostics
    for i, (b, g) in enumerate(zip(before, grads)):
        rtol = norm_error(g.size) + U["float64"]
        np.testing.assert_allclose(d.grad_norm[i], exact_norm(g), rtol=rtol)
        np.testing.assert_allclose(d.param_norm[i], exact_norm(b), rtol=rtol)
        np.testing.assert_allclose(d.update_norm[i], exact_norm(params[i].astype(np.float64) - b),
                                   rtol=rtol + U["float32"])
        assert 0 < d.update_norm[i] < np.inf


def test_bit_identical_across_isas_and_threads(isa_switch):
    out = []
    for isa in supported_isas():
        isa_switch(isa)
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            opt, params, grads = make(fastopt.AdamW, {}, diagnostics=True)
            refill(grads, next(iter(grad_steps(2, SHAPES, 1))))
            d = opt.step().diagnostics
            out.append(np.concatenate([d.grad_norm, d.param_norm, d.update_norm]))
    fastopt.set_num_threads(2)
    for o in out[1:]:
        assert_bits_equal(o, out[0], "diagnostics differ")


def test_skipped_step_names_the_tensor_that_blew_up():
    opt, params, grads = make(fastopt.Adam, {}, diagnostics=True, skip_nonfinite=True)
    gs = next(iter(grad_steps(1, SHAPES, 1)))
    gs[2][[5, 70000]] = [np.inf, np.nan]
    refill(grads, gs)
    result = opt.step()
    d = result.diagnostics
    assert result.skipped and list(d.nonfinite_grads) == [0, 0, 2, 0]
    assert d.update_norm is None and d.param_norm is None
    assert "param 2: 2 non-finite grad values" in d.report()


def test_report_lists_extreme_ratios():
    opt, params, grads = make(fastopt.SGD, dict(lr=0.1), diagnostics=True)
    gs = [np.zeros(s, np.float32) for s in SHAPES]
    gs[1][:] = 1.0  # only param 1 moves
    refill(grads, gs)
    text = opt.step().diagnostics.report(top=1)
    assert "largest update/param ratios: param 1" in text
    assert "smallest update/param ratios: param" in text


def test_bad_flag():
    with pytest.raises(TypeError, match="diagnostics"):
        make(fastopt.Adam, {}, diagnostics="yes")
