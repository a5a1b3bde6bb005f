"""The GPU check's memory smoke test, run under compute-sanitizer's memcheck: every optimizer on
CUDA tensors of sizes 0, 1, 7, 2049 and 65537 that start one element past an allocation's start
(the element before each is a canary: memcheck cannot see a write inside an allocation), and on
fresh 16-byte-aligned tensors of sizes 7, 8, 9, 2049 and 65537 (the vector path); fp32 params,
and bf16 params: with fp16 grads and fp32 master weights; kept as remainders with 8-bit state
(bf16 state where a rule keeps no 8-bit state); rounded stochastically with bf16 state rounded
stochastically; Kahan-compensated with bf16 state. Also the step options and diagnostics, a
captured step replayed, and fastopt.torch on a small module. It prints one line per part with
the seconds since it started and exits non-zero on the first error (the sanitizer reports bad
accesses itself)."""

from __future__ import annotations

import time

import torch

import fastopt
import fastopt.torch as ft

SIZES = (0, 1, 7, 2049, 65537)
ALIGNED_SIZES = (7, 8, 9, 2049, 65537)
START = time.perf_counter()


def offset_tensors(dtype, fill, device):
    """One tensor per size, each a view one element into its own allocation."""
    return [torch.full((n + 1,), fill, dtype=dtype, device=device)[1:] for n in SIZES]


def aligned_tensors(dtype, fill, device):
    return [torch.full((n,), fill, dtype=dtype, device=device) for n in ALIGNED_SIZES]


def check_canaries(tensors, fill):
    for t in tensors:
        if t._base is not None:
            assert float(t._base[0]) == fill, f"a step wrote the element before a {t.numel()}-element view"


def report(part: str) -> None:
    print(f"{time.perf_counter() - START:6.1f} s  {part}: ok", flush=True)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(device: str = "cuda") -> None:
    """The smoke test on ``device``; "cpu" (the test suite's run of this script) leaves out the
    graph capture."""
    for cls in fastopt.OPTIMIZERS:
        eight_bit = "8bit" if cls.eight_bit_state else "bfloat16"
        for param_dtype, grad_dtype, storage in (
                (torch.float32, torch.float32, {}), (torch.bfloat16, torch.float16, dict(master_weights=True)),
                (torch.bfloat16, torch.float32, dict(master_weights="remainder", state_precision=eight_bit)),
                (torch.bfloat16, torch.float32, dict(master_weights="stochastic",
                                                     state_precision="bfloat16_stochastic", seed=1)),
                (torch.bfloat16, torch.bfloat16, dict(master_weights="kahan", state_precision="bfloat16"))):
            for tensors in (offset_tensors, aligned_tensors):
                params, grads = tensors(param_dtype, 0.5, device), tensors(grad_dtype, 0.25, device)
                opt = cls(params, grads, **storage, **cls.bench_hypers)
                opt.step()
                opt.max_grad_norm, opt.diagnostics = 1.0, True
                opt.step(grad_scale=2.0)
                sync(device)
                check_canaries(params, 0.5)
                check_canaries(grads, 0.25)
        report(cls.__name__)

    if device == "cuda":
        graph_capture_and_replay()
    fastopt_torch(device)


def graph_capture_and_replay() -> None:
    params, grads = offset_tensors(torch.float32, 0.5, "cuda"), offset_tensors(torch.float32, 0.25, "cuda")
    opt = fastopt.Adam(params, grads, lr=1e-3, capturable=True)
    opt.step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(3):
        graph.replay()
    opt.param_groups[0]["amsgrad"] = True  # a rebind: the old graph's group stays allocated
    opt.step()
    graph.replay()
    torch.cuda.synchronize()
    report("graph capture and replay")


def fastopt_torch(device: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.Tanh(), torch.nn.Linear(65, 3)).to(device)
    opt = ft.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 33, device=device)).sum().backward()
        opt.step()
    sync(device)
    report("fastopt.torch")


if __name__ == "__main__":
    main()
