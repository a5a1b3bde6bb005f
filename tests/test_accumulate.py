"""fastopt.GradAccumulator (python/fastopt/accumulate.py, C++ rules/accumulate.h): the sums,
the norm fused into the last micro-batch's pass, and a step that takes them (the same bits as
its own norm pass), on every ISA and thread count."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastopt
from registry import assert_bits_equal, isa_switch, supported_isas  # noqa: F401  (fixture)

SHAPES = [(37,), (4, 9), (3 * 131072 + 11,)]  # a tail, a matrix, several tasks (the canonical order)
DT = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def micro_grads(dtype: str, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32).astype(DT[dtype]) for s in SHAPES]


def refill(grads: list[np.ndarray], seed: int) -> None:
    for g, new in zip(grads, micro_grads(str(grads[0].dtype), seed)):
        g[...] = new


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_sums_the_micro_batches(dtype):
    """first: a = scale * g exactly (whatever a held, NaN too); then a = fma(scale, g, a) in
    float32; the float64 sum stays within one float32 rounding per micro-batch."""
    grads = micro_grads(dtype, 0)
    acc = fastopt.GradAccumulator(grads)
    for a in acc.accumulators:
        a.fill(np.nan)
    ref = [np.zeros(s) for s in SHAPES]
    for k in range(4):
        refill(grads, k)
        acc.add(0.25, first=k == 0)
        if k == 0:
            for a, g in zip(acc.accumulators, grads):
                assert_bits_equal(a, np.float32(0.25) * g.astype(np.float32))
        ref = [r + 0.25 * g.astype(np.float64) for r, g in zip(ref, grads)]
    for a, r in zip(acc.accumulators, ref):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, r, rtol=0, atol=4 * 2.0 ** -24 * (np.abs(r).max() + 1))


def test_last_pass_sums_as_the_norm_pass():
    """The last micro-batch's sums and non-finite counts are, per tensor and bit for bit, those
    of fastopt's own norm pass over the accumulators (l2_norms), inf and NaN included."""
    grads = micro_grads("bfloat16", 1)
    acc = fastopt.GradAccumulator(grads)
    acc.add(1.0, first=True)
    refill(grads, 2)
    grads[2][[5, 131072 * 2 + 3]] = np.inf
    grads[0][[1, 2, 3]] = np.nan
    sums = acc.add(0.5, last=True)
    own_sums, own_nonfinite = fastopt._core.sumsq(acc.accumulators)  # (l2_norms' pass)
    assert_bits_equal(sums.sumsq, np.asarray(own_sums))
    assert list(sums.nonfinite) == [3, 0, 2] == list(own_nonfinite)
    assert not sums.finite
    assert acc.add(1.0) is None


@pytest.mark.parametrize("options", [
    dict(max_grad_norm=0.5), dict(max_grad_norm=1e9, report_grad_norm=True), dict(skip_nonfinite=True),
    dict(diagnostics=True), dict(max_grad_norm=2.0, skip_nonfinite=True, clip_value=0.01)])
@pytest.mark.parametrize("poisoned", [False, True], ids=["finite", "inf"])
def test_step_with_grad_sums_as_with_its_own_norm(options, poisoned):
    """AdamW over the accumulators, stepped with the last pass's sums, gives the bits of the
    same step with its own norm pass: params, state, norm, skip decision, diagnostics."""
    grads = micro_grads("float16", 3)
    acc = fastopt.GradAccumulator(grads)
    params = [np.random.default_rng(4).standard_normal(s).astype(np.float32) for s in SHAPES]
    fused = fastopt.AdamW([p.copy() for p in params], acc.accumulators, lr=0.01, **options)
    plain = fastopt.AdamW([p.copy() for p in params], acc.accumulators, lr=0.01, **options)
    for step in range(3):
        for k in range(3):
            refill(grads, 10 * step + k)
            if poisoned and step == 1 and k == 2:
                grads[1][2, 3] = np.inf
            sums = acc.add(1 / 3, first=k == 0, last=k == 2)
        a = fused.step(grad_sums=sums)
        b = plain.step()
        assert a.skipped == b.skipped
        assert (a.grad_norm is None) == (b.grad_norm is None)
        if a.grad_norm is not None:
            assert_bits_equal(np.float64(a.grad_norm), np.float64(b.grad_norm))
        if a.diagnostics is not None:
            assert_bits_equal(a.diagnostics.grad_norm, b.diagnostics.grad_norm)
            assert list(a.diagnostics.nonfinite_grads) == list(b.diagnostics.nonfinite_grads)
        for x, y in zip(fused._params, plain._params):
            assert_bits_equal(x, y)
    assert fused.steps == plain.steps


def test_sums_of_other_arrays_refused():
    grads = micro_grads("float32", 5)
    acc, other = fastopt.GradAccumulator(grads), fastopt.GradAccumulator([g.copy() for g in grads])
    opt = fastopt.SGD([np.zeros(s, np.float32) for s in SHAPES], acc.accumulators, lr=0.1)
    sums = other.add(1.0, first=True, last=True)
    before = [p.copy() for p in opt._params]
    with pytest.raises(ValueError, match="grad_sums are the sums of other arrays than this optimizer's grads"):
        opt.step(grad_sums=sums)
    assert all(np.array_equal(p, b) for p, b in zip(opt._params, before))


def test_every_isa_and_thread_count_bit_identical(isa_switch):  # noqa: F811
    results = []
    threads = fastopt.get_num_threads()
    try:
        for isa in supported_isas():
            for n in {1, 2, threads}:
                isa_switch(isa)
                fastopt.set_num_threads(n)
                grads = micro_grads("bfloat16", 6)
                acc = fastopt.GradAccumulator(grads)
                acc.add(0.7, first=True)
                refill(grads, 7)
                sums = acc.add(0.3, last=True)
                results.append((acc.accumulators, sums.sumsq))
    finally:
        fastopt.set_num_threads(threads)
    for accs, sumsq in results[1:]:
        assert_bits_equal(sumsq, results[0][1])
        for a, b in zip(accs, results[0][0]):
            assert_bits_equal(a, b)


def test_bad_input_rejected():
    grads = micro_grads("float32", 8)
    with pytest.raises(fastopt.TensorError, match=r"grad 1: shape \(4, 9\) differs from accumulator 1's"):
        fastopt.GradAccumulator(grads, [np.zeros(s[::-1], np.float32) for s in SHAPES])
    with pytest.raises(ValueError, match="got 3 grads but 2 accumulators"):
        fastopt.GradAccumulator(grads, [np.zeros(s, np.float32) for s in SHAPES[:2]])
    with pytest.raises(fastopt.TensorError, match="accumulator 2: dtype bfloat16, expected float32"):
        fastopt.GradAccumulator(grads, [np.zeros(s, np.float32) for s in SHAPES[:2]] +
                                [np.zeros(SHAPES[2], ml_dtypes.bfloat16)])
    acc = fastopt.GradAccumulator(grads)
    before = [a.copy() for a in acc.accumulators]
    with pytest.raises(ValueError, match="scale must be finite"):
        acc.add(float("inf"))
    assert all(np.array_equal(a, b) for a, b in zip(acc.accumulators, before))


@pytest.mark.cuda
def test_cuda_bit_identical_to_cpu():
    from test_cuda_engine import to_cuda, to_numpy
    grads = micro_grads("bfloat16", 9)
    ggrads = [to_cuda(g) for g in grads]
    cpu, gpu = fastopt.GradAccumulator(grads), fastopt.GradAccumulator(ggrads)
    params = [np.random.default_rng(4).standard_normal(s).astype(np.float32) for s in SHAPES]
    copt = fastopt.AdamW([p.copy() for p in params], cpu.accumulators, lr=0.01, max_grad_norm=0.5)
    gopt = fastopt.AdamW([to_cuda(p) for p in params], gpu.accumulators, lr=0.01, max_grad_norm=0.5)
    for k in range(3):
        refill(grads, 20 + k)
        for g, h in zip(ggrads, grads):
            g.copy_(to_cuda(h))
        csums = cpu.add(0.5, first=k == 0, last=k == 2)
        gsums = gpu.add(0.5, first=k == 0, last=k == 2)
    assert_bits_equal(to_numpy(gsums.sumsq), csums.sumsq)
    assert list(to_numpy(gsums.nonfinite)) == list(csums.nonfinite)
    copt.step(grad_sums=csums)
    gopt.step(grad_sums=gsums)
    for a, b in zip(copt._params, gopt._params):
        assert_bits_equal(to_numpy(b), a)
