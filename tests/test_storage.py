"""State precision (python/fastopt/storage.py; element.h's load_state/store_state, the CPU
engine's blocks of 8-bit state in kernels.inl): every optimizer with bfloat16 state (rounded to
nearest even or stochastically) and 8-bit block-wise state follows its definition step by step,
the same bits on every CPU target; checkpoints resume bit for bit; modes per param group."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastopt
from fastopt._core import numeric
from registry import CASES, bits, grad_steps, random_params, refill, step_through, supported_isas
from registry import isa_switch  # noqa: F401  (a fixture)

BF16 = ml_dtypes.bfloat16
BLOCK = numeric.quant_block
# A partial block, two blocks and a partial one, a matrix and a scalar.
SHAPES = [(37,), (2 * BLOCK + 5,), (3, 129), ()]
PRECISIONS = ["bfloat16", "bfloat16_stochastic", "8bit"]
STEPS = 6


# Every rule and variant with every precision (Adagrad, Adafactor, Sophia and Schedule-Free keep
# no 8-bit state: test_refusals).
CASE_PRECISIONS = [pytest.param(c, p, id=f"{c.id}-{p}") for p in PRECISIONS for c in CASES
                   if not (p == "8bit" and not c.cls.eight_bit_state)]
# The rules whose update reads the state as an earlier phase of the step stored it: LAMB's first
# pass stores the moments; Adafactor's factor step stores row_var and col_var (and the row values
# come from them as stored), its first pass a vector's variance.
READS_STORED = ("LAMB", "Adafactor")


def signed_streams(opt: fastopt.Optimizer) -> list[bool]:
    mask = fastopt._core.nonnegative_state[opt.rule]
    return [not (mask >> k & 1) for k in range(len(opt.state_names))]


def stream_index(opt: fastopt.Optimizer, i: int, name: str) -> int:
    """The index of state array ``name`` among param i's bound arrays (its stream in the engine)."""
    return list(opt.state_shapes(np.shape(opt._params[i]))).index(name)


def stored_as_float32(opt: fastopt.Optimizer, i: int, name: str, precision: str) -> np.ndarray:
    """The float32 values that state array ``name`` of param i holds, as the engine loads them."""
    a = opt.state[i][name]
    if precision != "8bit":
        return a.astype(np.float32)
    k = stream_index(opt, i, name)
    flat = numeric.dequantize_blockwise(a.ravel(), opt.state[i][name + "_absmax"], signed_streams(opt)[k])
    return flat.reshape(a.shape)


def stored_from_float32(opt: fastopt.Optimizer, i: int, name: str, value: np.ndarray, precision: str,
                        seed: int, step: int) -> list[np.ndarray]:
    """What state array ``name`` of param i must hold after a step that computed ``value``:
    bfloat16 rounded to nearest even; rounded stochastically with the bits of its stream (seed,
    step, param index, array index: element.h's state_key); 8-bit codes and absmax."""
    k = stream_index(opt, i, name)
    if precision == "bfloat16":
        return [value.astype(BF16)]
    if precision == "bfloat16_stochastic":
        key = numeric.tensor_key(numeric.stream_key(seed, step, i), k + 1)
        r = numeric.random_bits(key, 0, value.size)
        return [numeric.stochastic_round(value.ravel(), r, "bfloat16").view(BF16).reshape(value.shape)]
    codes, absmax = numeric.quantize_blockwise(value.ravel(), signed_streams(opt)[k])
    return [codes.reshape(value.shape), absmax]


def reads_its_stored_state(p: np.ndarray, twin: np.ndarray, before: np.ndarray, precision: str) -> None:
    """LAMB's first pass stores the moments (and sums the norm of their update), Adafactor's
    factor step and first pass its state; the update reads them back as stored, where the float32
    twin reads them unrounded: the update differs by about the storage's error (in L2 norm:
    bfloat16, within 2^-5 of the update; 8-bit, within a tenth). The state itself is checked bit
    for bit."""
    rel = 2.0 ** -5 if precision != "8bit" else 0.1
    update = np.linalg.norm(twin.astype(np.float64) - before)
    assert np.linalg.norm(p.astype(np.float64) - twin) <= rel * update


@pytest.mark.parametrize("case, precision", CASE_PRECISIONS)
def test_every_optimizer_follows_the_definition_on_every_isa(case, precision, isa_switch):
    """Each step equals a float32-state step from the stored state's values, stored back by the
    definition (the scalar quantizer of quantize8.h for 8-bit state); the same bits on every CPU
    target. The grad norm pass (max_grad_norm) and the diagnosed update run too."""
    seed = 5
    rng = np.random.default_rng(case.seed)
    start = random_params(rng, SHAPES)
    results = {}
    for isa in supported_isas():
        isa_switch(isa)
        ps, twin_ps = [p.copy() for p in start], [p.copy() for p in start]
        gs = [np.zeros(p.shape, np.float32) for p in ps]
        options = dict(max_grad_norm=2.0, diagnostics=isa == "avx2", **case.kwargs)
        seeded = {"seed": seed} if precision == "bfloat16_stochastic" else {}
        opt = case.cls(ps, gs, state_precision=precision, **seeded, **options)
        twin = case.cls(twin_ps, gs, **options)
        for t, grads in enumerate(grad_steps(case.seed, SHAPES, STEPS), start=1):
            refill(gs, grads)
            for i in range(len(ps)):
                for name in (n for n in opt.state_names if n in opt.state[i]):
                    np.copyto(twin.state[i][name], stored_as_float32(opt, i, name, precision))
            before = [p.copy() for p in twin_ps]
            opt.step()
            twin.step()
            for i in range(len(ps)):
                if case.name in READS_STORED:  # (see reads_its_stored_state)
                    reads_its_stored_state(ps[i], twin_ps[i], before[i], precision)
                    np.copyto(twin_ps[i], ps[i])
                    continue
                np.testing.assert_array_equal(bits(ps[i]), bits(twin_ps[i]), err_msg=f"{isa} step {t} param {i}")
                for name in (n for n in opt.state_names if n in opt.state[i]):
                    want = stored_from_float32(opt, i, name, twin.state[i][name], precision, seed, t)
                    got = [opt.state[i][name]] + ([opt.state[i][name + "_absmax"]] if precision == "8bit" else [])
                    for a, b in zip(got, want):
                        np.testing.assert_array_equal(bits(a) if a.dtype != np.uint8 else a,
                                                      bits(b) if b.dtype != np.uint8 else b,
                                                      err_msg=f"{isa} step {t} param {i} {name}")
        results[isa] = [p.copy() for p in ps] + [a.copy() for s in opt.state.values() for a in s.values()]
    first = next(iter(results.values()))
    for isa, got in results.items():
        for a, b in zip(got, first):
            assert a.tobytes() == b.tobytes(), isa


@pytest.mark.parametrize("name", ["AdamW", "LAMB"])
def test_large_tensors_across_tasks_same_bits_on_every_isa(name, isa_switch):
    """8-bit state over tensors of several of the engine's tasks (131072 elements; LAMB's
    first pass then runs apart from its update) and two threads: the same bits everywhere."""
    case = next(c for c in CASES if c.name == name)
    shapes = [(300_001,), (1000,)]
    start = random_params(np.random.default_rng(1), shapes)
    results = {}
    for isa in supported_isas():
        isa_switch(isa)
        ps = [p.copy() for p in start]
        gs = [np.zeros(p.shape, np.float32) for p in ps]
        opt = case.cls(ps, gs, state_precision="8bit", **case.kwargs)
        for grads in grad_steps(2, shapes, 3):
            refill(gs, grads)
            opt.step()
        results[isa] = b"".join(a.tobytes() for a in ps + [x for s in opt.state.values() for x in s.values()])
    assert len(set(results.values())) == 1


# Param storages beside 8-bit state (dtype, master_weights).
KEEPINGS = {"fp32": (np.float32, False), "bf16 + master": (BF16, True), "fp16 + master": (np.float16, True),
            "bf16 + remainder": (BF16, "remainder"), "bf16 + Kahan": (BF16, "kahan"),
            "bf16 stochastic": (BF16, "stochastic")}
PIPELINED = ["sgd-momentum", "adamw-default", "adamw-amsgrad", "rmsprop-centered_momentum", "lion-default",
             "lars-weight_decay"]


@pytest.mark.parametrize("case_id", PIPELINED)
@pytest.mark.parametrize("keeping", list(KEEPINGS))
@pytest.mark.parametrize("clipped", [False, True], ids=["grads", "clipped"])
def test_eight_bit_state_beside_every_param_storage_same_bits_on_every_isa(case_id, keeping, clipped,
                                                                          isa_switch):
    """The vector targets update 8-bit state chunk by chunk, pipelined with the quantization of
    the block before (kernels.inl: q8_update; the storage known to the compiler for fp32 params
    and half ones with a master), the scalar target block by block (by_blocks): the same bits,
    for 1 to 3 state streams, every param storage, grads clipped or not, blocks cut short."""
    case = next(c for c in CASES if c.id == case_id)
    dtype, master_weights = KEEPINGS[keeping]
    shapes = [(3 * BLOCK + 100,), (37,), (5 * 64 + 1,)]
    start = [p.astype(dtype) for p in random_params(np.random.default_rng(8), shapes)]
    options = dict(case.kwargs, state_precision="8bit", master_weights=master_weights,
                   **({"max_grad_norm": 0.5} if clipped else {}), **({"seed": 2} if master_weights == "stochastic" else {}))
    results = {}
    for isa in supported_isas():
        isa_switch(isa)
        ps = [p.copy() for p in start]
        gs = [np.zeros(p.shape, np.float32) for p in ps]
        opt = case.cls(ps, gs, **options)
        step_through(opt, gs, list(grad_steps(3, shapes, 3)))
        results[isa] = ps + [a for state in opt.state.values() for a in state.values()]
    for isa, got in results.items():
        for a, b in zip(got, results["scalar"], strict=True):
            assert a.tobytes() == b.tobytes(), isa


@pytest.mark.parametrize("precision", PRECISIONS)
def test_checkpoint_resumes_bit_identically(precision):
    case = next(c for c in CASES if c.name == "AdamW")
    start = random_params(np.random.default_rng(4), SHAPES)
    steps = list(grad_steps(4, SHAPES, 8))

    ps = [p.copy() for p in start]
    gs = [np.zeros(p.shape, np.float32) for p in ps]
    seeded = {"seed": 3} if precision == "bfloat16_stochastic" else {}
    step_through(case.cls(ps, gs, state_precision=precision, **seeded, **case.kwargs), gs, steps)
    qs = [p.copy() for p in start]
    hs = [np.zeros(p.shape, np.float32) for p in qs]
    first = case.cls(qs, hs, state_precision=precision, **seeded, **case.kwargs)
    step_through(first, hs, steps[:5])
    saved = first.state_dict()
    stored = {"bfloat16": BF16, "bfloat16_stochastic": BF16, "8bit": np.uint8}[precision]
    assert all(saved["state"][i]["exp_avg"].dtype == stored for i in range(len(qs)))
    resumed = case.cls(qs, hs, state_precision=precision, **case.kwargs)
    resumed.load_state_dict(saved)
    step_through(resumed, hs, steps[5:])
    for a, b in zip(ps, qs):
        np.testing.assert_array_equal(bits(a), bits(b))
    message = ("param 0: state_dict has 8-bit state .'exp_avg_absmax'., this optimizer's state_precision is "
               "'float32'") if precision == "8bit" else r"param 0: state 'exp_avg' is .*, expected float32\[37\]"
    with pytest.raises(ValueError, match=message):
        case.cls(qs, hs, **case.kwargs).load_state_dict(saved)


def test_param_groups_keep_their_own_modes():
    """A group's master_weights and state_precision apply to its params alone: each group steps as
    an optimizer of its mode alone would."""
    case = next(c for c in CASES if c.name == "AdamW")
    shapes = [(64,), (3000,), (5,)]
    start = random_params(np.random.default_rng(7), shapes, "bfloat16")
    modes = [dict(master_weights="remainder", state_precision="8bit"), dict(master_weights=True),
             dict(master_weights="stochastic", state_precision="bfloat16_stochastic")]
    steps = list(grad_steps(7, shapes, 4))
    ps = [p.copy() for p in start]
    gs = [np.zeros(p.shape, np.float32) for p in ps]
    together = case.cls([{"params": [p], "grads": [g], **m} for p, g, m in zip(ps, gs, modes)], seed=11,
                        **case.kwargs)
    for grads in steps:
        refill(gs, grads)
        together.step()
    assert together.state[0]["exp_avg"].dtype == np.uint8 and together.state[1]["exp_avg"].dtype == np.float32
    assert together.state[2]["exp_avg"].dtype == BF16 and "master_remainder" in together.state[0]
    for i, m in enumerate(modes):
        # Alone, the param must have the same index: the random bits are keyed by it.
        alone_ps = [p.copy() for p in start]
        alone_gs = [np.zeros(p.shape, np.float32) for p in alone_ps]
        alone = case.cls([{"params": [p], "grads": [g], **(m if j == i else {})}
                          for j, (p, g) in enumerate(zip(alone_ps, alone_gs))],
                         **({"seed": 11} if "stochastic" in m.values() else {}), **case.kwargs)
        for grads in steps:
            refill(alone_gs, grads)
            alone.step()
        np.testing.assert_array_equal(bits(alone_ps[i]), bits(ps[i]), err_msg=str(m))


def test_stochastic_state_keeps_an_ema_that_rounding_to_nearest_stalls():
    """SGD momentum 0.999 over a constant grad g: the buffer's true limit is 1000 g. In bfloat16
    rounded to nearest, 0.999 b + g rounds back to b once g is under half a bfloat16 step of b
    (from b = 256 g on): it stalls there. Rounded stochastically it is unbiased: after 6000
    steps its mean over 4096 elements is within 2% of the float32 buffer's."""
    n, g = 4096, 1e-3
    bufs = {}
    for precision in ("float32", "bfloat16", "bfloat16_stochastic"):
        p = np.zeros(n, np.float32)
        opt = fastopt.SGD([p], [np.full(n, g, np.float32)], lr=0.0, momentum=0.999, dampening=0.0,
                          state_precision=precision, seed=1 if "stochastic" in precision else 0)
        for _ in range(6000):
            opt.step()
        bufs[precision] = opt.state[0]["momentum_buffer"].astype(np.float64)
    exact = bufs["float32"].mean()
    assert 0.99 * (1 - 0.999 ** 6000) * 1000 * g < exact
    assert bufs["bfloat16"].max() < 0.3 * exact
    assert abs(bufs["bfloat16_stochastic"].mean() / exact - 1) < 0.02


def test_an_overflowing_second_moment_keeps_its_block_finite():
    """A finite grad whose square overflows float32 (1e30): the 8-bit block's absmax takes the
    largest float instead of inf (which would read the whole block back as 0 * inf = NaN), so
    no param turns NaN; the other block is untouched by it."""
    q = np.ones(4096, np.float32)
    g = np.full(4096, 1e-3, np.float32)
    g[7] = 1e30
    opt = fastopt.AdamW([q], [g], lr=1e-2, state_precision="8bit", skip_nonfinite=True)
    opt.step()
    assert opt.state[0]["exp_avg_sq_absmax"][0] == np.finfo(np.float32).max
    g[7] = 1e-3
    for _ in range(3):
        opt.step()
    assert np.all(np.isfinite(q)) and np.all(np.isfinite(opt.state[0]["exp_avg_absmax"]))
    twin = np.ones(2048, np.float32)
    alone = fastopt.AdamW([twin], [g[2048:].copy()], lr=1e-2, state_precision="8bit")
    for _ in range(4):
        alone.step()
    np.testing.assert_array_equal(q[2048:], twin)


def test_refusals():
    p, g = [np.zeros(4, np.float32)], [np.zeros(4, np.float32)]
    with pytest.raises(ValueError, match="state_precision must be one of 'float32', 'bfloat16', "
                                         "'bfloat16_stochastic', '8bit', got 'int8'"):
        fastopt.AdamW(p, g, state_precision="int8")
    with pytest.raises(ValueError, match="param group 1: state_precision must be"):
        fastopt.AdamW([{"params": p, "grads": g}, {"params": [np.zeros(2, np.float32)],
                                                   "grads": [np.zeros(2, np.float32)], "state_precision": 8}])
    with pytest.raises(fastopt.TensorError, match="param 0: adagrad cannot keep 8-bit state: its state is a "
                                                  "running sum"):
        fastopt.Adagrad(p, g, state_precision="8bit")
    for cls in (fastopt.AdamWScheduleFree, fastopt.SGDScheduleFree):
        with pytest.raises(fastopt.TensorError, match="param 0: schedule_free cannot keep 8-bit state: its z is the "
                                                      "base sequence of the weights"):
            cls(p, g, state_precision="8bit")
    with pytest.raises(ValueError, match="seed is the seed of stochastic rounding"):
        fastopt.AdamW(p, g, state_precision="bfloat16", seed=4)
    core = fastopt._core
    from fastopt.binding import Keeps
    q, b = np.zeros(4, np.uint8), np.zeros(4, BF16)
    keeps = Keeps.none(1)
    with pytest.raises(core.TensorError, match="param 0: uint8 .8-bit. state needs one absmax array per state "
                                               "array .2., got 0"):
        core.Group("adam", p, g, keeps, [[q, q.copy()]], [1])
    with pytest.raises(core.TensorError, match="exp_avg_sq 0: dtype bfloat16, but exp_avg 0 is uint8"):
        core.Group("adam", p, g, keeps, [[q, b]], [1])
    keeps.absmaxes = [[np.zeros(2, np.float32), np.zeros(1, np.float32)]]
    with pytest.raises(core.TensorError, match=r"exp_avg absmax 0: shape \(2,\), expected \(1,\): one absmax per "
                                               "block of 2048 elements"):
        core.Group("adam", p, g, keeps, [[q, q.copy()]], [1])
    keeps = Keeps.none(1)
    keeps.state_stochastic = [True]
    with pytest.raises(core.TensorError, match="param 0: stochastic rounding of the state is for bfloat16 state"):
        core.Group("adam", p, g, keeps, [[np.zeros(4, np.float32)] * 2], [1])
