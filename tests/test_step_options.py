"""Step options folded into the update pass (python/fastopt/optimizer.py, element.h's
GradTransform): unscaling, clipping by global norm and by value, skipping non-finite steps,
reporting the grad norm; checked against torch.nn.utils and torch.optim."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastopt
from fastopt.norms import l2_norms
from reference import reference_for
from registry import (U, Magnitudes, assert_bits_equal, assert_rounding_close, case_by_id, exact_sumsq, grad_steps,
                      norm_error, random_params, refill, supported_isas)
from registry import isa_switch  # noqa: F401  (a fixture)

SHAPES = [(37,), (4, 9), (300,), (2, 3, 5)]
CASE_IDS = ["sgd-momentum", "adam-weight_decay", "adamw-amsgrad", "adafactor-weight_decay"]
# A global grad norm computed in fp32 errs by at most NORM_U u relative: fastopt's by
# registry.norm_error of its largest tensor; torch's per-tensor norms sum at most 300 squares
# by cascade summation (under log2(300) + 1 = 10 u) and then the 4 norms (2 u), and the
# square root halves that (plus its own rounding).
NORM_U = max(norm_error(max(math.prod(s) for s in SHAPES)) / U["float32"], 12 / 2 + 1)
# torch's clip coefficient, max_norm / (norm + 1e-6) in fp32, errs by NORM_U + 2 u and scales
# the step's grads, so a step's update: up to that many u of the largest update per step.
CLIP_EXTRA_U = NORM_U + 2


def torch64_opt(case, initial):
    """torch.optim in float64 (its exact counterpart), params from ``initial``."""
    tparams = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float64)) for p in initial]
    return getattr(torch.optim, case.name)(tparams, **case.kwargs), tparams


def make(case, shapes=SHAPES, seed=0, **options):
    params = random_params(np.random.default_rng(seed), shapes)
    grads = [np.zeros(s, np.float32) for s in shapes]
    return case.cls(params, grads, **case.kwargs, **options), params, grads


def torch_opt(case, initial):
    tparams = [torch.nn.Parameter(torch.tensor(p)) for p in initial]
    return getattr(torch.optim, case.name)(tparams, **case.kwargs), tparams


@pytest.mark.parametrize("case_id", CASE_IDS)
@pytest.mark.parametrize("max_norm", [0.5, 5.0])
def test_clip_by_norm_equals_torch_clip_grad_norm_then_step(case_id, max_norm):
    """fastopt's and torch's fp32 runs each within the rounding bound (plus torch's clip
    coefficient error) of torch's float64 run; the norms within NORM_U of the exact one."""
    case = case_by_id(case_id)
    opt, params, grads = make(case, max_grad_norm=max_norm)
    topt, tparams = torch_opt(case, [p.copy() for p in params])
    topt64, tparams64 = torch64_opt(case, params)
    magnitudes = Magnitudes()
    magnitudes.see("param", params)
    clipped, steps = 0, 30
    for gs in grad_steps(case.seed, SHAPES, steps):
        refill(grads, gs)
        for p, p64, g in zip(tparams, tparams64, gs):
            p.grad, p64.grad = torch.tensor(g), torch.tensor(g, dtype=torch.float64)
        total = float(torch.nn.utils.clip_grad_norm_(tparams, max_norm))
        exact = float(torch.nn.utils.clip_grad_norm_(tparams64, max_norm))
        clipped += exact > max_norm
        topt.step()
        before = [p.detach().numpy().copy() for p in tparams64]
        topt64.step()
        magnitudes.see("param", [p.detach().numpy() for p in tparams64])
        magnitudes.see("update", [p.detach().numpy() - b for p, b in zip(tparams64, before)])
        result = opt.step()
        assert result.skipped is False
        assert total == pytest.approx(exact, rel=NORM_U * U["float32"]), "torch's fp32 norm itself"
        assert result.grad_norm == pytest.approx(exact, rel=NORM_U * U["float32"])
    assert 0 < clipped  # the option was exercised
    exact = [p.detach().numpy() for p in tparams64]
    bound = dict(extra_per_step=CLIP_EXTRA_U * magnitudes["update"] / magnitudes["param"], scale=magnitudes["param"])
    assert_rounding_close([p.detach().numpy() for p in tparams], exact, steps, **bound,
                          msg="torch.optim fp32 itself vs float64")
    assert_rounding_close(params, exact, steps, **bound, msg="fastopt vs torch.optim float64")


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_clip_by_value_equals_torch_clip_grad_value_then_step(case_id):
    case = case_by_id(case_id)
    opt, params, grads = make(case, clip_value=0.7)
    topt, tparams = torch_opt(case, [p.copy() for p in params])
    for gs in grad_steps(case.seed, SHAPES, 20):
        refill(grads, gs)
        for p, g in zip(tparams, gs):
            p.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_value_(tparams, 0.7)
        topt.step()
        assert opt.step().grad_norm is None
    # Clamping is exact: two fp32 implementations within twice the rounding bound.
    assert_rounding_close(params, [e.detach().numpy() for e in tparams], 20, implementations=2)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_grad_scale_unscales_exactly(case_id):
    """Grads carrying a power-of-two loss scale, unscaled in the update: bit-identical to
    unscaled grads, and the grad buffers are never rewritten."""
    case = case_by_id(case_id)
    a, pa, ga = make(case, max_grad_norm=1.0)
    b, pb, gb = make(case, max_grad_norm=1.0)
    for gs in grad_steps(case.seed, SHAPES, 15):
        refill(ga, gs)
        refill(gb, [g * np.float32(1024.0) for g in gs])
        before = [g.copy() for g in gb]
        ra, rb = a.step(), b.step(grad_scale=1024.0)
        assert ra.grad_norm == rb.grad_norm
        for g, h in zip(gb, before):
            assert_bits_equal(g, h, "grads rewritten")
    for p, q in zip(pa, pb):
        assert_bits_equal(p, q, "scaled run differs")


@pytest.mark.parametrize("case_id", CASE_IDS)
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_step_is_skipped_and_nothing_changes(case_id, bad):
    case = case_by_id(case_id)
    opt, params, grads = make(case, skip_nonfinite=True, max_grad_norm=1.0)
    ref, rparams, rgrads = make(case, max_grad_norm=1.0)
    seq = list(grad_steps(case.seed, SHAPES, 8))
    for t, gs in enumerate(seq):
        refill(grads, gs)
        refill(rgrads, gs)
        opt.step()
        ref.step()
        if t == 3:  # a poisoned step: skipped, every buffer as it was
            before = {i: {k: v.copy() for k, v in s.items()} for i, s in opt.state.items()}
            params_before = [p.copy() for p in params]
            grads[1].flat[5] = bad
            result = opt.step()
            assert result.skipped is True and not math.isfinite(result.grad_norm)
            assert opt.steps == [t + 1]
            for p, q in zip(params, params_before):
                assert_bits_equal(p, q, "param changed by a skipped step")
            for i, s in opt.state.items():
                for k, v in s.items():
                    assert_bits_equal(v, before[i][k], f"state {k} changed by a skipped step")
    for p, q in zip(params, rparams):
        assert_bits_equal(p, q, "the skipped step left a trace")


def test_nonfinite_without_skip_propagates_like_torch():
    case = case_by_id("adam-default")
    opt, params, grads = make(case)
    grads[0][0] = np.nan
    assert opt.step() == fastopt.optimizer.StepResult(None, False)
    assert np.isnan(params[0][0]) and np.isfinite(params[1]).all()


def test_report_grad_norm_is_the_deterministic_global_norm():
    case = case_by_id("adamw-default")
    opt, params, grads = make(case, report_grad_norm=True)
    for gs in grad_steps(1, SHAPES, 3):
        refill(grads, gs)
        norm = opt.step(grad_scale=4.0).grad_norm
        assert norm == l2_norms(grads).total / 4.0
        expected = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in gs)) / 4.0
        assert norm == pytest.approx(expected, rel=NORM_U * U["float32"])


HUGE = 2e19  # fp32 squares overflow beyond ~1.8e19


def huge_grads(magnitude, seed):
    """Finite float32 grads of ``magnitude`` times [0.5, 1], random signs."""
    rng = np.random.default_rng(seed)
    return [np.asarray(magnitude * rng.uniform(0.5, 1, s) * rng.choice([-1.0, 1.0], s), np.float32) for s in SHAPES]


def global_norm_close(norm, gs):
    """The global norm of ``gs`` within registry.norm_error of the exact one (itself rounded once)."""
    rel = norm_error(max(g.size for g in gs), len(gs)) + U["float64"]
    return norm == pytest.approx(math.sqrt(exact_sumsq(gs)), rel=rel, abs=0)


@pytest.mark.parametrize("magnitude", [HUGE, float(np.finfo(np.float32).max)])
def test_grad_norm_of_huge_finite_grads(magnitude):
    """Finite grads of 2e19 or FLT_MAX: a finite global norm, the exact one within norm_error
    (fp32 squares overflowed: grad_norm was inf; issue 12), and a step that is taken."""
    opt, params, grads = make(case_by_id("sgd-plain"), skip_nonfinite=True, report_grad_norm=True)
    gs = huge_grads(magnitude, 7)
    refill(grads, gs)
    result = opt.step(grad_scale=2.0)
    assert not result.skipped and opt.steps == [1]
    assert global_norm_close(2 * result.grad_norm, gs)


def clipped_run(case, steps):
    """``steps`` steps of ``case`` with max_grad_norm=1 and grads of 2e19: (params, norms, grads)."""
    opt, params, grads = make(case, max_grad_norm=1.0)
    norms, seen = [], []
    for t in range(steps):
        gs = huge_grads(HUGE, t)
        refill(grads, gs)
        norms.append(opt.step().grad_norm)
        seen.append(gs)
    return params, norms, seen


@pytest.mark.parametrize("case_id", ["sgd-momentum", "adamw-default"])
def test_clip_huge_grads_matches_float64_reference_on_every_isa(case_id, isa_switch):
    """max_grad_norm with grads of 2e19: each grad scaled by max_norm / (norm + 1e-6) from the
    finite norm, then the step, as the float64 reference does it (an fp32 norm was inf, the
    clip factor 0: nothing moved; issue 12); the same bits on every ISA and thread count."""
    case, steps = case_by_id(case_id), 3
    runs = []
    for isa in supported_isas():
        isa_switch(isa)
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            runs.append(clipped_run(case, steps))
    fastopt.set_num_threads(2)
    params, norms, seen = runs[0]
    for other, other_norms, _ in runs[1:]:
        assert other_norms == norms
        for a, b in zip(other, params):
            assert_bits_equal(a, b, "ISA or thread count")
    ref_params = [p.astype(np.float64) for p in random_params(np.random.default_rng(0), SHAPES)]
    ref = reference_for(case.name, case.kwargs)
    magnitudes = Magnitudes()
    magnitudes.see("param", ref_params)
    for norm, gs in zip(norms, seen):
        assert global_norm_close(norm, gs)
        coef = min(1.0, 1.0 / (math.sqrt(exact_sumsq(gs)) + 1e-6))
        before = [r.copy() for r in ref_params]
        ref.step(ref_params, [g.astype(np.float64) * coef for g in gs])
        magnitudes.see("param", ref_params)
        magnitudes.see("update", [r - b for r, b in zip(ref_params, before)])
    bound = dict(extra_per_step=CLIP_EXTRA_U * magnitudes["update"] / magnitudes["param"], scale=magnitudes["param"])
    assert_rounding_close(params, ref_params, steps, optimizer=case.name, **bound)


def test_half_params_with_masters_and_every_option():
    case = case_by_id("adamw-amsgrad")
    params = random_params(np.random.default_rng(3), SHAPES, "bfloat16")
    grads = [np.zeros(s, np.float32) for s in SHAPES]
    opt = case.cls(params, grads, master_weights=True, max_grad_norm=0.3, clip_value=0.05,
                   skip_nonfinite=True, **case.kwargs)
    for gs in grad_steps(2, SHAPES, 5):
        refill(grads, [g * 8 for g in gs])
        assert not opt.step(grad_scale=8.0).skipped
    for p, m in zip(params, opt.master_params):
        assert_bits_equal(p, m.astype(p.dtype), "param != round(master)")


@pytest.mark.parametrize("option, value, exc", [
    ("max_grad_norm", 0.0, ValueError), ("max_grad_norm", -1.0, ValueError),
    ("max_grad_norm", float("nan"), ValueError), ("max_grad_norm", "1", TypeError),
    ("clip_value", 0.0, ValueError), ("clip_value", float("inf"), ValueError),
    ("skip_nonfinite", 1, TypeError), ("report_grad_norm", None, TypeError),
])
def test_bad_options_rejected(option, value, exc):
    case = case_by_id("sgd-plain")
    with pytest.raises(exc, match=option):
        make(case, **{option: value})
    opt, _, _ = make(case)
    with pytest.raises(exc, match=option):
        setattr(opt, option, value)


@pytest.mark.parametrize("scale", [0.0, -2.0, float("inf"), float("nan")])
def test_bad_grad_scale_rejected_nothing_changes(scale):
    opt, params, grads = make(case_by_id("adam-default"))
    refill(grads, next(iter(grad_steps(0, SHAPES, 1))))
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match="grad_scale"):
        opt.step(grad_scale=scale)
    assert opt.steps == [0]
    for p, q in zip(params, before):
        assert_bits_equal(p, q, "param changed")


@pytest.mark.parametrize("scale", [1e-39, 2.0 ** -130, 0.0, -1.0, float("inf")])
def test_grad_scale_whose_reciprocal_overflows_is_refused(scale):
    """1/1e-39 overflows float32: finite grads would turn every param into NaN (issue 12, failure 7)."""
    opt, params, grads = make(case_by_id("adamw-default"))
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match="grad_scale must be finite and > 0 with a finite float32 reciprocal"):
        opt.step(grad_scale=scale)
    for p, b in zip(params, before):
        assert_bits_equal(p, b, "a refused step wrote")
    assert opt.steps == [0]
    opt.step(grad_scale=2.0 ** -120)  # the smallest scales with a finite reciprocal still step
    assert all(np.isfinite(p).all() for p in params)
