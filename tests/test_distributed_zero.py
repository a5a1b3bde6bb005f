"""fastopt.distributed.ZeroOptimizer on gloo, in real processes: world sizes 1, 2 and 3 against
the non-distributed fastopt.torch optimizer (same grads), checkpoints across world sizes, and
errors agreed on every rank. One spawn per world size runs every case (process start-up is the
cost); the parent computes the references and compares."""

from __future__ import annotations

import datetime
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastopt.torch
from fastopt.distributed import ZeroOptimizer
from fastopt.distributed.layout import PIECE

# Two params cut into pieces (one across ranks at every world size here), small ones between.
SHAPES = [(600, 300), (300,), (10, 300), (10,), (400, 700), (7, 3)]
STEPS = 50
HALF = 25  # the checkpoint case saves here at world size 2 and resumes at world size 3
NAN_AT = 7

# name -> (class, hyperparameters and options, param dtype, how the grads reach the ranks)
#   "rank0": rank 0 holds the grads, the others zeros (summed: exactly the grads)
#   "reduced": every rank holds them (grads_reduced=True)
#   "mean": every rank holds them, averaged (sum times 1 / world size: not exact)
CASES = {
    "adamw": ("AdamW", dict(lr=1e-2, weight_decay=0.1), torch.float32, "rank0"),
    "sgd_momentum": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4), torch.float32, "rank0"),
    "lamb": ("LAMB", dict(lr=1e-2, weight_decay=0.01), torch.float32, "rank0"),
    "lars": ("LARS", dict(lr=0.1, momentum=0.9, weight_decay=1e-4), torch.float32, "reduced"),
    "bf16_master": ("AdamW", dict(lr=1e-2, master_weights=True), torch.bfloat16, "rank0"),
    "clip_skip": ("AdamW", dict(lr=1e-2, max_grad_norm=0.05, skip_nonfinite=True), torch.float32, "rank0"),
    "reduced_8bit": ("AdamW", dict(lr=1e-2, state_precision="8bit"), torch.float32, "reduced"),
    "mean": ("AdamW", dict(lr=1e-2), torch.float32, "mean"),
    "written": ("AdamW", dict(lr=1e-2, master_weights=True), torch.bfloat16, "rank0"),  # params written at WRITE_AT
}
WRITE_AT = 10  # the "written" case halves its params in place here (as a module's load_state_dict writes them)
CHECKPOINTED = ("AdamW", dict(lr=1e-2, state_precision="8bit", master_weights=True), torch.bfloat16)


def initial_params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(7)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]


def grads_at(step: int, dtype: torch.dtype, nan: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    grads = [(torch.randn(s, generator=g) * 1e-2).to(dtype) for s in SHAPES]
    if nan and step == NAN_AT:
        grads[4][123, 456] = float("nan")  # in a piece past the first of param 4
    return grads


def write_params(params, step: int) -> None:
    if step == WRITE_AT:
        with torch.no_grad():
            for p in params:
                p.mul_(0.5)


def reference(name: str, dtype: torch.dtype, kw: dict, first: int = 0, last: int = STEPS, params=None, state=None,
              written: bool = False):
    """The non-distributed fastopt.torch optimizer's params after steps [first, last)."""
    params = params or initial_params(dtype)
    opt = getattr(fastopt.torch, name)(params, **kw)
    if state is not None:
        opt.load_state_dict(state)
    for t in range(first, last):
        if written:
            write_params(params, t)
        for p, g in zip(params, grads_at(t, dtype, "skip_nonfinite" in kw)):
            p.grad = g
        opt.step()
    return [p.detach() for p in params]


def _zero_kwargs(kw: dict, feed: str) -> dict:
    return {**kw, "grads_reduced": feed == "reduced", "average_grads": feed == "mean"}


def _feed(params, step: int, dtype, feed: str, rank: int, world: int, nan: bool) -> None:
    for p, g in zip(params, grads_at(step, dtype, nan and rank == world - 1)):
        if feed == "rank0" and rank != 0:
            g = torch.where(g.isnan(), g, torch.zeros_like(g))  # (the NaN comes from the last rank)
        p.grad = g


def _run_cases(rank: int, world: int, out: dict) -> None:
    for case, (name, kw, dtype, feed) in CASES.items():
        params = initial_params(dtype)
        opt = ZeroOptimizer(params, getattr(fastopt.torch, name), **_zero_kwargs(kw, feed))
        skipped = []
        for t in range(STEPS):
            if case == "written":
                write_params(params, t)
            _feed(params, t, dtype, feed, rank, world, "skip_nonfinite" in kw)
            opt.step()
            skipped.append(opt.last_step.skipped)
        out[case] = {"params": [p.detach().clone() for p in params], "skipped": skipped,
                     "norm": opt.last_step.grad_norm}


def _run_checkpoints(rank: int, world: int, path: str, out: dict) -> None:
    name, kw, dtype = CHECKPOINTED
    cls = getattr(fastopt.torch, name)
    kw = _zero_kwargs(kw, "rank0")
    params = initial_params(dtype)
    if world == 2:  # steps to HALF, saves; a ZeroOptimizer loading its own shard continues as it does
        opt = ZeroOptimizer(params, cls, **kw)
        for t in range(HALF):
            _feed(params, t, dtype, "rank0", rank, world, False)
            opt.step()
        whole = opt.consolidated_state_dict(to=0)
        shard = opt.state_dict()
        if rank == 0:
            torch.save({"params": [p.detach().clone() for p in params], "state": whole}, f"{path}/half.pt")
        saved_params = [p.detach().clone() for p in params]
        for t in range(HALF, STEPS):
            _feed(params, t, dtype, "rank0", rank, world, False)
            opt.step()
        again = initial_params(dtype)
        with torch.no_grad():
            for p, v in zip(again, saved_params):
                p.copy_(v)
        resumed = ZeroOptimizer(again, cls, **kw)
        resumed.load_state_dict(shard)
        for t in range(HALF, STEPS):
            _feed(again, t, dtype, "rank0", rank, world, False)
            resumed.step()
        out["shard_resumed"] = all(torch.equal(a, b) for a, b in zip(again, params))
        try:  # a shard of another rank
            shards = [None] * world
            dist.all_gather_object(shards, shard)
            resumed.load_state_dict(shards[1 - rank])
        except ValueError as e:
            out["other_shard"] = str(e)
    if world == 3:  # resumes the world-size-2 checkpoint
        saved = torch.load(f"{path}/half.pt", weights_only=False)
        with torch.no_grad():
            for p, v in zip(params, saved["params"]):
                p.copy_(v)
        opt = ZeroOptimizer(params, cls, **kw)
        opt.load_state_dict(saved["state"])
        for t in range(HALF, STEPS):
            _feed(params, t, dtype, "rank0", rank, world, False)
            opt.step()
        out["resumed"] = [p.detach().clone() for p in params]


def _run_errors(rank: int, world: int, out: dict) -> None:
    errors = out["errors"] = {}
    params = initial_params(torch.float32)
    opt = ZeroOptimizer(params, fastopt.torch.AdamW, lr=1e-2)
    before = [p.detach().clone() for p in params]
    for p, g in zip(params, grads_at(0, torch.float32)):
        p.grad = g
    if rank == world - 1:
        params[3].grad = None
    try:
        opt.step()
    except ValueError as e:
        errors["no_grad"] = str(e)
    errors["unchanged"] = all(torch.equal(a, b) for a, b in zip(params, before))
    params[3].grad = torch.zeros(SHAPES[3])
    if rank == world - 1:
        params[2].grad = torch.zeros(SHAPES[2]).to_sparse()
    try:
        opt.step()
    except ValueError as e:
        errors["sparse"] = str(e)
    params[2].grad = torch.zeros(SHAPES[2])
    opt.param_groups[0]["lr"] = -1.0  # (a scheduler's, on every rank: every rank refuses it, the owners or not)
    before = [p.detach().clone() for p in params]
    try:
        opt.step()
    except ValueError as e:
        errors["lr"] = str(e)
    errors["unchanged_lr"] = all(torch.equal(a, b) for a, b in zip(params, before))
    opt.param_groups[0]["lr"] = 1e-2
    shard = opt.state_dict()
    try:
        opt.load_state_dict({"param_groups": shard["param_groups"], "zero": {"world_size": world}, "steps": [],
                             "pieces": {}} if rank == world - 1 else shard)
    except ValueError as e:
        errors["malformed"] = str(e)
    try:
        ZeroOptimizer(initial_params(torch.float32), fastopt.torch.AdamW, **({"bogus": 1} if rank == world - 1 else {}))
    except TypeError as e:
        errors["unknown_hyper"] = str(e)
    try:
        ZeroOptimizer(initial_params(torch.float32), fastopt.torch.AdamW, lr=1e-3 * (rank + 1))
    except ValueError as e:
        errors["setup"] = str(e)
    shapes = [(5, 5)] if rank == world - 1 else [(5, 4)]
    try:
        ZeroOptimizer([torch.nn.Parameter(torch.zeros(s)) for s in shapes], fastopt.torch.AdamW)
    except ValueError as e:
        errors["layout"] = str(e)
    try:
        ZeroOptimizer([torch.nn.Parameter(torch.zeros(3, dtype=torch.float64 if rank == 0 else torch.float32))],
                      fastopt.torch.AdamW)
    except TypeError as e:
        errors["dtype"] = str(e)


def _worker(rank: int, world: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{path}/rendezvous{world}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    out: dict = {}
    try:
        _run_cases(rank, world, out)
        _run_checkpoints(rank, world, path, out)
        _run_errors(rank, world, out)
    except BaseException:
        out["crash"] = traceback.format_exc()
    torch.save(out, f"{path}/world{world}_rank{rank}.pt")
    dist.barrier()  # (no rank tears gloo down while another still talks to it)
    dist.destroy_process_group()


def spawn(world: int, path: str, timeout: float = 240.0) -> list[dict]:
    """Runs _worker on `world` processes; every rank's results (fails if any hangs past timeout)."""
    ctx = mp.start_processes(_worker, args=(world, path), nprocs=world, join=False, start_method="spawn")
    deadline = timeout
    while not ctx.join(timeout=5):
        deadline -= 5
        if deadline <= 0:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"world size {world}: a rank did not finish within {timeout} s (a hang)")
    results = [torch.load(f"{path}/world{world}_rank{r}.pt", weights_only=False) for r in range(world)]
    for r, got in enumerate(results):
        assert "crash" not in got, f"rank {r} of {world}: {got['crash']}"
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, list[dict]]:
    path = str(tmp_path_factory.mktemp("zero"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return {world: spawn(world, path) for world in (1, 2, 3)}  # (3 resumes 2's checkpoint)


@pytest.fixture(scope="module")
def references() -> dict[str, list[torch.Tensor]]:
    return {case: reference(name, dtype, kw, written=case == "written") for case, (name, kw, dtype, _) in CASES.items()}


def test_the_params_are_cut_across_ranks():
    assert SHAPES[0][0] * SHAPES[0][1] > PIECE and SHAPES[4][0] * SHAPES[4][1] > 2 * PIECE


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_every_rank_has_the_params_of_the_single_process_optimizer(runs, references, world, case):
    exact = CASES[case][3] != "mean" or world in (1, 2)  # (a mean of three is rounded)
    for rank, got in enumerate(runs[world]):
        for i, (a, b) in enumerate(zip(got[case]["params"], references[case])):
            if exact:
                assert torch.equal(a, b), f"{case}, world size {world}, rank {rank}, param {i}"
            else:
                torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_clipping_and_skipping_agree(runs, world):
    name, kw, dtype, _ = CASES["clip_skip"]
    params = initial_params(dtype)
    opt = getattr(fastopt.torch, name)(params, **kw)
    skipped = []
    for t in range(STEPS):
        for p, g in zip(params, grads_at(t, dtype, True)):
            p.grad = g
        opt.step()
        skipped.append(opt.last_step.skipped)
    assert skipped.count(True) == 1 and skipped[NAN_AT]
    for got in runs[world]:
        assert got["clip_skip"]["skipped"] == skipped
        assert got["clip_skip"]["norm"] == opt.last_step.grad_norm  # (bit for bit)


def test_a_checkpoint_of_world_size_2_resumes_at_world_size_3(runs):
    name, kw, dtype = CHECKPOINTED
    want = reference(name, dtype, kw)
    for rank, got in enumerate(runs[3]):
        for a, b in zip(got["resumed"], want):
            assert torch.equal(a, b), f"rank {rank}"
    assert all(got["shard_resumed"] for got in runs[2])
    assert all("does not load into rank" in got["other_shard"] for got in runs[2])


def test_the_consolidated_checkpoint_loads_into_the_non_distributed_optimizer(runs, tmp_path_factory):
    name, kw, dtype = CHECKPOINTED
    path = next(p for p in tmp_path_factory.getbasetemp().glob("zero*/half.pt"))
    saved = torch.load(path, weights_only=False)
    params = initial_params(dtype)
    with torch.no_grad():
        for p, v in zip(params, saved["params"]):
            p.copy_(v)
    got = reference(name, dtype, kw, HALF, STEPS, params, saved["state"])
    for a, b in zip(got, reference(name, dtype, kw)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_a_bad_input_on_one_rank_raises_the_same_error_on_every_rank(runs, world):
    errors = [got["errors"] for got in runs[world]]
    last = world - 1
    for kind, text in [("no_grad", f"ZeroOptimizer.step: rank {last}: param 3 has no grad"),
                       ("sparse", f"ZeroOptimizer.step: rank {last}: param 2: its grad is sparse torch.float32[10, 300]"),
                       ("dtype", "ZeroOptimizer: rank 0: param 0: dtype torch.float64")]:
        assert all(e[kind].startswith(text) for e in errors), (kind, [e[kind] for e in errors])
        assert len({e[kind] for e in errors}) == 1
    assert all(e["unchanged"] and e["unchanged_lr"] for e in errors)
    for kind, text in [("lr", "ZeroOptimizer.step: rank 0: param group 0: "),
                       ("malformed", f"ZeroOptimizer.load_state_dict: rank {last}: "),
                       ("unknown_hyper", f"ZeroOptimizer: rank {last}: ZeroOptimizer(AdamW) got an unknown "
                                         "hyperparameter 'bogus'")]:
        assert all(e[kind].startswith(text) for e in errors), (kind, [e[kind] for e in errors])
        assert len({e[kind] for e in errors}) == 1
    if world > 1:
        for kind in ("layout", "setup"):
            assert all(e[kind] == f"ZeroOptimizer: rank {last if kind == 'layout' else 1} has other params (groups, "
                                  "shapes or dtypes), hyperparameters or options than rank 0" for e in errors)
    else:
        assert "layout" not in errors[0] and "setup" not in errors[0]
