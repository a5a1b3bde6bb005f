"""fastopt.distributed.OffloadOptimizer: the same bits as the fastopt.torch optimizer on the same
params (CPU params here: the same code path as on a GPU, with plain copies; cuda-marked: GPU
params stepped on the host), checkpoints both ways, schedulers, bad input."""

from __future__ import annotations

import pytest
import torch

import fastopt.torch
from fastopt.distributed import OffloadOptimizer

SHAPES = [(600, 300), (300,), (10, 300), (10,), (7, 3)]
BUCKET = 100_000  # the first param alone, the others together

CASES = {
    "adamw": ("AdamW", dict(lr=1e-2, weight_decay=0.1), torch.float32),
    "sgd_momentum": ("SGD", dict(lr=0.05, momentum=0.9), torch.float32),
    "lamb": ("LAMB", dict(lr=1e-2), torch.float32),
    "bf16_master": ("AdamW", dict(lr=1e-2, master_weights=True), torch.bfloat16),
    "bf16_remainder_8bit": ("AdamW", dict(lr=1e-2, master_weights="remainder", state_precision="8bit"), torch.bfloat16),
    "clip_skip": ("AdamW", dict(lr=1e-2, max_grad_norm=0.05, skip_nonfinite=True), torch.float32),
}


def params_of(dtype, device="cpu"):
    g = torch.Generator().manual_seed(3)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype).to(device)) for s in SHAPES]


def grads_at(step, dtype, device="cpu"):
    g = torch.Generator().manual_seed(100 + step)
    grads = [(torch.randn(s, generator=g) * 1e-2).to(dtype) for s in SHAPES]
    if step == 4:
        grads[0][5, 7] = float("inf")
    return [x.to(device) for x in grads]


def run(opt, params, dtype, first, last, device="cpu", nan=False):
    for t in range(first, last):
        for p, g in zip(params, grads_at(t, dtype, device)):
            p.grad = g if nan or t != 4 else torch.nan_to_num(g, posinf=0.0)
        opt.step()


@pytest.mark.parametrize("case", list(CASES))
def test_the_params_of_the_fastopt_torch_optimizer(case):
    name, kw, dtype = CASES[case]
    nan = "skip_nonfinite" in kw
    ref, params = params_of(dtype), params_of(dtype)
    run(getattr(fastopt.torch, name)(ref, **kw), ref, dtype, 0, 20, nan=nan)
    opt = OffloadOptimizer(params, getattr(fastopt.torch, name), bucket_numel=BUCKET, **kw)
    assert len(opt._buckets) == 2
    run(opt, params, dtype, 0, 20, nan=nan)
    for a, b in zip(params, ref):
        assert torch.equal(a.detach(), b.detach())


def test_checkpoints_load_both_ways():
    name, kw, dtype = CASES["bf16_master"]
    cls = getattr(fastopt.torch, name)
    ref = params_of(dtype)
    run(cls(ref, **kw), ref, dtype, 0, 20)
    # offload -> fastopt.torch
    params = params_of(dtype)
    opt = OffloadOptimizer(params, cls, bucket_numel=BUCKET, **kw)
    run(opt, params, dtype, 0, 10)
    plain = cls(params, **kw)
    plain.load_state_dict(opt.state_dict())
    run(plain, params, dtype, 10, 20)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(params, ref))
    # fastopt.torch -> offload
    params = params_of(dtype)
    plain = cls(params, **kw)
    run(plain, params, dtype, 0, 10)
    opt = OffloadOptimizer(params, cls, bucket_numel=BUCKET, **kw)
    opt.load_state_dict(plain.state_dict())
    run(opt, params, dtype, 10, 20)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(params, ref))


def test_a_scheduler_drives_the_lr():
    ref, params = params_of(torch.float32), params_of(torch.float32)
    plain = fastopt.torch.AdamW(ref, lr=1e-2)
    opt = OffloadOptimizer(params, fastopt.AdamW, lr=1e-2)
    for o, ps in ((plain, ref), (opt, params)):
        sched = torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)
        for t in range(10):
            for p, g in zip(ps, grads_at(t, torch.float32)):
                p.grad = torch.nan_to_num(g, posinf=0.0)
            o.step()
            sched.step()
    assert opt.param_groups[0]["lr"] == 1e-2 * 0.5 ** 3
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(params, ref))


def test_bad_input_is_refused_and_nothing_changes():
    params = params_of(torch.float32)
    opt = OffloadOptimizer(params, fastopt.torch.AdamW, bucket_numel=BUCKET)
    before = [p.detach().clone() for p in params]
    for p, g in zip(params, grads_at(0, torch.float32)):
        p.grad = g
    params[2].grad = None
    with pytest.raises(ValueError, match="param 2 has no grad"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    params[2].grad = torch.zeros(SHAPES[2])
    params[1].data = torch.zeros(SHAPES[1])
    with pytest.raises(ValueError, match="param 1 no longer uses the memory OffloadOptimizer gave it"):
        opt.step()
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="bucket_numel must be an integer >= 1"):
            OffloadOptimizer(params_of(torch.float32), fastopt.AdamW, bucket_numel=bad)
    with pytest.raises(TypeError, match="optimizer_class must be one of fastopt's optimizers"):
        OffloadOptimizer(params_of(torch.float32), torch.optim.AdamW)
    with pytest.raises(NotImplementedError, match="lays its params out once"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["bf16_master", "lamb", "clip_skip"])
def test_gpu_params_stepped_on_the_host_have_the_cpu_bits(case):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch")
    name, kw, dtype = CASES[case]
    nan = "skip_nonfinite" in kw
    ref, params = params_of(dtype), params_of(dtype, "cuda")
    run(getattr(fastopt.torch, name)(ref, **kw), ref, dtype, 0, 20, nan=nan)
    opt = OffloadOptimizer(params, getattr(fastopt.torch, name), bucket_numel=BUCKET, **kw)
    run(opt, params, dtype, 0, 20, "cuda", nan=nan)
    torch.cuda.synchronize()
    for a, b in zip(params, ref):
        assert torch.equal(a.detach().cpu(), b.detach())


def test_params_written_between_steps_are_taken_as_written():
    """A module's load_state_dict (an in-place write) between steps: the host copy and the fp32
    master follow the param, as in fastopt.torch."""
    for name, kw, dtype in (CASES["bf16_master"], CASES["adamw"], CASES["bf16_remainder_8bit"]):
        ref, params = params_of(dtype), params_of(dtype)
        plain = getattr(fastopt.torch, name)(ref, **kw)
        opt = OffloadOptimizer(params, getattr(fastopt.torch, name), bucket_numel=BUCKET, **kw)
        for o, ps in ((plain, ref), (opt, params)):
            run(o, ps, dtype, 0, 5)
            with torch.no_grad():
                for p in ps:
                    p.fill_(0.5)
            run(o, ps, dtype, 5, 10)
        assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(params, ref)), kw


def test_a_bad_hyperparameter_writes_nothing():
    params = [torch.nn.Parameter(torch.ones(10)) for _ in range(3)]
    opt = OffloadOptimizer([{"params": params[:1]}, {"params": params[1:]}], fastopt.torch.AdamW, lr=1e-2,
                           bucket_numel=1)
    for p in params:
        p.grad = torch.ones(10)
    opt.step()
    before = [p.detach().clone() for p in params]
    opt.param_groups[1]["lr"] = -1.0
    with pytest.raises(ValueError, match="param group 1: .*lr"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    assert [int(st["step"]) for st in opt.state_dict()["state"].values()] == [1, 1, 1]
    with pytest.raises(ValueError, match="the checkpoint lacks state"):
        opt.load_state_dict({"param_groups": opt.state_dict()["param_groups"]})
    with pytest.raises(TypeError, match="param 0: dtype torch.float64"):
        OffloadOptimizer([torch.nn.Parameter(torch.ones(3, dtype=torch.float64))], fastopt.AdamW)
