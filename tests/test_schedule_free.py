"""Schedule-Free AdamW and SGD (rules/schedule_free.h, python/fastopt/schedule_free.py) beyond the
registry's cases: the weights of the average against the authors' running sums, the eval point x
and the way back to y (the float64 reference, the stated bound, every storage mode and CPU
target), steps in eval mode, the step options, checkpoints, fastopt.torch and the functional
forms."""

from __future__ import annotations

import copy
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
import torch

import fastopt
import fastopt.functional as F
import fastopt.torch as ft
from fastopt import _core
from fastopt.norms import combine
from reference import reference_for
from registry import (CASES, DTYPES, Magnitudes, assert_bits_equal, assert_rounding_close, bits, case_by_id,
                      grad_steps, random_params, refill, supported_isas)
from registry import isa_switch  # noqa: F401  (a fixture)

SF = (fastopt.AdamWScheduleFree, fastopt.SGDScheduleFree)
SF_CASES = [c for c in CASES if c.cls in SF]
ALL = [case_by_id("adamwschedulefree-all"), case_by_id("sgdschedulefree-all")]
SHAPES = [(37,), (4, 9), (128,), ()]
U = 2.0 ** -24


def round_trip_bound(y: np.ndarray, z: np.ndarray, beta1: float) -> np.ndarray:
    """What train() after eval() may leave between y' and y, per element (float32 values): a few
    roundings of the values the two passes combine, the pass to x amplified by 1/beta1 (the
    schedule_free.py docstrings state it): 2^-21 (|y| + |z|) / beta1."""
    return 2.0 ** -21 * (np.abs(y.astype(np.float64)) + np.abs(z.astype(np.float64))) / beta1


def beta1_of(case) -> float:
    return case.kwargs.get("betas", (case.kwargs.get("momentum", 0.9),))[0]


# ---- the weights of the average ---------------------------------------------------------------


def observed_weights(cls, hypers: dict, steps: int) -> np.ndarray:
    """c_t of steps 2..steps as the kernels take it: a step from y = 0 and z = 1 with a zero grad
    moves y to c_t exactly (y + c_t (z - y), one fused multiply-add; u = 0) and nothing else."""
    y, g, z = [np.zeros(1, np.float32)], [np.zeros(1, np.float32)], [np.ones(1, np.float32)]
    states = [z] + [[np.zeros(1, np.float32)] for _ in cls.state_names[1:]]
    step = getattr(F, cls.__name__.lower() + "_").bind(y, g, *states)
    out = []
    for t in range(2, steps + 1):
        y[0][0], z[0][0] = 0.0, 1.0
        step(step=t, **hypers)
        out.append(y[0][0])
    return np.array(out, np.float32)


def reference_weights(cls, hypers: dict, steps: int) -> np.ndarray:
    """c_t of steps 2..steps as the authors' optimizers take it: running sums (float64)."""
    ref = reference_for(cls.__name__, hypers)
    for _ in range(steps):
        ref.step([], [])
    return np.array(ref.cs[1:], np.float64)


WEIGHTS = [  # (class, hyperparameters): r = 0 (the default) across warmup, then other weightings
    (fastopt.AdamWScheduleFree, {}),
    (fastopt.AdamWScheduleFree, {"lr": 0.0025, "warmup_steps": 100}),
    (fastopt.SGDScheduleFree, {"lr": 1.0, "warmup_steps": 250}),
    (fastopt.SGDScheduleFree, {"lr": 0.5, "warmup_steps": 37, "weight_lr_power": 1.0}),
    (fastopt.AdamWScheduleFree, {"warmup_steps": 30, "weight_lr_power": 0.0}),
    (fastopt.AdamWScheduleFree, {"warmup_steps": 50, "r": 1.0}),
    (fastopt.SGDScheduleFree, {"warmup_steps": 20, "r": 0.5, "weight_lr_power": 1.5}),
    (fastopt.AdamWScheduleFree, {"r": 3.7, "weight_lr_power": 0.0}),
    (fastopt.SGDScheduleFree, {"warmup_steps": 7, "r": 10.0, "weight_lr_power": 20.0}),
    (fastopt.AdamWScheduleFree, {"lr": 0.0, "warmup_steps": 10}),  # c_t = 0: 0/0 in the reference
]


@pytest.mark.parametrize("cls, hypers", WEIGHTS, ids=[f"{c.__name__}-{h}" for c, h in WEIGHTS])
def test_weights_are_the_references_running_sums(cls, hypers):
    """400 steps: the closed form (power_mean) and the authors' running sums give the same c_t,
    rounded to float32 (the reference's own sum errs by ~t float64 roundings: a c_t near a float32
    tie may round either way, so one ulp is allowed, and almost every step must agree exactly)."""
    got = observed_weights(cls, hypers, 400)
    want = reference_weights(cls, hypers, 400)
    want32 = want.astype(np.float32)
    assert np.all(np.abs(got - want32) <= np.spacing(want32)), np.flatnonzero(got != want32)[:10]
    assert np.mean(got == want32) >= 0.98
    if hypers.get("lr") == 0.0:
        assert np.all(got == 0)
    else:
        assert np.all(got > 0) and len(set(got.tolist())) > 100  # the weights do change


def exact_weight(t: int, w: int) -> Fraction:
    """c_t for r = 0, weight_lr_power = 2 and warmup w, exactly (sums of squares in closed form)."""
    if t <= w:
        return Fraction(6 * t, (t + 1) * (2 * t + 1))
    return 1 / (Fraction((w + 1) * (2 * w + 1), 6 * w) + t - w)


@pytest.mark.parametrize("t", [2, 999, 1000, 1001, 10**4, 10**6, 10**9, 2**62])
def test_weights_far_into_a_run(t):
    """The closed form at any step, against the exact fraction (no running sum could get there)."""
    hypers = {"warmup_steps": 1000}
    y, g, z, v = ([np.zeros(1, np.float32)] for _ in range(4))
    z[0][0] = 1.0
    F.adamwschedulefree_(y, g, z, v, step=t, **hypers)
    want = np.float32(float(exact_weight(t, 1000)))
    assert abs(y[0][0] - want) <= np.spacing(want)


# ---- the eval point and the way back ----------------------------------------------------------


def fp32_values(opt, params):
    return [m if m is not None else p for p, m in zip(params, opt.master_params)]


@pytest.mark.parametrize("case", SF_CASES, ids=[c.id for c in SF_CASES])
@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_eval_is_the_references_x_and_train_its_y(case, param_dtype):
    """60 steps, eval(), train(), 10 more steps: the fp32 values (bf16 params: their masters)
    within the registry's rounding bound of the float64 reference at every point (the two passes
    count as steps of the bound: a few roundings each), and a step in eval mode refused."""
    rng = np.random.default_rng(case.seed)
    params = random_params(rng, SHAPES, param_dtype)
    grads = [np.zeros(s, np.float32) for s in SHAPES]
    opt = case.cls(params, grads, master_weights=param_dtype != "float32", **case.kwargs)
    ref = reference_for(case.name, case.kwargs)
    ref_params = [p.astype(np.float64) for p in params]
    seen = Magnitudes()
    seq = list(grad_steps(case.seed + 1, SHAPES, 70))

    def steps(gs_list):
        for gs in gs_list:
            refill(grads, gs)
            opt.step()
            ref.step(ref_params, [g.astype(np.float64) for g in gs])
            seen.see("param", ref_params)
            seen.see("z", [ref.states["z"][i] for i in range(len(SHAPES))])

    steps(seq[:60])
    scale = max(seen["param"], seen["z"])  # x and y mix both
    assert opt.training
    opt.eval()
    ref.eval(ref_params)
    assert not opt.training
    assert_rounding_close(fp32_values(opt, params), ref_params, 61, optimizer=case.name, scale=scale, msg="x")
    before = [p.copy() for p in params]
    with pytest.raises(RuntimeError, match=rf"{case.name}\.step: the params hold the eval point x \(eval\(\) was "
                                           r"called\); call train\(\) before stepping"):
        opt.step()
    opt.eval()  # already there: nothing happens
    for p, b in zip(params, before):
        assert_bits_equal(p, b, "a refused step or a second eval() wrote")
    assert opt.steps == [60]
    opt.train()
    ref.train(ref_params)
    assert_rounding_close(fp32_values(opt, params), ref_params, 62, optimizer=case.name, scale=scale, msg="y")
    steps(seq[60:])
    assert_rounding_close(fp32_values(opt, params), ref_params, 72, optimizer=case.name,
                          scale=max(seen["param"], seen["z"]), msg="after")


@pytest.mark.parametrize("beta1", [0.05, 0.5, 0.9, 0.999])
def test_train_after_eval_is_y_within_the_stated_bound(beta1):
    """y' = train(eval(y)) within round_trip_bound of y, not bit for bit (both passes round), over
    values of every sign and spread (z near y, z far from y, z zero); bit for bit where the math
    allows it: where z == y (x = y), and before the first step (nothing moves)."""
    rng = np.random.default_rng(7)
    n = 20000
    y = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(np.float32)
    z = np.concatenate([y[: n // 4] * (1 + rng.standard_normal(n // 4).astype(np.float32) * 1e-3),
                        rng.standard_normal(n // 4).astype(np.float32) * 1e3, np.zeros(n // 4, np.float32),
                        y[3 * n // 4:]]).astype(np.float32)
    params, zs = [y.copy()], [z.copy()]
    F.sgdschedulefree_.eval(params, zs, step=5, momentum=beta1)
    x = params[0].copy()
    w = np.float32(1 - 1 / beta1)
    want = y.astype(np.float64) + np.float64(w) * (z.astype(np.float64) - y)  # (the float32 difference's rounding apart)
    assert np.all(np.abs(x - want) <= 2 * U * (np.abs(want) + abs(w) * np.abs(z - y.astype(np.float64))))
    F.sgdschedulefree_.train(params, zs, step=5, momentum=beta1)
    err = np.abs(params[0].astype(np.float64) - y)
    bound = round_trip_bound(y, z, beta1)
    assert np.all(err <= bound), float(np.max(err / bound))
    assert np.any(err > 0), "every element came back exactly: the bound was never at stake"
    assert_bits_equal(params[0][3 * n // 4:], y[3 * n // 4:], "z == y")
    assert_bits_equal(zs[0], z, "z was written")
    params = [y.copy()]
    F.sgdschedulefree_.eval(params, zs, step=0, momentum=beta1)
    assert_bits_equal(params[0], y, "a switch before the first step")


# Storage modes: (param dtype, options), and how close y' comes back (None: the bound on the fp32
# master; else ulps of the param's dtype).
MODES = {
    "fp32": ("float32", {}, None),
    "bf16 master": ("bfloat16", {"master_weights": True}, None),
    "fp16 master": ("float16", {"master_weights": True}, None),
    "bf16 remainder": ("bfloat16", {"master_weights": "remainder"}, None),
    "bf16 Kahan": ("bfloat16", {"master_weights": "kahan"}, 2),
    "bf16 stochastic": ("bfloat16", {"master_weights": "stochastic", "seed": 3}, 2),
    "fp16 stochastic": ("float16", {"master_weights": "stochastic", "seed": 3}, 2),
    "bf16 nearest": ("bfloat16", {}, 1),
    "bf16 state": ("float32", {"state_precision": "bfloat16"}, None),
    "bf16 stochastic state, remainder": ("bfloat16", {"master_weights": "remainder",
                                                      "state_precision": "bfloat16_stochastic", "seed": 5}, None),
}


def value_of(opt, params, i):
    """Param i's fp32 value: its master (joined from a remainder), or the param."""
    m = opt.master_params[i]
    return (m if m is not None else params[i]).astype(np.float64)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_eval_and_train_in_every_storage_mode_on_every_isa(case, mode, isa_switch):
    """8 steps, eval(), train(), 2 steps, on every CPU target: the same bits on each; x is the
    eval point of the values before it (within a rounding of the value, or one ulp of a
    half-precision param kept alone), and y comes back within round_trip_bound (on the fp32
    value) or a few ulps of the param kept alone; a master's param is its rounding."""
    dtype, options, ulps = MODES[mode]
    beta1 = beta1_of(case)
    start = random_params(np.random.default_rng(case.seed), SHAPES, dtype)
    seq = list(grad_steps(case.seed + 1, SHAPES, 10))
    results = {}
    for isa in supported_isas():
        isa_switch(isa)
        params, grads = [p.copy() for p in start], [np.zeros(s, np.float32) for s in SHAPES]
        opt = case.cls(params, grads, **options, **case.kwargs)
        out = []
        for gs in seq[:8]:
            refill(grads, gs)
            opt.step()
        y = [value_of(opt, params, i) for i in range(len(SHAPES))]
        z = [opt.state[i]["z"].astype(np.float64) for i in range(len(SHAPES))]
        opt.eval()
        out += [p.copy() for p in params] + [a.copy() for s in opt.state.values() for a in s.values()]
        for i in range(len(SHAPES)):
            x = value_of(opt, params, i)
            want = y[i] + (1 - 1 / beta1) * (z[i] - y[i])
            slack = 4 * U * (np.abs(y[i]) + np.abs(z[i])) / beta1
            if ulps is not None:
                slack += np.spacing(np.abs(want).astype(DTYPES[dtype])).astype(np.float64)
            assert np.all(np.abs(x - want) <= slack), f"{isa} param {i}: x"
        opt.train()
        out += [p.copy() for p in params] + [a.copy() for s in opt.state.values() for a in s.values()]
        for i in range(len(SHAPES)):
            back = value_of(opt, params, i)
            if ulps is None:
                bound = round_trip_bound(y[i], z[i], beta1)
            else:
                bound = ulps * np.spacing(np.abs(y[i]).astype(DTYPES[dtype])).astype(np.float64)
            assert np.all(np.abs(back - y[i]) <= bound), f"{isa} param {i}: y"
            if options.get("master_weights") is True:
                assert_bits_equal(params[i], opt.master_params[i].astype(params[i].dtype), f"param {i}")
        for gs in seq[8:]:
            refill(grads, gs)
            opt.step()
        out += [p.copy() for p in params]
        results[isa] = out
    first = next(iter(results.values()))
    for isa, got in results.items():
        for k, (a, b) in enumerate(zip(got, first)):
            assert_bits_equal(a, b, f"{isa}: array {k}")


def test_stochastic_rounding_of_a_switch_draws_its_own_bits():
    """A switch rounds a half-precision param kept alone stochastically with bits of the seed and
    of its pseudo-step (never a step's): another seed gives other bits; eval and train and the
    step before them draw apart."""
    assert _core.switch_round_step(7, True) == 2**63 + 15 and _core.switch_round_step(7, False) == 2**63 + 14
    case = ALL[0]
    start = random_params(np.random.default_rng(0), [(4096,)], "bfloat16")
    xs = []
    for seed in (1, 2):
        params, grads = [start[0].copy()], [np.zeros(4096, np.float32)]
        opt = case.cls(params, grads, master_weights="stochastic", seed=seed, **case.kwargs)
        for gs in grad_steps(1, [(4096,)], 3):
            refill(grads, gs)
            opt.step()
        opt.eval()
        xs.append(params[0].copy())
    assert np.any(bits(xs[0]) != bits(xs[1]))


# ---- steps, step options, checkpoints -----------------------------------------------------------


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_step_options_fold_into_the_update(case):
    """A loss scale, clipping by norm and by value, and skip_nonfinite act as on every rule: the
    same bits as a twin stepped with the grads so transformed (float32: unscale and clip factor
    times each grad, then the clamp), a step with a NaN grad skipped (nothing written, not
    counted); diagnostics report the update's norm."""
    scale, max_norm, clip = 1024.0, 2.0, 0.1
    start = random_params(np.random.default_rng(case.seed), SHAPES)
    params, twin_params = [p.copy() for p in start], [p.copy() for p in start]
    grads, twin_grads = [np.zeros(s, np.float32) for s in SHAPES], [np.zeros(s, np.float32) for s in SHAPES]
    opt = case.cls(params, grads, max_grad_norm=max_norm, clip_value=clip, skip_nonfinite=True, diagnostics=True,
                   **case.kwargs)
    twin = case.cls(twin_params, twin_grads, **case.kwargs)
    clipped = clamped = 0
    for t, gs in enumerate(grad_steps(case.seed + 1, SHAPES, 6)):
        refill(grads, [g * np.float32(scale) for g in gs])
        if t == 3:
            grads[1].flat[2] = np.nan
            before = [p.copy() for p in params] + [a.copy() for s in opt.state.values() for a in s.values()]
            r = opt.step(grad_scale=scale)
            assert r.skipped and opt.steps == [3]
            after = [p.copy() for p in params] + [a.copy() for s in opt.state.values() for a in s.values()]
            for a, b in zip(after, before):
                assert_bits_equal(a, b, "a skipped step wrote")
            continue
        sums, nonfinite = _core.sumsq(grads)
        norm, factor, skip = _core.step_control(np.float32(1 / scale), combine(sums), sum(nonfinite), True, max_norm)
        assert not skip
        clipped += factor < np.float32(1 / scale)
        transformed = [np.clip(g * np.float32(factor), -clip, clip) for g in grads]
        clamped += any(np.any(np.abs(g * np.float32(factor)) > clip) for g in grads)
        refill(twin_grads, transformed)
        before = [p.copy() for p in params]
        r = opt.step(grad_scale=scale)
        twin.step()
        assert r.grad_norm == pytest.approx(norm, rel=1e-12)
        for i, (p, q) in enumerate(zip(params, twin_params)):
            assert_bits_equal(p, q, f"step {t} param {i}")
        updates = [np.linalg.norm(p.astype(np.float64) - b) for p, b in zip(params, before)]
        np.testing.assert_allclose(r.diagnostics.update_norm, updates, rtol=1e-6)
    assert clipped and clamped, "the options must act on these grads"
    for s, t in zip(opt.state.values(), twin.state.values()):
        for k in s:
            assert_bits_equal(s[k], t[k], k)


@pytest.mark.parametrize("train_mode", [True, False], ids=["saved-in-train", "saved-in-eval"])
@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_checkpoints_carry_the_mode_and_resume_bit_for_bit(case, train_mode):
    """state_dict() says which point the params hold; an optimizer loaded from it (with the params
    saved beside it, as a model's checkpoint holds them) is in that mode, and after train() both
    continue with the same bits (bf16 params with fp32 masters: the masters hold the point)."""
    start = random_params(np.random.default_rng(case.seed), SHAPES, "bfloat16")
    seq = list(grad_steps(case.seed + 1, SHAPES, 10))
    params, grads = [p.copy() for p in start], [np.zeros(s, np.float32) for s in SHAPES]
    opt = case.cls(params, grads, master_weights=True, **case.kwargs)
    for gs in seq[:6]:
        refill(grads, gs)
        opt.step()
    if not train_mode:
        opt.eval()
    saved = copy.deepcopy(opt.state_dict())
    assert saved["train_mode"] is train_mode
    saved_params = [p.copy() for p in params]
    resumed_params, resumed_grads = [p.copy() for p in saved_params], [np.zeros(s, np.float32) for s in SHAPES]
    resumed = case.cls(resumed_params, resumed_grads, master_weights=True, **case.kwargs)
    resumed.load_state_dict(saved)
    assert resumed.training is train_mode
    for o in (opt, resumed):
        o.train()
    for gs in seq[6:]:
        refill(grads, gs)
        refill(resumed_grads, gs)
        opt.step()
        resumed.step()
    for i in range(len(SHAPES)):
        assert_bits_equal(resumed_params[i], params[i], f"param {i}")
        for k, a in opt.state[i].items():
            assert_bits_equal(resumed.state[i][k], a, f"param {i} {k}")


def test_bad_checkpoint_mode_refused_and_nothing_changes():
    case = ALL[0]
    params, grads = random_params(np.random.default_rng(0), SHAPES), [np.ones(s, np.float32) for s in SHAPES]
    opt = case.cls(params, grads, **case.kwargs)
    opt.step()
    saved = opt.state_dict()
    opt.step()
    before = [p.copy() for p in params], copy.deepcopy(opt.state_dict())
    for bad in ("eval", 0, None):
        with pytest.raises(ValueError, match=r"state_dict's train_mode must be True \(the params hold y\) or False"):
            opt.load_state_dict({**saved, "train_mode": bad})
    for p, b in zip(params, before[0]):
        assert_bits_equal(p, b)
    assert opt.training and opt.steps == [2]
    legacy = {k: v for k, v in saved.items() if k != "train_mode"}  # a checkpoint without the mode: train
    opt.eval()
    opt.load_state_dict(legacy)
    assert opt.training


def test_eval_before_the_first_step_moves_nothing():
    params = random_params(np.random.default_rng(1), SHAPES, "bfloat16")
    start = [p.copy() for p in params]
    opt = fastopt.AdamWScheduleFree(params, [np.ones(s, np.float32) for s in SHAPES], master_weights="kahan")
    opt.eval()
    assert not opt.training
    opt.train()
    for p, s in zip(params, start):
        assert_bits_equal(p, s)


def test_mode_switch_binding_names_z():
    p, z = [np.zeros(4, np.float32)], [np.zeros(5, np.float32)]
    with pytest.raises(fastopt.TensorError, match=r"z 0: shape \(5,\) differs from param 0's shape \(4,\)"):
        F.adamwschedulefree_.eval(p, z, step=1)
    with pytest.raises(ValueError, match="adam has no eval point"):
        from fastopt.binding import Keeps
        _core.ModeSwitch("adam", p, [np.zeros(4, np.float32)], Keeps.none(1), [1])
    with pytest.raises(ValueError, match="step must be the steps taken so far"):
        F.adamwschedulefree_.eval(p, [np.zeros(4, np.float32)], step=-1)
    with pytest.raises(ValueError, match=r"beta1 must be in \(0, 1\)"):
        F.adamwschedulefree_.eval(p, [np.zeros(4, np.float32)], step=1, beta1=1.0)
    bound = F.adamw_.bind(p, [np.zeros(4, np.float32)], [np.zeros(4, np.float32)], [np.zeros(4, np.float32)])
    with pytest.raises(TypeError, match="AdamW trains and is evaluated at its params"):
        bound.eval(step=1)


# ---- the functional forms and fastopt.torch ------------------------------------------------------


@pytest.mark.parametrize("bound", [False, True], ids=["call", "bound"])
@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_functional_eval_and_train_are_the_classs(case, bound):
    """bf16 params with fp32 masters: <form>.eval / .train (or a bound step's) give the class's bits."""
    shapes = [(37,), (4, 9), ()]
    start = random_params(np.random.default_rng(case.seed), shapes, "bfloat16")
    params_c, params_f = [p.copy() for p in start], [p.copy() for p in start]
    masters = [p.astype(np.float32) for p in params_f]
    grads = [np.zeros(s, np.float32) for s in shapes]
    opt = case.cls(params_c, grads, master_weights=True, **case.kwargs)
    fn = case.fn
    kw = dict(case.kwargs)
    if "betas" in kw:
        kw["beta1"], kw["beta2"] = kw.pop("betas")
    states = [[np.zeros(s, np.float32) for s in shapes] for _ in case.cls.state_names]
    step = fn.bind(params_f, grads, *states, master_params=masters) if bound else None
    for t, gs in enumerate(grad_steps(case.seed + 1, shapes, 5), 1):
        refill(grads, gs)
        opt.step()
        if bound:
            step(step=t, **kw)
        else:
            fn(params_f, grads, *states, step=t, master_params=masters, **kw)
    for to_eval in (True, False):
        getattr(opt, "eval" if to_eval else "train")()
        if bound:
            getattr(step, "eval" if to_eval else "train")(step=5, **kw)
        else:
            getattr(fn, "eval" if to_eval else "train")(params_f, states[0], step=5, master_params=masters, **kw)
        for i in range(len(shapes)):
            assert_bits_equal(params_f[i], params_c[i], f"eval={to_eval} param {i}")
            assert_bits_equal(masters[i], opt.master_params[i], f"eval={to_eval} master {i}")


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


@pytest.mark.parametrize("options", [{}, {"master_weights": True}, {"master_weights": "stochastic", "seed": 2},
                                     {"state_precision": "bfloat16"}],
                         ids=["fp32", "master", "stochastic", "bf16-state"])
@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_torch_form_eval_and_train_are_the_classs(case, options):
    """fastopt.torch: steps, eval() (after zero_grad(set_to_none=True): no grads then), train() and
    the steps after give the class's bits, a param that never had a grad stays as it was, and
    step() in eval mode raises; the mode is each group's "train_mode" in state_dict()."""
    dtype = torch.bfloat16 if options.get("master_weights") else torch.float32
    model = mlp().to(dtype)
    unused = torch.nn.Parameter(torch.ones(3, dtype=dtype))
    opt = getattr(ft, case.name)([*model.parameters(), unused], **options, **case.kwargs)
    params = [p.detach().to(torch.float32).numpy().astype(DTYPES[str(dtype).removeprefix("torch.")])
              for p in model.parameters()]
    grads = [np.zeros(p.shape, np.float32) for p in params]
    twin = case.cls(params, grads, **options, **case.kwargs)
    x, y = torch.randn(8, 6, dtype=dtype), torch.randn(8, 3, dtype=dtype)

    def same(msg):
        for i, (p, q) in enumerate(zip(model.parameters(), params)):
            got = p.detach().view(torch.int16 if dtype == torch.bfloat16 else torch.int32).numpy()
            np.testing.assert_array_equal(got, q.view(got.dtype), err_msg=f"{msg} param {i}")

    def steps(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x), y).backward()
            refill(grads, [p.grad.to(torch.float32).numpy() for p in model.parameters()])
            opt.step()
            twin.step()

    steps(4)
    same("steps")
    opt.zero_grad(set_to_none=True)
    opt.eval()
    twin.eval()
    same("eval")
    assert not opt.training and all(g["train_mode"] is False for g in opt.state_dict()["param_groups"])
    with pytest.raises(RuntimeError, match=rf"{case.name}\.step: the params hold the eval point x"):
        opt.step()
    assert torch.equal(unused.detach(), torch.ones(3, dtype=dtype))
    copied = copy.deepcopy(opt)
    assert not copied.training
    opt.train()
    twin.train()
    same("train")
    steps(2)
    same("steps after")


def test_torch_form_checkpoint_carries_the_mode():
    model = mlp()
    opt = ft.SGDScheduleFree(model.parameters(), lr=0.1)
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    opt.eval()
    sd = opt.state_dict()
    other = ft.SGDScheduleFree(mlp().parameters(), lr=0.1)
    other.load_state_dict(sd)
    assert not other.training
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["train_mode"] = "yes"
    fresh = ft.SGDScheduleFree(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="state_dict's train_mode must be True"):
        fresh.load_state_dict(bad)
    assert fresh.training
    fresh.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    fresh.eval()
    fresh.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    assert [g["train_mode"] for g in fresh.param_groups] == [False, False, False]


def test_distributed_refuses_what_it_cannot_switch():
    """fastopt.distributed steps shards and would leave the params at y for evaluation: refused."""
    from fastopt.distributed import OffloadOptimizer
    from fastopt.distributed.pieces import fastopt_class
    with pytest.raises(TypeError, match="AdamWScheduleFree is evaluated at another point than it trains at"):
        OffloadOptimizer([torch.nn.Parameter(torch.ones(3))], ft.AdamWScheduleFree)
    with pytest.raises(TypeError, match="SGDScheduleFree is evaluated at another point"):
        fastopt_class(fastopt.SGDScheduleFree)  # (ZeroOptimizer's check)


@pytest.mark.parametrize("name", ["SGDScheduleFree", "AdamWScheduleFree"])
def test_loads_the_authors_checkpoint_at_its_step(name):
    """The authors' optimizers (facebookresearch/schedule_free) keep the step count per group,
    as "k", and no per-param "step": a checkpoint of theirs, in their format (here, fastopt's at
    step 10 rewritten so), resumes at step 11 (c_t = w_11 / sum w_i, warmup and bias correction
    of step 11), as an uninterrupted run continues."""
    cls = getattr(ft, name)
    p, q = (torch.nn.Parameter(torch.linspace(-1, 1, 5)) for _ in range(2))
    run, resumed = cls([p], lr=0.1, warmup_steps=3), cls([q], lr=0.1, warmup_steps=3)
    for t in range(10):
        p.grad = torch.linspace(0, 1, 5) * (t + 1)
        run.step()
    theirs = run.state_dict()
    theirs["param_groups"][0].update(k=10, weight_sum=0.5, lr_max=0.1, scheduled_lr=0.1)
    for st in theirs["state"].values():
        del st["step"]
    with torch.no_grad():
        q.copy_(p)
    resumed.load_state_dict(theirs)
    for opt, param in ((run, p), (resumed, q)):
        param.grad = torch.ones(5)
        opt.step()
    assert torch.equal(p, q)
