"""The functional forms' own argument checks (python/fastopt/functional.py). Their results
are checked against the optimizer classes in test_rules.py."""

import numpy as np
import pytest

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
