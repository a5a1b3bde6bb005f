"""The ``fastopt`` command line. ``fastopt bench`` runs :mod:`fastopt.bench`."""

from __future__ import annotations

import argparse
import ast
import json
import operator
import os
import sys
from typing import Any, Callable, Sequence

_BINOPS = {ast.Pow: operator.pow, ast.Mult: operator.mul, ast.Add: operator.add,
           ast.Sub: operator.sub, ast.LShift: operator.lshift}


def parse_count(text: str) -> int:
    """A positive integer (a size, a count) from ``"33554432"``, ``"2**25"``, ``"1<<25"`` or ``"32*2**20"``.

    Only integer literals and ``** * + - <<`` are accepted (nothing is evaluated otherwise).
    """
    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, (ast.Pow, ast.LShift)) and right > 64:
                raise ValueError("exponent too large")
            return _BINOPS[type(node.op)](left, right)
        raise ValueError("not an integer expression")

    try:
        n = value(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: {e}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r} = {n}")
    return n


def _layouts(text: str) -> tuple[str, ...]:
    from .bench_layouts import check_layout_names

    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    try:
        check_layout_names(names)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return names


def _optimizers(text: str) -> tuple[str, ...]:
    from .bench import SPECS

    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in SPECS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown optimizer(s) {', '.join(bad) or '(none)'}; choose from {','.join(SPECS)}")
    return names


BENCH_DESCRIPTION = """\
Times in-place optimizer steps of fastopt against a memory-bandwidth probe and peers.

For each optimizer fastopt has, with its class's bench_hypers:
  {optimizers}
the same --size params are laid out as ONE tensor and as --tensors tensors of mixed sizes
(log-uniform over 3 orders of magnitude from a fixed seed, summing exactly to --size). Each
implementation starts from fresh copies of the same values and takes the same steps:

  fastopt        the fastopt optimizer (master_weights=True for half params)
  torch-fused    torch.optim, fused=True       (when torch is importable and --no-torch
  torch-foreach  torch.optim, foreach=True      is not given; a variant that raises is
  torch-forloop  torch.optim, foreach=False     shown as n/a with the reason)
  deepspeed-cpuadam  DeepSpeed's DeepSpeedCPUAdam (Adam, AdamW; fp32; n/a with the reason where
                 deepspeed is not importable: DS_BUILD_OPS=0 pip install deepspeed)
  numpy          a naive in-place NumPy step (ufuncs with out=, one tensor at a time)

For float16/bfloat16 params the grads are float32 and every implementation keeps fp32
master weights (the peers step the masters, then write the half params from them).

Bytes per param and step, one per stream direction: param r+w 4+4 (fp32; a half param
with its fp32 master is only written, 2), grad r 4, fp32 master r+w 4+4 (half params only),
each fp32 state r+w 4+4 (the ones the optimizer's hyperparameters use), plus a two-pass
rule's extra reads (LARS: norm pass over p and g, 8; LAMB: second pass over p, m, v, 12).
fp32: SGD 20 B, Adam/AdamW 28 B, LARS 28 B, LAMB 40 B; the header lists every optimizer's.
GB/s = bytes/param * params / time. Only torch.optim's optimizers have torch rows, only SGD,
Adam and AdamW a NumPy row.

The probe row runs fastopt's engine over ONE tensor with exactly those streams and no math
(x + 0*g); it is stepped round-robin with fastopt and torch's fused step, so their ratios
come from one interleaved run; "of probe" is fastopt's GB/s over the probe's ("no ceiling" where
above it: the probe, disturbed by other load, then bounds nothing). "fastopt faster" is the
impl's time over fastopt's ("slower" where below 1). Times are medians of --repeats steps after --warmup.
Progress goes to stderr; the table (or --json) to stdout.

--distributed N times ZeRO-1 on N local processes (gloo) instead: fastopt.distributed's
ZeroOptimizer(AdamW) against torch's ZeroRedundancyOptimizer(AdamW, fused=True), with and without
the grads' reduction; --offload times fastopt.distributed's OffloadOptimizer(AdamW) against the
CPU step alone (fastopt, torch fused, DeepSpeed's CPUAdam where importable): see
fastopt.bench_distributed.

--storage prints the storage-mode table instead: for --optimizers (default: adamw; not
LARS or LAMB), ONE tensor of --size params stepped in each way of storing params and state
(fastopt.storage_modes: fp32 params; bf16 params with an fp32 master, a uint16 remainder, a
bf16 Kahan compensation, stochastic rounding, or rounded to nearest; bf16 state, rounded to
nearest or stochastically, and 8-bit state, but for Adagrad), round-robin with the probe. A
mode's bytes per param count what its step moves, at their dtypes (AdamW: fp32 28 B, bf16 +
fp32 master 30 B, bf16 + remainder or Kahan 28 B, bf16 stochastic or nearest 24 B, bf16 state
20 B, 8-bit state 16.008 B);
"floor" is the time those bytes allow at the probe's GB/s, "floor/time" that over the mode's
time (100%: at the probe's bandwidth). Above 100% is flagged "no ceiling": the mode beat the
probe, which is then no bound for its streams.

--utilities times the fused passes around a step instead (fastopt.ParamEMA.update 12 B/param,
fastopt.GradAccumulator.add with the accumulated norm 12 B, Sophia.update_hessian with its
estimates' finiteness pass 16 B; 2 B less per bfloat16 read) over one tensor and --tensors of mixed sizes, against torch's
foreach forms and the probe of the same streams: see fastopt.bench_utilities.
"""

BENCH_EPILOG = """\
examples:
  fastopt bench
  fastopt bench --optimizers adam --repeats 5
  fastopt bench --size 2**20 --tensors 256 --dtype bfloat16 --json
  fastopt bench --device cuda --optimizers adam
  fastopt bench --device cuda --dtype bfloat16 --tensors 10000 --tensor-elems 4096
  fastopt bench --storage
  fastopt bench --storage --optimizers adamw,sgd --size 2**24
  fastopt bench --utilities --size 2**24
  fastopt bench --sweep --plot sweep.png
  fastopt bench --layout gpt2-small,bert-base,resnet-50,vit-b16 --optimizers adamw --plot layouts.png
  fastopt bench --distributed 2
  fastopt bench --offload --device cuda
"""


def build_parser() -> argparse.ArgumentParser:
    from .bench import DTYPES, SPECS

    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fastopt", description="fastopt: fused, in-place, multi-tensor optimizer steps.")
    parser.add_argument("--version", action="version", version=f"fastopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench", help="benchmark optimizer steps against a bandwidth probe, torch.optim and NumPy",
        description=BENCH_DESCRIPTION.format(optimizers=", ".join(s.fastopt_cls.__name__ for s in SPECS.values())),
        epilog=BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                       help="cpu (default) or cuda: the GPU table (needs PyTorch with CUDA), with a "
                            "device-to-device copy as the probe and torch's fused and foreach peers")
    bench.add_argument("--size", type=parse_count, default=None, metavar="N",
                       help="total params, an integer or an expression like 2**25 "
                            "(default: 2**25 on cpu, 2**28 on cuda)")
    bench.add_argument("--tensors", type=parse_count, default=None, metavar="N",
                       help="tensors of the multi-tensor layout (default: 4096 on cpu, of mixed sizes "
                            "summing to --size; 10000 on cuda, of --tensor-elems each; 1: single tensor only)")
    bench.add_argument("--tensor-elems", type=parse_count, default=4096, metavar="N",
                       help="cuda only: params per tensor of the multi-tensor layout (default: 4096)")
    bench.add_argument("--dtype", choices=list(DTYPES), default=None,
                       help="param dtype; grads and state are float32 (default: float32)")
    bench.add_argument("--optimizers", type=_optimizers, default=None, metavar="LIST",
                       help=f"comma-separated, among {','.join(SPECS)} (default: all; adamw with --storage)")
    bench.add_argument("--repeats", type=parse_count, default=10, metavar="N",
                       help="timed steps per case; the median is reported (default: 10)")
    bench.add_argument("--warmup", type=int, default=2, metavar="N",
                       help="untimed steps before timing (default: 2)")
    bench.add_argument("--threads", type=parse_count, default=None, metavar="N",
                       help="threads for fastopt and torch (default: each library's own)")
    bench.add_argument("--no-torch", dest="use_torch", action="store_false",
                       help="skip the torch.optim peers")
    bench.add_argument("--storage", action="store_true",
                       help="print the storage-mode table instead (cpu, one tensor; each mode sets its own "
                            "dtypes, so --dtype and --tensors do not apply): see above")
    bench.add_argument("--utilities", action="store_true",
                       help="time the fused passes around a step instead: fastopt.ParamEMA.update, "
                            "fastopt.GradAccumulator.add (with the norm) and Sophia.update_hessian, against "
                            "torch's foreach forms (cpu; --size, --tensors): see fastopt.bench_utilities")
    bench.add_argument("--layout", type=_layouts, default=None, metavar="LIST",
                       help="comma-separated layouts instead of the default two: single, mixed (--size, "
                            "--tensors) and the params of real models: gpt2-small, bert-base, resnet-50, vit-b16, "
                            "llama-1b (GPU only); each layout with its own probe row")
    bench.add_argument("--distributed", type=parse_count, default=None, metavar="N",
                       help="time ZeRO-1 (fastopt.distributed.ZeroOptimizer) on N local processes (gloo) "
                            "against torch's ZeroRedundancyOptimizer (AdamW; default --size 2**24): see above")
    bench.add_argument("--offload", action="store_true",
                       help="time fastopt.distributed.OffloadOptimizer (AdamW, bf16 params on --device) against "
                            "the CPU step alone: fastopt's, torch's fused, DeepSpeed's CPUAdam where importable")
    bench.add_argument("--sweep", action="store_true",
                       help="time one tensor and many tensors at every size from 2**10 to --size (default "
                            "2**26; powers of two and odd sizes) for --optimizers (default adamw), fastopt, "
                            "torch.optim's steps and DeepSpeed's where importable, round-robin: see fastopt.bench_sweep")
    bench.add_argument("--plot", default=None, metavar="FILE.png",
                       help="also draw the report (matplotlib: pip install 'fastopt[plot]'): ms/step and GB/s "
                            "against size with --sweep, else ms/step bars per layout")
    bench.add_argument("--json", action="store_true",
                       help="print a JSON report (environment and rows) instead of the table")
    return parser


def _benchmark(args: argparse.Namespace) -> tuple[Any, Callable[..., dict], Callable[[dict], str]]:
    """The benchmark that ``args`` ask for: its configuration, its run and its table.
    ValueError for options the storage table does not take."""
    from .bench import SPECS

    if args.sweep:
        from .bench_sweep import SweepConfig, format_sweep_table, run_sweep
        given = [name for name, value in (("--device cuda", args.device == "cuda"), ("--dtype", args.dtype),
                                          ("--tensors", args.tensors), ("--layout", args.layout),
                                          ("--storage", args.storage), ("--distributed", args.distributed),
                                          ("--offload", args.offload)) if value]
        if given:
            raise ValueError(f"--sweep times fp32 CPU params at its own sizes and layouts: drop {', '.join(given)}")
        cfg = SweepConfig(max_size=args.size or 2 ** 26, optimizers=args.optimizers or ("adamw",),
                          repeats=args.repeats, warmup=args.warmup, threads=args.threads, use_torch=args.use_torch)
        return cfg, run_sweep, format_sweep_table
    if args.distributed or args.offload:
        from .bench_distributed import DistributedBenchConfig, format_distributed_table, run_distributed_bench
        given = [name for name, value in (("--storage", args.storage), ("--dtype", args.dtype), ("--tensors", args.tensors),
                                          ("--layout", args.layout),
                                          ("--distributed with --offload", args.distributed and args.offload))
                 if value]
        if given:
            raise ValueError(f"--distributed and --offload time AdamW over fixed layouts: drop {', '.join(given)}")
        cfg = DistributedBenchConfig(size=args.size or 2 ** 24, world=args.distributed or 1, offload=args.offload,
                                     device=args.device, repeats=args.repeats, warmup=args.warmup,
                                     threads=args.threads)
        return cfg, run_distributed_bench, format_distributed_table
    if args.utilities:
        from .bench_utilities import UtilityBenchConfig, format_utility_table, run_utility_bench
        given = [name for name, value in (("--device cuda", args.device == "cuda"), ("--dtype", args.dtype),
                                          ("--layout", args.layout), ("--storage", args.storage),
                                          ("--optimizers", args.optimizers)) if value]
        if given:
            raise ValueError(f"--utilities times its own passes and dtypes on the CPU: drop {', '.join(given)}")
        cfg = UtilityBenchConfig(size=args.size or 2 ** 25, tensors=args.tensors or 4096, repeats=args.repeats,
                                 warmup=args.warmup, threads=args.threads, use_torch=args.use_torch)
        return cfg, run_utility_bench, format_utility_table
    if args.storage:
        from .bench_storage import StorageBenchConfig, format_storage_table, run_storage_bench
        given = [name for name, value in (("--device cuda", args.device == "cuda"), ("--dtype", args.dtype),
                                          ("--tensors", args.tensors), ("--layout", args.layout)) if value]
        if given:
            raise ValueError(f"--storage times one CPU tensor in each mode's dtypes: drop {', '.join(given)}")
        cfg = StorageBenchConfig(size=args.size or 2 ** 25, optimizers=args.optimizers or ("adamw",),
                                 repeats=args.repeats, warmup=args.warmup, threads=args.threads)
        return cfg, run_storage_bench, format_storage_table
    dtype = args.dtype or "float32"
    if args.device == "cuda":
        from .bench_cuda import CudaBenchConfig, format_cuda_table, run_cuda_bench
        cfg = CudaBenchConfig(size=args.size or 2 ** 28, tensors=args.tensors or 10000, tensor_elems=args.tensor_elems,
                              dtype=dtype, optimizers=args.optimizers or tuple(SPECS), repeats=args.repeats,
                              warmup=args.warmup, use_torch=args.use_torch, layouts=args.layout or ())
        return cfg, run_cuda_bench, format_cuda_table
    from .bench import BenchConfig, format_table, run_bench
    cfg = BenchConfig(size=args.size or 2 ** 25, tensors=args.tensors or 4096, dtype=dtype,
                      optimizers=args.optimizers or tuple(SPECS), repeats=args.repeats, warmup=args.warmup,
                      use_torch=args.use_torch, threads=args.threads, layouts=args.layout or ())
    return cfg, run_bench, format_table


def run_bench_command(args: argparse.Namespace) -> int:
    try:
        cfg, run, fmt = _benchmark(args)
        cfg.validate()
        folder = os.path.dirname(os.path.abspath(args.plot)) if args.plot else None
        if folder and not os.path.isdir(folder):  # (checked before the run, not after it)
            raise ValueError(f"--plot {args.plot}: no folder {folder}")
        report = run(cfg, progress_stream=sys.stderr)
    except (ValueError, RuntimeError) as e:
        print(f"fastopt bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else fmt(report))
    if args.plot:
        from .bench_plot import plot_report
        try:
            plot_report(report, args.plot)
        except ValueError as e:
            print(f"fastopt bench: error: {e}", file=sys.stderr)
            return 2
        print(f"fastopt bench: plot written to {args.plot}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastopt`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return run_bench_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
