"""``fastopt bench --distributed N`` and ``fastopt bench --offload``: fastopt.distributed against
torch's and DeepSpeed's counterparts, same params, same grads, one interleaved run.

``--distributed N`` spawns N local processes (gloo) that each hold AdamW params of ``size``
elements in 8 tensors, and time, round-robin (a barrier before each step, the grads refilled
untimed before it; a step's time is its slowest rank's), medians of ``repeats``:

  fastopt ZeRO-1                  ZeroOptimizer(AdamW): grads reduced to their owners, fused step
                                  of the rank's shard, shards broadcast
  torch all-reduce + ZeRO         the grads all-reduced (as DistributedDataParallel does), then
                                  ZeroRedundancyOptimizer(AdamW, fused=True).step()
  fastopt ZeRO-1 (grads reduced)  ZeroOptimizer(AdamW, grads_reduced=True): step + broadcast
  torch ZeRO (grads reduced)      ZeroRedundancyOptimizer(AdamW, fused=True).step()

``--offload`` times, in this process, OffloadOptimizer(AdamW) over bfloat16 params (on the GPU
with ``--device cuda``, else in CPU memory) against the CPU step alone on the same host
buffers (fp32 master, grads, state): fastopt's AdamW, torch's fused AdamW and, where
importable, DeepSpeed's DeepSpeedCPUAdam (adamw_mode=True).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, TextIO

from . import __version__, cpu_isa
from .bench_report import aligned_lines, power_of_two

__all__ = ["DistributedBenchConfig", "run_distributed_bench", "format_distributed_table"]

TENSORS = 8
HYPERS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
ZERO_PAIRS = (("fastopt ZeRO-1", "torch all-reduce + ZeRO"), ("fastopt ZeRO-1 (grads reduced)",
                                                                "torch ZeRO (grads reduced)"))


@dataclass
class DistributedBenchConfig:
    """What ``fastopt bench --distributed N`` / ``--offload`` measures (module docstring)."""

    size: int = 2 ** 24
    world: int = 2
    offload: bool = False
    device: str = "cpu"
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None

    def validate(self) -> None:
        """ValueError for a size below the tensor count, a world size below 1, repeats < 1 or
        warmup < 0, or --device cuda without offload or without a GPU."""
        if self.size < TENSORS:
            raise ValueError(f"size must be at least {TENSORS}, got {self.size}")
        if self.world < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError("the world size and repeats must be >= 1, warmup >= 0")
        if self.device == "cuda":
            import torch
            if not self.offload or not torch.cuda.is_available():
                raise ValueError("--device cuda times the offload step (--offload) and needs a GPU for torch")


def _sizes(size: int) -> list[int]:
    return [size // TENSORS] * (TENSORS - 1) + [size - (size // TENSORS) * (TENSORS - 1)]


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


# ---- ZeRO-1 on N processes ----------------------------------------------------------------
def _rank_main(rank: int, cfg: DistributedBenchConfig, path: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    import fastopt
    from fastopt.distributed import ZeroOptimizer

    dist.init_process_group("gloo", init_method=f"file://{path}/rendezvous", rank=rank, world_size=cfg.world)
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.world)
    torch.set_num_threads(threads)
    fastopt.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(n, generator=gen) for n in _sizes(cfg.size)]
    grads = [torch.randn(n, generator=gen) * 1e-3 for n in _sizes(cfg.size)]

    def params() -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(x.clone()) for x in init]

    def refill(ps: list[torch.nn.Parameter]) -> Callable[[], None]:
        def fill() -> None:
            for p, g in zip(ps, grads):
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
        return fill

    steps: dict[str, tuple[Callable[[], None], Callable[[], Any]]] = {}
    ps = params()
    steps["fastopt ZeRO-1"] = (refill(ps), ZeroOptimizer(ps, fastopt.AdamW, **HYPERS).step)
    ps = params()
    torch_zero = ZeroRedundancyOptimizer(ps, optimizer_class=torch.optim.AdamW, fused=True, **HYPERS)

    def all_reduce_and_step(ps: list[torch.nn.Parameter] = ps, opt: Any = torch_zero) -> None:
        for p in ps:
            dist.all_reduce(p.grad)
            p.grad.div_(cfg.world)
        opt.step()
    steps["torch all-reduce + ZeRO"] = (refill(ps), all_reduce_and_step)
    ps = params()
    steps["fastopt ZeRO-1 (grads reduced)"] = (refill(ps), ZeroOptimizer(ps, fastopt.AdamW, grads_reduced=True,
                                                                         **HYPERS).step)
    ps = params()
    steps["torch ZeRO (grads reduced)"] = (
        refill(ps), ZeroRedundancyOptimizer(ps, optimizer_class=torch.optim.AdamW, fused=True, **HYPERS).step)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for k in range(cfg.warmup + cfg.repeats):
        for name, (fill, step) in steps.items():
            fill()
            dist.barrier()
            t0 = time.perf_counter()
            step()
            elapsed = time.perf_counter() - t0
            if k >= cfg.warmup:
                times[name].append(elapsed)
    with open(f"{path}/rank{rank}.json", "w") as f:
        json.dump({"threads": threads, "times": times}, f)
    dist.barrier()  # (no rank tears gloo down while another still talks to it)
    dist.destroy_process_group()


def _zero_bench(cfg: DistributedBenchConfig, progress: TextIO | None) -> dict[str, Any]:
    import torch.multiprocessing as mp

    path = tempfile.mkdtemp(prefix="fastopt-bench-")
    if progress:
        print(f"fastopt bench: {cfg.world} processes (gloo), AdamW over {cfg.size} params ...", file=progress)
    mp.start_processes(_rank_main, args=(cfg, path), nprocs=cfg.world, start_method="spawn")
    ranks = []
    for r in range(cfg.world):
        with open(f"{path}/rank{r}.json") as f:
            ranks.append(json.load(f))
    rows = []
    for name in ranks[0]["times"]:
        slowest = [max(rank["times"][name][k] for rank in ranks) for k in range(cfg.repeats)]
        rows.append({"impl": name, "ms": _median_ms(slowest)})
    return {"kind": "distributed", "threads_per_process": ranks[0]["threads"], "rows": rows}


# ---- offload ------------------------------------------------------------------------------
def _deepspeed_adam() -> tuple[Any, str]:
    """DeepSpeed's DeepSpeedCPUAdam, or None and why not."""
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception as e:  # (ImportError, or its op failing to build)
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return DeepSpeedCPUAdam, ""


def _offload_bench(cfg: DistributedBenchConfig, progress: TextIO | None) -> dict[str, Any]:
    import torch

    import fastopt
    from fastopt.bench_measure import interleaved_times
    from fastopt.distributed import OffloadOptimizer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        fastopt.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(n, generator=gen) for n in _sizes(cfg.size)]
    grads = [(torch.randn(n, generator=gen) * 1e-3) for n in _sizes(cfg.size)]
    device = torch.device(cfg.device)
    params = [torch.nn.Parameter(x.to(torch.bfloat16).to(device)) for x in init]
    for p, g in zip(params, grads):
        p.grad = g.to(torch.bfloat16).to(device)
    offload = OffloadOptimizer(params, fastopt.AdamW, **HYPERS)

    def offload_step() -> None:
        offload.step()
        if device.type == "cuda":
            torch.cuda.current_stream().synchronize()
    steps: dict[str, Callable[[], Any]] = {"fastopt OffloadOptimizer (copies + CPU step)": offload_step}
    # The CPU step alone on host buffers as the offload step keeps them: an fp32 master, bf16 grads
    # widened to fp32 (the peers take fp32 grads), fp32 state.
    host = {name: ([torch.nn.Parameter(x.clone()) for x in init], [g.clone() for g in grads])
            for name in ("fastopt", "torch", "deepspeed")}
    for p, g in zip(*host["fastopt"]):
        p.grad = g
    steps["fastopt AdamW (CPU step alone)"] = fastopt.AdamW(host["fastopt"][0], host["fastopt"][1], **HYPERS).step
    for p, g in zip(*host["torch"]):
        p.grad = g
    steps["torch AdamW fused (CPU step alone)"] = torch.optim.AdamW(host["torch"][0], fused=True, **HYPERS).step
    ds, why = _deepspeed_adam()
    if ds is not None:
        for p, g in zip(*host["deepspeed"]):
            p.grad = g
        steps["DeepSpeedCPUAdam (CPU step alone)"] = ds(host["deepspeed"][0], adamw_mode=True, **HYPERS).step
    if progress:
        print(f"fastopt bench: offload, AdamW over {cfg.size} bf16 params on {cfg.device} ...", file=progress)
    times = interleaved_times(steps, warmup=cfg.warmup, repeats=cfg.repeats)
    rows = [{"impl": name, "ms": t * 1e3} for name, t in times.items()]
    if ds is None:
        rows.append({"impl": "DeepSpeedCPUAdam", "ms": None, "note": f"not importable ({why})"})
    return {"kind": "offload", "device": cfg.device, "rows": rows}


def run_distributed_bench(cfg: DistributedBenchConfig, progress_stream: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Runs the benchmark; a report: the configuration, environment and rows (impl, ms)."""
    report = _offload_bench(cfg, progress_stream) if cfg.offload else _zero_bench(cfg, progress_stream)
    import torch
    report.update(config=asdict(cfg), fastopt=__version__, cpu_isa=cpu_isa(), torch=torch.__version__,
                  cpus=os.cpu_count())
    return report


def format_distributed_table(report: dict[str, Any]) -> str:
    cfg = report["config"]
    if report["kind"] == "distributed":
        head = (f"ZeRO-1, AdamW, {cfg['size']}{power_of_two(cfg['size'])} fp32 params in {TENSORS} tensors, {cfg['world']} "
                f"processes (gloo), {report['threads_per_process']} threads each; median of {cfg['repeats']} "
                f"(slowest rank)")
    else:
        head = (f"Offload, AdamW, {cfg['size']}{power_of_two(cfg['size'])} bf16 params on {report['device']} (fp32 master and "
                f"state on the host); median of {cfg['repeats']}, interleaved")
    ms = {r["impl"]: r["ms"] for r in report["rows"]}
    rows = []
    pairs = {b: a for a, b in ZERO_PAIRS}
    for r in report["rows"]:
        name = r["impl"]
        if report["kind"] == "distributed":  # (rows compared in pairs: each torch row with fastopt's above it)
            group, ours = ("reduce, step, gather" if name in ZERO_PAIRS[0] else "step, gather"), ms.get(pairs.get(name))
        else:
            group = "CPU step alone" if "alone" in name or name.startswith("DeepSpeed") else "offload step"
            ours = ms.get("fastopt AdamW (CPU step alone)") if group == "CPU step alone" else None
        if r["ms"] is None:
            rows.append([group, name, "n/a", r.get("note", "")])
        else:
            speed = r["ms"] / ours if ours and not name.startswith("fastopt") else None
            rows.append([group, name, f"{r['ms']:.2f}", f"{speed:.2f}x" if speed else ""])
    env = f"fastopt {report['fastopt']} ({report['cpu_isa']}), torch {report['torch']}, {report['cpus']} CPUs"
    return "\n".join([head, env, *aligned_lines(["", "impl", "ms/step", "fastopt faster"], rows, 2)])
