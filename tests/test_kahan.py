"""bfloat16 params with a Kahan compensation (master_weights="kahan"; fastopt/numeric/rounding.h's
kahan_bf16 through element.h's store_value): the definition step by step, the same bits on every
CPU target, long runs of tiny updates kept, checkpoints resumed bit for bit."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastopt
from fastopt.binding import Keeps
from registry import CASES, bits, grad_steps, kept_in, random_params, refill, step_through, supported_isas
from registry import isa_switch  # noqa: F401  (a fixture)

BF16 = ml_dtypes.bfloat16
SHAPES = [(37,), (3, 129), ()]


def kahan_reference(p: np.ndarray, c: np.ndarray, value: np.ndarray) -> None:
    """rounding.h's definition in float32: the change plus what was lost, rounded to nearest
    bfloat16; what this rounding loses is kept (rounded to bfloat16). In place."""
    old = p.astype(np.float32)
    change = (value - old) + c.astype(np.float32)
    nxt = (old + change).astype(BF16)
    c[...] = (change - (nxt.astype(np.float32) - old)).astype(BF16)
    p[...] = nxt


def test_sgd_steps_follow_the_definition_and_keep_tiny_updates():
    """SGD with lr 1 and grads of -1e-4 from 1.0, 10^4 steps: rounded to nearest the param never
    moves; compensated it follows kahan_reference bit for bit and ends 2 ulps from 2.0."""
    n = 8
    grads = [np.full(n, -1e-4, np.float32)]
    params = {mode: [np.ones(n, np.float32).astype(BF16)] for mode in (False, "kahan")}
    opts = {mode: fastopt.SGD(ps, [grads[0].copy()], lr=1.0, master_weights=mode) for mode, ps in params.items()}
    p, c = np.ones(n, np.float32).astype(BF16), np.zeros(n, BF16)
    for t in range(10_000):
        for opt in opts.values():
            opt.step()
        kahan_reference(p, c, (p.astype(np.float32) - np.float32(1.0) * np.float32(-1e-4)))
        if t in (0, 1, 99, 9_999):
            np.testing.assert_array_equal(bits(params["kahan"][0]), bits(p), err_msg=f"step {t + 1}")
            np.testing.assert_array_equal(bits(opts["kahan"].state[0]["kahan_compensation"]), bits(c))
    assert np.all(params[False][0].astype(np.float32) == 1.0)
    assert np.all(np.abs(params["kahan"][0].astype(np.float32) - 2.0) <= 4 * 2.0 ** -6)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_optimizer_same_bits_on_every_isa_and_near_the_master(case, isa_switch):
    rng = np.random.default_rng(case.seed)
    start = random_params(rng, SHAPES, "bfloat16")
    results = {}
    for isa in supported_isas():
        isa_switch(isa)
        ps = [p.copy() for p in start]
        gs = [np.zeros(p.shape, np.float32) for p in ps]
        opt = case.cls(ps, gs, master_weights="kahan", max_grad_norm=2.0, **case.kwargs)
        for grads in grad_steps(case.seed, SHAPES, 10):
            refill(gs, grads)
            opt.step()
        results[isa] = [bits(p).copy() for p in ps] + [bits(opt.state[i]["kahan_compensation"]).copy()
                                                       for i in range(len(ps))]
    first = next(iter(results.values()))
    for isa, got in results.items():
        for k, (a, b) in enumerate(zip(got, first)):
            np.testing.assert_array_equal(a, b, err_msg=f"{isa}: array {k}")
    # Near the fp32-master run (scalar target): within a few bfloat16 ulps in L2 norm per tensor
    # (the rule reads the rounded param, so elements near 0 may go their own way).
    isa_switch("scalar")
    ps = [p.copy() for p in start]
    gs = [np.zeros(p.shape, np.float32) for p in ps]
    ref = case.cls(ps, gs, master_weights=True, max_grad_norm=2.0, **kept_in(case, "bfloat16"))
    for grads in grad_steps(case.seed, SHAPES, 10):
        refill(gs, grads)
        ref.step()
    for k, m in enumerate(ref.master_params):
        kahan = first[k].view(BF16).astype(np.float64)
        assert np.linalg.norm(kahan - m) <= 4 * 2.0 ** -8 * np.linalg.norm(m), case


def test_checkpoint_resumes_bit_identically():
    case = next(c for c in CASES if c.name == "AdamW")
    rng = np.random.default_rng(3)
    start = random_params(rng, SHAPES, "bfloat16")
    steps = list(grad_steps(3, SHAPES, 8))

    ps = [p.copy() for p in start]
    gs = [np.zeros(p.shape, np.float32) for p in ps]
    straight = case.cls(ps, gs, master_weights="kahan", **case.kwargs)
    step_through(straight, gs, steps)
    qs = [p.copy() for p in start]
    hs = [np.zeros(p.shape, np.float32) for p in qs]
    first = case.cls(qs, hs, master_weights="kahan", **case.kwargs)
    step_through(first, hs, steps[:4])
    saved = first.state_dict()
    resumed = case.cls(qs, hs, master_weights="kahan", **case.kwargs)
    resumed.load_state_dict(saved)
    step_through(resumed, hs, steps[4:])
    for a, b in zip(ps, qs):
        np.testing.assert_array_equal(bits(a), bits(b))
    with pytest.raises(ValueError, match="param 0: state_dict lacks its Kahan compensation"):
        del saved["state"][0]["kahan_compensation"]
        resumed.load_state_dict(saved)


def test_inf_and_nan_params_and_values_stay_as_in_the_other_modes():
    p = np.array([np.inf, 3.3e38, 1.0, np.nan, -np.inf], np.float32).astype(BF16)
    g = np.array([1.0, -1e38, np.nan, 1.0, 1.0], np.float32)
    runs = {}
    for mode in (False, "kahan"):
        q = [p.copy()]
        opt = fastopt.SGD(q, [g.copy()], lr=1.0, master_weights=mode)
        for _ in range(3):
            opt.step()
        runs[mode] = q[0].astype(np.float32)
        if mode == "kahan":
            assert np.all(opt.state[0]["kahan_compensation"].astype(np.float32)[[0, 1, 2, 3, 4]] == 0)
    np.testing.assert_array_equal(runs["kahan"], runs[False])  # inf stays inf, NaN stays NaN
    assert np.isinf(runs["kahan"][[0, 1, 4]]).all() and np.isnan(runs["kahan"][[2, 3]]).all()


def test_kahan_refusals():
    with pytest.raises(ValueError, match="param 0: master_weights='kahan' is for bfloat16 params"):
        fastopt.AdamW([np.zeros(3, np.float16)], [np.zeros(3, np.float32)], master_weights="kahan")
    core = fastopt._core
    bf, g = np.zeros(4, BF16), np.zeros(4, np.float32)
    cases = [
        (np.zeros(4, np.float32), np.zeros(4, BF16), "param 0: a compensation is for bfloat16 params; this one is float32"),
        (bf, np.zeros(4, np.float32), "compensation 0: dtype float32, expected bfloat16"),
        (bf, bf, "compensation 0 is the same memory as param 0"),
    ]
    for param, comp, message in cases:
        with pytest.raises(core.TensorError, match=message):
            core.Group("sgd", [param], [g], Keeps([None], [None], [comp], [False], [[]], [False]), [[]], [1])
