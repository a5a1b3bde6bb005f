"""The CUDA engine (``cuda`` marker: skipped where no GPU is present).

fp32 results bit-identical to the CPU engine for every registry case; every precision mode;
sizes 0 to past a chunk; 10,000 tensors; misaligned views; parity with torch.optim on CUDA;
CuPy arrays; bind errors; state round trips; capture and replay with a changing lr; stream
ordering and no host synchronisation. (Step options, diagnostics, schedules and the loss
scaler on CUDA: test_cuda_options.py.)
"""

from __future__ import annotations

import time

import ml_dtypes
import numpy as np
import pytest
import torch

import fastopt
import fastopt.torch
from registry import (CASES, DTYPES, HALF_DTYPES, Magnitudes, assert_bits_equal, assert_rounding_close,
                      case_by_id, grad_steps, random_params, refill)
from test_functional import MODES, SHAPES as STORAGE_SHAPES, caller_arrays, hypers
from test_torch_parity import numpy_of, torch_run

pytestmark = pytest.mark.cuda

SHAPES = [(37,), (4, 9), (128,), (2, 3, 5), (70001,)]  # packs, tails, and more than one 64K chunk
STEPS = 12
BASELINES = ["sgd-momentum", "adam-default", "adamw-default"]
each_case = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


def to_cuda(a: np.ndarray) -> torch.Tensor:
    """A CUDA tensor with ``a``'s dtype and bits (bfloat16 through its 16-bit pattern)."""
    if a.dtype == DTYPES["bfloat16"]:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).cuda().view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a)).cuda()


def to_numpy(t) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t
    if hasattr(t, "get"):  # a CuPy array
        return t.get()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def run_both(case, shapes, steps, *, param_dtype="float32", grad_dtype="float32", master_weights=False,
             prepare=None, **storage):
    """The same case stepped on the CPU engine (NumPy) and on the CUDA engine (torch tensors
    made by ``prepare`` from the NumPy values, default: plain copies), with the storage options
    given (state_precision, seed); returns both optimizers and both param lists after the run."""
    rng = np.random.default_rng(case.seed)
    params = random_params(rng, shapes, param_dtype)
    grads = [np.zeros(s, DTYPES[grad_dtype]) for s in shapes]
    prepare = prepare or (lambda arrays: [to_cuda(a) for a in arrays])
    gparams, ggrads = prepare(params), prepare(grads)
    cpu = case.cls(params, grads, master_weights=master_weights, **storage, **case.kwargs)
    gpu = case.cls(gparams, ggrads, master_weights=master_weights, **storage, **case.kwargs)
    assert gpu.device == f"cuda:{torch.cuda.current_device()}" and cpu.device == "cpu"
    for gs in grad_steps(case.seed + 1, shapes, steps, grad_dtype):
        refill(grads, gs)
        for g, v in zip(ggrads, gs):
            if hasattr(g, "set"):  # a CuPy array
                g.set(np.ascontiguousarray(v))
            else:
                g.copy_(to_cuda(v))
        cpu.step()
        gpu.step()
    torch.cuda.synchronize()
    return cpu, gpu, params, gparams


def assert_same_bits(cpu, gpu, params, gparams) -> None:
    for i, (p, g) in enumerate(zip(params, gparams)):
        assert_bits_equal(to_numpy(g), p, f"param {i}")
        for name, a in cpu.state[i].items():
            assert_bits_equal(to_numpy(gpu.state[i][name]), a, f"param {i} {name}")
        assert set(gpu.state[i]) == set(cpu.state[i])


# ---- bit parity with the CPU engine --------------------------------------------------------


@each_case
def test_fp32_bit_identical_to_cpu(case):
    assert_same_bits(*run_both(case, SHAPES, STEPS))


@pytest.mark.parametrize("case_id", BASELINES)
@pytest.mark.parametrize("param_dtype", HALF_DTYPES)
@pytest.mark.parametrize("grad_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("master_weights", [True, False], ids=["master", "no_master"])
def test_precision_modes_bit_identical_to_cpu(case_id, param_dtype, grad_dtype, master_weights):
    cpu, gpu, params, gparams = run_both(case_by_id(case_id), SHAPES, STEPS, param_dtype=param_dtype,
                                         grad_dtype=grad_dtype, master_weights=master_weights)
    assert_same_bits(cpu, gpu, params, gparams)
    for i, m in enumerate(cpu.master_params):
        assert (m is None) == (gpu.master_params[i] is None) == (not master_weights)
        if m is not None:
            assert isinstance(gpu.master_params[i], torch.Tensor) and gpu.master_params[i].is_cuda


STORAGE_MODES = {  # (param dtype, options): every storage mode of storage.py, and one of each together
    "remainder": ("bfloat16", dict(master_weights="remainder")),
    "kahan": ("bfloat16", dict(master_weights="kahan")),
    "stochastic": ("bfloat16", dict(master_weights="stochastic", seed=3)),
    "stochastic-fp16": ("float16", dict(master_weights="stochastic", seed=3)),
    "bf16-state": ("float32", dict(state_precision="bfloat16")),
    "bf16-stochastic-state": ("float32", dict(state_precision="bfloat16_stochastic", seed=5)),
    "8bit-state": ("float32", dict(state_precision="8bit")),
    "remainder-8bit": ("bfloat16", dict(master_weights="remainder", state_precision="8bit")),
}


@pytest.mark.parametrize("case, mode", [pytest.param(c, m, id=f"{c.id}-{m}") for m in STORAGE_MODES for c in CASES
                                        if not (not c.cls.eight_bit_state and "8bit" in m)])  # (Adagrad, ...)
def test_storage_modes_bit_identical_to_cpu(case, mode):
    """Every storage mode is deterministic (stochastic rounding draws the same counter-based bits
    on both engines): the GPU gives the CPU's bits, 8-bit codes and absmax included, over
    tensors of several 2048-element blocks and 64K chunks. The diagnosed update and LAMB/LARS's
    first pass run their 8-bit blocks in warps: checked with diagnostics on for two-pass rules."""
    param_dtype, options = STORAGE_MODES[mode]
    diagnostics = {"diagnostics": True} if case.name in ("LAMB", "LARS") else {}
    cpu, gpu, params, gparams = run_both(case, SHAPES, 4, param_dtype=param_dtype, **options, **diagnostics)
    assert_same_bits(cpu, gpu, params, gparams)


SCHEDULE_FREE = [c for c in CASES if c.id in ("adamwschedulefree-all", "sgdschedulefree-all")]


@pytest.mark.parametrize("mode", [None, "remainder", "kahan", "stochastic", "stochastic-fp16",
                                  "bf16-stochastic-state"])
@pytest.mark.parametrize("case", SCHEDULE_FREE, ids=[c.id for c in SCHEDULE_FREE])
def test_schedule_free_eval_and_train_bit_identical_to_cpu(case, mode):
    """Schedule-Free's mode switch (fastopt::CudaModeSwitch: one launch, its own stochastic bits)
    moves the params to x and back with the CPU's bits, in each storage mode; so does
    fastopt.torch's on CUDA tensors."""
    param_dtype, options = STORAGE_MODES[mode] if mode else ("float32", {})
    cpu, gpu, params, gparams = run_both(case, SHAPES, 4, param_dtype=param_dtype, **options)
    for switch in ("eval", "train"):
        getattr(cpu, switch)()
        getattr(gpu, switch)()
        torch.cuda.synchronize()
        assert_same_bits(cpu, gpu, params, gparams)
        assert gpu.training is cpu.training is (switch == "train")
    model = [torch.nn.Parameter(to_cuda(p)) for p in random_params(np.random.default_rng(0), SHAPES, param_dtype)]
    twin = [to_numpy(p).copy() for p in model]
    topt = getattr(fastopt.torch, case.name)(model, **options, **case.kwargs)
    grads = [np.zeros(s, DTYPES[param_dtype]) for s in SHAPES]  # (torch's grads are the params' dtype)
    copt = case.cls(twin, grads, **options, **case.kwargs)
    for gs in grad_steps(case.seed, SHAPES, 3, param_dtype):
        refill(grads, gs)
        for p, g in zip(model, gs):
            p.grad = to_cuda(g)
        topt.step()
        copt.step()
    topt.eval()
    copt.eval()
    torch.cuda.synchronize()
    for i, (p, q) in enumerate(zip(model, twin)):
        assert_bits_equal(to_numpy(p), q, f"torch form x, param {i}")


def test_storage_modes_checkpoint_resume_on_cuda():
    """A remainder (joined and split on the host) and 8-bit state resume bit for bit on CUDA."""
    case = case_by_id("adamw-default")
    options = dict(master_weights="remainder", state_precision="8bit")
    cpu, gpu, params, gparams = run_both(case, SHAPES, 4, param_dtype="bfloat16", **options)
    saved = gpu.state_dict()
    assert saved["state"][0]["exp_avg"].dtype == torch.uint8 and saved["state"][0]["master_param"].is_cuda
    again = [to_cuda(to_numpy(p)) for p in gparams]
    grads = [torch.zeros_like(p, dtype=torch.float32) for p in again]
    resumed = case.cls(again, grads, **options, **case.kwargs)
    resumed.load_state_dict(saved)
    for a, b in zip(gparams, again):
        assert_bits_equal(to_numpy(b), to_numpy(a))
    for i in range(len(again)):
        for name, a in gpu.state[i].items():
            assert_bits_equal(to_numpy(resumed.state[i][name]), to_numpy(a), f"param {i} {name}")


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 65535, 65536, 65537, 2 ** 20 + 3])
def test_sizes(n):
    cpu, gpu, params, gparams = run_both(case_by_id("adamw-amsgrad"), [(n,), (5,)], 4)
    assert_same_bits(cpu, gpu, params, gparams)


def test_ten_thousand_tensors_one_launch():
    rng = np.random.default_rng(7)
    shapes = [(int(k),) for k in rng.integers(1, 300, 10_000)]
    cpu, gpu, params, gparams = run_both(case_by_id("adam-weight_decay"), shapes, 3)
    assert gpu._core.num_chunks == 10_000  # every tensor under one chunk: one chunk each
    assert_same_bits(cpu, gpu, params, gparams)


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_misaligned_views(offset):
    """Params and grads that are views starting `offset` elements into a buffer: not 16-byte
    aligned, so the element-wise path runs; results as on the CPU."""
    def views(arrays):
        out = []
        for a in arrays:
            buf = torch.empty(a.size + offset, dtype=to_cuda(a).dtype, device="cuda")
            v = buf[offset:].view(a.shape)
            v.copy_(to_cuda(a))
            out.append(v)
        return out

    cpu, gpu, params, gparams = run_both(case_by_id("adam-amsgrad"), SHAPES, 5, prepare=views)
    assert gparams[0].data_ptr() % 16 != 0
    assert_same_bits(cpu, gpu, params, gparams)


# ---- torch.optim on CUDA -----------------------------------------------------------------


TORCH_CASES = [c for c in CASES if c.in_torch]


@pytest.mark.parametrize("case", TORCH_CASES, ids=[c.id for c in TORCH_CASES])
def test_matches_torch_optim_on_cuda(case):
    """fastopt's CUDA run and torch.optim's CUDA run, each within the registry's rounding bound
    of torch.optim's float64 run (on the CPU): torch's CUDA kernels contract to fma, which
    only removes roundings, so the bound that counts them holds for both."""
    steps = 50
    rng = np.random.default_rng(case.seed)
    initial = random_params(rng, SHAPES)
    magnitudes = Magnitudes()
    magnitudes.see("param", initial)
    exact, _ = torch_run(case, [p.astype(np.float64) for p in initial], grad_steps(case.seed + 1, SHAPES, steps),
                         dtype=torch.float64, magnitudes=magnitudes)
    tparams = [torch.nn.Parameter(to_cuda(p)) for p in initial]
    topt = getattr(torch.optim, case.name)(tparams, **case.kwargs)
    params = [to_cuda(p) for p in initial]
    grads = [torch.zeros_like(p) for p in params]
    opt = case.cls(params, grads, **case.kwargs)
    for gs in grad_steps(case.seed + 1, SHAPES, steps):
        for p, g, v in zip(tparams, grads, gs):
            p.grad = to_cuda(v)
            g.copy_(p.grad)
        topt.step()
        opt.step()
    for got, who in ((params, "fastopt on CUDA"), (tparams, "torch.optim on CUDA")):
        assert_rounding_close([to_numpy(p) for p in got], numpy_of(exact), steps, optimizer=case.name,
                              scale=magnitudes["param"], msg=f"{who} vs torch.optim float64")


def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")  # CuPy is on the GPU machines; the torch tests cover the rest
    case = case_by_id("adamw-amsgrad")

    def to_cupy(arrays):
        return [cupy.asarray(a) for a in arrays]

    cpu, gpu, params, gparams = run_both(case, SHAPES[:4], 6, prepare=to_cupy)
    for i, (p, g) in enumerate(zip(params, gparams)):
        assert isinstance(g, cupy.ndarray)
        assert_bits_equal(g.get(), p, f"param {i}")
        assert isinstance(gpu.state[i]["exp_avg"], cupy.ndarray)


# ---- intake on CUDA ----------------------------------------------------------------------


def test_mixed_devices_rejected_nothing_changed():
    p_gpu, p_cpu = torch.ones(8, device="cuda"), torch.ones(8)
    with pytest.raises(fastopt.TensorError, match="one device"):
        fastopt.Adam([p_gpu, p_cpu], [torch.ones(8, device="cuda"), torch.ones(8)])
    with pytest.raises(fastopt.TensorError, match="grad 0.*one device"):
        fastopt.SGD([p_gpu], [torch.ones(8)])
    assert bool((p_gpu == 1).all()) and bool((p_cpu == 1).all())


@pytest.mark.parametrize("bad, message", [
    (lambda p: ([p], [p]), "grad 0 is the same memory as param 0"),
    (lambda p: ([p], [torch.zeros(9, device="cuda")]), "shape"),
    (lambda p: ([p], [torch.zeros(8, device="cuda", dtype=torch.int32)]), "dtype"),
    (lambda p: ([torch.zeros(4, 4, device="cuda")[:, ::2]], [torch.zeros(4, 2, device="cuda")]), "contiguous"),
])
def test_bind_errors_as_on_cpu(bad, message):
    p = torch.ones(8, device="cuda")
    params, grads = bad(p)
    with pytest.raises(fastopt.TensorError, match=message):
        fastopt.Adam(params, grads)
    assert bool((p == 1).all())


# ---- state -----------------------------------------------------------------------------


def test_state_dict_round_trip_and_resume_bit_identical():
    case = case_by_id("adam-amsgrad")
    rng = np.random.default_rng(3)
    initial = random_params(rng, SHAPES)
    a_params, b_params = [to_cuda(p) for p in initial], [to_cuda(p) for p in initial]
    a_grads, b_grads = [torch.zeros_like(p) for p in a_params], [torch.zeros_like(p) for p in b_params]
    a = case.cls(a_params, a_grads, **case.kwargs)
    seq = list(grad_steps(5, SHAPES, 10))
    for gs in seq[:5]:
        for g, v in zip(a_grads, gs):
            g.copy_(to_cuda(v))
        a.step()
    saved = a.state_dict()
    assert saved["state"][0]["exp_avg"].is_cuda
    b = case.cls(b_params, b_grads, **case.kwargs)
    for p, q in zip(b_params, a_params):
        p.copy_(q)
    b.load_state_dict(saved)
    assert b.steps == a.steps == [5]
    for gs in seq[5:]:
        for g, h, v in zip(a_grads, b_grads, gs):
            g.copy_(to_cuda(v))
            h.copy_(to_cuda(v))
        a.step()
        b.step()
    for p, q in zip(a_params, b_params):
        assert torch.equal(p, q)


# ---- graphs and streams ----------------------------------------------------------------


@pytest.mark.parametrize("case_id", ["adam-amsgrad_wd_maximize", "adamw-default", "sgd-nesterov"])
def test_capture_and_replay_with_changing_lr(case_id):
    """A capturable step captured once in a CUDA graph, replayed with new grads and a new lr
    before each replay, tracks an uncaptured optimizer given the same lrs and grads."""
    case = case_by_id(case_id)
    rng = np.random.default_rng(11)
    initial = random_params(rng, SHAPES)
    params, plain_params = [to_cuda(p) for p in initial], [to_cuda(p) for p in initial]
    grads, plain_grads = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    opt = case.cls(params, grads, capturable=True, **case.kwargs)
    plain = case.cls(plain_params, plain_grads, **case.kwargs)
    # Warm up the capturable kernel (lazy module loading) on other tensors, outside the capture.
    warm = [torch.zeros(8, device="cuda")]
    case.cls(warm, [torch.zeros(8, device="cuda")], capturable=True, **case.kwargs).step()
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        opt.step()
    # Capturing runs nothing: the params and the device step count are untouched.
    torch.cuda.synchronize()
    assert all(torch.equal(p, q) for p, q in zip(params, plain_params))
    base = case.kwargs.get("lr", case.cls.default_hypers()["lr"])
    for t, gs in enumerate(grad_steps(13, SHAPES, 8), 1):
        lr = base * (1 + 0.5 * np.sin(t))
        opt.lr = lr
        plain.lr = lr
        for g, h, v in zip(grads, plain_grads, gs):
            g.copy_(to_cuda(v))
            h.copy_(to_cuda(v))
        # The replay waits behind a sleep while the next lr is set: it must still see this one.
        torch.cuda._sleep(20_000_000)
        graph.replay()
        plain.step()
    torch.cuda.synchronize()
    assert opt.steps == [8]
    # Device and host coefficients (pow, cos) may differ in their last bits: two fp32 runs.
    assert_rounding_close([to_numpy(p) for p in params], [to_numpy(q) for q in plain_params], 8, implementations=2)


def test_capture_of_a_non_capturable_step_counts_on_the_device():
    """A plain optimizer's step captured in a graph: each replay takes its step count (bias
    corrections) from the device, and the optimizer knows its counts moved."""
    case = case_by_id("adamw-default")
    initial = random_params(np.random.default_rng(12), SHAPES)
    params, plain_params = [to_cuda(p) for p in initial], [to_cuda(p) for p in initial]
    grads = [torch.ones_like(p) for p in params]
    plain_grads = [torch.ones_like(p) for p in params]
    opt, plain = case.cls(params, grads, **case.kwargs), case.cls(plain_params, plain_grads, **case.kwargs)
    case.cls([torch.zeros(8, device="cuda")], [torch.zeros(8, device="cuda")], **case.kwargs).step()  # warm-up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(5):
        graph.replay()
        plain.step()
    torch.cuda.synchronize()
    assert opt.steps == plain.steps == [5]
    opt.step()
    plain.step()
    torch.cuda.synchronize()
    assert_rounding_close([to_numpy(p) for p in params], [to_numpy(q) for q in plain_params], 6, implementations=2)


def test_graph_replayed_after_a_rebind_touches_no_freed_memory():
    """A rebind after a capture (amsgrad switched on) keeps the captured device group alive:
    replaying the old graph steps the old binding, on memory still allocated (issue 13)."""
    params = [torch.zeros(1000, device="cuda")]
    grads = [torch.ones(1000, device="cuda")]
    opt = fastopt.Adam(params, grads, lr=1e-3, capturable=True)
    opt.step()  # warm-up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    old = opt._core
    opt.param_groups[0]["amsgrad"] = True
    opt.step()
    assert opt._core is not old and opt._retired == [old]
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(params[0]).all()


def test_whole_network_capture_with_fastopt_torch():
    """torch's whole-network capture (CUDA graphs docs): warm-up steps, zero_grad(set_to_none=True),
    then forward, backward and a fastopt.torch step captured, the grads being new tensors of the
    graph's pool; replays and steps outside the graph (right after the capture, with new grads
    between replays, with the same grads after a replay) follow an eager twin. Each step writes
    its grads into the device table again: a replay (or the capture itself) leaves it elsewhere."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).cuda()
    twin = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).cuda()
    twin.load_state_dict(model.state_dict())
    opt, twin_opt = fastopt.torch.AdamW(model.parameters(), lr=1e-2), fastopt.torch.AdamW(twin.parameters(), lr=1e-2)
    inputs = torch.randn(12, 8, 16, device="cuda")
    static_input = inputs[0].clone()

    def eager(net, optimizer, x, set_to_none=True):
        optimizer.zero_grad(set_to_none=set_to_none)
        net(x).square().mean().backward()
        optimizer.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for t in range(3):
            eager(model, opt, inputs[t])
            eager(twin, twin_opt, inputs[t])
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(static_input).square().mean().backward()
        opt.step()
    for t in range(3, 12):
        if t in (3, 8, 10):  # (at 3 the grads are the graph's, which no replay has written yet)
            eager(model, opt, inputs[t], set_to_none=t == 8)
        else:
            static_input.copy_(inputs[t])
            graph.replay()
        eager(twin, twin_opt, inputs[t])
    torch.cuda.synchronize()
    # Captured steps take their coefficients from the device (pow), the twin's from the host.
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_fastopt_torch_binds_outside_captures_and_keeps_a_captured_binding():
    """fastopt.torch: a first step inside a capture is refused before any CUDA call; a binding
    replaced after a capture (the state cleared) stays allocated for the graph's replays."""
    model = torch.nn.Linear(8, 4).cuda()
    opt = fastopt.torch.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 8, device="cuda")).sum().backward()
    with pytest.raises(RuntimeError, match="take a step before capturing"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            opt.step()
    opt.step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    captured = opt._inner
    opt.state.clear()
    opt.step()
    assert opt._inner is not captured and opt._retired == [captured]
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_step_counts_after_a_capture_are_the_devices():
    """A graph's replays advance the device's step counts unseen: fastopt.torch's checkpoint
    reads them at each state_dict(), also after an earlier read."""
    model = torch.nn.Linear(8, 4).cuda()
    opt = fastopt.torch.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 8, device="cuda")).sum().backward()
    opt.step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for replays, expected in ((2, 3), (3, 6)):
        for _ in range(replays):
            graph.replay()
        assert [int(s["step"]) for s in opt.state_dict()["state"].values()] == [expected, expected]


def test_capture_right_after_a_step_whose_skip_decision_is_pending():
    """A capture right after a skip_nonfinite step whose flag was not read back (no opt.steps,
    no step in between): the captured step takes no poll of that flag (an event query inside a
    capture fails and invalidates it), and the replays count on the device."""
    params, grads = [torch.zeros(1000, device="cuda")], [torch.ones(1000, device="cuda")]
    opt = fastopt.Adam(params, grads, lr=1e-3, skip_nonfinite=True, capturable=True)
    opt.step()  # its skip flag comes back in the background: pending on the host
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert opt.steps == [4]
    assert torch.isfinite(params[0]).all()


def test_a_rebind_inside_a_capture_is_refused():
    """Switching amsgrad inside a capture would bind (allocations, uploads) where a graph cannot
    hold them: a clear error before any CUDA call, the optimizer unchanged."""
    params, grads = [torch.zeros(1000, device="cuda")], [torch.ones(1000, device="cuda")]
    opt = fastopt.Adam(params, grads, lr=1e-3)
    opt.step()
    torch.cuda.synchronize()
    core = opt._core
    with pytest.raises(RuntimeError, match="take one step outside the capture first"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            opt.param_groups[0]["amsgrad"] = True
    assert opt._core is core
    opt.step()  # outside the capture: binds with amsgrad
    torch.cuda.synchronize()
    assert opt._core is not core and "max_exp_avg_sq" in opt.state[0]


def test_bound_functional_step_on_cuda():
    """A functional form bound once steps as the per-call form does, bit for bit (issue 13:
    the per-call form binds a device group each time)."""
    initial = random_params(np.random.default_rng(3), SHAPES)
    runs = []
    for bound in (True, False):
        params = [to_cuda(p) for p in initial]
        grads = [torch.ones_like(p) for p in params]
        m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        step = fastopt.functional.adamw_.bind(params, grads, m, v) if bound else None
        for t in range(1, 6):
            if bound:
                step(step=t, lr=1e-2)
            else:
                fastopt.functional.adamw_(params, grads, m, v, step=t, lr=1e-2)
        torch.cuda.synchronize()
        runs.append([to_numpy(p) for p in params])
    for a, b in zip(*runs):
        assert_bits_equal(a, b)


def test_capturable_rejected_on_cpu():
    with pytest.raises(ValueError, match="capturable"):
        fastopt.Adam([np.zeros(4, np.float32)], [np.zeros(4, np.float32)], capturable=True)


def test_step_runs_on_the_current_stream_after_the_grads_are_written():
    """Grads written on a side stream behind a long sleep, then the step on that stream: the
    step must see the new grads (it would read the old ones on any other stream)."""
    case = case_by_id("adam-default")
    rng = np.random.default_rng(1)
    initial = random_params(rng, [(1 << 20,)])
    new_grad = np.asarray(rng.standard_normal(1 << 20), np.float32)
    params = [to_cuda(initial[0])]
    grads = [torch.zeros_like(params[0])]
    opt = case.cls(params, grads, **case.kwargs)
    source = to_cuda(new_grad)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time before the grads are written
        grads[0].copy_(source)
        opt.step()
    torch.cuda.synchronize()
    cpu_params, cpu_grads = [initial[0].copy()], [new_grad]
    case.cls(cpu_params, cpu_grads, **case.kwargs).step()
    assert_bits_equal(to_numpy(params[0]), cpu_params[0], "param 0")


def test_explicit_stream_argument():
    case = case_by_id("sgd-momentum")
    params, grads = [torch.ones(1000, device="cuda")], [torch.full((1000,), 2.0, device="cuda")]
    opt = case.cls(params, grads, **case.kwargs)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
    opt.step(stream=side)  # enqueued behind the sleep on `side`, not on the current stream
    assert not side.query()
    side.synchronize()
    assert torch.allclose(params[0], torch.full((1000,), 1.0 - 0.05 * 2.0, device="cuda"))


def test_explicit_stream_argument_of_a_bound_functional_step():
    params, grads = [torch.ones(1000, device="cuda")], [torch.full((1000,), 2.0, device="cuda")]
    step = fastopt.functional.sgd_.bind(params, grads)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
    step(lr=0.05, stream=side)  # enqueued behind the sleep on `side`
    assert not side.query()
    side.synchronize()
    assert torch.allclose(params[0], torch.full((1000,), 1.0 - 0.05 * 2.0, device="cuda"))


def test_step_never_waits_for_the_gpu():
    params, grads = [torch.ones(1 << 20, device="cuda")], [torch.ones(1 << 20, device="cuda")]
    opt = fastopt.AdamW(params, grads)
    opt.step()
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()
    torch.cuda._sleep(500_000_000)  # ~0.3 s of GPU time queued ahead of the step
    t0 = time.perf_counter()
    opt.step()
    elapsed = time.perf_counter() - t0
    assert not stream.query(), "the sleep should still be running"
    assert elapsed < 0.05, f"step took {elapsed:.3f} s: it waited for the GPU"
    torch.cuda.synchronize()


def test_functional_forms_on_cuda_tensors():
    """fastopt.functional on CUDA tensors: the CUDA engine, on the current stream, bit-identical
    to the same call on NumPy arrays."""
    from fastopt import functional as F
    rng = np.random.default_rng(5)
    params = random_params(rng, SHAPES[:4])
    grads = random_params(rng, SHAPES[:4])
    m, v = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    gp, gg = [to_cuda(p) for p in params], [to_cuda(g) for g in grads]
    gm, gv = [to_cuda(a) for a in m], [to_cuda(a) for a in v]
    for step in (1, 2, 3):
        F.adamw_(params, grads, m, v, step=step, lr=0.01)
        F.adamw_(gp, gg, gm, gv, step=step, lr=0.01)
    torch.cuda.synchronize()
    for i, (p, g) in enumerate(zip(params, gp)):
        assert_bits_equal(to_numpy(g), p, f"param {i}")


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
def test_functional_storage_modes_on_cuda(mode):
    """The functional forms' storage modes on CUDA tensors: bit-identical to the same steps on
    NumPy arrays, per call (steps 1, 2) and bound (steps 3, 4: stochastic rounding draws the bits
    of ``step``, not of the new binding's device count)."""
    from fastopt import functional as F
    _, dtype, master_weights, state_precision = mode
    case = case_by_id("adamw-weight_decay")
    start = [p.astype(dtype) for p in random_params(np.random.default_rng(case.seed), STORAGE_SHAPES)]
    grads = [np.zeros(s, np.float32) for s in STORAGE_SHAPES]
    cpu, gpu = [p.copy() for p in start], [to_cuda(p) for p in start]
    names, storage = caller_arrays(case, cpu, master_weights, state_precision)
    gpu_names, gpu_storage = caller_arrays(case, cpu, master_weights, state_precision, place=to_cuda)
    states = [names[s] for s in case.cls.state_names if s in names]
    gpu_states = [gpu_names[s] for s in case.cls.state_names if s in names]
    ggrads = [to_cuda(g) for g in grads]
    cpu_step = F.adamw_.bind(cpu, grads, *states, **storage)
    gpu_step = None
    for t, g in enumerate(grad_steps(case.seed, STORAGE_SHAPES, 4), start=1):
        refill(grads, g)
        for a, b in zip(ggrads, g):
            a.copy_(to_cuda(b))
        cpu_step(step=t, **hypers(case))
        if t <= 2:
            F.adamw_(gpu, ggrads, *gpu_states, step=t, **hypers(case), **gpu_storage)
        else:
            gpu_step = gpu_step or F.adamw_.bind(gpu, ggrads, *gpu_states, **gpu_storage)
            gpu_step(step=t, **hypers(case))
        torch.cuda.synchronize()
        for i in range(len(cpu)):
            assert_bits_equal(to_numpy(gpu[i]), cpu[i], f"step {t}: param {i}")
            for name in names:
                assert_bits_equal(to_numpy(gpu_names[name][i]), names[name][i], f"step {t}: {name} {i}")
