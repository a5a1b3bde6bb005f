"""What the registry's trajectory tests cannot show on their own, for the optimizers added
after SGD and Adam: SGD's two momentum forms (equal at constant lr, different after an lr
change), NAdam's closed-form momentum product at any step, RAdam's two branches, AdaBelief's
AMSGrad, Lion's fixed-size steps, Adagrad's initial accumulator, RMSprop's idle buffer,
checkpoints resumed bit-identically, and bad hyperparameters and functional arguments
rejected with nothing written.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

import fastopt
from fastopt import functional as F
from reference import NAdamRef, SGDRef, reference_for
from registry import (CASES, assert_bits_equal, assert_rounding_close, case_by_id, grad_steps, random_params,
                      refill)
from test_rules import SHAPES, STEPS, run_with_reference

NEW = (fastopt.Adagrad, fastopt.Adadelta, fastopt.RMSprop, fastopt.Adamax, fastopt.NAdam, fastopt.RAdam,
       fastopt.AdaBelief, fastopt.Lion, fastopt.AdamWScheduleFree, fastopt.SGDScheduleFree)


def run_class(cls, params, grads, grad_seq, lrs=None, **kw) -> fastopt.Optimizer:
    opt = cls(params, grads, **kw)
    for t, gs in enumerate(grad_seq, 1):
        refill(grads, gs)
        if lrs is not None:
            opt.lr = lrs(t)
        opt.step()
    return opt


# ---- SGD: torch and Sutskever momentum forms ------------------------------------------------

FORM_OPTIONS = [dict(momentum=0.9), dict(momentum=0.8, nesterov=True, weight_decay=0.05, maximize=True)]


def lr_drop(t: int) -> float:
    return 0.05 if t <= 10 else 0.005


@pytest.mark.parametrize("options", FORM_OPTIONS, ids=["momentum", "nesterov_wd_maximize"])
def test_momentum_forms_agree_at_constant_lr(options):
    """v = -lr * b: the same trajectory, up to fp32 rounding (and exactly in float64)."""
    rng = np.random.default_rng(3)
    initial = random_params(rng, SHAPES)
    finals, refs = {}, {}
    for form in ("torch", "sutskever"):
        params, grads = [p.copy() for p in initial], [np.zeros(s, np.float32) for s in SHAPES]
        opt = run_class(fastopt.SGD, params, grads, grad_steps(4, SHAPES, STEPS), lr=0.05, momentum_form=form,
                        **options)
        ref = SGDRef(lr=0.05, momentum_form=form, **options)
        ref_params = [p.astype(np.float64) for p in initial]
        for gs in grad_steps(4, SHAPES, STEPS):
            ref.step(ref_params, gs)
        finals[form], refs[form] = (params, opt), ref_params
        assert_rounding_close(params, ref_params, STEPS, msg=f"{form} form")
    assert_rounding_close(refs["torch"], refs["sutskever"], STEPS, dtype="float64", implementations=2,
                          msg="float64 forms")
    assert_rounding_close(finals["torch"][0], finals["sutskever"][0], STEPS, implementations=2, msg="fp32 forms")
    for a, b in zip(finals["torch"][0], finals["sutskever"][0]):
        assert np.any(a != b), "the forms round differently: equal bits would mean one form ran twice"
    # The buffers: v = -lr * b (both fp32 runs; the product by lr taken exactly in float64).
    b = [finals["torch"][1].state[i]["momentum_buffer"].astype(np.float64) for i in range(len(SHAPES))]
    v = [finals["sutskever"][1].state[i]["momentum_buffer"] for i in range(len(SHAPES))]
    assert_rounding_close(v, [-0.05 * x for x in b], STEPS, implementations=2, msg="v = -lr * b")


@pytest.mark.parametrize("options", FORM_OPTIONS, ids=["momentum", "nesterov_wd_maximize"])
def test_momentum_forms_differ_after_an_lr_change(options):
    rng = np.random.default_rng(5)
    initial = random_params(rng, SHAPES)
    steps = 30
    out = {}
    for form in ("torch", "sutskever"):
        params, grads = [p.copy() for p in initial], [np.zeros(s, np.float32) for s in SHAPES]
        run_class(fastopt.SGD, params, grads, grad_steps(6, SHAPES, steps), lrs=lr_drop, lr=0.05,
                  momentum_form=form, **options)
        ref = SGDRef(lr=0.05, momentum_form=form, **options)
        ref_params = [p.astype(np.float64) for p in initial]
        for t, gs in enumerate(grad_steps(6, SHAPES, steps), 1):
            ref.lr = lr_drop(t)
            ref.step(ref_params, gs)
        assert_rounding_close(params, ref_params, steps, msg=f"{form} form")
        out[form] = np.concatenate([p.ravel() for p in params])
    assert np.max(np.abs(out["torch"] - out["sutskever"])) > 1e-2
    # torch.optim.SGD is the torch form, not the Sutskever one.
    tparams = [torch.nn.Parameter(torch.tensor(p)) for p in initial]
    topt = torch.optim.SGD(tparams, lr=0.05, **options)
    for t, gs in enumerate(grad_steps(6, SHAPES, steps), 1):
        for p, g in zip(tparams, gs):
            p.grad = torch.tensor(g)
        topt.param_groups[0]["lr"] = lr_drop(t)
        topt.step()
    expected = np.concatenate([p.detach().numpy().ravel() for p in tparams])
    assert_rounding_close([out["torch"]], [expected], steps, implementations=2, msg="torch form vs torch.optim")
    assert np.max(np.abs(out["sutskever"] - expected)) > 1e-2


def test_sutskever_steps_by_hand():
    """Two steps written out: v1 = -lr1 g1, p1 = p0 + v1; v2 = mu v1 - lr2 g2, p2 = p1 + v2
    (nesterov: p += mu v - lr g), against torch's p2 = p1 - lr2 (mu g1 + g2)."""
    g1, g2, mu, lr1, lr2 = 1.0, 0.5, 0.5, 0.25, 0.125  # exact in fp32
    for nesterov in (False, True):
        got = {}
        for form in ("torch", "sutskever"):
            p, g, buf = np.zeros(1, np.float32), np.zeros(1, np.float32), np.zeros(1, np.float32)
            for step, (lr, gv) in enumerate([(lr1, g1), (lr2, g2)], 1):
                g[0] = gv
                F.sgd_([p], [g], [buf], step=step, lr=lr, momentum=mu, nesterov=nesterov, momentum_form=form)
            got[form] = (p[0], buf[0])
        if nesterov:
            v1, v2 = -lr1 * g1, mu * -lr1 * g1 - lr2 * g2
            sutskever = (mu * v1 - lr1 * g1) + (mu * v2 - lr2 * g2)
            torch_form = -lr1 * (g1 + mu * g1) - lr2 * (g2 + mu * (mu * g1 + g2))
        else:
            v2 = mu * -lr1 * g1 - lr2 * g2
            sutskever = -lr1 * g1 + v2
            torch_form = -lr1 * g1 - lr2 * (mu * g1 + g2)
        assert got["sutskever"] == (sutskever, v2), nesterov
        assert got["torch"] == (torch_form, mu * g1 + g2), nesterov
        assert sutskever != torch_form


def test_sutskever_first_step_ignores_the_buffer():
    """At step 1 the velocity is -lr * g whatever the buffer held, as the torch form sets b = g."""
    p, g, buf = np.zeros(3, np.float32), np.full(3, 2.0, np.float32), np.full(3, 7.0, np.float32)
    F.sgd_([p], [g], [buf], step=1, lr=0.5, momentum=0.9, momentum_form="sutskever")
    np.testing.assert_array_equal(buf, -1.0)
    np.testing.assert_array_equal(p, -1.0)


# ---- NAdam: the momentum product in closed form -----------------------------------------------


@pytest.mark.parametrize("beta1, momentum_decay", [(0.9, 4e-3), (0.9, 0.0), (0.9, 0.1), (0.99, 1000.0),
                                                   (0.5, 1e-7), (0.0, 4e-3)])
@pytest.mark.parametrize("step", [1, 2, 3, 7, 50, 400, 3000, 10**6])
def test_nadam_momentum_product_matches_running_product(beta1, momentum_decay, step):
    """A step at count t from known state equals the formula with torch's running product,
    accumulated in float64 over t steps. (0.99, 1000): mu_t = beta1 from the start, so the
    product 0.99^t still matters at t = 3000."""
    t = np.arange(1, step + 1, dtype=np.float64)
    running = float(np.prod(beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))))
    mu = beta1 * (1 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    g = np.array([1.0, -0.5, 2.0], np.float32)
    m0, v0 = np.array([0.25, 0.5, -1.0], np.float32), np.array([1.0, 0.25, 0.5], np.float32)
    p, m, v = np.zeros(3, np.float32), m0.copy(), v0.copy()
    F.nadam_([p], [g], [m], [v], step=step, lr=1.0, beta1=beta1, beta2=0.999, momentum_decay=momentum_decay)
    m64 = beta1 * m0.astype(np.float64) + (1 - beta1) * g
    v64 = 0.999 * v0.astype(np.float64) + 0.001 * g.astype(np.float64) ** 2
    d = np.sqrt(v64 / (1 - 0.999 ** step)) + 1e-8
    expected = -(1 - mu) / (1 - running) * g / d - mu_next / (1 - running * mu_next) * m64 / d
    assert_rounding_close([p], [expected], 1)


def test_nadam_reference_keeps_torchs_running_product():
    ref = NAdamRef(betas=(0.9, 0.999), momentum_decay=0.1)
    p = [np.zeros(2)]
    for _ in range(5):
        ref.step(p, [np.ones(2)])
    expected = np.prod([0.9 * (1 - 0.5 * 0.96 ** (t * 0.1)) for t in range(1, 6)])
    assert ref.mu_product == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("grads", ["constant", "random"])
def test_nadam_long_run_drifts_no_more_than_torch(grads):
    """3000 steps from the same params: fastopt's fp32 params are no farther from the float64
    reference than torch.optim.NAdam's fp32 ones. A constant grad makes the update a near
    constant, whose rounding into p is then the same at every step unless its two addends
    keep changing (see nadam.h); with the two terms summed before the add, fastopt's
    distance was 6x torch's here (3.9e-4 vs 6.6e-5). The 5% allows for the coefficients and
    the denominator, rounded differently from torch's: measured ratios 0.976 to 1.007."""
    rng = np.random.default_rng(12)
    initial = rng.standard_normal(256).astype(np.float32)
    constant = rng.standard_normal(256).astype(np.float32)
    grad_at = (lambda t: constant) if grads == "constant" else (lambda t: rng.standard_normal(256).astype(np.float32))
    params, grad = initial.copy(), np.zeros(256, np.float32)
    opt = fastopt.NAdam([params], [grad])
    tparam = torch.nn.Parameter(torch.tensor(initial))
    topt = torch.optim.NAdam([tparam])
    ref, ref_params = NAdamRef(), [initial.astype(np.float64)]
    for t in range(3000):
        grad[...] = grad_at(t)
        opt.step()
        tparam.grad = torch.tensor(grad)
        topt.step()
        ref.step(ref_params, [grad.astype(np.float64)])
    ours = np.abs(params - ref_params[0]).max()
    torchs = np.abs(tparam.detach().numpy() - ref_params[0]).max()
    assert ours <= 1.05 * torchs, f"fastopt {ours:.3g} vs torch {torchs:.3g} from the float64 reference"


# ---- RAdam: both branches ----------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c.name == "RAdam"], ids=lambda c: c.id)
def test_radam_cases_take_both_branches(case):
    """The first steps are plain momentum steps (rho_t <= 5), the later ones rectified."""
    ref = reference_for("RAdam", case.kwargs)
    branches = []
    for _ in range(STEPS):
        ref.t += 1
        branches.append(ref.rectified())
    assert not branches[0] and branches[-1]
    assert 2 <= branches.index(True) <= 10


def test_radam_unrectified_steps_are_momentum_steps():
    """With rho_t <= 5 the update is p -= lr * m / (1 - beta1^t), whatever v is."""
    p, g = np.zeros(2, np.float32), np.array([1.0, -3.0], np.float32)
    m, v = np.zeros(2, np.float32), np.full(2, 1e6, np.float32)  # a v that would matter
    F.radam_([p], [g], [m], [v], step=1, lr=0.5)
    assert_rounding_close([p], [-0.5 * g.astype(np.float64)], 1)


# ---- AdaBelief: AMSGrad's maximum is active ----------------------------------------------------


def test_adabelief_amsgrad_max_is_active_on_these_grads():
    for id_ in ("adabelief-amsgrad", "adabelief-amsgrad_decouple_maximize"):
        case = case_by_id(id_)
        with_max = run_with_reference(case, SHAPES, STEPS)
        smax, s = with_max.ref.states["max_exp_avg_var"][0], with_max.ref.states["exp_avg_var"][0]
        assert np.mean(smax > s) > 0.5, id_
        without = run_with_reference(dataclasses.replace(case, kwargs={**case.kwargs, "amsgrad": False}),
                                     SHAPES, STEPS)
        diff = max(np.max(np.abs(a - b)) for a, b in zip(with_max.ref_params, without.ref_params))
        assert diff > 1e-3, id_


# ---- Lion: steps of exactly lr -----------------------------------------------------------------


def test_lion_moves_every_coordinate_by_lr():
    rng = np.random.default_rng(9)
    p0 = rng.standard_normal(1000).astype(np.float32)
    p, g = p0.copy(), np.zeros(1000, np.float32)
    opt = fastopt.Lion([p], [g], lr=2.0 ** -10)
    for gs in grad_steps(10, [(1000,)], 5):
        before = p.astype(np.float64)
        refill([g], gs)
        opt.step()
        step = np.abs(p.astype(np.float64) - before)
        np.testing.assert_allclose(step, 2.0 ** -10, rtol=1e-3)  # p + -lr*sign(c), rounded once


def test_lion_does_not_move_where_the_interpolation_is_zero():
    p = np.array([1.0, -2.0, 3.0], np.float32)
    g = np.array([0.0, 1.0, -1.0], np.float32)
    m = np.array([0.0, -1.0, 1.0], np.float32)  # with beta1 = 0.5: c = (0, 0, 0)
    F.lion_([p], [g], [m], lr=0.1, beta1=0.5, beta2=0.9)
    np.testing.assert_array_equal(p, [1.0, -2.0, 3.0])
    assert_rounding_close([m], [np.array([0.0, -0.8, 0.8])], 1)


def test_lion_weight_decay_is_decoupled():
    p, g, m = np.full(2, 4.0, np.float32), np.array([1.0, -1.0], np.float32), np.zeros(2, np.float32)
    F.lion_([p], [g], [m], lr=0.25, weight_decay=0.5)
    np.testing.assert_array_equal(p, [4.0 * (1 - 0.125) - 0.25, 4.0 * (1 - 0.125) + 0.25])


# ---- Adagrad: the initial accumulator ----------------------------------------------------------


def test_adagrad_initial_accumulator_per_group_and_on_load():
    params = [np.ones(4, np.float32), np.ones(3, np.float32)]
    grads = [np.zeros(4, np.float32), np.zeros(3, np.float32)]
    opt = fastopt.Adagrad([{"params": params[:1], "grads": grads[:1], "initial_accumulator_value": 0.5},
                           {"params": params[1:], "grads": grads[1:]}], lr=0.1, initial_accumulator_value=0.25)
    np.testing.assert_array_equal(opt.state[0]["sum"], 0.5)
    np.testing.assert_array_equal(opt.state[1]["sum"], 0.25)
    fresh = opt.state_dict()  # step 0
    grads[0][...] = 1.0
    opt.step()
    np.testing.assert_array_equal(opt.state[0]["sum"], 1.5)
    assert_rounding_close([params[0]], [np.full(4, 1 - 0.1 / (np.sqrt(1.5) + 1e-10))], 1)
    del fresh["state"][0]["sum"]  # a step-0 checkpoint without the array: reset to the initial value
    opt.load_state_dict(fresh)
    np.testing.assert_array_equal(opt.state[0]["sum"], 0.5)


# ---- RMSprop: the idle momentum buffer of a centered RMSprop without momentum -----------------


def test_rmsprop_centered_without_momentum_leaves_its_buffer_at_zero():
    rng = np.random.default_rng(2)
    params = random_params(rng, SHAPES)
    grads = [np.zeros(s, np.float32) for s in SHAPES]
    opt = run_class(fastopt.RMSprop, params, grads, grad_steps(3, SHAPES, 5), centered=True)
    for i in range(len(SHAPES)):
        st = opt.state[i]
        assert set(st) == {"square_avg", "momentum_buffer", "grad_avg"}
        assert_bits_equal(st["momentum_buffer"], np.zeros(SHAPES[i], np.float32), f"param {i}")
        assert np.any(st["grad_avg"] != 0)


# ---- checkpoints: a resumed run continues bit-identically --------------------------------------

RESUME_CASES = [c for c in CASES if c.cls in NEW and c.id.endswith(("-all", "_maximize", "momentum_decay"))]


@pytest.mark.parametrize("case", RESUME_CASES, ids=lambda c: c.id)
def test_resumed_run_is_bit_identical(case):
    rng = np.random.default_rng(case.seed)
    initial = random_params(rng, SHAPES, "bfloat16")
    seq = list(grad_steps(case.seed + 1, SHAPES, 12))
    params, grads = [p.copy() for p in initial], [np.zeros(s, np.float32) for s in SHAPES]
    opt = case.cls(params, grads, master_weights=True, **case.kwargs)
    for gs in seq[:7]:
        refill(grads, gs)
        opt.step()
    ckpt = copy.deepcopy(opt.state_dict())
    resumed_params = [p.copy() for p in params]
    resumed_grads = [np.zeros(s, np.float32) for s in SHAPES]
    resumed = case.cls(resumed_params, resumed_grads, master_weights=True, **case.kwargs)
    resumed.load_state_dict(ckpt)
    for gs in seq[7:]:
        refill(grads, gs)
        refill(resumed_grads, gs)
        opt.step()
        resumed.step()
    for i in range(len(SHAPES)):
        assert_bits_equal(resumed_params[i], params[i], f"param {i}")
        for k, a in opt.state[i].items():
            assert_bits_equal(resumed.state[i][k], a, f"param {i} {k}")


def test_resume_cases_cover_every_new_optimizer():
    assert {c.cls for c in RESUME_CASES} == set(NEW)


# ---- bad hyperparameters: a clear error, nothing changed ----------------------------------------

NAN, INF = float("nan"), float("inf")

# (class, base hyperparameters, key, bad value, exception, message pattern)
BAD_HYPERS = [
    (fastopt.Adagrad, {}, "lr", -0.1, ValueError, r"lr must be finite and >= 0, got -0\.1"),
    (fastopt.Adagrad, {}, "lr_decay", -1e-3, ValueError, r"lr_decay must be finite and >= 0"),
    (fastopt.Adagrad, {}, "initial_accumulator_value", -1.0, ValueError,
     r"initial_accumulator_value must be finite and >= 0"),
    (fastopt.Adagrad, {}, "eps", NAN, ValueError, r"eps must be finite and >= 0"),
    (fastopt.Adagrad, {}, "weight_decay", -0.5, ValueError, r"weight_decay must be finite and >= 0"),
    (fastopt.Adagrad, {}, "maximize", 1, TypeError, r"maximize must be a bool"),
    (fastopt.Adadelta, {}, "rho", 1.5, ValueError, r"rho must be in \[0, 1\], got 1\.5"),
    (fastopt.Adadelta, {}, "rho", -0.1, ValueError, r"rho must be in \[0, 1\]"),
    (fastopt.Adadelta, {}, "eps", -1e-6, ValueError, r"eps must be finite and >= 0"),
    (fastopt.Adadelta, {}, "lr", INF, ValueError, r"lr must be finite and >= 0"),
    (fastopt.Adadelta, {}, "rho", "0.9", TypeError, r"rho must be a real number"),
    (fastopt.RMSprop, {}, "alpha", 1.01, ValueError, r"alpha must be in \[0, 1\]"),
    (fastopt.RMSprop, {}, "alpha", NAN, ValueError, r"alpha must be in \[0, 1\]"),
    (fastopt.RMSprop, {}, "momentum", -0.9, ValueError, r"momentum must be finite and >= 0"),
    (fastopt.RMSprop, {}, "eps", -1.0, ValueError, r"eps must be finite and >= 0"),
    (fastopt.RMSprop, {}, "centered", "yes", TypeError, r"centered must be a bool"),
    (fastopt.Adamax, {}, "betas", (1.0, 0.999), ValueError, r"beta1 must be in \[0, 1\), got 1"),
    (fastopt.Adamax, {}, "betas", (0.9, -0.1), ValueError, r"beta2 must be in \[0, 1\)"),
    (fastopt.Adamax, {}, "betas", 0.9, TypeError, r"betas must be a pair"),
    (fastopt.Adamax, {}, "weight_decay", -1.0, ValueError, r"weight_decay must be finite and >= 0"),
    (fastopt.NAdam, {}, "momentum_decay", -4e-3, ValueError, r"momentum_decay must be finite and >= 0"),
    (fastopt.NAdam, {}, "momentum_decay", INF, ValueError, r"momentum_decay must be finite and >= 0"),
    (fastopt.NAdam, {}, "betas", (0.9, 1.0), ValueError, r"beta2 must be in \[0, 1\), got 1"),
    (fastopt.NAdam, {}, "decoupled_weight_decay", None, TypeError, r"decoupled_weight_decay must be a bool"),
    (fastopt.RAdam, {}, "eps", -1e-8, ValueError, r"eps must be finite and >= 0"),
    (fastopt.RAdam, {}, "betas", (NAN, 0.999), ValueError, r"beta1 must be in \[0, 1\)"),
    (fastopt.RAdam, {}, "decoupled_weight_decay", "no", TypeError, r"decoupled_weight_decay must be a bool"),
    (fastopt.AdaBelief, {}, "betas", (0.9, 1.0), ValueError, r"beta2 must be in \[0, 1\), got 1"),
    (fastopt.AdaBelief, {}, "eps", -1e-16, ValueError, r"eps must be finite and >= 0"),
    (fastopt.AdaBelief, {}, "amsgrad", 0, TypeError, r"amsgrad must be a bool"),
    (fastopt.AdaBelief, {}, "weight_decouple", None, TypeError, r"weight_decouple must be a bool"),
    (fastopt.Lion, {}, "betas", (1.0, 0.99), ValueError, r"beta1 must be in \[0, 1\), got 1"),
    (fastopt.Lion, {}, "lr", -1e-4, ValueError, r"lr must be finite and >= 0"),
    (fastopt.Lion, {}, "weight_decay", NAN, ValueError, r"weight_decay must be finite and >= 0"),
    (fastopt.Lion, {}, "betas", (0.9, 0.99, 0.999), TypeError, r"betas must be a pair"),
    (fastopt.AdamWScheduleFree, {}, "betas", (0.0, 0.999), ValueError, r"beta1 must be in \(0, 1\) \(the eval point"),
    (fastopt.AdamWScheduleFree, {}, "betas", (0.9, 1.0), ValueError, r"beta2 must be in \[0, 1\), got 1"),
    (fastopt.AdamWScheduleFree, {}, "eps", -1e-8, ValueError, r"eps must be finite and >= 0"),
    (fastopt.AdamWScheduleFree, {}, "warmup_steps", 2.5, ValueError, r"warmup_steps must be a whole number >= 0"),
    (fastopt.AdamWScheduleFree, {}, "warmup_steps", -1, ValueError, r"warmup_steps must be a whole number >= 0"),
    (fastopt.AdamWScheduleFree, {}, "warmup_steps", INF, ValueError, r"warmup_steps must be a whole number >= 0"),
    (fastopt.AdamWScheduleFree, {}, "r", -1.0, ValueError, r"r must be finite and >= 0, got -1"),
    (fastopt.AdamWScheduleFree, {}, "weight_lr_power", NAN, ValueError, r"weight_lr_power must be finite and >= 0"),
    (fastopt.AdamWScheduleFree, {"r": 20.0}, "weight_lr_power", 13.0, ValueError,
     r"r \+ weight_lr_power must be <= 32, got 33"),
    (fastopt.AdamWScheduleFree, {}, "warmup_steps", "10", TypeError, r"warmup_steps must be a real number"),
    (fastopt.SGDScheduleFree, {}, "momentum", 1.0, ValueError, r"momentum must be in \(0, 1\) \(the eval point"),
    (fastopt.SGDScheduleFree, {}, "momentum", 0.0, ValueError, r"momentum must be in \(0, 1\)"),
    (fastopt.SGDScheduleFree, {}, "lr", -1.0, ValueError, r"lr must be finite and >= 0"),
    (fastopt.SGDScheduleFree, {}, "weight_decay", -0.1, ValueError, r"weight_decay must be finite and >= 0"),
    (fastopt.SGDScheduleFree, {}, "maximize", "no", TypeError, r"maximize must be a bool"),
    (fastopt.SGD, {"momentum": 0.9}, "momentum_form", "keras", ValueError,
     r"momentum_form must be one of 'torch', 'sutskever', got 'keras'"),
    (fastopt.SGD, {"momentum": 0.9}, "momentum_form", None, TypeError, r"momentum_form must be a str"),
    (fastopt.SGD, {"momentum": 0.9, "momentum_form": "sutskever"}, "dampening", 0.1, ValueError,
     r"the sutskever momentum form has no dampening"),
    (fastopt.SGD, {"momentum": 0.9, "dampening": 0.1}, "momentum_form", "sutskever", ValueError,
     r"the sutskever momentum form has no dampening"),
]


def test_bad_hypers_cover_every_new_optimizer():
    assert {c for c, *_ in BAD_HYPERS} >= set(NEW)


def _make():
    params = [np.linspace(-1, 1, 8, dtype=np.float32), np.ones((2, 3), np.float32)]
    grads = [np.full(8, 0.5, np.float32), np.full((2, 3), -0.25, np.float32)]
    return params, grads


def _observable(opt, params):
    return ([p.copy() for p in params], [dict(g) for g in opt.param_groups],
            {i: {k: v.copy() for k, v in s.items()} for i, s in opt.state.items()}, opt.steps)


@pytest.mark.parametrize("path", ["constructor", "group_dict", "setitem"])
@pytest.mark.parametrize("cls, base, key, value, exc, pattern", BAD_HYPERS,
                         ids=[f"{c.__name__}-{k}-{v!r}" for c, _, k, v, *_ in BAD_HYPERS])
def test_bad_hyperparameter_rejected(cls, base, key, value, exc, pattern, path):
    params, grads = _make()
    before = [p.copy() for p in params]
    if path != "setitem":
        with pytest.raises(exc, match=pattern) as info:
            if path == "constructor":
                cls(params, grads, **{**base, key: value})
            else:
                cls([{"params": params[:1], "grads": grads[:1]},
                     {"params": params[1:], "grads": grads[1:], key: value}], **base)
        if path == "group_dict":
            assert str(info.value).startswith("param group 1: ")
        for p, b in zip(params, before):
            assert_bits_equal(p, b, "a param was written")
        return
    # On a bound optimizer that has stepped: the group, params and state stay as they were,
    # and the next step is the step a twin that never saw the bad value takes.
    twin_params, twin_grads = _make()
    opt, twin = cls(params, grads, **base), cls(twin_params, twin_grads, **base)
    opt.step()
    twin.step()
    seen = _observable(opt, params)
    with pytest.raises(exc, match=pattern):
        opt.param_groups[0][key] = value
    after = _observable(opt, params)
    for a, b in zip(seen[0], after[0]):
        assert_bits_equal(a, b, "a param was written")
    assert seen[1] == after[1] and seen[3] == after[3]
    for i in seen[2]:
        for k in seen[2][i]:
            assert_bits_equal(after[2][i][k], seen[2][i][k], f"state {i} {k}")
    opt.step()
    twin.step()
    for a, b in zip(params, twin_params):
        assert_bits_equal(a, b, "the run diverged from its twin")


# ---- functional forms: missing or mismatched state lists ----------------------------------------


def _arrays(n=2, value=1.0):
    return [np.full(5, value, np.float32) for _ in range(n)]


@pytest.mark.parametrize("call, message", [
    (lambda p, g: F.rmsprop_(p, g, _arrays(), momentum=0.9), "momentum > 0 or centered needs momentum_buffers"),
    (lambda p, g: F.rmsprop_(p, g, _arrays(), centered=True), "momentum > 0 or centered needs momentum_buffers"),
    (lambda p, g: F.rmsprop_(p, g, _arrays(), _arrays(), centered=True), "centered needs grad_avgs"),
    (lambda p, g: F.adabelief_(p, g, _arrays(), _arrays(), step=1, amsgrad=True), "amsgrad needs max_exp_avg_vars"),
    (lambda p, g: F.adagrad_(p, g, _arrays(1), step=1), "got 2 params but 1 state_sums"),
    (lambda p, g: F.nadam_(p, g, _arrays(), _arrays(3), step=1), "got 2 params but 3 exp_avg_sq"),
    (lambda p, g: F.lion_(p, g, _arrays(), lr=-1.0), "lr must be finite and >= 0"),
    (lambda p, g: F.radam_(p, g, _arrays(), _arrays(), step=0), "step must be >= 1"),
    (lambda p, g: F.adamax_(p, g, _arrays(), _arrays(), step=1, master_params=[None]), "got 2 params but 1 master"),
    (lambda p, g: F.adadelta_(p, g, _arrays(), _arrays(), rho=2.0), r"rho must be in \[0, 1\]"),
    (lambda p, g: F.sgd_(p, g, _arrays(), step=1, lr=0.1, momentum=0.9, dampening=0.5, momentum_form="sutskever"),
     "the sutskever momentum form has no dampening"),
], ids=["rmsprop-momentum", "rmsprop-centered-buffers", "rmsprop-centered-avgs", "adabelief-amsgrad",
        "adagrad-length", "nadam-length", "lion-lr", "radam-step", "adamax-masters", "adadelta-rho",
        "sgd-sutskever-dampening"])
def test_functional_rejects(call, message):
    params, grads = _arrays(), _arrays(value=0.5)
    with pytest.raises(ValueError, match=message):
        call(params, grads)
    for p in params:
        np.testing.assert_array_equal(p, 1.0)
