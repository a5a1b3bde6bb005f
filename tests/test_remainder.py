"""bfloat16 params with their fp32 master kept as a uint16 remainder (master_weights="remainder",
fastopt/numeric/convert.h's join_remainder, element.h's load_value/store_value): the very
trajectory of master_weights=True, bit for bit, for every optimizer, every step option and
every CPU target; the param is the master truncated toward zero; checkpoints carry the fp32
master either way."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastopt
from fastopt.binding import Keeps
from registry import CASES, bits, grad_steps, random_params, refill, supported_isas
from registry import isa_switch  # noqa: F401  (a fixture)

SHAPES = [(37,), (3, 129), (1000,), ()]  # odd sizes: vector bodies and scalar tails
STEPS = 12


def pair(case, options):
    """The same bfloat16 params (and one float32 param) under master_weights=True and
    "remainder", each with its own grad buffers."""
    rng = np.random.default_rng(case.seed)
    params = random_params(rng, SHAPES, "bfloat16")
    params.append(rng.standard_normal(5).astype(np.float32))
    runs = []
    for mode in (True, "remainder"):
        ps = [p.copy() for p in params]
        gs = [np.zeros(p.shape, np.float32) for p in ps]
        runs.append((case.cls(ps, gs, master_weights=mode, **options, **case.kwargs), ps, gs))
    return runs


def assert_same_masters(master_run, remainder_run, t):
    (a, pa, _), (b, pb, _) = master_run, remainder_run
    for i, (ma, mb) in enumerate(zip(a.master_params, b.master_params)):
        if ma is None:  # the float32 param: no master either way, the same values
            assert mb is None
            np.testing.assert_array_equal(bits(pa[i]), bits(pb[i]), err_msg=f"step {t}, param {i}")
            continue
        np.testing.assert_array_equal(bits(mb), bits(ma), err_msg=f"step {t}, master {i}")
        truncated = (bits(ma).astype(np.uint32) >> 16).astype(np.uint16)
        np.testing.assert_array_equal(bits(pb[i]), truncated.reshape(pb[i].shape), err_msg=f"step {t}, param {i}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("isa", supported_isas())
@pytest.mark.parametrize("diagnostics", [False, True])  # the plain update (kernels.inl), the diagnosed one
def test_remainder_is_the_master_trajectory(case, isa, diagnostics, isa_switch):
    isa_switch(isa)
    options = {"max_grad_norm": 1.5, "clip_value": 2.0, "skip_nonfinite": True, "diagnostics": diagnostics}
    runs = pair(case, options)
    for t, grads in enumerate(grad_steps(case.seed, SHAPES + [(5,)], STEPS), 1):
        if t == 5:
            grads[1][0, 3] = np.nan  # a skipped step
        results = []
        for opt, _, gs in runs:
            refill(gs, grads)
            results.append(opt.step())
        assert results[0].skipped == results[1].skipped == (t == 5)
        np.testing.assert_array_equal(results[0].grad_norm, results[1].grad_norm)  # (NaN == NaN)
        da, db = results[0].diagnostics, results[1].diagnostics
        assert (da is None) == (db is None) == (not diagnostics)
        for field in ("grad_norm", "param_norm", "update_norm", "update_ratio") if diagnostics else ():
            x, y = getattr(da, field), getattr(db, field)
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y, err_msg=f"step {t}: {field}")
        assert_same_masters(runs[0], runs[1], t)


def test_checkpoints_carry_the_fp32_master_either_way():
    case = next(c for c in CASES if c.name == "AdamW")
    runs = pair(case, {})
    steps = list(grad_steps(1, SHAPES + [(5,)], 8))
    for grads in steps[:4]:
        for opt, _, gs in runs:
            refill(gs, grads)
            opt.step()
    # Crossed: the remainder run resumes from the master run's checkpoint and the other way.
    sd_master, sd_remainder = runs[0][0].state_dict(), runs[1][0].state_dict()
    for i, m in enumerate(runs[0][0].master_params):
        if m is not None:
            np.testing.assert_array_equal(bits(sd_remainder["state"][i]["master_param"]), bits(m))
    runs[0][0].load_state_dict(sd_remainder)
    runs[1][0].load_state_dict(sd_master)
    for grads in steps[4:]:
        for opt, _, gs in runs:
            refill(gs, grads)
            opt.step()
    assert_same_masters(runs[0], runs[1], 8)


def test_remainder_param_is_truncated_and_restored_exactly():
    p = np.array([1.0, -2.5, 3.0], np.float32).astype(ml_dtypes.bfloat16)
    g = np.array([1e-3, 2e-3, -3e-3], np.float32)
    opt = fastopt.SGD([p], [g], lr=1e-3, master_weights="remainder")
    opt.step()
    master = opt.master_params[0]
    assert np.array_equal(bits(p), (bits(master) >> 16).astype(np.uint16))
    assert opt.state[0]["master_remainder"].dtype == np.uint16
    np.testing.assert_array_equal(bits(opt.state[0]["master_remainder"]), (bits(master) & 0xFFFF).astype(np.uint16))


def test_remainder_refusals():
    half = [np.zeros(3, np.float16)]
    with pytest.raises(ValueError, match="param 0: master_weights='remainder' is for bfloat16 params; this param is float16"):
        fastopt.AdamW(half, [np.zeros(3, np.float32)], master_weights="remainder")
    with pytest.raises(ValueError, match="master_weights must be True, False, 'remainder', 'kahan' or 'stochastic', got 'fp32'"):
        fastopt.AdamW(half, [np.zeros(3, np.float32)], master_weights="fp32")


def test_the_binding_checks_remainders():
    """What the C++ API refuses (tests/cpp has the rest): a remainder for a float32 param, one of
    another dtype or shape, one beside a master."""
    core = fastopt._core
    bf = np.zeros(4, ml_dtypes.bfloat16)
    g = np.zeros(4, np.float32)
    cases = [
        (np.zeros(4, np.float32), None, np.zeros(4, np.uint16), "param 0: a remainder is for bfloat16 params; this one is float32"),
        (bf, None, np.zeros(4, np.float32), "remainder 0: dtype float32, expected uint16"),
        (bf, None, np.zeros(5, np.uint16), r"remainder 0: shape \(5,\) differs from param 0's shape \(4,\)"),
        (bf, np.zeros(4, np.float32), np.zeros(4, np.uint16), "param 0: master weights, a remainder and a compensation are alternatives"),
    ]
    for param, master, remainder, message in cases:
        with pytest.raises(core.TensorError, match=message):
            core.Group("sgd", [param], [g], Keeps([master], [remainder], [None], [False], [[]], [False]), [[]], [1])
    with pytest.raises(core.TensorError, match="param 0: dtype uint16"):
        core.Group("sgd", [np.zeros(4, np.uint16)], [g], Keeps.none(1), [[]], [1])
