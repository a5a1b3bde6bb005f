"""Adafactor beyond the registry's parametrized tests (tests/registry.py holds its cases): long
trajectories against torch.optim.Adafactor on matrices, vectors, batched and odd shapes; its
factored reductions in their canonical order, bit for bit on every CPU target and thread
count, across chunk boundaries; eps1 taken from each param's dtype; torch's checkpoints; bad
input; and the CUDA engine's bits (cuda-marked)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import fastopt
import fastopt.functional as F
import fastopt.torch as ftorch
from reference import AdafactorRef
from registry import (DTYPES, Magnitudes, assert_bits_equal, assert_rounding_close, grad_steps, random_params, refill,
                      supported_isas)
from registry import isa_switch  # noqa: F401  (a fixture)

# Matrices (one of more than a CPU task and a CUDA chunk: its passes apart; one of more than a
# block of columns), vectors, a 0-d param, batched matrices, 1xN and Nx1.
SHAPES = [(6, 9), (37,), (2, 3, 5), (), (1, 50), (50, 1), (1, 1), (130, 1100), (7, 3000), (4, 1, 3)]
STEPS = 300

OPTIONS = {
    "lr_below_rho": {},  # lr 1e-2 < 1/sqrt(t) for every step here
    "lr_above_rho": {"lr": 0.3},  # rho = 1/sqrt(t) from t = 12
    "weight_decay_maximize": {"lr": 0.05, "weight_decay": 0.2, "maximize": True},
    "eps_d_decay": {"lr": 0.1, "eps": (1e-3, 0.5), "d": 1.5, "beta2_decay": -0.5},
}


def torch_run(shapes, initial, kwargs, steps, dtype):
    params = [torch.nn.Parameter(torch.tensor(p, dtype=dtype)) for p in initial]
    opt = torch.optim.Adafactor(params, **kwargs)
    for gs in grad_steps(3, shapes, steps):
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return [p.detach().numpy() for p in params], [opt.state[p] for p in params]


@pytest.mark.parametrize("options", list(OPTIONS))
def test_long_trajectories_match_torch_optim(options):
    """fastopt's fp32 run and torch's fp32 run, 300 steps, each within the registry's rounding
    bound (registry.rounding_bound: (16 + 2 t) u S, u = 2^-24, S the largest magnitude of the
    kind over the run) of torch's float64 run: params and each state stream. (torch in float64
    takes float64's eps as eps1 where it is None: both eps1^2 lie far below these grads' v.)"""
    kwargs = OPTIONS[options]
    initial = random_params(np.random.default_rng(1), SHAPES)
    params = [p.copy() for p in initial]
    grads = [np.zeros(s, np.float32) for s in SHAPES]
    opt = fastopt.Adafactor(params, grads, **kwargs)
    for gs in grad_steps(3, SHAPES, STEPS):
        refill(grads, gs)
        opt.step()
    got32, state32 = torch_run(SHAPES, initial, kwargs, STEPS, torch.float32)
    exact, state64 = torch_run(SHAPES, [p.astype(np.float64) for p in initial], kwargs, STEPS, torch.float64)
    scale = max(float(np.max(np.abs(p))) for p in [*initial, *exact] if p.size)
    assert_rounding_close(got32, exact, STEPS, scale=scale, msg="torch.optim fp32 itself vs float64")
    assert_rounding_close(params, exact, STEPS, scale=scale, msg="fastopt fp32 vs torch.optim float64")
    assert max(float(np.max(np.abs(p - p0))) for p, p0 in zip(params, initial) if p.size) > 0.05  # it moved
    for name in ("row_var", "col_var", "variance"):
        have = [i for i, s in enumerate(SHAPES) if name in opt.state[i]]
        assert have == [i for i in range(len(SHAPES)) if name in state64[i]], name
        expected = [state64[i][name].numpy() for i in have]
        s = max(float(np.max(np.abs(e))) for e in expected)
        assert_rounding_close([state32[i][name].numpy() for i in have], expected, STEPS, scale=s, msg=f"torch {name}")
        assert_rounding_close([opt.state[i][name] for i in have], expected, STEPS, scale=s, msg=f"fastopt {name}")
        for i in have:
            assert opt.state[i][name].shape == tuple(state64[i][name].shape), (name, i)


def test_float64_reference_is_torch_optim():
    """tests/reference.py's AdafactorRef is torch's algorithm: float64 against float64."""
    kwargs = {"lr": 0.3, "weight_decay": 0.1, "eps": (1e-3, 0.5), "d": 1.5}
    initial = [p.astype(np.float64) for p in random_params(np.random.default_rng(1), SHAPES)]
    exact, _ = torch_run(SHAPES, initial, kwargs, 50, torch.float64)
    ref = AdafactorRef(**kwargs)
    ref.value_dtypes = {i: np.dtype(np.float64) for i in range(len(SHAPES))}  # (torch's eps1 in float64)
    params = [p.copy() for p in initial]
    for gs in grad_steps(3, SHAPES, 50):
        ref.step(params, gs)
    assert_rounding_close(params, exact, 50, dtype="float64", implementations=2)


# ---- the factored reductions ------------------------------------------------------------------

# Rows across CPU tasks and CUDA chunks (300 x 700: a task boundary mid-row), several blocks of
# columns (3 x 50000), two groups of rows (70000 x 3: factor_rows(3) = 43690), one long row cut
# into tasks (1 x 200000), a column of rows of one element, batched matrices fused and not.
REDUCTION_SHAPES = [(300, 700), (3, 50000), (70000, 3), (1, 200000), (5000, 1), (20, 70, 90), (4, 300, 130),
                    (150001,)]


def canonical_row_col_sums(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row and per column of each matrix of g (its last two dims), the sums of squares in
    fastopt/reduce.h's factored order, emulated in float64 (IEEE adds, each lane a sequential
    chain): rows by blocks of 2048 columns, column c in lane c % 256, the lanes' fixed tree
    (lane l += lane l + w, w = 128 .. 1), blocks in order; columns by groups of 131072 //
    min(cols, 2048) rows, rows in order within a group, groups in order."""
    rows, cols = g.shape[-2:]
    sq = g.reshape(-1, rows, cols).astype(np.float64) ** 2
    row_sums = np.zeros(sq.shape[:2])
    for b0 in range(0, cols, 2048):
        block = sq[:, :, b0:b0 + 2048]
        lanes = np.zeros(sq.shape[:2] + (256,))
        for line in range(0, block.shape[2], 256):
            part = block[:, :, line:line + 256]
            lanes[:, :, :part.shape[2]] += part
        w = 128
        while w >= 1:
            lanes[:, :, :w] += lanes[:, :, w:2 * w]
            w //= 2
        row_sums += lanes[:, :, 0]
    per = 131072 // min(cols, 2048)
    col_sums = np.zeros((sq.shape[0], cols))
    for r0 in range(0, rows, per):
        group = np.zeros((sq.shape[0], cols))
        for r in range(r0, min(r0 + per, rows)):
            group += sq[:, r, :]
        col_sums += group
    return row_sums, col_sums


FACTORED_SHAPES = [(300, 700), (3, 5000), (70000, 3), (4, 50, 30), (2, 1, 3000), (5000, 1), (1, 200000)]


def wide_grads(shape: tuple) -> np.ndarray:
    """Grads over some 30 binades, so that the order of the double additions shows in their bits."""
    rng = np.random.default_rng(7)
    return (rng.standard_normal(shape) * np.exp2(rng.integers(-15, 15, shape))).astype(np.float32)


@pytest.mark.parametrize("shape", FACTORED_SHAPES)
def test_row_and_column_sums_are_the_canonical_order(shape, isa_switch):
    """The engine's factor pass and the combine of its partials (fastopt._core.numeric.factored_sums:
    the kernel a step runs, on the thread pool) give the sums of canonical_row_col_sums bit for
    bit, in double, on every CPU target and thread count."""
    g = wide_grads(shape)
    row_sums, col_sums = canonical_row_col_sums(g)
    previous = fastopt.get_num_threads()
    try:
        for isa in supported_isas():
            isa_switch(isa)
            for threads in (1, 2, 3):
                fastopt.set_num_threads(threads)
                rows, cols = fastopt._core.numeric.factored_sums(g)
                assert_bits_equal(rows, row_sums.ravel(), f"{isa}, {threads} threads: rows")
                assert_bits_equal(cols, col_sums.ravel(), f"{isa}, {threads} threads: columns")
    finally:
        fastopt.set_num_threads(previous)
    # (the order shows: a plain sum of the same squares differs from it in some bits)
    plain = (g.astype(np.float64) ** 2).reshape(-1, *shape[-2:])
    assert not (np.array_equal(plain.sum(axis=-1).ravel(), row_sums.ravel())
                and np.array_equal(plain.sum(axis=-2).ravel(), col_sums.ravel()))


@pytest.mark.parametrize("shape", [(300, 700), (3, 5000), (4, 50, 30)])
def test_first_step_state_is_the_means_of_the_sums(shape):
    """At step 1 (beta2_hat's complement 1) row_var and col_var are those sums over the columns
    and rows, divided in double and rounded once to float32."""
    g = wide_grads(shape)
    p = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    opt = fastopt.Adafactor([p], [g])
    opt.step()
    row_sums, col_sums = canonical_row_col_sums(g)
    rows, cols = shape[-2:]
    assert_bits_equal(opt.state[0]["row_var"], (row_sums / cols).astype(np.float32).reshape(shape[:-1] + (1,)))
    assert_bits_equal(opt.state[0]["col_var"],
                      (col_sums / rows).astype(np.float32).reshape(shape[:-2] + (1, cols)))


def run_reductions(isa: str, threads: int, set_isa) -> list[np.ndarray]:
    set_isa(isa)
    previous = fastopt.get_num_threads()
    fastopt.set_num_threads(threads)
    try:
        rng = np.random.default_rng(11)
        dtypes = ["float32", "bfloat16", "float32", "float16", "float32", "float32", "bfloat16", "float32"]
        params = [random_params(rng, [s], d)[0] for s, d in zip(REDUCTION_SHAPES, dtypes)]
        grads = [np.zeros(s, np.float32) for s in REDUCTION_SHAPES]
        opt = fastopt.Adafactor(params, grads, lr=0.2, weight_decay=0.1, master_weights=True)
        assert opt._core.isa == isa
        for gs in grad_steps(5, REDUCTION_SHAPES, 4):
            refill(grads, gs)
            opt.step()
        return [*params, *(opt.state[i][k] for i in range(len(params)) for k in sorted(opt.state[i]))]
    finally:
        fastopt.set_num_threads(previous)


def test_bit_identical_across_isas_and_thread_counts(isa_switch):
    """Rows spanning task boundaries, several column blocks and row groups, batched matrices:
    params, masters and state bit for bit on every CPU target and 1, 2 or 3 threads."""
    expected = run_reductions("scalar", 1, isa_switch)
    for isa in supported_isas():
        for threads in (1, 2, 3):
            if (isa, threads) == ("scalar", 1):
                continue
            got = run_reductions(isa, threads, isa_switch)
            for k, (a, e) in enumerate(zip(got, expected)):
                assert_bits_equal(a, e, f"{isa}, {threads} threads, array {k}")


def test_fused_and_split_passes_agree():
    """A matrix small enough for one CPU task (its passes fused, in cache) and the same matrix
    first in a batch taken apart (more than a task): its row_var and col_var depend on its own
    grads alone, and both ways give the same bits."""
    rng = np.random.default_rng(2)
    small = rng.standard_normal((60, 70)).astype(np.float32)
    batch = rng.standard_normal((40, 60, 70)).astype(np.float32)
    batch[0] = small
    assert batch.size > 131072 >= small.size
    gs, gb = np.zeros_like(small), np.zeros_like(batch)
    o1, o2 = fastopt.Adafactor([small], [gs], lr=0.1), fastopt.Adafactor([batch], [gb], lr=0.1)
    for t in range(5):
        gb[...] = rng.standard_normal(batch.shape)
        gs[...] = gb[0]
        o1.step()
        o2.step()
        assert_bits_equal(o1.state[0]["row_var"], o2.state[0]["row_var"][0], f"step {t}")
        assert_bits_equal(o1.state[0]["col_var"], o2.state[0]["col_var"][0], f"step {t}")
    # (the params differ: alpha and the clip take their RMS over the whole tensor)


# ---- step options ---------------------------------------------------------------------------------


def test_step_options_act_on_every_pass():
    """Unscaling, clipping by global norm and by value are the transform of every grad the factor
    pass, the first pass and the update read: a run with the options is bit for bit a plain run on
    the transformed grads (fastopt/step_control.h's factor, applied in float32, then clamped), for
    matrices taken apart (larger than a task) and fused, and vectors; diagnostics change nothing."""
    shapes = [(300, 700), (20, 30), (37,), (2, 150, 500)]
    initial = random_params(np.random.default_rng(6), shapes)
    a, b = [p.copy() for p in initial], [p.copy() for p in initial]
    ga, gb = [np.zeros(s, np.float32) for s in shapes], [np.zeros(s, np.float32) for s in shapes]
    opt = fastopt.Adafactor(a, ga, lr=0.1, max_grad_norm=300.0, clip_value=1.0, diagnostics=True)
    plain = fastopt.Adafactor(b, gb, lr=0.1)
    clipped = clamped = 0
    for gs in grad_steps(4, shapes, 4):
        scaled = [g * 8 for g in gs]
        refill(ga, scaled)
        sums, _ = fastopt._core.sumsq(ga)
        total = 0.0
        for x in sums:  # (reduce.h's combine of a run of tensors: in order)
            total += x
        norm, factor, skip = fastopt._core.step_control(np.float32(1 / 8), total, 0, False, 300.0)
        clipped += factor < np.float32(1 / 8)
        clamped += any(np.any(np.abs(g * np.float32(factor)) > 1.0) for g in scaled)
        refill(gb, [np.clip(g * np.float32(factor), -1.0, 1.0) for g in scaled])
        result = opt.step(grad_scale=8.0)
        plain.step()
        assert not skip and result.grad_norm == norm and result.diagnostics is not None
    assert clipped > 0 and clamped > 0  # both clips acted
    for i in range(len(shapes)):
        assert_bits_equal(a[i], b[i], f"param {i}")
        for k in opt.state[i]:
            assert_bits_equal(opt.state[i][k], plain.state[i][k], f"{k} {i}")


def test_nonfinite_step_skipped_nothing_written():
    shapes = [(300, 700), (37,)]
    params = random_params(np.random.default_rng(6), shapes)
    grads = [np.ones(s, np.float32) for s in shapes]
    opt = fastopt.Adafactor(params, grads, skip_nonfinite=True)
    opt.step()
    before = [p.copy() for p in params], {i: {k: v.copy() for k, v in s.items()} for i, s in opt.state.items()}
    grads[0][123, 456] = np.inf
    assert opt.step().skipped and opt.steps == [1]
    for p, q in zip(params, before[0]):
        assert_bits_equal(p, q)
    for i, s in opt.state.items():
        for k, v in s.items():
            assert_bits_equal(v, before[1][i][k], f"{k} {i}")


# ---- eps1 from each param's dtype ------------------------------------------------------------


@pytest.mark.parametrize("param_dtype, master_weights, eps1", [
    ("float32", False, 2.0 ** -23), ("bfloat16", True, 2.0 ** -23), ("bfloat16", "remainder", 2.0 ** -23),
    ("bfloat16", "stochastic", 2.0 ** -7), ("bfloat16", False, 2.0 ** -7), ("float16", False, 2.0 ** -10),
    ("float16", True, 2.0 ** -23)])
def test_eps1_none_is_the_epsilon_of_the_value_dtype(param_dtype, master_weights, eps1):
    """eps=(None, eps2) takes each param's value dtype's machine epsilon: the same bits as that
    epsilon given, and other bits than float32's where they differ (grads small enough for the
    floors to act)."""
    shapes = [(8, 16), (40,)]

    def run(eps):
        rng = np.random.default_rng(4)
        params = random_params(rng, shapes, param_dtype)
        grads = [np.zeros(s, np.float32) for s in shapes]
        opt = fastopt.Adafactor(params, grads, lr=0.1, eps=eps, master_weights=master_weights,
                                seed=1 if master_weights == "stochastic" else 0)
        for gs in grad_steps(9, shapes, 3):
            refill(grads, [g * 1e-4 for g in gs])
            opt.step()
        return [*params, *(m for m in opt.master_params if m is not None)]

    auto = run((None, 1e-3))
    for a, b in zip(auto, run((eps1, 1e-3))):
        assert_bits_equal(a, b)
    if eps1 != 2.0 ** -23:
        assert any(not np.array_equal(a, b) for a, b in zip(auto, run((2.0 ** -23, 1e-3))))


# ---- checkpoints ------------------------------------------------------------------------------


def test_state_dict_resumes_bit_identically():
    shapes = [(30, 50), (7,), (2, 4, 6)]
    rng = np.random.default_rng(5)
    params = random_params(rng, shapes)
    grads = [np.zeros(s, np.float32) for s in shapes]
    opt = fastopt.Adafactor(params, grads, lr=0.05, weight_decay=0.1)
    steps = list(grad_steps(6, shapes, 10))
    for gs in steps[:5]:
        refill(grads, gs)
        opt.step()
    ckpt = opt.state_dict()
    assert {k for e in ckpt["state"].values() for k in e} == {"step", "row_var", "col_var", "variance"}
    assert set(ckpt["state"][0]) == {"step", "row_var", "col_var"} and set(ckpt["state"][1]) == {"step", "variance"}
    assert ckpt["state"][2]["row_var"].shape == (2, 4, 1) and ckpt["state"][2]["col_var"].shape == (2, 1, 6)
    assert ckpt["param_groups"][0]["eps"] == (None, 1e-3)
    resumed = [p.copy() for p in params]
    grads2 = [np.zeros(s, np.float32) for s in shapes]
    opt2 = fastopt.Adafactor(resumed, grads2, lr=0.05, weight_decay=0.1)
    opt2.load_state_dict(ckpt)
    for gs in steps[5:]:
        refill(grads, gs)
        refill(grads2, gs)
        opt.step()
        opt2.step()
    for a, b in zip(params, resumed):
        assert_bits_equal(b, a)


def test_wrong_state_shape_in_checkpoint_rejected():
    p, g = np.ones((3, 4), np.float32), np.zeros((3, 4), np.float32)
    opt = fastopt.Adafactor([p], [g])
    opt.step()
    ckpt = opt.state_dict()
    ckpt["state"][0]["row_var"] = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"state 'row_var' is float32\[3, 4\], expected float32\[3, 1\]"):
        fastopt.Adafactor([p.copy()], [g]).load_state_dict(ckpt)
    del ckpt["state"][0]["row_var"]
    with pytest.raises(ValueError, match="lacks row_var"):
        fastopt.Adafactor([p.copy()], [g]).load_state_dict(ckpt)


def test_torch_checkpoints_go_both_ways():
    """A torch.optim.Adafactor checkpoint resumes in fastopt.torch.Adafactor and the other way
    round; each pair of runs stays within the rounding bound of each other."""
    torch.manual_seed(0)
    shapes = [(12, 20), (20,), (3, 4, 5)]
    model = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in model]
    grads = list(grad_steps(8, shapes, 20))

    def steps(opt, params, gs_list):
        for gs in gs_list:
            for p, g in zip(params, gs):
                p.grad = torch.tensor(g)
            opt.step()

    topt = torch.optim.Adafactor(theirs, lr=0.05, weight_decay=0.1)
    steps(topt, theirs, grads[:10])
    fopt = ftorch.Adafactor(model, lr=0.05, weight_decay=0.1)
    with torch.no_grad():
        for p, q in zip(model, theirs):
            p.copy_(q)
    fopt.load_state_dict(topt.state_dict())
    steps(fopt, model, grads[10:15])
    steps(topt, theirs, grads[10:15])
    assert_rounding_close([p.detach().numpy() for p in model], [p.detach().numpy() for p in theirs], 15,
                          implementations=2)
    back = torch.optim.Adafactor([torch.nn.Parameter(p.detach().clone()) for p in model], lr=0.05, weight_decay=0.1)
    back.load_state_dict(copy.deepcopy(fopt.state_dict()))  # (live tensors, as torch's: torch would share them)
    steps(back, back.param_groups[0]["params"], grads[15:])
    steps(fopt, model, grads[15:])
    assert_rounding_close([p.detach().numpy() for p in model],
                          [p.detach().numpy() for p in back.param_groups[0]["params"]], 20, implementations=2)
    assert set(fopt.state[model[0]]) == {"step", "row_var", "col_var"} and set(fopt.state[model[1]]) == {
        "step", "variance"}


# ---- storage modes --------------------------------------------------------------------------------


@pytest.mark.parametrize("state_precision", ["bfloat16", "bfloat16_stochastic"])
def test_bfloat16_state(state_precision):
    """bfloat16 state (row_var, col_var, variance) tracks the float32 run within bfloat16's
    resolution; 8-bit state is refused, naming why, with nothing written."""
    shapes = [(40, 60), (50,)]
    rng = np.random.default_rng(3)
    initial = random_params(rng, shapes)
    runs = []
    for precision in ("float32", state_precision):
        params = [p.copy() for p in initial]
        grads = [np.zeros(s, np.float32) for s in shapes]
        opt = fastopt.Adafactor(params, grads, state_precision=precision, seed=7 * (precision != "float32" and
                                                                                    "stochastic" in precision))
        for gs in grad_steps(2, shapes, 30):
            refill(grads, gs)
            opt.step()
        runs.append((params, opt.state))
    for i in range(len(shapes)):
        for k, a in runs[1][1][i].items():
            assert a.dtype == DTYPES["bfloat16"]
            np.testing.assert_allclose(a.astype(np.float32), runs[0][1][i][k], rtol=0.05)
        np.testing.assert_allclose(runs[1][0][i], runs[0][0][i], atol=0.02)


def test_eight_bit_state_refused():
    p = np.ones((4, 5), np.float32)
    before = p.copy()
    with pytest.raises(fastopt.TensorError, match="adafactor cannot keep 8-bit state: its state is already factored"):
        fastopt.Adafactor([p], [np.ones_like(p)], state_precision="8bit")
    with pytest.raises(ValueError, match="Adafactor cannot keep 8-bit state"):
        ftorch.Adafactor([torch.nn.Parameter(torch.ones(3))], state_precision="8bit")
    assert_bits_equal(p, before)


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, message", [
    ({"lr": -1.0}, ValueError, "lr must be finite and >= 0"),
    ({"beta2_decay": 0.5}, ValueError, "beta2_decay must be finite and <= 0, got 0.5"),
    ({"eps": (-1e-3, 1e-3)}, ValueError, "eps1 must be finite and >= 0"),
    ({"eps": (None, -1.0)}, ValueError, "eps2 must be finite and >= 0"),
    ({"eps": 1e-3}, TypeError, "eps must be a pair"),
    ({"eps": ("a", 1e-3)}, TypeError, "eps1 must be a real number"),
    ({"d": 0.5}, ValueError, "d must be finite and >= 1, got 0.5"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay must be finite and >= 0"),
    ({"weight_decay": float("nan")}, ValueError, "weight_decay must be finite and >= 0"),
])
def test_bad_hyperparameters_rejected_nothing_changed(kwargs, error, message):
    p, g = np.ones((3, 4), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(error, match=message):
        fastopt.Adafactor([p], [g], **kwargs)
    opt = fastopt.Adafactor([p], [g])
    opt.step()
    before = (p.copy(), {k: v.copy() for k, v in opt.state[0].items()}, dict(opt.param_groups[0]))
    for key, value in kwargs.items():
        with pytest.raises(error, match=message):
            opt.param_groups[0][key] = value
    with pytest.raises(error, match=message):
        F.adafactor_([p], [g], [np.zeros((3, 1), np.float32)], [np.zeros((1, 4), np.float32)], [None], step=2,
                     **kwargs)
    assert_bits_equal(p, before[0])
    for k, v in before[1].items():
        assert_bits_equal(opt.state[0][k], v)
    assert dict(opt.param_groups[0]) == before[2]


def test_functional_state_shapes_checked():
    p, g = np.ones((3, 4), np.float32), np.ones((3, 4), np.float32)
    v = np.ones(5, np.float32)
    row, col = np.zeros((3, 1), np.float32), np.zeros((1, 4), np.float32)
    with pytest.raises(fastopt.TensorError, match=r"row_var 0: shape \(3, 4\), expected \(3, 1\): one value per row"):
        F.adafactor_([p], [g], [np.zeros((3, 4), np.float32)], [col], [None], step=1)
    with pytest.raises(fastopt.TensorError, match=r"col_var 0: shape \(4, 1\), expected \(1, 4\): one value per col"):
        F.adafactor_([p], [g], [row], [np.zeros((4, 1), np.float32)], [None], step=1)
    with pytest.raises(fastopt.TensorError, match=r"variance 1: shape \(4,\) differs from param 1's shape \(5,\)"):
        F.adafactor_([p, v], [g, v.copy()], [row, None], [col, None], [None, np.zeros(4, np.float32)], step=1)
    with pytest.raises(ValueError, match=r"col_vars\[0\] is None"):
        F.adafactor_([p], [g], [row], [None], [None], step=1)
    with pytest.raises(ValueError, match="Adafactor needs variances"):
        F.adafactor_([v], [v.copy()], step=1)
    with pytest.raises(ValueError, match=r"param 0: variances\[0\] must be None: a param of shape \(3, 4\) keeps "
                                         "row_var, col_var"):
        F.adafactor_([p], [g], [row], [col], [np.zeros((3, 4), np.float32)], step=1)
    with pytest.raises(ValueError, match=r"param 0: row_vars\[0\] must be None: a param of shape \(5,\)"):
        F.adafactor_([v], [v.copy()], [np.zeros((5, 1), np.float32)], [None], [np.zeros(5, np.float32)], step=1)
    assert np.all(p == 1) and np.all(row == 0) and np.all(col == 0)
    F.adafactor_([p, v], [g, v.copy()], [row, None], [col, None], [None, np.zeros(5, np.float32)], step=1)
    assert np.all(row > 0) and np.all(col > 0) and np.all(p < 1)


def test_not_in_fastopt_distributed():
    from fastopt.distributed.pieces import fastopt_class
    with pytest.raises(TypeError, match="Adafactor keeps one value per row and per column"):
        fastopt_class(ftorch.Adafactor)


# ---- the CUDA engine ------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("options", list(OPTIONS))
def test_cuda_bit_identical_to_cpu(options):
    """The GPU's factor pass (a thread block per piece), factor step and passes give the CPU's
    bits, with rows across chunks, several column blocks and row groups, batched matrices."""
    shapes = [*SHAPES, *REDUCTION_SHAPES]
    initial = random_params(np.random.default_rng(1), shapes)
    cpu = [p.copy() for p in initial]
    grads = [np.zeros(s, np.float32) for s in shapes]
    opt = fastopt.Adafactor(cpu, grads, **OPTIONS[options])
    gpu = [torch.tensor(p, device="cuda") for p in initial]
    ggrads = [torch.zeros(s, device="cuda") for s in shapes]
    gopt = fastopt.Adafactor(gpu, ggrads, **OPTIONS[options])
    for gs in grad_steps(3, shapes, 12):
        refill(grads, gs)
        for tg, g in zip(ggrads, gs):
            tg.copy_(torch.from_numpy(g))
        opt.step()
        gopt.step()
    for i in range(len(shapes)):
        assert_bits_equal(gpu[i].cpu().numpy(), cpu[i], f"param {i}")
        for k, v in opt.state[i].items():
            assert_bits_equal(gopt.state[i][k].cpu().numpy(), v, f"{k} {i}")


@pytest.mark.cuda
def test_cuda_step_options_bit_identical_to_cpu():
    """Unscaling, clipping by norm and value, and diagnostics, on both engines."""
    shapes = [(300, 700), (37,), (3, 5000)]
    initial = random_params(np.random.default_rng(1), shapes)
    cpu = [p.copy() for p in initial]
    grads = [np.zeros(s, np.float32) for s in shapes]
    options = dict(max_grad_norm=50.0, clip_value=2.0, diagnostics=True)
    opt = fastopt.Adafactor(cpu, grads, lr=0.1, **options)
    gpu = [torch.tensor(p, device="cuda") for p in initial]
    ggrads = [torch.zeros(s, device="cuda") for s in shapes]
    gopt = fastopt.Adafactor(gpu, ggrads, lr=0.1, **options)
    for gs in grad_steps(3, shapes, 5):
        refill(grads, [g * 8 for g in gs])
        for tg, g in zip(ggrads, gs):
            tg.copy_(torch.from_numpy(g * 8))
        r1, r2 = opt.step(grad_scale=8.0), gopt.step(grad_scale=8.0)
        np.testing.assert_array_equal(r2.diagnostics.update_norm.cpu().numpy(), r1.diagnostics.update_norm)
    for i in range(len(shapes)):
        assert_bits_equal(gpu[i].cpu().numpy(), cpu[i], f"param {i}")
