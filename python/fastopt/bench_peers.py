"""The benchmark's peers: naive NumPy steps, torch.optim (fused, foreach, for-loop) and, where
importable, DeepSpeed's DeepSpeedCPUAdam, on the same layouts, data and hyperparameters as
fastopt, and the fixed cost of a step next to torch's fused one."""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from .catalog import OPTIMIZERS

from .bench_measure import F32, Data, Layout, OptimizerSpec, Runner, flat32, build_fastopt


def numpy_sgd(params, grads, states, step, h, scratch) -> None:
    """Naive in-place SGD with momentum (dampening 0, no Nesterov), one tensor at a time."""
    lr, momentum, wd = h["lr"], h["momentum"], h.get("weight_decay", 0.0)
    for p, g, (buf,) in zip(params, grads, states):
        t, u = scratch[0][:p.size].reshape(p.shape), scratch[1][:p.size].reshape(p.shape)
        if wd:
            g = np.add(g, np.multiply(p, wd, out=u), out=u)
        if step == 1:
            np.copyto(buf, g)
        else:
            buf *= momentum
            buf += g
        np.multiply(buf, lr, out=t)
        p -= t


def _numpy_adam(params, grads, states, step, h, scratch, decoupled: bool) -> None:
    lr, (b1, b2), eps, wd = h["lr"], h["betas"], h["eps"], h["weight_decay"]
    step_size = lr / (1 - b1 ** step)
    bc2_sqrt = float(np.sqrt(1 - b2 ** step))
    for p, g, (m, v) in zip(params, grads, states):
        t, u = scratch[0][:p.size].reshape(p.shape), scratch[1][:p.size].reshape(p.shape)
        if wd and decoupled:
            p *= 1 - lr * wd
        elif wd:
            g = np.add(g, np.multiply(p, wd, out=u), out=u)
        m *= b1
        np.multiply(g, 1 - b1, out=t)
        m += t
        v *= b2
        np.multiply(g, g, out=t)
        t *= 1 - b2
        v += t
        np.sqrt(v, out=t)
        t /= bc2_sqrt
        t += eps
        np.divide(m, t, out=t)
        t *= step_size
        p -= t


def numpy_adam(params, grads, states, step, h, scratch) -> None:
    """Naive in-place Adam (L2 weight decay in the gradient), one tensor at a time."""
    _numpy_adam(params, grads, states, step, h, scratch, decoupled=False)


def numpy_adamw(params, grads, states, step, h, scratch) -> None:
    """Naive in-place AdamW (decoupled weight decay), one tensor at a time."""
    _numpy_adam(params, grads, states, step, h, scratch, decoupled=True)


NUMPY_STEPS = {"sgd": numpy_sgd, "adam": numpy_adam, "adamw": numpy_adamw}


def import_torch(wanted: bool):
    if not wanted:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_with_threads(use_torch: bool, threads: int | None):
    """torch where wanted and importable (else None), fastopt's and torch's thread counts set
    to ``threads`` where given."""
    from . import set_num_threads

    torch = import_torch(use_torch)
    if threads is not None:
        set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
    return torch


def build_numpy(spec: OptimizerSpec, layout: Layout, data: Data) -> Runner:
    params = layout.copies(data.params)
    grads = layout.copies(data.grads)
    masters = layout.copies(data.params32) if data.half else params
    states = [[np.zeros_like(m) for _ in spec.state_names()] for m in masters]
    scratch = [np.empty(max(layout.sizes), F32) for _ in range(2)]
    count = [0]

    def step() -> None:
        count[0] += 1
        spec.numpy_step(masters, grads, states, count[0], spec.hypers, scratch)
        if data.half:
            for p, m in zip(params, masters):
                p[...] = m  # rounds to nearest even

    return Runner(step, lambda: flat32(params))


def build_torch(spec: OptimizerSpec, layout: Layout, data: Data, *, variant: Mapping[str, Any]) -> Runner:
    import torch

    def tensors(flat: np.ndarray, dtype=None) -> list:
        return [torch.from_numpy(v).to(dtype or torch.float32, copy=True) for v in layout.views(flat)]

    params = tensors(data.params32, getattr(torch, data.params.dtype.name))
    masters = tensors(data.params32) if data.half else params
    for m, g in zip(masters, tensors(data.grads)):
        m.grad = g
    opt = getattr(torch.optim, spec.torch_name)(masters, **spec.hypers, **variant)
    loop = variant.get("foreach") is False

    def step() -> None:
        opt.step()
        if data.half and loop:
            for p, m in zip(params, masters):
                p.copy_(m)
        elif data.half:
            torch._foreach_copy_(params, masters)

    return Runner(step, lambda: torch.cat([p.reshape(-1).float() for p in params]).numpy())


def build_deepspeed(spec: OptimizerSpec, layout: Layout, data: Data) -> Runner:
    """DeepSpeed's CPU Adam (DeepSpeedCPUAdam, its AVX kernels; adamw_mode for AdamW) on fp32
    torch tensors of the layout. ImportError where DeepSpeed is not installed (its CPU op is
    compiled on first use: ``DS_BUILD_OPS=0 pip install deepspeed``, ninja)."""
    import torch
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    if data.half:
        raise ValueError("DeepSpeedCPUAdam is benchmarked on float32 params only")
    params = [torch.from_numpy(v).clone() for v in layout.views(data.params32)]
    for p, g in zip(params, layout.views(data.grads)):
        p.grad = torch.from_numpy(g).clone()
    h = spec.hypers
    opt = DeepSpeedCPUAdam(params, lr=h["lr"], betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"],
                           adamw_mode=spec.name == "adamw")
    return Runner(opt.step, lambda: torch.cat([p.reshape(-1) for p in params]).numpy())


@dataclass(frozen=True)
class Impl:
    name: str
    build: Callable[[OptimizerSpec, Layout, Data], Runner]
    needs_torch: bool = False
    optimizers: tuple[str, ...] = ()  # those it has (empty: every one torch.optim has, or all)


def _torch_impl(name: str, **variant: Any) -> Impl:
    return Impl(name, functools.partial(build_torch, variant=variant), needs_torch=True)


IMPLS: tuple[Impl, ...] = (
    Impl("fastopt", build_fastopt),
    _torch_impl("torch-fused", fused=True),
    _torch_impl("torch-foreach", foreach=True),
    _torch_impl("torch-forloop", foreach=False),
    Impl("deepspeed-cpuadam", build_deepspeed, needs_torch=True, optimizers=("adam", "adamw")),
    Impl("numpy", build_numpy),
)


def fixed_cost_us(torch=None, tensors: int = 1000, rounds: int = 5) -> dict[str, float]:
    """Microseconds per bound AdamW step over ``tensors`` one-element tensors: the fixed cost
    of a step (Python call, dispatch, per-tensor work). Median over ``rounds`` rounds of
    about 50 ms each; torch's fused AdamW on the same layout beside it when torch is given."""
    def timed(step: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        for _ in range(20):
            step()
        steps = max(20, int(0.05 / max((time.perf_counter() - t0) / 20, 1e-9)))
        per_round = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            per_round.append((time.perf_counter() - t0) / steps * 1e6)
        return statistics.median(per_round)

    params = [np.zeros(1, np.float32) for _ in range(tensors)]
    grads = [np.ones(1, np.float32) for _ in range(tensors)]
    adamw = next(c for c in OPTIMIZERS if c.__name__ == "AdamW")
    out = {"fastopt": timed(adamw(params, grads, lr=1e-3).step)}
    if torch is not None:
        tparams = [torch.zeros(1) for _ in range(tensors)]
        for t in tparams:
            t.grad = torch.ones(1)
        out["torch-fused"] = timed(torch.optim.AdamW(tparams, lr=1e-3, fused=True).step)
    return out
