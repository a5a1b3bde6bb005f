"""The update rules against the float64 reference, for every case of the registry.

(a) fp32 trajectories, (b) fp16/bf16 params with fp32 master weights, (c) half params
without master weights, (d) bit-identical results on every CPU ISA target, (e) sizes and
many tensors in one optimizer, (f) in-place updates, (g) functional forms == classes.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Sequence

import numpy as np
import pytest

import fastopt
from reference import reference_for
from registry import (BASELINE, CASE_IDS, CASES, DTYPES, HALF_DTYPES, HALF_TOLERANCES, Case, Magnitudes,
                      assert_bits_equal, assert_rounding_close, case_by_id, functional_step, grad_steps,
                      random_params, refill, supported_isas)
from registry import isa_switch  # noqa: F401  (a fixture)

SHAPES = [(37,), (4, 9), (128,), (2, 3, 5)]  # vector bodies and scalar tails on every ISA
STEPS = 100

each_case = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)


# ---- helpers ----------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    opt: fastopt.Optimizer
    params: list[np.ndarray]
    grads: list[np.ndarray]
    ref: object
    ref_params: list[np.ndarray]
    steps: int = 0
    magnitudes: Magnitudes = dataclasses.field(default_factory=Magnitudes)  # of the reference's values


def as_list(x, n: int) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x] * n


def run_with_reference(case: Case, shapes: Sequence[tuple], steps: int, *,
                       param_dtype: str | Sequence[str] = "float32",
                       grad_dtype: str | Sequence[str] = "float32",
                       master_weights: bool = False, quantize_reference: bool = False,
                       after_step: Callable[[Run, int], None] | None = None) -> Run:
    """Steps fastopt and the float64 reference side by side on the same grads.

    The reference is fed the grads exactly as fastopt reads them (dequantised from their
    storage dtype). With ``quantize_reference`` the reference rounds its params to their
    storage dtype after every step, as fastopt must without master weights.
    """
    pdt, gdt = as_list(param_dtype, len(shapes)), as_list(grad_dtype, len(shapes))
    rng = np.random.default_rng(case.seed)
    params = [random_params(rng, [s], d)[0] for s, d in zip(shapes, pdt)]
    grads = [np.zeros(s, DTYPES[d]) for s, d in zip(shapes, gdt)]
    opt = case.cls(params, grads, master_weights=master_weights, **case.kwargs)
    run = Run(opt, params, grads, reference_for(case.name, case.kwargs),
              [p.astype(np.float64) for p in params])
    if hasattr(run.ref, "value_dtypes"):  # (Adafactor's eps1 None: the epsilon of the dtype of each value)
        run.ref.value_dtypes.update({i: DTYPES["float32" if master_weights else d] for i, d in enumerate(pdt)})
    run.magnitudes.see("param", run.ref_params)
    for t, fp32_grads in enumerate(grad_steps(case.seed + 1, shapes, steps), 1):
        new = [g.astype(DTYPES[d]) for g, d in zip(fp32_grads, gdt)]
        refill(grads, new)
        opt.step()
        run.ref.step(run.ref_params, [g.astype(np.float64) for g in new])
        if quantize_reference:
            for r, d in zip(run.ref_params, pdt):
                r[...] = r.astype(DTYPES[d]).astype(np.float64)
        run.steps = t
        run.magnitudes.see("param", run.ref_params)
        for name in state_names(run.ref, len(shapes)):
            run.magnitudes.see(name, [st[name] for st in map(run.ref.state_of, range(len(shapes))) if name in st])
        if after_step:
            after_step(run, t)
    return run


def state_names(ref, n: int) -> list[str]:
    """The state names of the reference's n params (Adafactor's matrices and vectors keep different state)."""
    return list(dict.fromkeys(name for i in range(n) for name in ref.state_of(i)))


def fp32_values(run: Run) -> list[np.ndarray]:
    """The fp32 value of every param: its master weights where it has them."""
    return [m if m is not None else p for p, m in zip(run.params, run.opt.master_params)]


def reference_state(case: Case, run: Run, i: int) -> dict[str, np.ndarray]:
    """The reference's state of param i, plus the zeros of the streams fastopt binds idle."""
    expected = dict(run.ref.state_of(i))
    for name in case.idle_state:
        expected[name] = np.zeros_like(run.ref_params[i])
    return expected


def assert_matches_reference(run: Run, case: Case) -> None:
    """The fp32 values (params, or their masters) and the state within the registry's
    rounding bound of the float64 reference."""
    values = fp32_values(run)
    assert all(v.dtype == np.float32 for v in values)
    assert_params_close(run.ref, values, run.ref_params, run.steps, case.name, run.magnitudes.get("param"))
    expected = [reference_state(case, run, i) for i in range(len(values))]
    got = [{k: a for k, a in run.opt.state[i].items() if k != "master_param"} for i in range(len(values))]
    for i, (g, e) in enumerate(zip(got, expected)):
        assert set(g) == set(e), f"param {i}: state {sorted(g)} != {sorted(e)}"
    for name in dict.fromkeys(name for e in expected for name in e):
        assert_rounding_close([g[name] for g in got if name in g], [e[name] for e in expected if name in e],
                              run.steps, optimizer=case.name, scale=run.magnitudes.get(name), msg=name)


def lion_slack(ref, n: int) -> list:
    """Lion moves every coordinate by exactly lr, in the direction of sign(c): where |c| was
    within fp32 rounding of zero (the reference counts those steps per element) the sign is a
    toss-up for any fp32 implementation, and such an element may be off by 2 lr per toss-up."""
    ambiguous = getattr(ref, "ambiguous", {})
    return [2 * ref.lr * ambiguous[i] if i in ambiguous else None for i in range(n)]


def assert_params_close(ref, actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], steps: int,
                        optimizer: str, scale: float | None = None) -> None:
    assert_rounding_close(actual, expected, steps, optimizer=optimizer, scale=scale,
                          slack=lion_slack(ref, len(actual)), msg="param")


def assert_half_params_close(ref, actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], dtype: str) -> None:
    """fp16/bf16 params (no master) within HALF_TOLERANCES of the quantised reference."""
    tolerance = HALF_TOLERANCES[dtype]
    for i, (a, e, slack) in enumerate(zip(actual, expected, lion_slack(ref, len(actual)))):
        bound = tolerance["atol"] + (0.0 if slack is None else slack) + tolerance["rtol"] * np.abs(e)
        if not np.all(np.abs(a.astype(np.float64) - e) <= bound):
            np.testing.assert_allclose(a, e, **tolerance, err_msg=f"param {i}")


def assert_params_are_rounded_masters(run: Run) -> None:
    """Every half param holds its fp32 master rounded to nearest even (numpy's astype)."""
    for i, (p, m) in enumerate(zip(run.params, run.opt.master_params)):
        assert m is not None and m.dtype == np.float32, f"param {i} has no fp32 master"
        assert_bits_equal(p, m.astype(p.dtype), f"param {i} != round(master)")


# ---- the registry itself ------------------------------------------------------------------


NON_BASELINE = [c for c in CASES if c.id not in BASELINE.values()]


@pytest.mark.parametrize("case", NON_BASELINE, ids=[c.id for c in NON_BASELINE])
def test_case_options_change_the_reference_trajectory(case):
    """Every option of a case must matter on these grads, or its tests would prove nothing."""
    baseline = case_by_id(BASELINE[case.name])
    finals = []
    for c in (case, baseline):
        rng = np.random.default_rng(0)
        ps = [p.astype(np.float64) for p in random_params(rng, SHAPES)]
        ref = reference_for(c.name, c.kwargs)
        for gs in grad_steps(1, SHAPES, 60):
            ref.step(ps, gs)
        finals.append(np.concatenate([p.ravel() for p in ps]))
    assert np.max(np.abs(finals[0] - finals[1])) > 1e-3


def test_amsgrad_max_is_active_on_these_grads():
    """The grad scale schedule makes v fall below its running max, so AMSGrad differs."""
    for id_ in ("adam-amsgrad", "adamw-amsgrad_wd_maximize"):
        case = case_by_id(id_)
        with_max = run_with_reference(case, SHAPES, STEPS)
        vmax, v = with_max.ref.max_exp_avg_sq[0], with_max.ref.exp_avg_sq[0]
        assert np.mean(vmax > v) > 0.5, id_
        without = run_with_reference(dataclasses.replace(case, kwargs={**case.kwargs, "amsgrad": False}),
                                     SHAPES, STEPS)
        diff = max(np.max(np.abs(a - b)) for a, b in zip(with_max.ref_params, without.ref_params))
        assert diff > 1e-3, id_


# ---- (a) fp32 vs the float64 reference ----------------------------------------------------


@each_case
def test_fp32_matches_reference(case):
    run = run_with_reference(case, SHAPES, STEPS)
    assert run.opt.steps == [STEPS]
    assert_matches_reference(run, case)


# ---- (b) fp16/bf16 params with fp32 master weights ------------------------------------------


@each_case
@pytest.mark.parametrize("grad_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("param_dtype", HALF_DTYPES)
def test_master_weights_track_reference(case, param_dtype, grad_dtype):
    def check_step(run: Run, t: int) -> None:
        for p in run.params:
            assert p.dtype == DTYPES[param_dtype]
        assert_params_are_rounded_masters(run)

    run = run_with_reference(case, SHAPES, STEPS, param_dtype=param_dtype, grad_dtype=grad_dtype,
                             master_weights=True, after_step=check_step)
    assert_matches_reference(run, case)


@pytest.mark.parametrize("param_dtype", HALF_DTYPES)
def test_master_weights_start_exactly_at_params(param_dtype):
    rng = np.random.default_rng(5)
    params = random_params(rng, SHAPES, param_dtype)
    opt = fastopt.SGD(params, [np.zeros(s, np.float32) for s in SHAPES], lr=0.1, master_weights=True)
    for p, m in zip(params, opt.master_params):
        assert m.dtype == np.float32 and m.shape == p.shape
        assert_bits_equal(m, p.astype(np.float32))


# ---- (c) half params without master weights -------------------------------------------------


@each_case
@pytest.mark.parametrize("param_dtype", HALF_DTYPES)
def test_half_params_without_master_weights(case, param_dtype):
    rng = np.random.default_rng(case.seed)
    initial = random_params(rng, SHAPES, param_dtype)
    run = run_with_reference(case, SHAPES, STEPS, param_dtype=param_dtype, grad_dtype=param_dtype,
                             quantize_reference=True)
    assert run.opt.master_params == [None] * len(SHAPES)
    assert "master_param" not in run.opt.state[0]
    moved = False
    for i, (p, p0) in enumerate(zip(run.params, initial)):
        assert p.dtype == DTYPES[param_dtype]
        assert np.all(np.isfinite(p.astype(np.float32))), f"param {i} is not finite"
        moved |= bool(np.any(p != p0))
    assert_half_params_close(run.ref, [p.astype(np.float64) for p in run.params], run.ref_params, param_dtype)
    assert moved, "no param moved: the comparison would be vacuous"


# ---- (d) every ISA target gives bit-identical results ----------------------------------------

# (param dtype, grad dtype, master weights) per tensor, with sizes covering full AVX-512 and
# AVX2 vectors, scalar tails, and more than one thread task.
ISA_TENSORS = [
    ((33000,), "float32", "float32", False),  # two thread tasks
    ((3, 11), "float32", "float16", False),
    ((17,), "float32", "bfloat16", False),
    ((1000,), "float16", "float32", True),
    ((129,), "float16", "float16", True),
    ((33,), "bfloat16", "float32", True),
    ((257,), "bfloat16", "bfloat16", True),
    ((31,), "float16", "bfloat16", False),
    ((65,), "bfloat16", "float16", False),
    ((7,), "bfloat16", "bfloat16", False),
]


def test_isa_targets_available():
    isas = supported_isas()
    assert "scalar" in isas and "avx2" in isas, f"CI machines have AVX2; supported here: {isas}"
    if "avx512" not in isas:
        warnings.warn("avx512 is not supported on this CPU: its kernels are not compared")
    assert fastopt.cpu_isa() in isas


def run_on_isa(case: Case, isa: str, set_isa, steps: int = 12) -> list[np.ndarray]:
    """Every array the optimizer writes, after ``steps`` steps bound on target ``isa``."""
    set_isa(isa)
    rng = np.random.default_rng(case.seed)
    params, grads, masters = [], [], []
    for shape, pdt, gdt, master in ISA_TENSORS:
        params.append(random_params(rng, [shape], pdt)[0])
        grads.append(np.zeros(shape, DTYPES[gdt]))
        masters.append(master)
    # fastopt's master_weights flag is per optimizer: one with, one without.
    opts = [case.cls([p for p, m in zip(params, masters) if m],
                     [g for g, m in zip(grads, masters) if m], master_weights=True, **case.kwargs),
            case.cls([p for p, m in zip(params, masters) if not m],
                     [g for g, m in zip(grads, masters) if not m], **case.kwargs)]
    for opt in opts:
        assert opt._core.isa == isa, f"optimizer bound on {opt._core.isa}, not {isa}"
    shapes = [t[0] for t in ISA_TENSORS]
    for fp32_grads in grad_steps(case.seed + 1, shapes, steps):
        refill(grads, fp32_grads)  # np.copyto casts to each grad buffer's dtype
        for opt in opts:
            opt.step()
    out = list(params)
    for opt in opts:
        for st in opt.state.values():
            out.extend(st[k] for k in sorted(st))
    return out


# The ways of keeping a param that the plain update takes (kernels.inl: with_plain): its dtype
# and master_weights.
PLAIN_KEEPING = {"fp32": ("float32", False), "bf16 + master": ("bfloat16", True),
                 "fp16 + master": ("float16", True), "bf16 + remainder": ("bfloat16", "remainder")}


def run_off_line(case: Case, isa: str, set_isa, offset: int, keeping: str, n: int = 300,
                 steps: int = 4) -> list[np.ndarray]:
    """Every array the optimizer writes after ``steps`` steps of one tensor of ``n`` (kept as
    PLAIN_KEEPING says) whose param and fp32 grad start ``offset`` elements past a 64-byte
    boundary, on target ``isa``."""
    set_isa(isa)
    dtype, master_weights = PLAIN_KEEPING[keeping]
    rng = np.random.default_rng(case.seed)
    views = []
    for values, dtype in ((random_params(rng, [(n,)])[0], DTYPES[dtype]), (np.zeros(n, np.float32), np.float32)):
        size = np.dtype(dtype).itemsize
        raw = np.zeros(n + 64, dtype)
        start = (-raw.ctypes.data % 64) // size + offset
        views.append(raw[start:start + n])
        views[-1][:] = values
    p, g = views
    opt = case.cls([p], [g], **case.kwargs, **({"master_weights": master_weights} if master_weights else {}))
    for fp32_grads in grad_steps(case.seed + 1, [(n,)], steps):
        refill([g], fp32_grads)
        opt.step()
    return [p] + [st[k] for st in opt.state.values() for k in sorted(st)]


@each_case
@pytest.mark.parametrize("keeping", list(PLAIN_KEEPING))
def test_params_off_a_cache_line_take_the_same_bits(case, keeping, isa_switch):
    # The vector kernels update a plain tensor (PLAIN_KEEPING) element by element up to its
    # param's first 64-byte boundary (kernels.inl: peel_to_line), then by whole lines: at every
    # offset, the scalar target's bits.
    expected = run_off_line(case, "scalar", isa_switch, 0, keeping)
    for isa in supported_isas()[1:]:
        for offset in range(64 // np.dtype(DTYPES[PLAIN_KEEPING[keeping][0]]).itemsize + 1):
            for got, want in zip(run_off_line(case, isa, isa_switch, offset, keeping), expected, strict=True):
                assert_bits_equal(got, want, f"{isa}, param {offset} elements past a line")


@each_case
def test_isa_targets_bit_identical(case, isa_switch):
    isas = supported_isas()
    assert "avx2" in isas
    expected = run_on_isa(case, "scalar", isa_switch)
    for isa in isas[1:]:
        got = run_on_isa(case, isa, isa_switch)
        assert len(got) == len(expected)
        for k, (a, e) in enumerate(zip(got, expected)):
            assert_bits_equal(a, e, f"{isa} vs scalar, array {k}")


def test_isa_switch_is_restored(isa_switch):
    original = fastopt._core.cpu_isa()
    isa_switch("scalar")
    assert fastopt._core.cpu_isa() == "scalar"
    p = np.ones(3, np.float32)
    assert fastopt.SGD([p], [np.ones(3, np.float32)], lr=0.5)._core.isa == "scalar"
    isa_switch(original)
    assert fastopt.cpu_isa() == original


# ---- (e) sizes and many tensors ----------------------------------------------------------------

SIZES = [0, 1, 15, 17, 1023, 2**20 + 3]


@each_case
@pytest.mark.parametrize("n", SIZES)
def test_sizes(case, n):
    run = run_with_reference(case, [(n,)], 3)
    assert run.params[0].shape == (n,)
    assert_matches_reference(run, case)


def many_shapes(count: int = 300) -> list[tuple]:
    rng = np.random.default_rng(1234)
    fixed = [(), (0,), (1,), (3, 0, 2), (0, 5), (), (4, 5, 6), (2, 3, 4, 5), (1, 1, 1), (33, 17)]
    shapes = list(fixed)
    while len(shapes) < count:
        ndim = int(rng.integers(1, 4))
        shapes.append(tuple(int(x) for x in rng.integers(0, 24, size=ndim)))
    return shapes


@each_case
def test_many_tensors_of_mixed_shapes_and_dtypes(case):
    shapes = many_shapes()
    dtypes = [("float32", "float16", "bfloat16")[i % 3] for i in range(len(shapes))]
    gdtypes = [("float32", "bfloat16", "float16", "float32")[i % 4] for i in range(len(shapes))]
    run = run_with_reference(case, shapes, 4, param_dtype=dtypes, grad_dtype=gdtypes,
                             master_weights=True)
    for p, s, d in zip(run.params, shapes, dtypes):
        assert p.shape == s and p.dtype == DTYPES[d]
    assert_matches_reference(run, case)
    for i, (p, m) in enumerate(zip(run.params, run.opt.master_params)):
        if m is not None:
            assert_bits_equal(p, m.astype(p.dtype), f"param {i} != round(master)")
        else:
            assert p.dtype == np.float32


# ---- (f) in place ---------------------------------------------------------------------------------


@each_case
def test_updates_in_place(case):
    shapes = [(), (5,), (3, 4), (50,), (2, 2, 3)]
    dtypes = ["float32", "float32", "float16", "bfloat16", "float32"]
    rng = np.random.default_rng(case.seed)
    params = [random_params(rng, [s], d)[0] for s, d in zip(shapes, dtypes)]
    grads = [np.zeros(s, np.float32) for s in shapes]
    before = [(id(p), p.ctypes.data, p.dtype, p.shape, p.copy()) for p in params]
    opt = case.cls(params, grads, master_weights=True, **case.kwargs)
    ref = reference_for(case.name, case.kwargs)
    ref_params = [p.astype(np.float64) for p in params]
    state_ids = None
    for gs in grad_steps(case.seed + 1, shapes, 3):
        refill(grads, gs)
        grad_bits = [g.copy() for g in grads]
        opt.step()
        ref.step(ref_params, gs)
        for g, g0 in zip(grads, grad_bits):
            assert_bits_equal(g, g0, "a grad was modified")
        ids = {(i, k): (id(a), a.ctypes.data) for i, st in opt.state.items() for k, a in st.items()}
        assert state_ids is None or ids == state_ids, "state arrays were replaced"
        state_ids = ids
    for i, (p, (pid, addr, dtype, shape, p0)) in enumerate(zip(params, before)):
        assert opt._params[i] is p and id(p) == pid
        assert p.ctypes.data == addr and p.dtype == dtype and p.shape == shape
        assert p.flags.c_contiguous and p.flags.writeable
        assert np.any(p != p0), f"param {i} was not updated"
    values = [m if m is not None else p for p, m in zip(params, opt.master_params)]
    assert_params_close(ref, values, ref_params, 3, case.name)


def test_views_of_one_buffer_are_updated_in_place():
    """Params may be disjoint views into one flat buffer: the buffer holds the result."""
    flat = np.arange(40, dtype=np.float32)
    views = [flat[:10].reshape(2, 5), flat[10:11].reshape(()), flat[11:40]]
    grads = [np.ones(v.shape, np.float32) for v in views]
    opt = fastopt.SGD(views, grads, lr=0.5)
    opt.step()
    for v in views:
        assert np.shares_memory(v, flat)
    np.testing.assert_array_equal(flat, np.arange(40, dtype=np.float32) - 0.5)


# ---- (g) functional forms == classes ------------------------------------------------------------


@each_case
@pytest.mark.parametrize("param_dtype", ["float32", "float16", "bfloat16"])
def test_functional_matches_class(case, param_dtype):
    shapes = [(37,), (4, 9), ()]
    rng = np.random.default_rng(case.seed)
    params_c = random_params(rng, shapes, param_dtype)
    params_f = [p.copy() for p in params_c]
    grads = [np.zeros(s, np.float32) for s in shapes]
    master = param_dtype != "float32"
    opt = case.cls(params_c, grads, master_weights=master, **case.kwargs)
    masters_f = [p.astype(np.float32) for p in params_f] if master else None
    state_f: dict[str, list[np.ndarray]] = {}
    for t, gs in enumerate(grad_steps(case.seed + 1, shapes, 20), 1):
        refill(grads, gs)
        opt.step()
        functional_step(case, params_f, grads, state_f, t, masters_f)
    for i in range(len(shapes)):
        assert_bits_equal(params_f[i], params_c[i], f"param {i}")
        st = opt.state[i]
        assert set(st) - {"master_param"} == {n for n, a in state_f.items() if a[i] is not None}, f"param {i}: names"
        for name, arrays in state_f.items():
            if arrays[i] is not None:
                assert_bits_equal(arrays[i], st[name], f"param {i} {name}")
        if master:
            assert_bits_equal(masters_f[i], opt.master_params[i], f"param {i} master")
