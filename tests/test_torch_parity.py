"""Parity with torch.optim over long fp32 trajectories, for every registry case whose
optimizer and options torch.optim has (SGD in its torch momentum form, Adam, AdamW, Adagrad,
Adadelta, RMSprop, Adamax, NAdam, RAdam, Adafactor).

fastopt's fp32 run and torch's fp32 run are each held to the registry's rounding bound
against torch's float64 run: where torch rounds differently (its AVX2 and AVX-512 kernels do),
both stay within what a correct fp32 implementation may err, and a bound that torch itself
fails is a wrong bound, reported as such.

torch is a hard requirement of this module: a missing torch is a failure, not a skip.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pytest
import torch

from reference import reference_for
from registry import (CASES, DTYPES, NOT_IN_TORCH, Case, Magnitudes, assert_bits_equal, assert_rounding_close,
                      grad_steps, random_params, refill)

SHAPES = [(5,), (3, 7), (64,), (2, 3, 4), ()]
STEPS = 100

TORCH_CASES = [c for c in CASES if c.in_torch]
each_case = pytest.mark.parametrize("case", TORCH_CASES, ids=[c.id for c in TORCH_CASES])

# torch's per-param scalars that fastopt keeps per group or derives from the step count.
TORCH_SCALAR_STATE = ("step", "mu_product")


def test_torch_cases_are_every_case_torch_has():
    """Only the paper optimizers and SGD's Sutskever form are left out of torch parity."""
    assert all(hasattr(torch.optim, c.name) for c in TORCH_CASES)
    left_out = [c for c in CASES if c not in TORCH_CASES]
    assert {c.name for c in left_out} == {*NOT_IN_TORCH, "SGD"}
    assert not any(hasattr(torch.optim, name) for name in NOT_IN_TORCH)
    for c in left_out:
        assert c.name in NOT_IN_TORCH or c.kwargs["momentum_form"] == "sutskever", c.id
    assert len(TORCH_CASES) > len(CASES) // 2


def torch_run(case: Case, initial: Sequence[np.ndarray], grad_seq, dtype=torch.float32,
              before_step: Callable[[torch.optim.Optimizer, int], None] | None = None,
              magnitudes: Magnitudes | None = None) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """torch.optim's trajectory from ``initial`` on the grads of ``grad_seq``: its params and
    the optimizer (for its state). ``magnitudes``, if given, sees the params and state after
    every step.

    In float64 the default dtype is float64 as well, so that torch's scalar state (step
    counts, NAdam's mu_product) is float64 too: with the default float32 it would round
    NAdam's momentum product to float32 at every step."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        params = [torch.nn.Parameter(torch.tensor(p, dtype=dtype)) for p in initial]
        opt = getattr(torch.optim, case.name)(params, **case.kwargs)
        for t, gs in enumerate(grad_seq, 1):
            for p, g in zip(params, gs):
                p.grad = torch.tensor(g, dtype=dtype)
            if before_step:
                before_step(opt, t)
            opt.step()
            if magnitudes is not None:
                magnitudes.see("param", [p.detach().numpy() for p in params])
                for k, arrays in torch_state(case, opt).items():
                    magnitudes.see(k, arrays)
    finally:
        torch.set_default_dtype(previous)
    return [p.detach() for p in params], opt


def numpy_of(xs: Sequence) -> list[np.ndarray]:
    return [x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in xs]


def assert_parity(case: Case, got: Sequence, initial: Sequence[np.ndarray], steps: int,
                  before_step: Callable[[torch.optim.Optimizer, int], None] | None = None) -> None:
    """fastopt's fp32 params ``got`` and torch.optim's fp32 ones, from ``initial`` on the
    registry's grads, each within the rounding bound of torch.optim's float64 run."""
    grads = lambda: grad_steps(case.seed + 1, SHAPES, steps)  # noqa: E731
    expected, _ = torch_run(case, initial, grads(), before_step=before_step)
    magnitudes = Magnitudes()
    magnitudes.see("param", initial)
    exact, _ = torch_run(case, [p.astype(np.float64) for p in initial], grads(), dtype=torch.float64,
                         before_step=before_step, magnitudes=magnitudes)
    scale = magnitudes["param"]
    assert_rounding_close(numpy_of(expected), numpy_of(exact), steps, optimizer=case.name, scale=scale,
                          msg="torch.optim fp32 itself vs float64")
    assert_rounding_close(numpy_of(got), numpy_of(exact), steps, optimizer=case.name, scale=scale,
                          msg="fastopt fp32 vs torch.optim float64")


def lr_at(case: Case, t: int) -> float:
    """A learning-rate schedule that changes every few steps (and hits 0 once)."""
    base = case.kwargs.get("lr", case.cls.default_hypers()["lr"])
    return 0.0 if t == 7 else base * (1.0 + 0.5 * np.sin(t / 3.0))


# ---- numpy arrays in fastopt --------------------------------------------------------------------


@each_case
def test_matches_torch_optim(case):
    rng = np.random.default_rng(case.seed)
    params = random_params(rng, SHAPES)
    initial = [p.copy() for p in params]
    grads = [np.zeros(s, np.float32) for s in SHAPES]
    opt = case.cls(params, grads, **case.kwargs)
    for gs in grad_steps(case.seed + 1, SHAPES, STEPS):
        refill(grads, gs)
        opt.step()
    assert_parity(case, params, initial, STEPS)


def torch_state(case: Case, topt: torch.optim.Optimizer) -> dict[str, list[np.ndarray]]:
    """torch's per-param state arrays by name, of the params that have them (Adafactor's
    matrices and vectors keep different state; the streams fastopt binds idle as zeros)."""
    params = [p for g in topt.param_groups for p in g["params"]]
    names = dict.fromkeys(k for p in params for k, v in topt.state[p].items()
                          if k not in TORCH_SCALAR_STATE and v is not None)
    out = {k: [topt.state[p][k].numpy() for p in params if topt.state[p].get(k) is not None] for k in names}
    out.update({k: [np.zeros(p.shape) for p in params] for k in case.idle_state})
    return out


@each_case
def test_state_matches_torch_optim(case):
    """Optimizer state (momentum buffers, moments) after a short run: fastopt's and torch's
    fp32 state each within the rounding bound of torch's float64 state."""
    steps = 20
    rng = np.random.default_rng(case.seed)
    params = random_params(rng, SHAPES)
    initial = [p.copy() for p in params]
    grads = [np.zeros(s, np.float32) for s in SHAPES]
    opt = case.cls(params, grads, **case.kwargs)
    for gs in grad_steps(case.seed + 1, SHAPES, steps):
        refill(grads, gs)
        opt.step()
    _, topt = torch_run(case, initial, grad_steps(case.seed + 1, SHAPES, steps))
    magnitudes = Magnitudes()
    _, topt64 = torch_run(case, [p.astype(np.float64) for p in initial], grad_steps(case.seed + 1, SHAPES, steps),
                          dtype=torch.float64, magnitudes=magnitudes)
    expected, exact = torch_state(case, topt), torch_state(case, topt64)
    tparams = [p for g in topt64.param_groups for p in g["params"]]
    for i in range(len(SHAPES)):
        theirs = {k for k, v in topt64.state[tparams[i]].items() if k not in TORCH_SCALAR_STATE and v is not None}
        theirs |= set(case.idle_state)
        assert set(opt.state[i]) == theirs, f"param {i}: {sorted(opt.state[i])} != {sorted(theirs)}"
    for k in exact:
        assert_rounding_close(expected[k], exact[k], steps, optimizer=case.name, scale=magnitudes.get(k),
                              msg=f"torch.optim fp32 {k} itself vs float64")
        assert_rounding_close([opt.state[i][k] for i in range(len(SHAPES)) if k in opt.state[i]], exact[k], steps,
                              optimizer=case.name, scale=magnitudes.get(k), msg=f"fastopt {k} vs torch.optim float64")


@each_case
def test_reference_matches_torch_float64(case):
    """The float64 reference the other tests rely on is torch.optim's algorithm: the two
    float64 runs within the rounding bound of float64."""
    rng = np.random.default_rng(case.seed)
    params = [p.astype(np.float64) for p in random_params(rng, SHAPES)]
    expected, _ = torch_run(case, params, grad_steps(case.seed + 1, SHAPES, STEPS), dtype=torch.float64)
    ref = reference_for(case.name, case.kwargs)
    for gs in grad_steps(case.seed + 1, SHAPES, STEPS):
        ref.step(params, gs)
    assert_rounding_close(params, numpy_of(expected), STEPS, optimizer=case.name, dtype="float64",
                          implementations=2, msg="float64 reference vs torch.optim float64")


# ---- torch tensors in fastopt (DLPack) ----------------------------------------------------------


@each_case
def test_torch_tensors_in_place_match_torch_optim(case):
    rng = np.random.default_rng(case.seed)
    initial = random_params(rng, SHAPES)
    params = [torch.tensor(p) for p in initial]  # plain tensors: no requires_grad
    grads = [torch.zeros(s, dtype=torch.float32) for s in SHAPES]
    ptrs = [p.data_ptr() for p in params]
    opt = case.cls(params, grads, **case.kwargs)
    for gs in grad_steps(case.seed + 1, SHAPES, STEPS):
        for g, new in zip(grads, gs):
            g.copy_(torch.from_numpy(new))
        opt.step()
    for p, ptr in zip(params, ptrs):
        assert p.data_ptr() == ptr and p.dtype == torch.float32
    assert_parity(case, params, initial, STEPS)


@pytest.mark.parametrize("case", [c for c in TORCH_CASES if c.id in ("sgd-nesterov", "adamw-amsgrad")],
                         ids=lambda c: c.id)
@pytest.mark.parametrize("param_dtype", ["float16", "bfloat16"])
def test_torch_half_tensors_match_numpy_arrays(case, param_dtype):
    """fp16/bf16 torch tensors (with master weights) give the bits numpy arrays give."""
    tdtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[param_dtype]
    rng = np.random.default_rng(case.seed)
    arrays = random_params(rng, SHAPES, param_dtype)
    tensors = [torch.from_numpy(a.view(np.int16).copy()).view(tdtype) for a in arrays]
    for a, t in zip(arrays, tensors):
        np.testing.assert_array_equal(t.float().numpy(), a.astype(np.float32))
    np_grads = [np.zeros(s, DTYPES[param_dtype]) for s in SHAPES]
    t_grads = [torch.zeros(s, dtype=tdtype) for s in SHAPES]
    opt_np = case.cls(arrays, np_grads, master_weights=True, **case.kwargs)
    opt_t = case.cls(tensors, t_grads, master_weights=True, **case.kwargs)
    for gs in grad_steps(case.seed + 1, SHAPES, 20, param_dtype):
        refill(np_grads, gs)
        for tg, g in zip(t_grads, gs):
            tg.copy_(torch.from_numpy(g.view(np.int16)).view(tdtype))
        opt_np.step()
        opt_t.step()
    for i, (a, t) in enumerate(zip(arrays, tensors)):
        assert t.dtype == tdtype
        assert_bits_equal(t.view(torch.int16).numpy().view(a.dtype), a, f"param {i}")
        assert_bits_equal(opt_t.master_params[i], opt_np.master_params[i], f"master {i}")


# ---- learning-rate changes between steps ---------------------------------------------------------

LR_SETTERS = {
    "opt.lr": lambda opt, lr: setattr(opt, "lr", lr),
    "param_groups": lambda opt, lr: opt.param_groups[0].__setitem__("lr", lr),
}


@each_case
@pytest.mark.parametrize("setter", list(LR_SETTERS))
def test_lr_changes_between_steps_match_torch(case, setter):
    steps = 30
    rng = np.random.default_rng(case.seed)
    params = random_params(rng, SHAPES)

    def torch_schedule(topt, t):
        for group in topt.param_groups:
            group["lr"] = lr_at(case, t)

    initial = [p.copy() for p in params]
    grads = [np.zeros(s, np.float32) for s in SHAPES]
    opt = case.cls(params, grads, **case.kwargs)
    for t, gs in enumerate(grad_steps(case.seed + 1, SHAPES, steps), 1):
        refill(grads, gs)
        LR_SETTERS[setter](opt, lr_at(case, t))
        assert opt.lr == lr_at(case, t) and opt.param_groups[0]["lr"] == lr_at(case, t)
        opt.step()
    assert_parity(case, params, initial, steps, before_step=torch_schedule)


def test_lr_schedule_is_not_constant():
    case = TORCH_CASES[0]
    lrs = {lr_at(case, t) for t in range(1, 31)}
    assert len(lrs) > 20 and 0.0 in lrs

