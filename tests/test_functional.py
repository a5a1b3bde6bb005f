"""The functional forms' own argument checks (python/fastopt/functional.py). Their results
are checked against the optimizer classes in test_rules.py."""

import numpy as np
import pytest

import fastopt
from fastopt import functional as F


def arrays(n=3, size=8, value=1.0):
    return [np.full(size, value, np.float32) for _ in range(n)]


def test_sgd_step_is_required():
    with pytest.raises(TypeError):
        F.sgd_(arrays(), arrays(), arrays(value=0.0), lr=0.1, momentum=0.9)


def test_sgd_momentum_needs_buffers():
    params = arrays()
    with pytest.raises(ValueError, match="momentum != 0 needs momentum_buffers"):
        F.sgd_(params, arrays(), None, step=1, lr=0.1, momentum=0.9)
    assert all((p == 1).all() for p in params)


def test_sgd_momentum_builds_up_across_calls():
    params, grads, bufs = arrays(1), arrays(1), arrays(1, value=0.0)
    for step in (1, 2, 3):
        F.sgd_(params, grads, bufs, step=step, lr=0.1, momentum=0.5)
    np.testing.assert_allclose(bufs[0], 1 + 0.5 + 0.25)


@pytest.mark.parametrize("short", ["exp_avgs", "exp_avg_sqs", "master_params"])
def test_adam_list_lengths_checked(short):
    lists = {"exp_avgs": arrays(value=0.0), "exp_avg_sqs": arrays(value=0.0), "master_params": None}
    lists[short] = arrays(2, value=0.0) if short != "master_params" else [None, None]
    params = arrays()
    with pytest.raises(ValueError, match="got 3 params but 2"):
        F.adam_(params, arrays(), lists["exp_avgs"], lists["exp_avg_sqs"], step=1,
                master_params=lists["master_params"])
    assert all((p == 1).all() for p in params)


# ---- bound once, stepped many times (<form>.bind) ------------------------------------------


def _arrays(n_state, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(5,), (3, 7)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    states = [[np.zeros(s, np.float32) for s in shapes] for _ in range(n_state)]
    return params, grads, states


def test_bound_step_is_the_functional_step():
    """adamw_.bind(...)(step=t, lr=...) gives the bits adamw_(..., step=t, lr=...) gives, with
    hyperparameters changing between calls."""
    a, b = _arrays(2), _arrays(2)
    step = fastopt.functional.adamw_.bind(a[0], a[1], *a[2])
    for t in range(1, 6):
        lr = 1e-3 * t
        step(step=t, lr=lr, weight_decay=0.1)
        fastopt.functional.adamw_(b[0], b[1], *b[2], step=t, lr=lr, weight_decay=0.1)
        for x, y in zip(a[0] + a[2][0] + a[2][1], b[0] + b[2][0] + b[2][1]):
            np.testing.assert_array_equal(x, y)


def test_bound_step_needs_the_state_its_hyperparameters_use():
    params, grads, states = _arrays(2)
    step = fastopt.functional.adam_.bind(params, grads, *states)
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match="amsgrad needs max_exp_avg_sqs, which were not bound"):
        step(step=1, lr=0.1, amsgrad=True)
    with pytest.raises(TypeError, match="step= is required"):
        step(lr=0.1)
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        step(step=1, lr_max=0.1)
    for p, q in zip(params, before):
        np.testing.assert_array_equal(p, q)
    sgd = fastopt.functional.sgd_.bind(params, grads)
    with pytest.raises(ValueError, match="momentum_buffers, which were not bound"):
        sgd(step=1, lr=0.1, momentum=0.9)


def test_bind_validates_at_bind_time():
    params, grads, states = _arrays(2)
    with pytest.raises(fastopt.TensorError, match="exp_avg_sq 1: shape"):
        fastopt.functional.adam_.bind(params, grads, states[0], [states[1][0], np.zeros(4, np.float32)])
    with pytest.raises(ValueError, match="got 2 params but 1 exp_avgs"):
        fastopt.functional.adam_.bind(params, grads, states[0][:1], states[1])


def test_bound_step_watches_the_callers_state():
    """A bound form's state is the caller's: a torch state tensor moved after binding
    (resize_ reallocates it) is refused before anything is written, as a param would be."""
    import torch
    params, grads = [torch.zeros(4)], [torch.ones(4)]
    m, v = [torch.zeros(4)], [torch.zeros(4)]
    step = fastopt.functional.adam_.bind(params, grads, m, v)
    step(step=1, lr=0.1)
    before = params[0].clone()
    v[0].resize_(1 << 16)
    with pytest.raises(fastopt.MemoryMoved, match="^exp_avg_sq 0: its memory was moved"):
        step(step=2, lr=0.1)
    assert torch.equal(params[0], before)
