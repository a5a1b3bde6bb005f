"""fastopt.ParamEMA (python/fastopt/ema.py, C++ rules/ema.h): timm's ModelEmaV3 decay against a
float64 reference, every ISA bit-identical, copy-in/copy-out, checkpoints, bad input."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import fastopt
from registry import assert_bits_equal, isa_switch, supported_isas  # noqa: F401  (fixture)

SHAPES = [(37,), (4, 9), (131072 + 5,)]  # a tail, a matrix, more than one task


def timm_decay(t: int, decay: float, min_decay: float, after: int, warmup: bool, gamma: float, power: float) -> float:
    """timm's ModelEmaV3.get_decay(step=t), written from its definition."""
    s = max(0, t - after - 1)
    if s <= 0:
        return 0.0
    if not warmup:
        return decay
    return max(min(1 - (1 + s / gamma) ** -power, decay), min_decay)


def params_for(dtype: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32).astype(np.dtype(dtype) if dtype != "bfloat16"
                                                                else ml_dtypes.bfloat16) for s in SHAPES]


def drift(params: list[np.ndarray], rng: np.random.Generator) -> None:
    """A training step's worth of change, in place."""
    for p in params:
        p[...] = (p.astype(np.float32) + 0.01 * rng.standard_normal(p.shape).astype(np.float32)).astype(p.dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("hypers", [
    dict(decay=0.9),
    dict(decay=0.999, warmup=True),
    dict(decay=0.99, warmup=True, warmup_gamma=3.0, warmup_power=0.75, min_decay=0.2, update_after_step=4),
], ids=["constant", "warmup", "warmup_after"])
def test_matches_float64_reference(dtype, hypers):
    """60 updates against e = d_t e + (1 - d_t) p in float64 with timm's d_t; float32 averages
    stay within a few float32 roundings per update (relative 1e-6 of the magnitudes)."""
    params = params_for(dtype)
    ema = fastopt.ParamEMA(params, **hypers)
    full = {"decay": 0.9999, "min_decay": 0.0, "update_after_step": 0, "warmup": False, "warmup_gamma": 1.0,
            "warmup_power": 2 / 3, **hypers}
    ref = [p.astype(np.float64) for p in params]
    rng = np.random.default_rng(1)
    for t in range(1, 61):
        drift(params, rng)
        ema.update()
        d = timm_decay(t, full["decay"], full["min_decay"], full["update_after_step"], full["warmup"],
                       full["warmup_gamma"], full["warmup_power"])
        ref = [d * e + (1 - d) * p.astype(np.float64) for e, p in zip(ref, params)]
        if t <= full["update_after_step"] + 1:  # a copy, exactly
            for a, p in zip(ema.averages, params):
                assert_bits_equal(a, p.astype(np.float32))
    assert ema.num_updates == 60
    for a, r in zip(ema.averages, ref):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-6 * 60 * max(1.0, float(np.abs(r).max())))


def test_every_isa_bit_identical(isa_switch):  # noqa: F811
    results = []
    for isa in supported_isas():
        isa_switch(isa)
        params = params_for("bfloat16", seed=3)
        ema = fastopt.ParamEMA(params, decay=0.99, warmup=True)
        rng = np.random.default_rng(4)
        for _ in range(7):
            drift(params, rng)
            ema.update()
        results.append(ema.averages)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_bits_equal(a, b)


def test_copy_in_and_out():
    params = params_for("bfloat16", seed=5)
    ema = fastopt.ParamEMA(params, decay=0.5)
    rng = np.random.default_rng(6)
    for _ in range(3):
        drift(params, rng)
        ema.update()
    before = [p.copy() for p in params]
    with ema.average_parameters():
        for p, a in zip(params, ema.averages):
            assert_bits_equal(p, a.astype(ml_dtypes.bfloat16))  # rounded to nearest even
    for p, b in zip(params, before):
        assert_bits_equal(p, b)  # restored exactly
    with pytest.raises(RuntimeError, match="nothing stored"):
        ema.restore()
    with pytest.raises(ZeroDivisionError):
        with ema.average_parameters():
            raise ZeroDivisionError
    for p, b in zip(params, before):
        assert_bits_equal(p, b)  # restored when the block raised too
    other = [np.zeros_like(p) for p in params]
    ema.copy_to(other)
    for o, a in zip(other, ema.averages):
        assert_bits_equal(o, a.astype(ml_dtypes.bfloat16))
    with pytest.raises(ValueError, match="got 1 params for 3 averages"):
        ema.copy_to(other[:1])


def test_checkpoint_resumes_bit_identically():
    params = params_for("float32", seed=7)
    rng = np.random.default_rng(8)
    ema = fastopt.ParamEMA(params, decay=0.95, warmup=True)
    for _ in range(5):
        drift(params, rng)
        ema.update()
    saved = ema.state_dict()
    resumed = fastopt.ParamEMA(params, decay=0.5)  # (the checkpoint's hyperparameters win)
    resumed.load_state_dict(saved)
    assert resumed.num_updates == 5 and resumed.decay == 0.95
    for _ in range(5):
        drift(params, rng)
        ema.update()
        resumed.update()
    for a, b in zip(ema.averages, resumed.averages):
        assert_bits_equal(a, b)


def test_bad_input_rejected_nothing_written():
    params = params_for("float32")
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\], got 1.5"):
        fastopt.ParamEMA(params, decay=1.5)
    with pytest.raises(ValueError, match="warmup_gamma must be finite and > 0"):
        fastopt.ParamEMA(params, warmup_gamma=0.0)
    with pytest.raises(ValueError, match="update_after_step must be an integer >= 0"):
        fastopt.ParamEMA(params, update_after_step=2.5)
    averages = [np.full(p.shape, 7.0, np.float32) for p in params]
    averages[1] = np.full((9, 4), 7.0, np.float32)
    with pytest.raises(fastopt.TensorError, match=r"param 1: shape \(4, 9\) differs from average 1's shape \(9, 4\)"):
        fastopt.ParamEMA(params, averages)
    assert all((a == 7.0).all() for a in averages)
    ema = fastopt.ParamEMA(params)
    state = ema.state_dict()
    state["averages"] = state["averages"][:2]
    with pytest.raises(ValueError, match="the state holds 2 averages, this ParamEMA 3"):
        ema.load_state_dict(state)


def test_torch_params_and_buffers():
    """torch Parameters (requiring grad, bfloat16) and a BatchNorm's running statistics."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4)).to(torch.bfloat16)
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    ema = fastopt.ParamEMA(tensors, decay=0.9)
    assert all(a.dtype == torch.float32 and isinstance(a, torch.Tensor) for a in ema.averages)
    ref = [t.detach().double() for t in tensors]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for t in range(1, 6):
        model.train()
        model(torch.randn(16, 8, dtype=torch.bfloat16)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update()
        d = 0.0 if t == 1 else 0.9
        ref = [d * e + (1 - d) * x.detach().double() for e, x in zip(ref, tensors)]
    for a, r in zip(ema.averages, ref):
        torch.testing.assert_close(a.double(), r, rtol=0, atol=1e-5)
    before = [t.detach().clone() for t in tensors]
    with ema.average_parameters():
        for t, a in zip(tensors, ema.averages):
            assert torch.equal(t, a.to(torch.bfloat16))
    assert all(torch.equal(t, b) for t, b in zip(tensors, before))


@pytest.mark.cuda
def test_cuda_bit_identical_to_cpu():
    from test_cuda_engine import to_cuda, to_numpy
    params = params_for("bfloat16", seed=9)
    gparams = [to_cuda(p) for p in params]
    cpu, gpu = fastopt.ParamEMA(params, decay=0.99, warmup=True), fastopt.ParamEMA(gparams, decay=0.99, warmup=True)
    rng = np.random.default_rng(10)
    for _ in range(6):
        drift(params, rng)
        for g, p in zip(gparams, params):
            g.copy_(to_cuda(p))
        cpu.update()
        gpu.update()
    for a, b in zip(cpu.averages, gpu.averages):
        assert_bits_equal(to_numpy(b), a)


def test_state_dict_is_a_copy_and_stores_do_not_nest():
    params = params_for("float32", seed=11)
    ema = fastopt.ParamEMA(params, decay=0.5)
    ema.update()
    best = ema.state_dict()
    kept = [a.copy() for a in best["averages"]]
    drift(params, np.random.default_rng(12))
    ema.update()
    for a, k in zip(best["averages"], kept):
        assert_bits_equal(a, k)  # (the live averages moved on; the checkpoint did not)
    with ema.average_parameters():
        with pytest.raises(RuntimeError, match="params are stored already"):
            ema.store()
    state = ema.state_dict()
    state["num_updates"] = 2.7
    with pytest.raises(ValueError, match="num_updates must be an integer >= 0, got 2.7"):
        ema.load_state_dict(state)


def test_moved_params_named():
    model = torch.nn.Linear(3, 2)
    ema = fastopt.ParamEMA(list(model.parameters()))
    model.weight.data = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="ParamEMA.update: a param's memory moved"):
        ema.update()
