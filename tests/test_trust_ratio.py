"""LARS and LAMB (rules/lars.h, rules/lamb.h), beyond the registry's generic tests (which run
their cases against reference.LARSRef/LAMBRef): the per-tensor parts of two-pass rules."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt
from registry import (CHAIN, U, Magnitudes, assert_bits_equal, assert_rounding_close, grad_steps, random_params,
                      refill, supported_isas)
from registry import isa_switch  # noqa: F401  (a fixture)

SHAPES = [(37,), (40, 9), (300,), (2, 3, 5), (1,)]
BIG = [(131072 * 2 + 100,), (7,)]  # more than one super-block: partial sums combine
CASES = [(fastopt.LARS, dict(lr=0.5, weight_decay=0.05)), (fastopt.LAMB, dict(lr=0.01, weight_decay=0.1))]
each = pytest.mark.parametrize("cls, kw", CASES, ids=["lars", "lamb"])
# A trust ratio's error scales the update: RATIO_U u (fp32) of the largest update per step. The
# ratio of norms errs by the relative error of the fp32 values they are taken of (LAMB's u: at
# most CHAIN u, as any freshly computed value), by registry.norm_error (double sums: ~1e-14,
# 1e-7 u, negligible) and by the rounding of lr * ratio to fp32 (1 u).
RATIO_U = CHAIN + 1


def run(cls, kw, shapes, steps, seed=0):
    params = random_params(np.random.default_rng(seed), shapes)
    grads = [np.zeros(s, np.float32) for s in shapes]
    opt = cls(params, grads, **kw)
    for gs in grad_steps(seed + 1, shapes, steps):
        refill(grads, gs)
        opt.step()
    return opt, params


@each
def test_bit_identical_across_isas_and_thread_counts(cls, kw, isa_switch):
    results = []
    for isa in supported_isas():
        isa_switch(isa)
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            results.append(run(cls, kw, SHAPES + BIG, 3)[1])
    fastopt.set_num_threads(2)
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            assert_bits_equal(a, b, cls.__name__)


@each
def test_fused_and_two_region_tensors_match_reference(cls, kw):
    """Tensors of at most Group::kFusedElems elements take both passes in one task, larger ones
    one parallel region per pass: a group mixing both tracks the float64 reference."""
    from reference import reference_for
    shapes = SHAPES + [(131072,), (131073,)] + BIG
    params = random_params(np.random.default_rng(3), shapes)
    grads = [np.zeros(s, np.float32) for s in shapes]
    ref_params = [p.astype(np.float64) for p in params]
    ref = reference_for(cls.__name__, kw)
    opt = cls(params, grads, **kw)
    magnitudes = Magnitudes()
    magnitudes.see("param", ref_params)
    for gs in grad_steps(4, shapes, 6):
        refill(grads, gs)
        opt.step()
        before = [r.copy() for r in ref_params]
        ref.step(ref_params, [g.astype(np.float64) for g in gs])
        magnitudes.see("param", ref_params)
        magnitudes.see("update", [r - b for r, b in zip(ref_params, before)])
    extra = RATIO_U * magnitudes["update"] / magnitudes["param"]
    assert_rounding_close(params, ref_params, 6, extra_per_step=extra, scale=magnitudes["param"])


TINY = 1e-30  # fp32 squares underflow to 0 below ~1e-19


@pytest.mark.parametrize("cls, kw", [
    (fastopt.LARS, dict(lr=0.5, eps=0.0)),               # local = eta ||p|| / ||g||
    (fastopt.LARS, dict(lr=0.5, weight_decay=1e-4)),     # local ~ eta / wd = 10 (1 if ||g|| is 0)
    (fastopt.LAMB, dict(lr=0.01)),                       # u ~ 1e-24: ratio ||p|| / ||u||
], ids=["lars", "lars-weight_decay", "lamb"])
def test_tiny_grads_match_reference_on_every_isa_and_thread_count(cls, kw, isa_switch):
    """Grads of 1e-30 (normal fp32 values): per-tensor norms that are not 0, so the trust
    ratios of the float64 reference (fp32 squares underflowed: ratio 1, LAMB did not move,
    LARS stepped 10x too small; issue 12); the same bits on every ISA and thread count."""
    from reference import reference_for
    shapes, steps = SHAPES + BIG, 3
    gsteps = [[g * np.float32(TINY) for g in gs] for gs in grad_steps(6, shapes, steps)]
    results = []
    for isa in supported_isas():
        isa_switch(isa)
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            params = random_params(np.random.default_rng(5), shapes)
            grads = [np.zeros(s, np.float32) for s in shapes]
            opt = cls(params, grads, **kw)
            for gs in gsteps:
                refill(grads, gs)
                opt.step()
            results.append(params)
    fastopt.set_num_threads(2)
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            assert_bits_equal(a, b, cls.__name__)
    ref_params = [p.astype(np.float64) for p in random_params(np.random.default_rng(5), shapes)]
    ref = reference_for(cls.__name__, kw)
    magnitudes = Magnitudes()
    magnitudes.see("param", ref_params)
    for gs in gsteps:
        before = [r.copy() for r in ref_params]
        ref.step(ref_params, [g.astype(np.float64) for g in gs])
        magnitudes.see("param", ref_params)
        magnitudes.see("update", [r - b for r, b in zip(ref_params, before)])
    extra = RATIO_U * magnitudes["update"] / magnitudes["param"]
    assert_rounding_close(results[0], ref_params, steps, extra_per_step=extra, scale=magnitudes["param"])


def test_lars_weight_decay_is_continuous_at_zero_grad():
    """With weight_decay > 0 the ratio's denominator ||g|| + wd ||p|| + eps is not 0 at a zero
    grad: the paper's ratio applies there too, so a zero grad and a tiny one give nearly the
    same step (the ratio was 1 at ||g|| = 0, a jump by wd / trust_coefficient; issue 12), and
    the float64 reference's."""
    from reference import reference_for
    kw = dict(lr=0.5, weight_decay=0.05)
    out = []
    for scale in (0.0, 1e-12):
        params = random_params(np.random.default_rng(8), SHAPES)
        grads = [np.asarray(scale * np.random.default_rng(9).standard_normal(s), np.float32) for s in SHAPES]
        fastopt.LARS(params, grads, **kw).step()
        out.append(params)
    ref_params = [p.astype(np.float64) for p in random_params(np.random.default_rng(8), SHAPES)]
    before = [r.copy() for r in ref_params]
    reference_for("LARS", kw).step(ref_params, [np.zeros(s) for s in SHAPES])
    update = max(float(np.max(np.abs(r - b))) for r, b in zip(ref_params, before))
    scale = max(float(np.max(np.abs(b))) for b in before)
    for zero, tiny in zip(*out):
        np.testing.assert_allclose(zero, tiny, rtol=0, atol=4 * U["float32"] * scale)
    assert_rounding_close(out[0], ref_params, 1, extra_per_step=RATIO_U * update / scale, scale=scale)


def test_exclude_1d_and_max_trust_act_per_tensor():
    base = run(fastopt.LARS, dict(lr=0.05, weight_decay=0.05), SHAPES, 5)[1]
    excl = run(fastopt.LARS, dict(lr=0.05, weight_decay=0.05, exclude_1d=True), SHAPES, 5)[1]
    assert np.array_equal(base[1], excl[1]) and np.array_equal(base[3], excl[3])  # 2-D and 3-D: as before
    assert not np.array_equal(base[0], excl[0])  # 1-D: plain momentum SGD
    free = run(fastopt.LAMB, dict(lr=0.01), SHAPES, 5)[1]
    clamped = run(fastopt.LAMB, dict(lr=0.01, max_trust=0.5), SHAPES, 5)[1]
    assert any(not np.array_equal(a, b) for a, b in zip(free, clamped))


@each
def test_zero_param_takes_ratio_one(cls, kw):
    params, grads = [np.zeros(8, np.float32)], [np.ones(8, np.float32)]
    cls(params, grads, **{**kw, "weight_decay": 0.0}).step()
    # LARS: lr * g; LAMB: lr * m^ / (sqrt(v^) + eps) = lr / (1 + eps) (one step)
    expected = -kw["lr"] / (1 + cls.default_hypers()["eps"]) if cls is fastopt.LAMB else -kw["lr"]
    assert_rounding_close([params[0]], [np.full(8, expected)], 1, optimizer=cls.__name__)


@each
def test_resume_is_bit_identical(cls, kw):
    opt, params = run(cls, kw, SHAPES, 4)
    grads2 = [np.zeros(s, np.float32) for s in SHAPES]
    params2 = [p.copy() for p in params]
    other = cls(params2, grads2, **kw)
    other.load_state_dict(opt.state_dict())
    for grads in (opt._grads, grads2):
        refill(grads, [np.full(s, 0.3, np.float32) for s in SHAPES])
    opt.step()
    other.step()
    for a, b in zip(params, params2):
        assert_bits_equal(a, b, "resume")


@pytest.mark.parametrize("cls, bad", [(fastopt.LARS, dict(trust_coefficient=-1.0)),
                                      (fastopt.LARS, dict(eps=float("nan"))),
                                      (fastopt.LAMB, dict(max_trust=-0.5)), (fastopt.LAMB, dict(betas=(1.0, 0.9)))])
def test_bad_hyperparameters_rejected(cls, bad):
    p = np.ones(3, np.float32)
    with pytest.raises(ValueError):
        cls([p], [np.zeros(3, np.float32)], **bad)
    assert (p == 1).all()

