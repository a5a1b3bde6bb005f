"""fastopt.schedules against torch.optim.lr_scheduler, and their properties.

sched(k) is the lr of the step taken after k steps: torch's get_last_lr() read before
optimizer step k + 1, i.e. at last_epoch == k.

Tolerances. Against torch's closed forms (_get_closed_form_lr, OneCycleLR's get_lr) the
comparison is exact: fastopt evaluates the same double operations in the same order, with the
same libm. Torch's default form is recursive (each lr is the previous one times a ratio), so
each step adds about one rounding error: after N <= 1000 steps it stays within ~N ulps;
we allow rtol 1e-13 (~450 ulps) and an atol of 1e-15 * base lr for lrs that reach 0.
"""

from __future__ import annotations

import math
import pickle
import warnings
from typing import Callable

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as L

import fastopt
from fastopt import _core
from fastopt import schedules as S

BASE = 0.1
RTOL_RECURSIVE = 1e-13
ATOL_RECURSIVE = 1e-15 * BASE


class DummyOptimizer(torch.optim.Optimizer):
    """One param group and no params: all a scheduler reads and writes. Optimizer.__init__
    is skipped because its first call imports torch._dynamo (1.5 s, a third of this file)."""

    def __init__(self, lr: float):  # noqa: super().__init__ deliberately not called
        self.param_groups = [{"lr": lr}]
        self.defaults = {"lr": lr}

    def step(self, closure=None):
        return None


def torch_run(make: Callable[[torch.optim.Optimizer], L.LRScheduler], n: int, base: float = BASE):
    """The first n lrs of a torch scheduler driving a dummy optimizer, and the scheduler."""
    opt = DummyOptimizer(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make(opt)
        out = []
        for k in range(n):
            out.append(sched.get_last_lr()[0])
            assert opt.param_groups[0]["lr"] == out[-1]  # the lr the optimizer would use
            opt.step()
            if k < n - 1:  # OneCycleLR raises when stepped past its total
                sched.step()
    return np.array(out), sched


def torch_closed_form(sched: L.LRScheduler, n: int) -> np.ndarray:
    out = []
    for k in range(n):
        sched.last_epoch = k
        out.append(sched._get_closed_form_lr()[0])
    return np.array(out)


# (id, torch scheduler, fastopt schedule, steps): the chainable ones, which have closed forms.
CHAINABLE = [
    ("step", lambda o: L.StepLR(o, 7, 0.5), S.step(BASE, 7, 0.5), 300),
    ("multistep", lambda o: L.MultiStepLR(o, [0, 3, 10, 10, 200], 0.3),
     S.multistep(BASE, [200, 10, 3, 10, 0], 0.3), 300),
    ("constant", lambda o: L.ConstantLR(o, 1 / 3, 13), S.constant(BASE, 1 / 3, 13), 300),
    ("linear", lambda o: L.LinearLR(o, 0.1, 0.9, 200), S.linear(BASE, 0.1, 0.9, 200), 300),
    ("linear-down", lambda o: L.LinearLR(o, 1.0, 0.01, 50), S.linear(BASE, 1.0, 0.01, 50), 300),
    ("exponential", lambda o: L.ExponentialLR(o, 0.99), S.exponential(BASE, 0.99), 1000),
    ("polynomial", lambda o: L.PolynomialLR(o, 200, 2.5), S.polynomial(BASE, 200, 2.5), 300),
    ("polynomial-sqrt", lambda o: L.PolynomialLR(o, 100, 0.5), S.polynomial(BASE, 100, 0.5), 150),
    # 2.5 periods of T_max: torch's cosine rises again past T_max, and so does fastopt's.
    ("cosine", lambda o: L.CosineAnnealingLR(o, 120, 0.001), S.cosine(BASE, 120, 0.001), 300),
    ("cosine-to-0", lambda o: L.CosineAnnealingLR(o, 100, 0.0), S.cosine(BASE, 100), 250),
]
chainable = pytest.mark.parametrize("make,ours,n", [c[1:] for c in CHAINABLE], ids=[c[0] for c in CHAINABLE])


@chainable
def test_matches_torch_closed_form_exactly(make, ours, n):
    _, sched = torch_run(make, 1)
    np.testing.assert_array_equal(ours.lrs(n), torch_closed_form(sched, n))


@chainable
def test_matches_torch_trajectory(make, ours, n):
    expected, _ = torch_run(make, n)
    np.testing.assert_allclose(ours.lrs(n), expected, rtol=RTOL_RECURSIVE, atol=ATOL_RECURSIVE)


ONE_CYCLE = [dict(), dict(anneal_strategy="linear"), dict(three_phase=True),
             dict(three_phase=True, anneal_strategy="linear"), dict(pct_start=0.0), dict(pct_start=1.0),
             dict(pct_start=0.05, div_factor=10.0, final_div_factor=100.0), dict(pct_start=0.7, three_phase=True)]


@pytest.mark.parametrize("total", [1, 2, 7, 97, 1000])
@pytest.mark.parametrize("kw", ONE_CYCLE, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_one_cycle_matches_torch_exactly(kw, total):
    if kw.get("pct_start", 0.3) * total == 1:  # rejected (torch divides by zero), tested below
        total += 1
    expected, _ = torch_run(lambda o: L.OneCycleLR(o, max_lr=0.5, total_steps=total, cycle_momentum=False, **kw),
                            total)
    np.testing.assert_array_equal(S.one_cycle(0.5, total, **kw).lrs(total), expected)


def test_one_cycle_holds_its_last_lr():
    s = S.one_cycle(0.5, 100)
    min_lr = 0.5 / 25.0 / 1e4
    assert s(99) == s(100) == s(10**12) == min_lr
    assert max(s.lrs(100)) == 0.5 and s(0) == pytest.approx(0.5 / 25.0, rel=1e-15)


def test_chain_matches_sequential_lr():
    ms = [12, 30, 50]
    expected, _ = torch_run(lambda o: L.SequentialLR(
        o, [L.ConstantLR(o, 0.5, 5), L.StepLR(o, 4, 0.7), L.ExponentialLR(o, 0.95), L.MultiStepLR(o, [3, 8], 0.5)], ms),
        80)
    ours = S.chain([S.constant(BASE, 0.5, 5), S.step(BASE, 4, 0.7), S.exponential(BASE, 0.95),
                    S.multistep(BASE, [3, 8], 0.5)], ms)
    np.testing.assert_allclose(ours.lrs(80), expected, rtol=RTOL_RECURSIVE, atol=ATOL_RECURSIVE)


@pytest.mark.parametrize("start_factor,eta_min", [(0.1, 0.001), (0.5, 0.0)])
def test_warmup_cosine_matches_sequential_lr(start_factor, eta_min):
    W, T = 10, 100  # up to and including step T, where torch's cosine reaches eta_min
    expected, _ = torch_run(lambda o: L.SequentialLR(
        o, [L.LinearLR(o, start_factor, 1.0, W), L.CosineAnnealingLR(o, T - W, eta_min)], [W]), T + 1)
    ours = S.warmup_cosine(BASE, W, T, eta_min=eta_min, warmup_start_factor=start_factor)
    np.testing.assert_allclose(ours.lrs(T + 1), expected, rtol=RTOL_RECURSIVE, atol=ATOL_RECURSIVE)
    same = S.chain([S.linear(BASE, start_factor, 1.0, W), S.anneal(BASE, eta_min, T - W)], [W])
    np.testing.assert_array_equal(ours.lrs(T + 50), same.lrs(T + 50))


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_wsd_matches_sequential_lr(decay):
    W, T, D, final = 10, 100, 30, 0.05 * BASE
    tail = (lambda o: L.LinearLR(o, 1.0, final / BASE, D)) if decay == "linear" else \
        (lambda o: L.CosineAnnealingLR(o, D, final))
    expected, _ = torch_run(lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.2, 1.0, W), tail(o)], [T - D]), T + 1)
    ours = S.wsd(BASE, W, T, D, final_lr=final, decay=decay, warmup_start_factor=0.2)
    np.testing.assert_allclose(ours.lrs(T + 1), expected, rtol=RTOL_RECURSIVE, atol=ATOL_RECURSIVE)


# ---- properties ---------------------------------------------------------------------------

@pytest.mark.parametrize("decay", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("W", [0, 1, 10])
def test_wsd_phases(decay, W):
    T, D, final = 100, 40, 0.001
    s = S.wsd(BASE, W, T, D, final_lr=final, decay=decay)
    lrs = s.lrs(T + 10)
    warm, stable, dec = lrs[:W + 1], lrs[W:T - D + 1], lrs[T - D:T + 1]
    assert np.all(np.diff(warm) > 0) and lrs[0] == (0.0 if W else BASE)
    assert np.all(stable == BASE)  # exactly base_lr from the end of the warmup to the decay
    assert np.all(np.diff(dec) < 0)
    assert np.all(lrs[T:] == final)  # reached at total_steps, then held
    quarter = s(T - D + D // 4)  # f = 1/4
    want = {"linear": 0.75, "cosine": (1 + math.cos(math.pi / 4)) / 2, "1-sqrt": 0.5}[decay]
    assert quarter == pytest.approx(final + (BASE - final) * want, rel=1e-14)


@pytest.mark.parametrize("W,start_factor", [(0, 0.0), (1, 0.0), (10, 0.0), (10, 0.25)])
def test_warmup_cosine_phases(W, start_factor):
    T, eta = 100, 0.002
    s = S.warmup_cosine(BASE, W, T, eta_min=eta, warmup_start_factor=start_factor)
    lrs = s.lrs(T + 100)
    assert lrs[0] == (BASE * start_factor if W else BASE)
    assert np.all(np.diff(lrs[:W + 1]) > 0)  # the warmup ramps up to base_lr at step W
    assert lrs[W] == pytest.approx(BASE, rel=1e-15)
    assert np.all(np.diff(lrs[W:T + 1]) < 0)  # the cosine decays to eta_min at step T
    assert np.all(lrs[T:] == eta)  # and holds there (torch's CosineAnnealingLR would rise again)
    j = (T - W) // 3
    assert s(W + j) == pytest.approx(eta + (BASE - eta) * (1 + math.cos(math.pi * j / (T - W))) / 2, rel=1e-15)


def test_monotone_and_endpoints():
    assert np.all(np.diff(S.cosine(BASE, 50, 0.01).lrs(51)) < 0)
    assert S.cosine(BASE, 50, 0.01)(50) == pytest.approx(0.01, rel=1e-15)
    assert np.all(np.diff(S.exponential(BASE, 0.9).lrs(100)) < 0)
    assert np.all(np.diff(S.step(BASE, 5).lrs(100)) <= 0)
    poly = S.polynomial(BASE, 40, 2.0).lrs(60)
    assert np.all(np.diff(poly[:41]) < 0) and np.all(poly[40:] == 0)
    warm = S.linear(BASE, 0.0, 1.0, 8).lrs(20)
    assert warm[0] == 0 and np.all(np.diff(warm[:9]) > 0) and np.all(warm[8:] == BASE)
    assert np.all(S.constant(0.3).lrs(10) == 0.3)
    const = S.constant(BASE, 0.25, 4).lrs(10)
    assert np.all(const[:4] == BASE * 0.25) and np.all(const[4:] == BASE)


def test_anneal_shapes_and_hold():
    for shape in ("linear", "cosine", "1-sqrt"):
        down = S.anneal(1.0, 0.1, 20, shape).lrs(30)
        assert down[0] == 1.0 and np.all(np.diff(down[:21]) < 0) and np.all(down[20:] == 0.1)
        up = S.anneal(0.0, 2.0, 20, shape).lrs(30)
        assert up[0] == 0.0 and np.all(np.diff(up[:21]) > 0) and np.all(up[20:] == 2.0)
    assert S.anneal(1.0, 0.0, 16, "1-sqrt")(4) == 0.5


def test_chain_continuity_at_milestones():
    parts = [S.linear(BASE, 0.0, 1.0, 5), S.constant(BASE), S.cosine(BASE, 30, 0.01), S.exponential(0.01, 0.9)]
    ms = [5, 20, 50]
    c = S.chain(parts, ms)
    starts = [0] + ms
    for i, part in enumerate(parts):  # each part sees the step counted from its own start
        end = ms[i] if i < len(ms) else starts[i] + 40
        for k in range(starts[i], end):
            assert c(k) == part(k - starts[i])
    # This chain is continuous: the value before each milestone leads into the next part's start.
    lrs = c.lrs(50)
    assert lrs[4] < lrs[5] == BASE == lrs[19] and lrs[20] == pytest.approx(BASE, rel=1e-15)
    assert 0.01 < lrs[49] < 0.0103 and c(50) == 0.01


def test_nested_chain_equals_its_evaluation():
    inner = S.chain([S.linear(BASE, 0.1, 1.0, 5), S.step(BASE, 3, 0.5), S.constant(1.0)], [5, 40])
    outer = S.chain([inner, S.multistep(0.2, [2, 4], 0.5)], [25])
    for k in range(60):
        want = inner(k) if k < 25 else S.multistep(0.2, [2, 4], 0.5)(k - 25)
        assert outer(k) == want
    assert outer._pod.num_segments == 3  # inner's third segment (from 40) is never reached: dropped
    deep = S.chain([S.chain([S.constant(1.0), outer], [7]), S.constant(5.0)], [70])
    assert [deep(k) for k in range(90)] == [1.0] * 7 + [outer(k) for k in range(63)] + [5.0] * 20


def test_chain_capacity():
    nseg, nms = _core.schedule_max_segments, _core.schedule_max_milestones
    S.chain([S.constant(float(i)) for i in range(nseg)], list(range(1, nseg)))
    with pytest.raises(ValueError, match=f"at most {nseg} segments"):
        S.chain([S.constant(float(i)) for i in range(nseg + 1)], list(range(1, nseg + 1)))
    half = S.multistep(BASE, list(range(nms // 2 + 1)))
    with pytest.raises(ValueError, match=f"{nms} multistep milestones"):
        S.chain([half, half], [100])


# ---- the Schedule object ------------------------------------------------------------------

ALL = [
    S.constant(BASE), S.constant(BASE, 0.5, 3), S.step(BASE, 10), S.multistep(BASE, [5, 9]),
    S.exponential(BASE, 0.9), S.cosine(BASE, 50, 1e-4), S.linear(BASE), S.polynomial(BASE, 10, 2.0),
    S.one_cycle(1.0, 100, three_phase=True), S.anneal(1.0, 0.0, 10, "1-sqrt"), S.warmup_cosine(BASE, 5, 50),
    S.wsd(BASE, 5, 50, 10, decay="cosine"), S.chain([S.constant(BASE), S.cosine(BASE, 10)], [3]),
]


@pytest.mark.parametrize("s", ALL, ids=lambda s: s.kind)
def test_pickle_round_trip(s):
    back = pickle.loads(pickle.dumps(s))
    assert back == s and back is not s and repr(back) == repr(s)
    np.testing.assert_array_equal(back.lrs(120), s.lrs(120))
    assert back._pod.to_bytes() == s._pod.to_bytes()


@pytest.mark.parametrize("s", ALL, ids=lambda s: s.kind)
def test_lrs_is_the_call(s):
    lrs = s.lrs(70)
    assert lrs.dtype == np.float64 and lrs.shape == (70,)
    assert lrs.tolist() == [s(k) for k in range(70)]
    assert s.lrs(5, start=60).tolist() == lrs[60:65].tolist()
    assert s.lrs(0).shape == (0,)
    assert isinstance(s(2**62), float)


def test_immutable_and_pod():
    s = S.cosine(BASE, 10)
    with pytest.raises(AttributeError, match="immutable"):
        s.kind = "step"
    with pytest.raises(AttributeError, match="immutable"):
        s._pod = None
    s.params["T_max"] = 99  # a copy
    assert s.params == {"base_lr": BASE, "T_max": 10, "eta_min": 0.0} and s(10) == 0.0
    assert len(s._pod.to_bytes()) == _core.schedule_nbytes <= 544
    assert s != S.cosine(BASE, 11) and hash(s) == hash(S.cosine(BASE, 10))
    assert "schedules" in fastopt.__all__ and fastopt.schedules is S


def test_step_argument_checked():
    s = S.constant(BASE)
    with pytest.raises(ValueError, match="step must be >= 0"):
        s(-1)
    with pytest.raises(TypeError, match="step must be an int"):
        s(1.0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        s.lrs(-1)


BAD = [
    (S.constant, dict(base_lr=-0.1), ValueError, "base_lr must be finite and >= 0"),
    (S.constant, dict(base_lr="0.1"), TypeError, "base_lr must be a real number"),
    (S.constant, dict(base_lr=math.nan), ValueError, "base_lr"),
    (S.constant, dict(base_lr=0.1, total_iters=-1), ValueError, "total_iters must be >= 0"),
    (S.step, dict(base_lr=0.1, step_size=0), ValueError, "step_size must be >= 1"),
    (S.step, dict(base_lr=0.1, step_size=2.0), TypeError, "step_size must be an int"),
    (S.step, dict(base_lr=0.1, step_size=True), TypeError, "step_size must be an int"),
    (S.multistep, dict(base_lr=0.1, milestones=[3, -1]), ValueError, r"milestones\[1\] must be >= 0"),
    (S.multistep, dict(base_lr=0.1, milestones=5), TypeError, "milestones must be a sequence"),
    (S.multistep, dict(base_lr=0.1, milestones=list(range(20))), ValueError, "milestones: at most"),
    (S.exponential, dict(base_lr=0.1, gamma=-0.5), ValueError, "gamma must be finite"),
    (S.cosine, dict(base_lr=0.1, T_max=0), ValueError, "T_max must be >= 1"),
    (S.cosine, dict(base_lr=0.1, T_max=10, eta_min=math.inf), ValueError, "eta_min must be finite"),
    (S.linear, dict(base_lr=0.1, total_iters=0), ValueError, "total_iters must be >= 1"),
    (S.linear, dict(base_lr=0.1, start_factor=-1.0), ValueError, "start_factor"),
    (S.polynomial, dict(base_lr=0.1, power=-1.0), ValueError, "power must be finite and >= 0"),
    (S.one_cycle, dict(max_lr=1.0, total_steps=0), ValueError, "total_steps must be >= 1"),
    (S.one_cycle, dict(max_lr=1.0, total_steps=10, pct_start=1.5), ValueError, "pct_start must be finite and >= 0 and <= 1"),
    (S.one_cycle, dict(max_lr=1.0, total_steps=10, pct_start=0.1), ValueError, "pct_start \\* total_steps must not be 1"),
    (S.one_cycle, dict(max_lr=1.0, total_steps=10, anneal_strategy="cosine"), ValueError, "anneal_strategy must be one of"),
    (S.one_cycle, dict(max_lr=1.0, total_steps=10, div_factor=0.0), ValueError, "div_factor must be finite and > 0"),
    (S.one_cycle, dict(max_lr=1.0, total_steps=10, three_phase=1), TypeError, "three_phase must be a bool"),
    (S.anneal, dict(start_lr=1.0, end_lr=0.0, steps=10, shape="sqrt"), ValueError, "shape must be one of"),
    (S.anneal, dict(start_lr=1.0, end_lr=0.0, steps=0), ValueError, "steps must be >= 1"),
    (S.warmup_cosine, dict(base_lr=0.1, warmup_steps=10, total_steps=10), ValueError, "total_steps must exceed warmup_steps"),
    (S.warmup_cosine, dict(base_lr=0.1, warmup_steps=-1, total_steps=10), ValueError, "warmup_steps must be >= 0"),
    (S.wsd, dict(base_lr=0.1, warmup_steps=5, total_steps=10, decay_steps=6), ValueError, "warmup_steps \\+ decay_steps"),
    (S.wsd, dict(base_lr=0.1, warmup_steps=0, total_steps=10, decay_steps=0), ValueError, "decay_steps must be >= 1"),
    (S.wsd, dict(base_lr=0.1, warmup_steps=0, total_steps=10, decay_steps=5, decay=1), TypeError, "decay must be a str"),
    (S.chain, dict(schedules=[], milestones=[]), ValueError, "schedules must not be empty"),
    (S.chain, dict(schedules=[S.constant(1.0), 0.5], milestones=[3]), TypeError, r"schedules\[1\] must be a Schedule"),
    (S.chain, dict(schedules=[S.constant(1.0)] * 2, milestones=[]), ValueError, "milestones must have"),
    (S.chain, dict(schedules=[S.constant(1.0)] * 3, milestones=[5, 5]), ValueError, "strictly increasing"),
    (S.chain, dict(schedules=[S.constant(1.0)] * 2, milestones=[0]), ValueError, r"milestones\[0\] must be >= 1"),
]


@pytest.mark.parametrize("fn,kwargs,exc,match", BAD, ids=[f"{b[0].__name__}-{b[3][:24]}" for b in BAD])
def test_bad_arguments_rejected(fn, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(**kwargs)
