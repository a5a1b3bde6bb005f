"""LARS and LAMB (rules/lars.h, rules/lamb.h): two-pass rules whose per-tensor trust ratio
comes from the deterministic norms. Float64 references written from the papers' formulas."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt
from fastopt.lamb import LAMB
from fastopt.lars import LARS
from registry import (DTYPES, assert_bits_equal, grad_steps, random_params, refill, supported_isas, tol)
from registry import isa_switch  # noqa: F401  (a fixture)

SHAPES = [(37,), (40, 9), (300,), (2, 3, 5), (1,)]
BIG = [(131072 * 2 + 100,), (7,)]  # more than one super-block: partial sums combine


class LarsRef:
    """You et al. 2017, Algorithm 1, in float64."""

    def __init__(self, lr=1e-3, momentum=0.9, weight_decay=0.0, trust_coefficient=1e-3, eps=1e-8,
                 exclude_1d=False, maximize=False):
        self.__dict__.update(locals())
        self.v = {}

    def step(self, params, grads):
        for i, (p, g) in enumerate(zip(params, grads)):
            g = -g if self.maximize else g.astype(np.float64)
            if self.exclude_1d and p.ndim <= 1:
                local, wd = 1.0, 0.0
            else:
                pn, gn = np.linalg.norm(p), np.linalg.norm(g)
                wd = self.weight_decay
                local = self.trust_coefficient * pn / (gn + wd * pn + self.eps) if pn > 0 and gn > 0 else 1.0
            d = self.lr * local * (g + wd * p)
            if self.momentum != 0:
                self.v[i] = self.momentum * self.v.get(i, 0.0) + d
                d = self.v[i]
            p -= d


class LambRef:
    """You et al. 2019, Algorithm 2 (decoupled weight decay), in float64."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, max_trust=0.0,
                 bias_correction=True, maximize=False):
        self.__dict__.update(locals())
        self.t, self.m, self.v = 0, {}, {}

    def step(self, params, grads):
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1 - b1 ** self.t if self.bias_correction else 1.0
        bc2 = 1 - b2 ** self.t if self.bias_correction else 1.0
        for i, (p, g) in enumerate(zip(params, grads)):
            g = -g if self.maximize else g.astype(np.float64)
            m = self.m[i] = b1 * self.m.get(i, 0.0) + (1 - b1) * g
            v = self.v[i] = b2 * self.v.get(i, 0.0) + (1 - b2) * g * g
            u = (m / bc1) / (np.sqrt(v / bc2) + self.eps) + self.weight_decay * p
            pn, un = np.linalg.norm(p), np.linalg.norm(u)
            ratio = pn / un if pn > 0 and un > 0 else 1.0
            if self.max_trust > 0:
                ratio = min(ratio, self.max_trust)
            p -= self.lr * ratio * u


CASES = [
    ("lars-default", LARS, LarsRef, dict(lr=0.5)),
    ("lars-wd", LARS, LarsRef, dict(lr=0.5, weight_decay=0.05, trust_coefficient=0.02)),
    ("lars-exclude_1d", LARS, LarsRef, dict(lr=0.05, weight_decay=0.05, exclude_1d=True)),
    ("lars-no_momentum_maximize", LARS, LarsRef, dict(lr=0.5, momentum=0.0, maximize=True)),
    ("lamb-default", LAMB, LambRef, dict(lr=0.01)),
    ("lamb-wd", LAMB, LambRef, dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))),
    ("lamb-clamped", LAMB, LambRef, dict(lr=0.01, weight_decay=0.01, max_trust=0.5)),
    ("lamb-no_bias_correction_maximize", LAMB, LambRef, dict(lr=0.01, bias_correction=False, maximize=True)),
]
each = pytest.mark.parametrize("cid, cls, ref_cls, kw", CASES, ids=[c[0] for c in CASES])


def run(cls, kw, shapes, steps, seed=0, param_dtype="float32", master=False, ref_cls=None):
    params = random_params(np.random.default_rng(seed), shapes, param_dtype)
    grads = [np.zeros(s, np.float32) for s in shapes]
    opt = cls(params, grads, master_weights=master, **kw)
    ref = ref_cls(**kw) if ref_cls else None
    ref_params = [p.astype(np.float64) for p in params]
    for gs in grad_steps(seed + 1, shapes, steps):
        refill(grads, gs)
        opt.step()
        if ref:
            ref.step(ref_params, [g.astype(np.float64) for g in gs])
    return opt, params, ref_params


@each
def test_matches_float64_reference(cid, cls, ref_cls, kw):
    opt, params, ref_params = run(cls, kw, SHAPES, 60, ref_cls=ref_cls)
    moved = False
    for i, (p, r) in enumerate(zip(params, ref_params)):
        np.testing.assert_allclose(p, r, **tol("float32"), err_msg=f"{cid} param {i}")
    start = random_params(np.random.default_rng(0), SHAPES)
    moved = any(np.abs(p - s).max() > 1e-3 for p, s in zip(params, start))
    assert moved


def test_options_change_the_trajectory():
    base = run(LARS, dict(lr=0.05, weight_decay=0.05), SHAPES, 5)[1]
    excl = run(LARS, dict(lr=0.05, weight_decay=0.05, exclude_1d=True), SHAPES, 5)[1]
    assert not np.array_equal(base[0], excl[0]) and np.array_equal(base[1], excl[1])  # 1-D vs 2-D
    free = run(LAMB, dict(lr=0.01), SHAPES, 5)[1]
    clamped = run(LAMB, dict(lr=0.01, max_trust=0.5), SHAPES, 5)[1]
    assert any(not np.array_equal(a, b) for a, b in zip(free, clamped))


@each
def test_bit_identical_across_isas_and_threads(cid, cls, ref_cls, kw, isa_switch):
    results = []
    for isa in supported_isas():
        isa_switch(isa)
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            results.append(run(cls, kw, SHAPES + BIG, 3)[1])
    fastopt.set_num_threads(2)
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            assert_bits_equal(a, b, cid)


@each
@pytest.mark.parametrize("param_dtype", ["float16", "bfloat16"])
def test_half_params_with_masters_track_fp32(cid, cls, ref_cls, kw, param_dtype):
    opt, params, ref_params = run(cls, kw, SHAPES, 30, param_dtype=param_dtype, master=True, ref_cls=ref_cls)
    for i, (p, m, r) in enumerate(zip(params, opt.master_params, ref_params)):
        np.testing.assert_allclose(m, r, **tol("master"), err_msg=f"{cid} master {i}")
        assert_bits_equal(p, m.astype(DTYPES[param_dtype]), "param != round(master)")


def test_zero_params_take_ratio_one():
    params, grads = [np.zeros(8, np.float32)], [np.ones(8, np.float32)]
    LARS(params, grads, lr=0.1, momentum=0.0).step()
    np.testing.assert_allclose(params[0], -0.1)


def test_state_round_trip():
    opt, params, _ = run(LAMB, dict(lr=0.01, weight_decay=0.1), SHAPES, 4)
    saved = opt.state_dict()
    grads2 = [np.zeros(s, np.float32) for s in SHAPES]
    params2 = [p.copy() for p in params]
    other = LAMB(params2, grads2, lr=0.01, weight_decay=0.1)
    other.load_state_dict(saved)
    refill(opt._grads, [np.full(s, 0.3, np.float32) for s in SHAPES])
    refill(grads2, [np.full(s, 0.3, np.float32) for s in SHAPES])
    opt.step()
    other.step()
    for a, b in zip(params, params2):
        assert_bits_equal(a, b, "resume")


@pytest.mark.parametrize("cls, bad", [(LARS, dict(trust_coefficient=-1.0)), (LARS, dict(eps=float("nan"))),
                                      (LAMB, dict(max_trust=-0.5)), (LAMB, dict(betas=(1.0, 0.9)))])
def test_bad_hyperparameters_rejected(cls, bad):
    with pytest.raises(ValueError):
        cls([np.zeros(3, np.float32)], [np.zeros(3, np.float32)], **bad)
