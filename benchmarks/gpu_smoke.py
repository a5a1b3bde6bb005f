"""The GPU check's memory smoke test, run under compute-sanitizer's memcheck: every optimizer on
CUDA tensors that start one element past an allocation's start, of sizes 0, 1, 7, 2049 and
65537; fp32 params, and bf16 params with fp16 grads and fp32 master weights; bf16 params kept as
remainders with 8-bit state, and with stochastic rounding and bf16 state rounded stochastically;
the step options and diagnostics; a captured step replayed; fastopt.torch on a small module. It prints one line
per part and exits non-zero on the first error (the sanitizer reports bad accesses itself)."""

from __future__ import annotations

import torch

import fastopt
import fastopt.torch as ft

SIZES = (0, 1, 7, 2049, 65537)


def offset_tensors(dtype, fill):
    """One tensor per size, each a view one element into its own allocation."""
    return [torch.full((n + 1,), fill, dtype=dtype, device="cuda")[1:] for n in SIZES]


def main() -> None:
    for cls in fastopt.OPTIMIZERS:
        eight_bit = "8bit" if cls is not fastopt.Adagrad else "bfloat16"
        for param_dtype, grad_dtype, storage in (
                (torch.float32, torch.float32, {}), (torch.bfloat16, torch.float16, dict(master_weights=True)),
                (torch.bfloat16, torch.float32, dict(master_weights="remainder", state_precision=eight_bit)),
                (torch.bfloat16, torch.float32, dict(master_weights="stochastic",
                                                     state_precision="bfloat16_stochastic", seed=1))):
            params, grads = offset_tensors(param_dtype, 0.5), offset_tensors(grad_dtype, 0.25)
            opt = cls(params, grads, **storage, **cls.bench_hypers)
            opt.step()
            opt.max_grad_norm, opt.diagnostics = 1.0, True
            opt.step(grad_scale=2.0)
            torch.cuda.synchronize()
        print(f"{cls.__name__}: ok", flush=True)

    params, grads = offset_tensors(torch.float32, 0.5), offset_tensors(torch.float32, 0.25)
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
    print("graph capture and replay: ok", flush=True)

    model = torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.Tanh(), torch.nn.Linear(65, 3)).cuda()
    opt = ft.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 33, device="cuda")).sum().backward()
        opt.step()
    torch.cuda.synchronize()
    print("fastopt.torch: ok", flush=True)


if __name__ == "__main__":
    main()
