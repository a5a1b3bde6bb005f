"""DynamicLossScaler (python/fastopt/scaler.py) against torch.amp.GradScaler."""

from __future__ import annotations

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
                                                "growth_interval": 5, "clean_steps": 1}
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
    scaler = DynamicLossScaler(init_scale=3.0, backoff_factor=0.3)
    scaler.update(True)
    assert scaler.scale == float(np.float32(0.9))
