"""Storage conversions: fp16/bf16 -> fp32 (exact) and fp32 -> fp16/bf16 (round to nearest
even), through ``widen_into`` and through the kernels' load and store paths on every ISA.

NumPy's ``astype(np.float16)`` and ml_dtypes' ``astype(bfloat16)`` round to nearest even and
are the expected values. NaNs are compared by NaN-ness and sign only against NumPy (which
keeps signalling NaNs signalling and ml_dtypes canonicalises them); fastopt's documented
rule (convert.h: quiet bit set, upper payload kept, as F16C/AVX-512 do) is tested apart.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastopt
from registry import DTYPES, assert_bits_equal, bits, supported_isas
from registry import isa_switch  # noqa: F401  (a fixture)

F16, BF16 = DTYPES["float16"], DTYPES["bfloat16"]
ALL16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)  # every 16-bit pattern


def f32(u32) -> np.ndarray:
    return np.asarray(u32, dtype=np.uint32).view(np.float32)


def widen(src: np.ndarray) -> np.ndarray:
    dst = np.full(src.shape, np.nan, np.float32)
    fastopt._core.widen_into(src, dst)
    return dst


def assert_same_values(actual: np.ndarray, expected: np.ndarray, what: str,
                       nan_sign: bool = True) -> None:
    """Bit-equal where expected is not NaN; NaN (with the same sign) where it is."""
    nan = np.isnan(expected.astype(np.float32))
    assert_bits_equal(actual[~nan], expected[~nan], f"{what}: non-NaN values")
    assert np.all(np.isnan(actual[nan].astype(np.float32))), f"{what}: a NaN did not stay NaN"
    if not nan_sign:
        return
    sign = np.uint64(1) << np.uint64(8 * actual.dtype.itemsize - 1)
    np.testing.assert_array_equal(bits(actual[nan]).astype(np.uint64) & sign,
                                  bits(expected[nan]).astype(np.uint64) & sign, f"{what}: NaN sign")


def quiet_f16(u32: np.ndarray) -> np.ndarray:
    """fastopt's documented fp32 NaN -> fp16 NaN: sign, quiet bit, upper 9 payload bits."""
    return (((u32 >> 16) & 0x8000) | 0x7E00 | ((u32 >> 13) & 0x3FF)).astype(np.uint16)


def quiet_bf16(u32: np.ndarray) -> np.ndarray:
    """fastopt's documented fp32 NaN -> bf16 NaN: the upper half with the quiet bit set."""
    return ((u32 >> 16) | 0x40).astype(np.uint16)


# ---- fp16/bf16 -> fp32: widen_into, exhaustive ---------------------------------------------------


def test_widen_fp16_exhaustive():
    src = ALL16.view(F16)
    got = widen(src)
    expected = src.astype(np.float32)
    assert_same_values(got, expected, "fp16 -> fp32")
    nan = np.isnan(expected)
    assert nan.sum() == 2 * 1023
    # NaNs: quiet bit set, sign and payload kept (what F16C's VCVTPH2PS does)
    np.testing.assert_array_equal(bits(got[nan]), bits(expected[nan]) | np.uint32(0x00400000))


def test_widen_fp16_special_values():
    src = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00],
                   np.uint16).view(F16)
    expected = [0.0, -0.0, 2.0**-24, -(2.0**-24), 1023 * 2.0**-24, 2.0**-14, 65504.0, -65504.0,
                np.inf, -np.inf]
    assert_bits_equal(widen(src), np.array(expected, np.float32))


def test_widen_bf16_exhaustive():
    src = ALL16.view(BF16)
    got = widen(src)
    # bf16 is the upper half of fp32: widening is a shift, NaN payloads included
    np.testing.assert_array_equal(bits(got), ALL16.astype(np.uint32) << np.uint32(16))
    assert_same_values(got, src.astype(np.float32), "bf16 -> fp32 vs ml_dtypes")


def test_widen_fp32_is_a_copy():
    u = np.random.default_rng(3).integers(0, 1 << 32, size=4099, dtype=np.uint32)
    np.testing.assert_array_equal(bits(widen(f32(u))), u)


def test_widen_keeps_shape_and_rejects_wrong_destination():
    src = np.arange(24, dtype=np.float32).reshape(2, 3, 4).astype(F16)
    np.testing.assert_array_equal(widen(src), src.astype(np.float32))
    with pytest.raises(ValueError):
        fastopt._core.widen_into(src, np.zeros((24,), np.float32))
    with pytest.raises(ValueError):
        fastopt._core.widen_into(src, np.zeros((2, 3, 4), np.float16))


# ---- inputs for the store path -----------------------------------------------------------------------


def _neighbours(x: np.ndarray) -> np.ndarray:
    """x and the fp32 values one ulp either side of it."""
    return np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))])


def _signed(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, -x])


NAN_BITS = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FA00000, 0x7FBFFFFF,
                     0x7FC02000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F802000, 0x7FC0FFFF, 0x7F80FFFF],
                    np.uint32)


def fp16_store_inputs() -> np.ndarray:
    """fp32 values that exercise every fp32 -> fp16 rounding case."""
    finite = ALL16.view(F16)[np.isfinite(ALL16.view(F16))].astype(np.float64)
    pos = np.unique(finite[finite >= 0])
    mids = (pos[:-1] + pos[1:]) / 2  # exact ties, subnormal and normal, in fp32
    specials = np.array([2.0**-25, 2.0**-26, 3 * 2.0**-26, 1.5 * 2.0**-24, 2.5 * 2.0**-24,
                         2.0**-24 - 2.0**-36, 65504.0, 65519.0, 65520.0, 65536.0, 1e5, 3.4e38,
                         2.0**-14 - 2.0**-25, 2.0**-14 - 2.0**-26, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11],
                        np.float64)
    rng = np.random.default_rng(16)
    random_bits = rng.integers(0, 1 << 32, size=200_000, dtype=np.uint32)
    fp32_subnormals = f32(rng.integers(1, 1 << 23, size=1000, dtype=np.uint32))
    parts = [
        _signed(finite.astype(np.float32)),  # already fp16: must round-trip
        _signed(_neighbours(mids.astype(np.float32))),
        _signed(_neighbours(specials.astype(np.float32))),
        _signed(np.array([0.0, np.inf, np.finfo(np.float32).max], np.float32)),
        _signed(fp32_subnormals),
        f32(NAN_BITS),
        f32(random_bits),
    ]
    out = np.concatenate(parts).astype(np.float32)
    assert np.all(mids.astype(np.float32) == mids), "fp16 midpoints must be exact in fp32"
    return out


def bf16_store_inputs() -> np.ndarray:
    """fp32 values that exercise every fp32 -> bf16 rounding case."""
    hi = ALL16.astype(np.uint32) << np.uint32(16)
    rng = np.random.default_rng(17)
    parts = [
        hi,                      # already bf16 (incl. inf, NaN with upper payloads)
        hi | 0x8000,             # exact ties: to even
        hi | 0x7FFF, hi | 0x8001,  # just below / above a tie
        hi | 0x0001, hi | 0xFFFF,
        rng.integers(1, 1 << 23, size=1000, dtype=np.uint32),  # fp32 subnormals
        NAN_BITS,
        np.array([0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF, 0x7F7F8000, 0x00000000, 0x80000000], np.uint32),
        rng.integers(0, 1 << 32, size=200_000, dtype=np.uint32),
    ]
    return f32(np.concatenate(parts))


STORE_INPUTS = {"float16": fp16_store_inputs, "bfloat16": bf16_store_inputs}
QUIET = {"float16": quiet_f16, "bfloat16": quiet_bf16}


def store_via_master(values: np.ndarray, dtype: str) -> tuple[np.ndarray, fastopt.SGD]:
    """The half param an SGD step with lr = 0 writes from fp32 master weights = ``values``."""
    p = np.zeros(values.shape, DTYPES[dtype])
    g = np.zeros(values.shape, np.float32)
    opt = fastopt.SGD([p], [g], lr=0.0, master_weights=True)
    opt.master_params[0][...] = values
    opt.step()
    return p, opt


def store_via_grad(values: np.ndarray, dtype: str) -> tuple[np.ndarray, fastopt.SGD]:
    """The half param an SGD step with lr = 1 writes from param 0 and grad -``values``:
    p = fma(-1, -v, 0) = v exactly (zeros come out as +0)."""
    p = np.zeros(values.shape, DTYPES[dtype])
    g = -values
    opt = fastopt.SGD([p], [g], lr=1.0)
    opt.step()
    return p, opt


STORES = {"master": store_via_master, "grad": store_via_grad}


def expected_store(values: np.ndarray, dtype: str, how: str) -> np.ndarray:
    if how == "grad":
        values = np.where(values == 0, np.float32(0.0), values)
    with np.errstate(invalid="ignore", over="ignore"):
        return values.astype(DTYPES[dtype])


# ---- fp32 -> fp16/bf16: every ISA -------------------------------------------------------------------


def test_store_inputs_cover_the_cases():
    v = fp16_store_inputs()
    assert np.isnan(v).sum() >= len(NAN_BITS) and np.isposinf(v).any() and np.isneginf(v).any()
    with np.errstate(over="ignore", invalid="ignore"):
        h = v.astype(F16)
    assert (np.isinf(h) & np.isfinite(v)).sum() > 4, "no overflow to inf"
    assert ((bits(h) & 0x7C00) == 0).sum() > 1000, "too few subnormal/zero results"
    w = bf16_store_inputs()
    assert ((bits(w) & 0xFFFF) == 0x8000).sum() > 60000, "too few bf16 ties"


@pytest.mark.parametrize("how", list(STORES))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_store_rounds_to_nearest_even_on_every_isa(dtype, how, isa_switch):
    values = STORE_INPUTS[dtype]()
    expected = expected_store(values, dtype, how)
    isas = supported_isas()
    assert "scalar" in isas and "avx2" in isas
    results = {}
    for isa in isas:
        isa_switch(isa)
        p, opt = STORES[how](values, dtype)
        assert opt._core.isa == isa
        assert p.dtype == DTYPES[dtype]
        # via grad, a NaN is the result of arithmetic (-1 * g): its sign is unspecified
        assert_same_values(p, expected, f"{isa}: fp32 -> {dtype} via {how}", nan_sign=how == "master")
        results[isa] = p
    for isa in isas[1:]:  # NaN payloads included
        assert_bits_equal(results[isa], results["scalar"], f"{isa} vs scalar: {dtype} stores")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_store_nan_follows_documented_rule(dtype, isa_switch):
    """convert.h: a NaN stays NaN with its quiet bit set and its upper payload kept."""
    values = f32(NAN_BITS)
    quiet_in = NAN_BITS | np.uint32(0x00400000)  # the fp32 NaN after arithmetic
    for isa in supported_isas():
        isa_switch(isa)
        # tile so that every NaN passes through full vectors as well as the scalar tail
        tiled = np.tile(values, 5)
        p, opt = store_via_master(tiled, dtype)
        np.testing.assert_array_equal(bits(p), np.tile(QUIET[dtype](quiet_in), 5), err_msg=isa)
        np.testing.assert_array_equal(bits(opt.master_params[0]), np.tile(quiet_in, 5), err_msg=isa)


def test_bf16_store_does_not_flush_subnormals(isa_switch):
    """bf16 subnormals (fp32 subnormals' upper halves) survive on every target."""
    values = f32(np.array([0x00000001, 0x00010000, 0x00018000, 0x00028000, 0x007F0000, 0x807FFFFF,
                           0x00008000, 0x00008001] * 4, np.uint32))
    expected = values.astype(BF16)
    assert np.count_nonzero(expected.astype(np.float32)) > 16
    for isa in supported_isas():
        isa_switch(isa)
        assert_bits_equal(store_via_master(values, "bfloat16")[0], expected, isa)


# ---- fp16/bf16 -> fp32 in the kernels' load path: every ISA ---------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_grad_load_exhaustive_on_every_isa(dtype, isa_switch):
    """The first momentum step stores the grad as loaded (times 1): every 16-bit grad
    pattern must come out as its exact fp32 value, on every target."""
    grads = ALL16.view(DTYPES[dtype])
    expected = widen(grads)
    nan = np.isnan(expected)
    bits(expected)[nan] |= np.uint32(0x00400000)  # g * 1 quiets a signalling NaN
    results = {}
    for isa in supported_isas():
        isa_switch(isa)
        p = np.zeros(grads.shape, np.float32)
        opt = fastopt.SGD([p], [grads.copy()], lr=0.0, momentum=0.9)
        assert opt._core.isa == isa
        opt.step()
        buf = opt.state[0]["momentum_buffer"]
        assert_bits_equal(buf, expected, f"{isa}: {dtype} grad load")
        results[isa] = buf
    assert set(results) >= {"scalar", "avx2"}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_param_load_exhaustive_on_every_isa(dtype, isa_switch):
    """A half param without master weights, lr = 0: loaded and stored back unchanged
    (every finite value and infinity exactly; NaNs stay NaN)."""
    src = ALL16.view(DTYPES[dtype])
    for isa in supported_isas():
        isa_switch(isa)
        p = src.copy()
        opt = fastopt.SGD([p], [np.zeros(p.shape, np.float32)], lr=0.0)
        assert opt._core.isa == isa
        opt.step()
        assert_same_values(p, src, f"{isa}: {dtype} param round trip")
