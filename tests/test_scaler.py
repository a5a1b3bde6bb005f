"""DynamicLossScaler (python/fastopt/scaler.py) against torch.amp.GradScaler."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import fastopt
from fastopt.scaler import DynamicLossScaler
from registry import assert_bits_equal, assert_rounding_close, grad_steps, random_params, refill

SHAPES = [(37,), (4, 9)]
POISONED = {2, 3, 9}  # steps whose scaled grads overflow


def scaled_grads(steps, scale_of):
    """(step, scaled grads) with an inf in the poisoned steps."""
    for t, gs in enumerate(grad_steps(4, SHAPES, steps)):
        out = [g * np.float32(scale_of()) for g in gs]
        if t in POISONED:
            out[1].flat[3] = np.inf
        yield t, out


def test_matches_torch_grad_scaler():
    initial = random_params(np.random.default_rng(0), SHAPES)
    params, grads = [p.copy() for p in initial], [np.zeros(s, np.float32) for s in SHAPES]
    opt = fastopt.Adam(params, grads, lr=0.01)
    scaler = DynamicLossScaler(init_scale=2.0 ** 10, growth_interval=3)
    tparams = [torch.nn.Parameter(torch.tensor(p)) for p in initial]
    topt = torch.optim.Adam(tparams, lr=0.01)
    tscaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3)
    scales, skipped = [], []
    for t, gs in scaled_grads(16, lambda: scaler.scale):
        tscaler.scale(torch.ones(()))  # as scaling a loss would: torch creates its scale lazily
        assert scaler.scale == tscaler.get_scale()
        refill(grads, gs)
        for p, g in zip(tparams, gs):
            p.grad = torch.tensor(g)
        tscaler.step(topt)
        tscaler.update()
        result = scaler.step(opt)
        scales.append(scaler.scale)
        skipped.append(result.skipped)
    assert skipped == [t in POISONED for t in range(16)]
    assert len(set(scales)) > 2  # it backed off and grew
    assert scaler.scale == tscaler.get_scale()
    assert opt.steps == [16 - len(POISONED)]
    # Unscaling by a power of two is exact: two fp32 Adams within twice the rounding bound.
    assert_rounding_close(params, [e.detach().numpy() for e in tparams], 16, implementations=2)


def test_skipped_steps_write_nothing():
    params, grads = random_params(np.random.default_rng(1), SHAPES), [np.zeros(s, np.float32) for s in SHAPES]
    opt = fastopt.AdamW(params, grads)
    scaler = DynamicLossScaler()
    refill(grads, [np.full(s, np.nan, np.float32) for s in SHAPES])
    before = [p.copy() for p in params]
    assert scaler.step(opt).skipped and scaler.scale == 2.0 ** 15
    for p, q in zip(params, before):
        assert_bits_equal(p, q, "a skipped step wrote")
    assert not opt.skip_nonfinite  # the optimizer's own setting is untouched


def test_state_dict_round_trip():
    a = DynamicLossScaler(init_scale=8.0, growth_interval=5)
    for found in (False, False, True, False):
        a.update(found)
    b = DynamicLossScaler()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() == {"scale": 4.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                "growth_interval": 5, "clean_steps": 1, "min_scale": 1.0}
    for _ in range(4):
        a.update(False)
        b.update(False)
    assert a.scale == b.scale == 8.0


@pytest.mark.parametrize("kwargs", [dict(init_scale=0.0), dict(init_scale=float("inf")), dict(growth_factor=1.0),
                                    dict(backoff_factor=1.0), dict(backoff_factor=0.0), dict(growth_interval=0),
                                    dict(growth_interval=2.5)])
def test_bad_arguments(kwargs):
    with pytest.raises((ValueError, TypeError)):
        DynamicLossScaler(**kwargs)


NOT_NORMAL = "must be a finite, normal float32"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(min_scale=0.0), ValueError, NOT_NORMAL),
    (dict(min_scale=-1.0), ValueError, NOT_NORMAL),
    (dict(min_scale=float("nan")), ValueError, NOT_NORMAL),
    (dict(min_scale=float("inf")), ValueError, NOT_NORMAL),
    (dict(min_scale=1e-40), ValueError, NOT_NORMAL),  # subnormal in float32
    (dict(min_scale=1e39, init_scale=1e39), ValueError, NOT_NORMAL),  # beyond float32
    (dict(init_scale=1e-40, min_scale=1e-38), ValueError, NOT_NORMAL),
    (dict(init_scale=1e39), ValueError, NOT_NORMAL),  # was kept as a float32 inf
    (dict(init_scale=4.0, min_scale=8.0), ValueError, r"init_scale must be >= min_scale \(8.0\), got 4.0"),
    (dict(init_scale=0.5), ValueError, r"init_scale must be >= min_scale \(1.0\)"),  # the default floor
    (dict(min_scale="1"), TypeError, "min_scale must be a real number"),
    (dict(min_scale=True), TypeError, "min_scale must be a real number"),
])
def test_bad_min_scale(kwargs, error, match):
    with pytest.raises(error, match=match):
        DynamicLossScaler(**kwargs)


def nan_steps(scaler, opt, grads, steps):
    refill(grads, [np.full(s, np.nan, np.float32) for s in SHAPES])
    for _ in range(steps):
        assert scaler.step(opt).skipped


@pytest.mark.parametrize("min_scale", [None, 2.0 ** -20, 2.0 ** -126])
def test_backoff_stops_at_min_scale(min_scale):
    """200 skipped steps from 2**16: torch's policy alone makes the scale subnormal after 143
    (the 145th step refused it: its reciprocal overflows float32) and 0 after 166; the scale
    stays at min_scale, and the steps skipped there are counted and warned of once. Then
    finite grads are stepped and the scale grows again."""
    kwargs = {} if min_scale is None else dict(min_scale=min_scale)
    floor = 1.0 if min_scale is None else min_scale
    params, grads = random_params(np.random.default_rng(1), SHAPES), [np.zeros(s, np.float32) for s in SHAPES]
    opt = fastopt.Adam(params, grads)
    scaler = DynamicLossScaler(growth_interval=3, **kwargs)
    to_floor = 16 - int(np.log2(floor))  # backoffs from 2**16 down to the floor
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nan_steps(scaler, opt, grads, to_floor)
        assert scaler.scale == floor and scaler.skipped_at_min_scale == 0 and not caught
        nan_steps(scaler, opt, grads, 200 - to_floor)
    assert scaler.scale == floor and scaler.skipped_at_min_scale == 200 - to_floor
    assert [w.category for w in caught] == [RuntimeWarning]
    assert f"1 step(s) skipped with the loss scale at min_scale={floor!r}" in str(caught[0].message)
    assert opt.steps == [0]
    # Grads whose unscaled norm stays within float32 even at the 2**-126 floor (beyond it a
    # step counts as non-finite: fastopt/step_control.h).
    refill(grads, [np.full(s, 1e-3, np.float32) for s in SHAPES])
    for _ in range(3):
        assert not scaler.step(opt).skipped
    assert scaler.scale == 2 * floor and scaler.skipped_at_min_scale == 0 and opt.steps == [3]


def test_min_scale_state_dict_round_trip():
    a = DynamicLossScaler(init_scale=0.2, min_scale=0.1, growth_interval=5)
    for found in (True, False):
        a.update(found)
    state = a.state_dict()
    assert state["min_scale"] == float(np.float32(0.1)) == state["scale"]
    b = DynamicLossScaler()
    b.load_state_dict(state)
    assert b.state_dict() == state and b.min_scale == a.min_scale
    with pytest.warns(RuntimeWarning, match="skipped with the loss scale at min_scale"):
        b.update(True)
    assert b.scale == b.min_scale and b.skipped_at_min_scale == 1


def test_state_dict_without_min_scale_keeps_the_scalers():
    """A state dict saved before min_scale existed: the default floor, or the one this scaler
    was built with (what a run whose scale fell below 1 needs to be loaded)."""
    old = {"scale": 4.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 5, "clean_steps": 1}
    a = DynamicLossScaler()
    a.load_state_dict(old)
    assert a.state_dict() == {**old, "min_scale": 1.0}
    low = {**old, "scale": 0.25}
    with pytest.raises(ValueError, match="must be >= min_scale"):
        a.load_state_dict(low)
    assert a.scale == 4.0
    b = DynamicLossScaler(init_scale=1.0, min_scale=2.0 ** -10)
    b.load_state_dict(low)
    assert b.state_dict() == {**low, "min_scale": 2.0 ** -10}


@pytest.mark.parametrize("min_scale", [0.0, 1e-40, 8.0])
def test_bad_min_scale_in_state_dict_changes_nothing(min_scale):
    a = DynamicLossScaler(init_scale=4.0)
    before = a.state_dict()
    with pytest.raises(ValueError, match="min_scale"):
        a.load_state_dict({**before, "min_scale": min_scale})
    assert a.state_dict() == before


def test_bad_state_dict_changes_nothing():
    a = DynamicLossScaler(init_scale=8.0)
    bad = {**a.state_dict(), "clean_steps": 99999}
    with pytest.raises(ValueError, match="clean_steps"):
        a.load_state_dict(bad)
    assert a.scale == 8.0


def test_scale_stays_finite_in_float32():
    scaler = DynamicLossScaler(init_scale=2.0 ** 126, growth_interval=1)
    scaler.update(False)
    assert scaler.scale == 2.0 ** 127
    scaler.update(False)  # 2^128 overflows float32: kept, as torch does
    assert scaler.scale == 2.0 ** 127
    scaler = DynamicLossScaler(init_scale=3.0, backoff_factor=0.3, min_scale=0.5)
    scaler.update(True)
    assert scaler.scale == float(np.float32(0.9))


@pytest.mark.cuda
def test_backoff_stops_at_min_scale_on_the_device():
    """The device-side update floors the scale and counts the steps skipped there as the host's
    does; the warning comes when the scaler reads its state back."""
    import torch
    cpu_params = random_params(np.random.default_rng(1), SHAPES)
    cpu_grads = [np.full(s, np.nan, np.float32) for s in SHAPES]
    gpu_params = [torch.from_numpy(p.copy()).cuda() for p in cpu_params]
    gpu_grads = [torch.full(s, float("nan"), device="cuda") for s in SHAPES]
    cpu_opt, gpu_opt = fastopt.Adam(cpu_params, cpu_grads), fastopt.Adam(gpu_params, gpu_grads)
    cpu_scaler = DynamicLossScaler(growth_interval=3, min_scale=2.0 ** -20)
    gpu_scaler = DynamicLossScaler(growth_interval=3, min_scale=2.0 ** -20)
    with pytest.warns(RuntimeWarning, match="min_scale"):
        for _ in range(200):
            cpu_scaler.step(cpu_opt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(200):
            gpu_scaler.step(gpu_opt)
    assert not [w for w in caught if "min_scale" in str(w.message)]  # the steps read nothing back
    with pytest.warns(RuntimeWarning, match="164 step\\(s\\) skipped with the loss scale at min_scale"):
        state = gpu_scaler.state_dict()
    assert state == cpu_scaler.state_dict() and state["scale"] == 2.0 ** -20
    assert gpu_scaler.skipped_at_min_scale == cpu_scaler.skipped_at_min_scale == 164
    for g in gpu_grads:
        g.fill_(1.0)
    for _ in range(3):
        gpu_scaler.step(gpu_opt)
    assert float(gpu_scaler.scale) == 2.0 ** -19 and gpu_scaler.skipped_at_min_scale == 0
    gpu_scaler.load_state_dict(cpu_scaler.state_dict())
    assert gpu_scaler.state_dict() == cpu_scaler.state_dict() and gpu_scaler.skipped_at_min_scale == 0
