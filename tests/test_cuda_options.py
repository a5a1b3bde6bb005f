"""Step options, two-pass rules, diagnostics, schedules and the loss scaler on the CUDA engine
(``cuda`` marker): every decision taken on the device without a host sync, and fp32 results
bit-identical to the CPU engine's (norms share reduce.h's canonical order)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import fastopt
from fastopt import schedules as S
from registry import assert_bits_equal, case_by_id, grad_steps, random_params, refill
from test_cuda_engine import to_cuda, to_numpy

pytestmark = pytest.mark.cuda

# Across reduce.h's blocks (2048) and super-blocks (131072), with tails and a 1-D tensor.
SHAPES = [(300001,), (131072,), (3, 683), (2049,), (5,)]
OPTIONS = {
    "clip_norm": dict(max_grad_norm=0.5),
    "clip_value": dict(clip_value=0.01),
    "skip": dict(skip_nonfinite=True),
    "report": dict(report_grad_norm=True),
    "all": dict(max_grad_norm=2.0, clip_value=0.05, skip_nonfinite=True),
}
CASE_IDS = ["sgd-momentum", "adam-weight_decay", "adamw-amsgrad", "lars-weight_decay", "lamb-plain"]


def poison(gs, t):
    """Every third step, an inf in one grad and a NaN in another: the skip path is exercised."""
    if t % 3 == 2:
        gs[0].reshape(-1)[7] = np.inf
        gs[-1].reshape(-1)[0] = np.nan
    return gs


def run_pair(case, shapes, steps, options, *, grad_scale=None, grad_factor=1.0):
    """The same case and options stepped on the CPU (NumPy) and the GPU (torch); returns the
    optimizers, their params and the per-step results (GPU results read after the run). With
    skip_nonfinite, every third step has non-finite grads (without it they would make NaNs,
    whose payloads differ between CPU and GPU). The grads are grad_steps' times grad_factor."""
    poisoned = options.get("skip_nonfinite", False)
    kwargs = {**case.kwargs, **options}
    rng = np.random.default_rng(case.seed)
    params = random_params(rng, shapes)
    grads = [np.zeros(s, np.float32) for s in shapes]
    gparams, ggrads = [to_cuda(p) for p in params], [to_cuda(g) for g in grads]
    cpu = case.cls(params, grads, **kwargs)
    gpu = case.cls(gparams, ggrads, **kwargs)
    cpu_results, gpu_results = [], []
    for t, gs in enumerate(grad_steps(case.seed + 1, shapes, steps)):
        gs = [g * np.float32(grad_factor) for g in gs]
        gs = poison(gs, t) if poisoned else gs
        refill(grads, gs)
        for g, v in zip(ggrads, gs):
            g.copy_(to_cuda(v))
        scale = None if grad_scale is None else grad_scale(t)
        cpu_results.append(cpu.step(grad_scale=scale))
        gpu_results.append(gpu.step(grad_scale=scale))
    torch.cuda.synchronize()
    return cpu, gpu, params, gparams, cpu_results, gpu_results


def assert_same(cpu, gpu, params, gparams):
    for i, (p, g) in enumerate(zip(params, gparams)):
        assert_bits_equal(to_numpy(g), p, f"param {i}")
        for name, a in cpu.state[i].items():
            assert_bits_equal(to_numpy(gpu.state[i][name]), a, f"param {i} {name}")
    assert gpu.steps == cpu.steps


@pytest.mark.parametrize("case_id", CASE_IDS)
@pytest.mark.parametrize("option", list(OPTIONS))
def test_step_options_bit_identical_to_cpu(case_id, option):
    cpu, gpu, params, gparams, cres, gres = run_pair(case_by_id(case_id), SHAPES, 7, OPTIONS[option],
                                                     grad_scale=lambda t: 2.0 ** (t % 4))
    assert_same(cpu, gpu, params, gparams)
    for t, (c, g) in enumerate(zip(cres, gres)):
        if c.grad_norm is None:
            assert g.grad_norm is None and g.skipped is False
            continue
        assert isinstance(g.grad_norm, torch.Tensor) and g.grad_norm.is_cuda
        assert g.grad_norm.dtype == torch.float64 and g.grad_norm.dim() == 0
        assert g.skipped.dtype == torch.bool and g.skipped.dim() == 0 and g.skipped.is_cuda
        assert bool(g.skipped) == c.skipped, f"step {t}"
        gn = float(g.grad_norm)
        assert gn == c.grad_norm or (np.isnan(gn) and np.isnan(c.grad_norm)), f"step {t}"
    if OPTIONS[option].get("skip_nonfinite"):
        assert any(c.skipped for c in cres) and gpu.steps[0] < 7


def test_skipped_step_writes_nothing_and_does_not_count():
    case = case_by_id("lamb-plain")  # its first pass writes state: it must not run either
    params = random_params(np.random.default_rng(0), SHAPES)
    gparams = [to_cuda(p) for p in params]
    grads = [torch.ones_like(p) for p in gparams]
    opt = case.cls(gparams, grads, skip_nonfinite=True, **case.kwargs)
    opt.step()
    torch.cuda.synchronize()
    before = [p.clone() for p in gparams], {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state.items()}
    grads[2][1, 5] = float("inf")
    result = opt.step()
    assert bool(result.skipped)
    assert all(torch.equal(p, q) for p, q in zip(gparams, before[0]))
    for i, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, before[1][i][k]), f"param {i} {k}"
    assert opt.steps == [1]


def test_options_never_wait_for_the_gpu():
    params, grads = [torch.ones(1 << 20, device="cuda")], [torch.ones(1 << 20, device="cuda")]
    opt = fastopt.LAMB(params, grads, max_grad_norm=1.0, skip_nonfinite=True, diagnostics=True)
    scaler = fastopt.DynamicLossScaler()
    scaler.step(opt)
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()
    torch.cuda._sleep(500_000_000)  # ~0.3 s of GPU time queued ahead of the step
    t0 = time.perf_counter()
    result = scaler.step(opt)
    elapsed = time.perf_counter() - t0
    assert not stream.query(), "the sleep should still be running"
    assert elapsed < 0.05, f"step took {elapsed:.3f} s: it waited for the GPU"
    assert not bool(result.skipped)  # waits
    assert opt.steps == [2]


def test_step_while_the_last_skip_decision_is_in_flight():
    """A skip_nonfinite step whose predecessor's skip flag is still on its way to the host:
    the poll finds it not ready, which must not surface as the next launch's error."""
    params, grads = [torch.ones(1 << 10, device="cuda")], [torch.ones(1 << 10, device="cuda")]
    opt = fastopt.Adam(params, grads, skip_nonfinite=True)
    opt.step()
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued ahead of both steps
    opt.step()
    opt.step()  # polls the flag of the step queued behind the sleep
    assert not torch.cuda.current_stream().query(), "the sleep should still be running"
    torch.cuda.synchronize()
    assert opt.steps == [3]


@pytest.mark.parametrize("case_id", ["adam-default", "lars-exclude_1d", "lamb-max_trust"])
def test_diagnostics_bit_identical_to_cpu(case_id):
    cpu, gpu, params, gparams, cres, gres = run_pair(case_by_id(case_id), SHAPES, 4,
                                                     dict(diagnostics=True, skip_nonfinite=True))
    assert_same(cpu, gpu, params, gparams)
    for t, (c, g) in enumerate(zip(cres, gres)):
        d, e = c.diagnostics, g.diagnostics
        assert e.nonfinite_grads.dtype == torch.int64 and e.grad_norm.dtype == torch.float64
        np.testing.assert_array_equal(to_numpy(e.grad_norm), d.grad_norm, err_msg=f"step {t}")
        np.testing.assert_array_equal(to_numpy(e.nonfinite_grads), d.nonfinite_grads, err_msg=f"step {t}")
        if c.skipped:
            assert np.isnan(to_numpy(e.update_norm)).all() and np.isnan(to_numpy(e.param_norm)).all()
            continue
        for name in ("param_norm", "update_norm", "update_ratio"):
            np.testing.assert_array_equal(to_numpy(getattr(e, name)), getattr(d, name), err_msg=f"step {t} {name}")
        assert e.report() == d.report()


def test_ten_thousand_tensors_norm_as_on_cpu():
    """The global norm combines per-tensor sums in runs of 64 tensors: the same double."""
    rng = np.random.default_rng(9)
    shapes = [(int(k),) for k in rng.integers(1, 3000, 10_000)]
    cpu, gpu, params, gparams, cres, gres = run_pair(case_by_id("adamw-default"), shapes, 2,
                                                     dict(max_grad_norm=1.0))
    assert [float(g.grad_norm) for g in gres] == [c.grad_norm for c in cres]
    assert_same(cpu, gpu, params, gparams)


@pytest.mark.parametrize("case_id, options, factor", [
    ("sgd-momentum", dict(max_grad_norm=1.0), 2e19),
    ("adamw-default", dict(report_grad_norm=True, diagnostics=True), 2e19),
    ("lars-weight_decay", dict(report_grad_norm=True), 1e-30),
    ("lamb-plain", dict(diagnostics=True), 1e-30),
])
def test_extreme_grads_bit_identical_to_cpu(case_id, options, factor):
    """Grads of 2e19 and 1e-30, whose fp32 squares overflow or underflow: the same finite,
    nonzero double norms (double lanes on both engines, reduce.h) and the same steps."""
    cpu, gpu, params, gparams, cres, gres = run_pair(case_by_id(case_id), SHAPES, 3, options, grad_factor=factor)
    assert_same(cpu, gpu, params, gparams)
    for c, g in zip(cres, gres):
        assert 0 < c.grad_norm < np.inf and float(g.grad_norm) == c.grad_norm
        if c.diagnostics is not None:
            for name in ("grad_norm", "param_norm", "update_norm"):
                np.testing.assert_array_equal(to_numpy(getattr(g.diagnostics, name)), getattr(c.diagnostics, name))


@pytest.mark.parametrize("case_id", ["lars-plain", "lars-exclude_1d", "lamb-plain", "lamb-max_trust"])
@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_two_pass_rules_bit_identical_to_cpu(case_id, param_dtype):
    from test_cuda_engine import run_both, assert_same_bits
    cpu, gpu, params, gparams = run_both(case_by_id(case_id), SHAPES, 5, param_dtype=param_dtype,
                                         master_weights=param_dtype != "float32")
    assert_same_bits(cpu, gpu, params, gparams)


def test_loss_scaler_on_the_device_matches_the_cpu():
    case = case_by_id("adam-default")
    shapes = SHAPES[2:]
    rng = np.random.default_rng(4)
    params = random_params(rng, shapes)
    grads = [np.zeros(s, np.float32) for s in shapes]
    gparams, ggrads = [to_cuda(p) for p in params], [to_cuda(g) for g in grads]
    cpu, gpu = case.cls(params, grads, **case.kwargs), case.cls(gparams, ggrads, **case.kwargs)
    cs = fastopt.DynamicLossScaler(init_scale=2.0 ** 10, growth_interval=2)
    gs_ = fastopt.DynamicLossScaler(init_scale=2.0 ** 10, growth_interval=2)
    scales = []
    for t, gs in enumerate(grad_steps(8, shapes, 12)):
        gs = [g * np.float32(cs.scale) for g in gs]
        if t in (4, 9):
            gs[0][0] = np.inf
        refill(grads, gs)
        for g, v in zip(ggrads, gs):
            g.copy_(to_cuda(v))
        cpu_result = cs.step(cpu)
        gpu_result = gs_.step(gpu)
        assert isinstance(gs_.scale, torch.Tensor) and gs_.scale.is_cuda and gs_.scale.dtype == torch.float32
        scales.append((cs.scale, float(gs_.scale), cpu_result.skipped, bool(gpu_result.skipped)))
    assert all(a == b and s == u for a, b, s, u in scales), scales
    assert any(s for _, _, s, _ in scales) and len({a for a, _, _, _ in scales}) > 2
    assert gs_.state_dict() == cs.state_dict()
    assert_same(cpu, gpu, params, gparams)
    other = fastopt.DynamicLossScaler()
    other.step(gpu)  # now on the GPU
    other.load_state_dict(cs.state_dict())
    assert other.state_dict() == cs.state_dict() and isinstance(other.scale, torch.Tensor)
    with pytest.raises(RuntimeError, match="GPU"):
        other.update(True)


def test_grad_scale_as_a_device_array():
    """A loss scale held in GPU memory unscales as the same number does; a wrong one is
    rejected before anything runs."""
    case = case_by_id("sgd-momentum")
    shapes = SHAPES[3:]
    cpu, gpu, params, gparams, _, _ = run_pair(case, shapes, 3, {}, grad_scale=lambda t: 8.0)
    initial = random_params(np.random.default_rng(case.seed), shapes)
    dparams, dgrads = [to_cuda(p) for p in initial], [torch.zeros(s, device="cuda") for s in shapes]
    opt = case.cls(dparams, dgrads, **case.kwargs)
    for bad in (torch.ones(2, device="cuda"), torch.ones((), device="cuda", dtype=torch.float64)):
        with pytest.raises(ValueError, match="grad_scale must be"):
            opt.step(grad_scale=bad)
    assert opt.steps == [0]
    scale = torch.tensor(8.0, device="cuda")
    for gs in grad_steps(case.seed + 1, shapes, 3):
        for g, v in zip(dgrads, gs):
            g.copy_(to_cuda(v))
        opt.step(grad_scale=scale)
    torch.cuda.synchronize()
    for i, (p, q) in enumerate(zip(dparams, gparams)):
        assert torch.equal(p, q), f"param {i}"


def test_schedule_evaluated_on_the_device_follows_skips():
    """A scheduled lr on CUDA comes from the device's step count: after skipped steps the GPU
    and the CPU still agree (a host-side count would run ahead)."""
    case = case_by_id("adamw-default")
    sched = S.step(1e-2, step_size=2, gamma=0.5)  # exact powers of 0.5: the same doubles on both engines
    cpu, gpu, params, gparams, cres, _ = run_pair(case, SHAPES[2:], 9, dict(skip_nonfinite=True, lr=sched))
    assert sum(c.skipped for c in cres) == 3
    assert_same(cpu, gpu, params, gparams)


def test_capture_with_schedule_options_and_scaler():
    """One graph holding a capturable LAMB step with clipping, skipping and a device loss scale,
    replayed over grads with an inf at one step and a schedule that changes the lr: equal to
    the uncaptured GPU steps (themselves bit-identical to the CPU's)."""
    case = case_by_id("lamb-plain")
    shapes = SHAPES[1:]
    initial = random_params(np.random.default_rng(2), shapes)
    sched = S.linear(1e-2, start_factor=0.25, end_factor=1.0, total_iters=4)
    kw = dict(case.kwargs, lr=sched, max_grad_norm=1.0)
    params, plain_params = [to_cuda(p) for p in initial], [to_cuda(p) for p in initial]
    grads, plain_grads = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    opt = case.cls(params, grads, capturable=True, **kw)
    plain = case.cls(plain_params, plain_grads, **kw)
    scaler, plain_scaler = fastopt.DynamicLossScaler(growth_interval=2), fastopt.DynamicLossScaler(growth_interval=2)
    warm = [torch.zeros(8, device="cuda")]  # lazy module loading, outside the capture
    fastopt.DynamicLossScaler().step(case.cls(warm, [torch.zeros(8, device="cuda")], capturable=True, **kw))
    scaler.step(opt.__class__([torch.zeros(8, device="cuda")], [torch.zeros(8, device="cuda")], **kw))
    scaler.load_state_dict(plain_scaler.state_dict())
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = scaler.step(opt)
    torch.cuda.synchronize()
    assert all(torch.equal(p, q) for p, q in zip(params, plain_params))
    for t, gs in enumerate(grad_steps(21, shapes, 7)):
        if t == 3:
            gs[0][0] = np.inf
        for g, h, v in zip(grads, plain_grads, gs):
            g.copy_(to_cuda(v) * scaler.scale)
            h.copy_(to_cuda(v) * plain_scaler.scale)
        graph.replay()
        expected = plain_scaler.step(plain)
        torch.cuda.synchronize()
        assert bool(result.skipped) == bool(expected.skipped) == (t == 3)
        assert float(result.grad_norm) == float(expected.grad_norm) or t == 3
    assert opt.steps == plain.steps == [6]
    assert scaler.state_dict() == plain_scaler.state_dict()
    for i, (p, q) in enumerate(zip(params, plain_params)):
        assert torch.equal(p, q), f"param {i}"


def test_skip_nonfinite_keeps_host_counts_exact_and_bits_equal():
    """NAdam under a cosine schedule with skip_nonfinite, 300 steps, every third one poisoned:
    each step's skip decision comes back to the host in the background, so the host keeps the
    exact counts and computes the coefficients as the CPU engine does (before: after the first
    skip the device's pow/exp took over, which may differ from glibc's in the last bit)."""
    shapes = [(33,), (4, 17)]
    kwargs = dict(lr=S.warmup_cosine(2e-3, warmup_steps=10, total_steps=300), skip_nonfinite=True)
    rng = np.random.default_rng(5)
    params = random_params(rng, shapes)
    grads = [np.zeros(s, np.float32) for s in shapes]
    gparams, ggrads = [to_cuda(p) for p in params], [to_cuda(g) for g in grads]
    cpu, gpu = fastopt.NAdam(params, grads, **kwargs), fastopt.NAdam(gparams, ggrads, **kwargs)
    for t, gs in enumerate(grad_steps(6, shapes, 300)):
        gs = poison(gs, t)
        refill(grads, gs)
        for g, v in zip(ggrads, gs):
            g.copy_(to_cuda(v))
        cpu.step()
        gpu.step()
        torch.cuda.synchronize()  # as a training loop reading its loss does
        assert gpu._steps_exact, f"step {t}: the host lost the exact counts"
    assert gpu.steps == cpu.steps == [200]
    for p, g in zip(params, gparams):
        assert_bits_equal(to_numpy(g), p)
