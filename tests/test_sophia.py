"""fastopt.Sophia (python/fastopt/sophia.py, C++ rules/sophia.h) with its Hessian estimates:
the float64 reference of the paper's Algorithm 3, every ISA bit-identical, checkpoints, the
PyTorch form and its estimators, bad input. (tests/registry.py runs its cases through the
generic rule tests without estimates.)"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import fastopt
import fastopt.torch as ft
from reference import SophiaRef
from registry import assert_bits_equal, isa_switch, supported_isas  # noqa: F401  (fixture)

SHAPES = [(37,), (4, 9), (70001,)]
HYPERS = dict(lr=0.01, betas=(0.9, 0.95), rho=0.05, weight_decay=0.1)


def data(seed: int, signed: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Grads and Hessian estimates: positive (Gauss-Newton-Bartlett's) or of either sign
    (Hutchinson's)."""
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    est = [(rng.standard_normal(s) if signed else rng.exponential(1.0, s)).astype(np.float32) for s in SHAPES]
    return grads, est


def run(steps: int, k: int, signed: bool, **options) -> tuple[fastopt.Sophia, list[np.ndarray]]:
    params = [np.random.default_rng(1).standard_normal(s).astype(np.float32) for s in SHAPES]
    grads, est = data(0, signed)
    opt = fastopt.Sophia(params, grads, **{**HYPERS, **options})
    for t in range(steps):
        g, e = data(t + 10, signed)
        for a, b in zip(grads, g):
            a[...] = b
        opt.step()
        if t % k == k - 1:
            for a, b in zip(est, e):
                a[...] = b
            opt.update_hessian(est)
    return opt, params


@pytest.mark.parametrize("signed", [False, True], ids=["gnb", "hutchinson"])
@pytest.mark.parametrize("maximize", [False, True])
def test_matches_the_paper(signed, maximize):
    """40 steps, the Hessian average updated every 3: within float32 rounding of Algorithm 3 in
    float64 (the clip makes each step at most lr: the error stays a few ulps of the params)."""
    opt, params = run(40, 3, signed, maximize=maximize)
    ref = SophiaRef(**{**HYPERS, "maximize": maximize})
    rp = [np.random.default_rng(1).standard_normal(s) for s in SHAPES]
    for t in range(40):
        g, e = data(t + 10, signed)
        ref.step(rp, g)
        if t % 3 == 2:
            ref.update_hessian(rp, e)
    for i, (p, r) in enumerate(zip(params, rp)):
        np.testing.assert_allclose(p, r, rtol=0, atol=2e-5, err_msg=f"param {i}")
        np.testing.assert_allclose(opt.state[i]["hessian"], ref.buf("hessian", i, r), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(opt.state[i]["exp_avg"], ref.buf("exp_avg", i, r), rtol=1e-5, atol=1e-7)
    assert opt.steps == [40]  # (update_hessian takes no step)


def test_negative_curvature_steps_along_the_moment():
    """h < 0 (a Hutchinson estimate): max(rho * h, eps) is eps, so the step is lr * sign(m)."""
    p, g = np.zeros(4, np.float32), np.array([1.0, -2.0, 0.5, -0.25], np.float32)
    opt = fastopt.Sophia([p], [g], lr=0.125, weight_decay=0.0)
    opt.step()  # (h = 0: the same clip)
    opt.update_hessian([np.full(4, -3.0, np.float32)])
    before = p.copy()
    opt.step()
    assert_bits_equal(p - before, np.float32(-0.125) * np.sign(g))


def test_every_isa_bit_identical(isa_switch):  # noqa: F811
    runs = []
    for isa in supported_isas():
        isa_switch(isa)
        opt, params = run(9, 2, True, state_precision="bfloat16")
        runs.append((params, opt.state))
    for params, state in runs[1:]:
        for a, b in zip(params, runs[0][0]):
            assert_bits_equal(a, b)
        for i in range(len(SHAPES)):
            assert_bits_equal(state[i]["hessian"], runs[0][1][i]["hessian"])


@pytest.mark.parametrize("state_precision", ["float32", "bfloat16", "bfloat16_stochastic"])
def test_checkpoint_resumes_bit_identically(state_precision):
    whole, params = run(12, 2, False, state_precision=state_precision, seed=5 if "stochastic" in state_precision else 0)
    assert whole.state[0]["hessian"].dtype == (np.float32 if state_precision == "float32" else ml_dtypes.bfloat16)
    first, p1 = run(6, 2, False, state_precision=state_precision, seed=5 if "stochastic" in state_precision else 0)
    saved = first.state_dict()
    grads, est = data(0, False)
    resumed = fastopt.Sophia(p1, grads, **HYPERS, state_precision=state_precision,
                             seed=5 if "stochastic" in state_precision else 0)
    resumed.load_state_dict(saved)
    for t in range(6, 12):
        g, e = data(t + 10, False)
        for a, b in zip(grads, g):
            a[...] = b
        resumed.step()
        if t % 2 == 1:
            resumed.update_hessian(e)
    for a, b in zip(p1, params):
        assert_bits_equal(a, b)


def test_bad_input_rejected_nothing_written():
    params = [np.ones(s, np.float32) for s in SHAPES]
    grads, est = data(0, False)
    opt = fastopt.Sophia(params, grads, **HYPERS)
    opt.step()
    hessians = [opt.state[i]["hessian"].copy() for i in range(3)]
    with pytest.raises(ValueError, match="got 2 estimates for 3 params"):
        opt.update_hessian(est[:2])
    with pytest.raises(fastopt.TensorError, match=r"estimate 1: shape \(9, 4\) differs from hessian 1's shape"):
        opt.update_hessian([est[0], est[1].reshape(9, 4), est[2]])
    for i in range(3):
        assert_bits_equal(opt.state[i]["hessian"], hessians[i])
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        fastopt.Sophia(params, grads, eps=0.0)
    with pytest.raises(ValueError, match="rho must be finite and >= 0"):
        fastopt.Sophia(params, grads, rho=-1.0)
    with pytest.raises(ValueError, match="Hessian average is updated by a pass of its own"):
        fastopt.Sophia(params, grads, state_precision="8bit")


def test_torch_form_with_an_estimator():
    """fastopt.torch.Sophia on a small classifier, the Hessian from gauss_newton_bartlett every 2
    steps, against fastopt.Sophia fed the same grads and estimates (the same bits)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    twin = [p.detach().clone() for p in model.parameters()]
    grads = [torch.zeros_like(p) for p in twin]
    opt = ft.Sophia(model.parameters(), lr=0.05, rho=0.02)
    ref = fastopt.Sophia(twin, grads, lr=0.05, rho=0.02)
    x = torch.randn(16, 5)
    for t in range(6):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.arange(16) % 3).backward()
        for g, p in zip(grads, model.parameters()):
            g.copy_(p.grad)
        opt.step()
        ref.step()
        if t % 2 == 1:
            est = ft.gauss_newton_bartlett(model(x), list(model.parameters()), torch.Generator().manual_seed(t))
            opt.update_hessian(est)
            ref.update_hessian(est)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin))
    assert torch.equal(opt.state[model.weight]["hessian"], ref.state[0]["hessian"])


@pytest.mark.cuda
def test_cuda_bit_identical_to_cpu():
    from test_cuda_engine import to_cuda, to_numpy
    params = [np.random.default_rng(1).standard_normal(s).astype(np.float32) for s in SHAPES]
    grads, est = data(0, True)
    gparams, ggrads, gest = ([to_cuda(a) for a in xs] for xs in (params, grads, est))
    cpu = fastopt.Sophia(params, grads, **HYPERS, state_precision="bfloat16")
    gpu = fastopt.Sophia(gparams, ggrads, **HYPERS, state_precision="bfloat16")
    for t in range(8):
        g, e = data(t + 10, True)
        for a, b, c in zip(grads, ggrads, g):
            a[...] = c
            b.copy_(to_cuda(c))
        cpu.step()
        gpu.step()
        if t % 2:
            cpu.update_hessian(e)
            gpu.update_hessian([to_cuda(x) for x in e])
    for a, b in zip(params, gparams):
        assert_bits_equal(to_numpy(b), a)


def test_nonfinite_estimate_skips_the_update():
    params = [np.ones(s, np.float32) for s in SHAPES]
    grads, est = data(0, False)
    opt = fastopt.Sophia(params, grads, **HYPERS)
    assert opt.update_hessian(est) is False
    kept = [opt.state[i]["hessian"].copy() for i in range(3)]
    est[2][5] = np.nan
    assert opt.update_hessian(est) is True
    for i in range(3):
        assert_bits_equal(opt.state[i]["hessian"], kept[i])


def test_torch_form_binds_before_a_step_and_sees_new_betas():
    """update_hessian before the first step (the paper's order at t = 1) and right after
    load_state_dict; a beta2 changed in param_groups applies at once."""
    model = torch.nn.Linear(3, 2)
    opt = ft.Sophia(model.parameters(), lr=0.1)
    ones = [torch.ones_like(p) for p in model.parameters()]
    opt.update_hessian(ones)
    assert torch.allclose(opt.state[model.weight]["hessian"], torch.full((2, 3), 0.01))
    opt.param_groups[0]["betas"] = (0.9, 0.5)
    opt.update_hessian(ones)
    assert torch.allclose(opt.state[model.weight]["hessian"], torch.full((2, 3), 0.505))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    again = ft.Sophia(model.parameters(), lr=0.1)
    again.load_state_dict(saved)
    again.update_hessian(ones)
    assert torch.allclose(again.state[model.weight]["hessian"], torch.full((2, 3), 0.7525))


def test_torch_form_estimates_of_params_the_last_step_skipped():
    """An estimate for a param whose grad was None at the last step updates its h (not dropped);
    a step's param without an estimate, and a dict key that is no param, are refused."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    opt = ft.Sophia(model.parameters(), lr=0.1)
    model[1](torch.ones(1, 2)).sum().backward()  # grads for the second layer alone
    opt.step()
    params = list(model.parameters())
    opt.update_hessian([torch.ones_like(p) for p in params])
    for p in params:
        assert torch.allclose(opt.state[p]["hessian"], torch.full(p.shape, 0.01)), p.shape
    with pytest.raises(ValueError, match="no estimate for a param it steps"):
        opt.update_hessian([torch.ones_like(p) for p in params[:2]] + [None, None])
    with pytest.raises(ValueError, match="an estimate's key is not one of its params"):
        opt.update_hessian({**{p: torch.ones_like(p) for p in params}, torch.nn.Parameter(torch.ones(1)): None})
    model.zero_grad()
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # (binds the params that have grads again)
    assert opt.state[params[0]]["exp_avg"].abs().sum() > 0


def test_not_in_fastopt_distributed():
    """fastopt.distributed steps pieces with no Hessian estimates: its h would stay 0 (sign descent)."""
    from fastopt.distributed.pieces import fastopt_class
    with pytest.raises(TypeError, match=r"Sophia takes Hessian estimates \(update_hessian\), which "
                                        "fastopt.distributed does not pass on"):
        fastopt_class(ft.Sophia)
