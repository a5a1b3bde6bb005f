"""float16/bfloat16 params rounded stochastically at each step (master_weights="stochastic";
rounding.h's bf16/f16_stochastic with random.h's bits, through element.h's store_value): the same
bits on every CPU target and thread count and after a checkpoint, other bits with another seed,
and unbiased: tiny updates that nearest-even loses are kept on average."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastopt
from fastopt._core import numeric
from fastopt.binding import Keeps
from registry import ALL_ISAS, CASES, DTYPES, bits, grad_steps, random_params, refill, supported_isas
from registry import isa_switch  # noqa: F401  (a fixture)

SHAPES = [(37,), (3, 129), ()]


def run(case, dtype, seed=0, steps=6, threads=None):
    rng = np.random.default_rng(case.seed)
    ps = random_params(rng, SHAPES, dtype)
    gs = [np.zeros(p.shape, np.float32) for p in ps]
    opt = case.cls(ps, gs, master_weights="stochastic", seed=seed, **case.kwargs)
    for grads in grad_steps(case.seed, SHAPES, steps):
        refill(gs, grads)
        opt.step()
    return [bits(p).copy() for p in ps]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_bits_on_every_isa_and_thread_count(case, dtype, isa_switch):
    results = {}
    for isa in supported_isas():
        isa_switch(isa)
        results[isa] = run(case, dtype)
    threads = fastopt.get_num_threads()
    try:
        fastopt.set_num_threads(1)
        results["1 thread"] = run(case, dtype)
    finally:
        fastopt.set_num_threads(threads)
    first = next(iter(results.values()))
    for key, got in results.items():
        for k, (a, b) in enumerate(zip(got, first)):
            np.testing.assert_array_equal(a, b, err_msg=f"{key}: param {k}")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("isa", ALL_ISAS)
def test_params_take_the_scalar_rounding_of_their_values(isa, dtype, isa_switch):
    """SGD with lr 1 from zero params moves each param to exactly -grad (fma(-1, g, 0)); stored,
    it must be the scalar rounding of that value with bits32(stream_key(seed, 1, tensor), i),
    whatever the target's lanes, in tensors of a few elements to a few super-blocks (split
    between threads). The values include the edges: near each dtype's overflow, inf, subnormals
    of fp32 and float16, and zero (NaN is left out: arithmetic may change its payload and sign)."""
    if not fastopt._core.cpu_isa_supported(isa):
        pytest.skip(f"this CPU lacks {isa}")
    isa_switch(isa)
    rng = np.random.default_rng(8)
    specials = np.array([0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 65535.99, 65536.0, 3.3895e38,
                         3.4028235e38, 6.1035156e-05, 6.1e-05, 5.96e-08, 2.98e-08, 1e-40, -1e-45], np.float32)
    patterns = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = np.concatenate([np.tile(specials, 5), patterns, rng.standard_normal(100_000).astype(np.float32) * 1e-3])
    values = values[~np.isnan(values)]
    values[values == 0] = 0.0  # (-0 too: fma(-1, 0, 0) is +0)
    sizes = [values.size, 37, 16, 5]
    xs = [values[:n].copy() for n in sizes]
    ps = [np.zeros(n, DTYPES[dtype]) for n in sizes]
    opt = fastopt.SGD(ps, [-x for x in xs], lr=1.0, master_weights="stochastic", seed=12)
    assert opt._core.isa == isa
    opt.step()
    for t, (p, x) in enumerate(zip(ps, xs)):
        want = numeric.stochastic_round(x, numeric.random_bits(numeric.stream_key(12, 1, t), 0, x.size), dtype)
        np.testing.assert_array_equal(bits(p), want, err_msg=f"{isa}: param {t}")


def test_the_seed_decides_the_bits():
    case = next(c for c in CASES if c.name == "AdamW")
    a, b, c = run(case, "bfloat16", seed=1), run(case, "bfloat16", seed=1), run(case, "bfloat16", seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.mean(a[1] != c[1]) > 0.05  # (each rounding differs with probability ~ p(1-p))
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\), got -1"):
        fastopt.AdamW([np.zeros(2, ml_dtypes.bfloat16)], [np.zeros(2, np.float32)], master_weights="stochastic", seed=-1)
    with pytest.raises(ValueError, match="seed is the seed of stochastic rounding"):
        fastopt.AdamW([np.zeros(2, ml_dtypes.bfloat16)], [np.zeros(2, np.float32)], master_weights=True, seed=5)
    fastopt.AdamW([np.zeros(2, ml_dtypes.bfloat16)], [np.zeros(2, np.float32)], master_weights="stochastic",
                  seed=np.uint64(2 ** 63))


def test_checkpoint_resumes_bit_identically():
    case = next(c for c in CASES if c.name == "AdamW")
    rng = np.random.default_rng(4)
    start = random_params(rng, SHAPES, "bfloat16")
    steps = list(grad_steps(4, SHAPES, 8))
    ps = [p.copy() for p in start]
    gs = [np.zeros(p.shape, np.float32) for p in ps]
    straight = case.cls(ps, gs, master_weights="stochastic", seed=9, **case.kwargs)
    for grads in steps:
        refill(gs, grads)
        straight.step()
    qs = [p.copy() for p in start]
    hs = [np.zeros(p.shape, np.float32) for p in qs]
    first = case.cls(qs, hs, master_weights="stochastic", seed=9, **case.kwargs)
    for grads in steps[:4]:
        refill(hs, grads)
        first.step()
    resumed = case.cls(qs, hs, master_weights="stochastic", seed=2, **case.kwargs)  # the checkpoint's seed wins
    saved = first.state_dict()
    assert saved["seed"] == 9
    resumed.load_state_dict(saved)
    for grads in steps[4:]:
        refill(hs, grads)
        resumed.step()
    for a, b in zip(ps, qs):
        np.testing.assert_array_equal(bits(a), bits(b))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tiny_updates_are_kept_on_average(dtype):
    """SGD, lr 1, grads -1e-4 (well below half an ulp of 1.0 in either dtype... for float16 a
    fifth of it), 100 steps over 4096 params at 1.0: nearest-even never moves them; rounded
    stochastically their mean is 1.01 within 5 standard deviations of the mean of 4096
    independent walks (each step moves an element by at most one ulp, variance <= ulp^2 / 4)."""
    n, steps, delta = 4096, 100, 1e-4
    ulp = {"bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}[dtype]
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(np.float16)
    runs = {}
    for mode in (False, "stochastic"):
        p = np.ones(n, np.float32).astype(dt)
        seeded = {"seed": 3} if mode else {}
        opt = fastopt.SGD([p], [np.full(n, -delta, np.float32)], lr=1.0, master_weights=mode, **seeded)
        for _ in range(steps):
            opt.step()
        runs[mode] = p.astype(np.float64)
    if dtype == "bfloat16":
        assert np.all(runs[False] == 1.0)
    sigma = np.sqrt(steps * ulp ** 2 / 4 / n)
    assert abs(runs["stochastic"].mean() - (1 + steps * delta)) < 5 * sigma


def test_refusals():
    core = fastopt._core
    bf, g = np.zeros(4, ml_dtypes.bfloat16), np.zeros(4, np.float32)
    message = "param 0: stochastic rounding is for float16/bfloat16 params without master weights"
    with pytest.raises(core.TensorError, match=message):
        core.Group("sgd", [np.zeros(4, np.float32)], [g], Keeps([None], [None], [None], [True], [[]], [False]), [[]], [1])
    with pytest.raises(core.TensorError, match=message):
        core.Group("sgd", [bf], [g], Keeps([np.zeros(4, np.float32)], [None], [None], [True], [[]], [False]), [[]], [1])
