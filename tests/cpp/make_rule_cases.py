"""Writes tests/cpp/rule_cases.inc: short deterministic trajectories of every rule (and its
notable variants and the step options) run through the Python API, as exact bit patterns, for
the C++ tests (tests/cpp/api/test_rule_cases.cpp) to replay through fastopt::Optimizer and the
C ABI and compare bit for bit.

    python tests/cpp/make_rule_cases.py            # rewrites tests/cpp/rule_cases.inc
    python tests/cpp/make_rule_cases.py --check    # exit 1 if the committed file is stale

tests/test_cpp_rule_cases.py regenerates the text in memory and compares it with the file.

Every case has two param groups: group 0 holds a float32 param of 5 elements and a (3, 7)
bfloat16 param with float32 master weights (or a float16 param without a master), group 1 a
float32 param of 37 elements with hyperparameters of its own. Values come from an integer
generator (exact on every platform and NumPy version), grads change at every step.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

import fastopt
from fastopt.accumulate import _AccumulateStep
from fastopt.ema import _EmaStep

OUT = Path(__file__).with_name("rule_cases.inc")

DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(ml_dtypes.bfloat16): "bf16"}
BITS = {"f32": np.uint32, "f16": np.uint16, "bf16": np.uint16}


@dataclass
class Case:
    name: str
    cls: type
    hypers: dict[str, Any]                        # every group's (the optimizer's defaults)
    group1: dict[str, Any] = field(default_factory=dict)  # group 1's own
    steps: int = 3
    low: Any = ml_dtypes.bfloat16                 # dtype of param 1 (and its grad)
    master: bool = True                           # param 1 has fp32 master weights
    options: dict[str, Any] = field(default_factory=dict)  # max_grad_norm, clip_value, ... (constructor)
    grad_scale: float | None = None               # passed to every step; the grads carry it
    nan_at: int | None = None                     # a NaN in grad 2 at this step (0-based)
    grad_size: float = 0.5                        # grads in [-grad_size, grad_size]
    expect: tuple[str, ...] = ()                  # what the trajectory must show (checked here)


CASES = [
    Case("sgd", fastopt.SGD, {"lr": 0.05, "weight_decay": 0.01}, {"lr": 0.02}),
    Case("sgd_momentum_nesterov", fastopt.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
         {"lr": 0.1, "weight_decay": 0.0}),
    Case("sgd_dampening_maximize", fastopt.SGD, {"lr": 0.03, "momentum": 0.8, "dampening": 0.3, "maximize": True},
         {"momentum": 0.5}),
    Case("sgd_sutskever", fastopt.SGD, {"lr": 0.05, "momentum": 0.9, "momentum_form": "sutskever"}, {"lr": 0.01}),
    Case("adam", fastopt.Adam, {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.01},
         {"lr": 0.02, "betas": (0.7, 0.9)}),
    Case("adam_amsgrad", fastopt.Adam, {"lr": 0.01, "betas": (0.85, 0.9), "amsgrad": True}, {"eps": 1e-4}),
    Case("adam_fp16_param", fastopt.Adam, {"lr": 0.01, "betas": (0.8, 0.95)}, {"lr": 0.03},
         low=np.float16, master=False),
    Case("adamw", fastopt.AdamW, {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.05}, {"weight_decay": 0.2}),
    Case("adamw_amsgrad_maximize", fastopt.AdamW, {"lr": 0.02, "amsgrad": True, "maximize": True},
         {"betas": (0.5, 0.75)}),
    Case("adagrad", fastopt.Adagrad, {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.01,
                                      "initial_accumulator_value": 0.1, "eps": 1e-8}, {"lr": 0.1}),
    Case("adadelta", fastopt.Adadelta, {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.01}, {"rho": 0.95}),
    Case("rmsprop", fastopt.RMSprop, {"lr": 0.01, "alpha": 0.9, "eps": 1e-6, "weight_decay": 0.01}, {"alpha": 0.5}),
    Case("rmsprop_centered_momentum", fastopt.RMSprop, {"lr": 0.01, "alpha": 0.9, "centered": True,
                                                        "momentum": 0.7}, {"lr": 0.005}),
    Case("rmsprop_centered", fastopt.RMSprop, {"lr": 0.01, "centered": True}, {"eps": 1e-3}),
    Case("adamax", fastopt.Adamax, {"lr": 0.02, "betas": (0.8, 0.95), "weight_decay": 0.01}, {"eps": 1e-4}),
    Case("nadam", fastopt.NAdam, {"lr": 0.01, "betas": (0.8, 0.95), "momentum_decay": 0.01, "weight_decay": 0.01},
         {"lr": 0.02}),
    Case("nadam_decoupled", fastopt.NAdam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
         {"weight_decay": 0.0}),
    # rho_t > 5 from step 6 on: 7 steps take both branches.
    Case("radam", fastopt.RAdam, {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.01}, {"lr": 0.03}, steps=7),
    Case("radam_decoupled", fastopt.RAdam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
         {"betas": (0.9, 0.95)}, steps=7),
    Case("adabelief", fastopt.AdaBelief, {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-12, "weight_decay": 0.01},
         {"lr": 0.02}),
    Case("adabelief_amsgrad_decoupled", fastopt.AdaBelief, {"lr": 0.01, "amsgrad": True, "weight_decouple": True,
                                                            "weight_decay": 0.05}, {"betas": (0.7, 0.9)}),
    Case("lion", fastopt.Lion, {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.1}, {"lr": 0.003}),
    Case("lars", fastopt.LARS, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "trust_coefficient": 0.02},
         {"lr": 0.05}),
    Case("lars_exclude_1d", fastopt.LARS, {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.01, "exclude_1d": True,
                                           "trust_coefficient": 0.05}, {"momentum": 0.0}),
    Case("lamb", fastopt.LAMB, {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.01, "max_trust": 10.0},
         {"lr": 0.02}),
    Case("lamb_no_bias_correction", fastopt.LAMB, {"lr": 0.01, "bias_correction": False, "weight_decay": 0.1},
         {"eps": 1e-3}),
    # Adafactor: param 1 (3, 7) keeps row_var and col_var, the others a variance; rho = lr, then 1/sqrt(t).
    Case("adafactor", fastopt.Adafactor, {"lr": 0.05, "weight_decay": 0.01, "eps": (1e-3, 1e-3)},
         {"lr": 0.8, "d": 2.0, "beta2_decay": -0.6}),
    Case("adafactor_maximize_fp16_param", fastopt.Adafactor, {"lr": 0.05, "maximize": True}, {"weight_decay": 0.1},
         low=np.float16, master=False),
    # Warmup 2 of 4 steps: the weights' ramp and their plateau.
    Case("adamw_schedule_free", fastopt.AdamWScheduleFree, {"lr": 0.02, "betas": (0.8, 0.95), "weight_decay": 0.05,
                                                           "warmup_steps": 2, "r": 0.5},
         {"lr": 0.01, "weight_lr_power": 1.0}, steps=4),
    Case("sgd_schedule_free_maximize", fastopt.SGDScheduleFree, {"lr": 0.1, "momentum": 0.8, "warmup_steps": 3,
                                                                 "maximize": True}, {"weight_decay": 0.1}, steps=4),
    Case("sophia", fastopt.Sophia, {"lr": 0.01, "betas": (0.8, 0.95), "rho": 0.5, "eps": 0.25, "weight_decay": 0.1},
         {"lr": 0.02, "maximize": True}),
    # The utility rules (fastopt.ParamEMA, fastopt.GradAccumulator): bound as optimizers here.
    Case("ema", _EmaStep, {"decay": 0.9, "warmup": True, "warmup_power": 0.5}, {"decay": 0.5, "update_after_step": 1}),
    Case("accumulate", _AccumulateStep, {"scale": 0.5}, {"scale": 2.0, "first": True}),
    # The step options.
    Case("adam_grad_scale", fastopt.Adam, {"lr": 0.01, "betas": (0.8, 0.95)}, {"lr": 0.02}, grad_scale=1024.0),
    Case("adam_max_grad_norm", fastopt.Adam, {"lr": 0.01}, {"lr": 0.02},
         options={"max_grad_norm": 0.75}, expect=("clipped",)),
    Case("adam_clip_value", fastopt.Adam, {"lr": 0.01}, {"lr": 0.02},
         options={"clip_value": 0.125}, expect=("clamped",)),
    Case("adam_skip_nonfinite", fastopt.Adam, {"lr": 0.01}, {"lr": 0.02}, steps=4,
         options={"skip_nonfinite": True}, nan_at=1, expect=("skipped",)),
    Case("adam_diagnostics", fastopt.Adam, {"lr": 0.01, "weight_decay": 0.01}, {"lr": 0.02},
         options={"diagnostics": True}),
    Case("lamb_all_options", fastopt.LAMB, {"lr": 0.01, "weight_decay": 0.01}, {"lr": 0.02}, steps=4,
         grad_scale=256.0, options={"max_grad_norm": 1.0, "clip_value": 0.2, "diagnostics": True, "skip_nonfinite": True},
         nan_at=2, expect=("clipped", "clamped", "skipped")),
    Case("sgd_schedule_free_all_options", fastopt.SGDScheduleFree, {"lr": 0.1, "warmup_steps": 2}, {"lr": 0.05},
         steps=4, grad_scale=64.0, options={"max_grad_norm": 1.0, "clip_value": 0.2, "diagnostics": True,
                                            "skip_nonfinite": True}, nan_at=1, expect=("clipped", "clamped", "skipped")),
    Case("sgd_report_grad_norm", fastopt.SGD, {"lr": 0.05, "momentum": 0.9}, {"lr": 0.02},
         options={"report_grad_norm": True, "skip_nonfinite": True}, nan_at=0, expect=("skipped",)),
]


class Numbers:
    """Exact pseudo-random values: a 64-bit LCG, each value k / 2**16 for an integer k."""

    def __init__(self, seed: int):
        self.state = seed * 0x9E3779B97F4A7C15 % 2**64

    def uniform(self, n: int, size: float) -> np.ndarray:
        out = np.empty(n, np.float64)
        for i in range(n):
            self.state = (self.state * 6364136223846793005 + 1442695040888963407) % 2**64
            out[i] = ((self.state >> 40) % 2**17 - 2**16) / 2**16 * size  # in [-size, size)
        return out


SHAPES = ((5,), (3, 7), (37,))  # params 0 and 1 in group 0, param 2 in group 1


def run(case: Case) -> dict[str, Any]:
    """The case's trajectory through the Python API: inputs and every observed result."""
    rng = Numbers(sum(map(ord, case.name)))
    dtypes = (np.dtype(np.float32), np.dtype(case.low), np.dtype(np.float32))
    params = [rng.uniform(math.prod(s), 1.0).astype(d).reshape(s) for s, d in zip(SHAPES, dtypes)]
    grads = [np.zeros(s, d) for s, d in zip(SHAPES, dtypes)]
    init = [p.copy() for p in params]
    opt = case.cls([{"params": params[:2], "grads": grads[:2]},
                    {"params": params[2:], "grads": grads[2:], **case.group1}],
                   master_weights=case.master, **case.options, **case.hypers)
    state_init = [[opt.state[i][n].copy() for n in opt.state_names if n in opt.state[i]] for i in range(3)]
    masters_init = [None if m is None else m.copy() for m in opt.master_params]
    scale = case.grad_scale or 1.0
    steps, step_grads = [], []
    for k in range(case.steps):
        values = [rng.uniform(g.size, case.grad_size).reshape(g.shape) * scale for g in grads]
        if case.nan_at == k:
            values[2][3] = np.nan
        for g, v in zip(grads, values):
            g[...] = v.astype(g.dtype)
        step_grads.append([g.copy() for g in grads])
        rule_steps = opt._rule_steps()
        r = opt.step(case.grad_scale)
        steps.append({"rule_steps": rule_steps, "result": r, "grads": step_grads[-1]})
    check_expectations(case, steps)
    hypers = [{n: getattr(h, n) for n in dir(h) if not n.startswith("_") and n not in ("check", "num_state")}
              for h in opt._hypers]
    state_final = [[opt.state[i][n].copy()
                    for n in list(opt.state_shapes(params[i].shape))[:opt._hypers[opt._group_of[i]].num_state()]]
                   for i in range(3)]
    return {"init": init, "masters_init": masters_init, "state_init": state_init, "steps": steps, "hypers": hypers,
            "params": [p.copy() for p in params], "masters": [None if m is None else m.copy() for m in opt.master_params],
            "state": state_final, "opt": opt}


def check_expectations(case: Case, steps: list[dict[str, Any]]) -> None:
    """The option a case is about must act on its trajectory (else the case tests nothing)."""
    results = [s["result"] for s in steps]
    for k, s in enumerate(steps):  # a case is replayed through the C ABI, whose steps count as Python's
        taken = sum(not r.skipped for r in results[:k])
        natural = all(r == taken + 1 for r in s["rule_steps"])
        if not natural and case.cls is not fastopt.SGD:
            raise AssertionError(f"{case.name}: step {k}: rule steps {s['rule_steps']}, not {taken + 1}")
    for what in case.expect:
        if what == "skipped":
            ok = any(r.skipped for r in results)
        elif what == "clipped":
            ok = all(r.grad_norm > case.options["max_grad_norm"] for r in results if not r.skipped)
        elif what == "clamped":
            limit = case.options["clip_value"] * (case.grad_scale or 1.0)
            ok = all(np.nanmax(np.abs(g.astype(np.float32))) > limit for s in steps for g in s["grads"])
        else:
            raise ValueError(what)
        if not ok:
            raise AssertionError(f"{case.name}: the trajectory does not show '{what}'")


# ---- C++ text ---------------------------------------------------------------------------------

def bits(a: np.ndarray) -> str:
    dt = DTYPES[a.dtype]
    words = np.ascontiguousarray(a).reshape(-1).view(BITS[dt])
    width = 8 if dt == "f32" else 4
    return "{" + ", ".join(f"0x{int(w):0{width}x}" for w in words) + "}"


def real(x: float) -> str:
    if math.isnan(x):
        return "NAN"
    if math.isinf(x):
        return "INFINITY" if x > 0 else "-INFINITY"
    return float(x).hex()


def reals(xs: Any) -> str:
    return "{}" if xs is None else "{" + ", ".join(real(float(x)) for x in xs) + "}"


def cxx_case(case: Case, r: dict[str, Any]) -> str:
    o = case.options
    lines = [f"  {{\"{case.name}\", \"{r['opt'].rule}\",",
             "   /*groups*/ {"]
    for h in r["hypers"]:
        fields = ", ".join(f"{{\"{n}\", {real(float(v))}}}" for n, v in h.items())
        lines.append(f"     {{{fields}}},")
    lines.append("   },")
    lines.append(f"   /*options*/ {{/*max_grad_norm*/ {real(o.get('max_grad_norm') or 0.0)}, "
                 f"/*clip_value*/ {real(o.get('clip_value') or 0.0)}f, "
                 f"/*skip_nonfinite*/ {str(bool(o.get('skip_nonfinite'))).lower()}, "
                 f"/*grad_norm*/ {str(bool(o.get('report_grad_norm'))).lower()}, "
                 f"/*diagnostics*/ {str(bool(o.get('diagnostics'))).lower()}}},")
    lines.append("   /*params*/ {")
    for i in range(3):
        p = r["params"][i]
        dt = DTYPES[p.dtype]
        master = r["masters"][i]
        lines.append(f"     {{/*group*/ {0 if i < 2 else 1}, /*shape*/ {{{', '.join(map(str, p.shape))}}}, "
                     f"DType::{dt}, DType::{DTYPES[r['steps'][0]['grads'][i].dtype]}, "
                      f"/*master*/ {str(master is not None).lower()},")
        lines.append(f"      /*init*/ {bits(r['init'][i])},")
        lines.append(f"      /*master_init*/ {'{}' if master is None else bits(r['masters_init'][i])},")
        lines.append(f"      /*state_init*/ {{{', '.join(bits(s) for s in r['state_init'][i])}}},")
        lines.append(f"      /*grads*/ {{{', '.join(bits(s['grads'][i]) for s in r['steps'])}}},")
        lines.append(f"      /*final*/ {bits(p)},")
        lines.append(f"      /*master_final*/ {'{}' if master is None else bits(master)},")
        lines.append(f"      /*state_final*/ {{{', '.join(bits(s) for s in r['state'][i])}}}}},")
    lines.append("   },")
    lines.append("   /*steps*/ {")
    for s in r["steps"]:
        res = s["result"]
        d = res.diagnostics
        diag = "std::nullopt" if d is None else (
            f"DiagnosticsCase{{{reals(d.grad_norm)}, {{{', '.join(str(int(x)) for x in d.nonfinite_grads)}}}, "
            f"{reals(d.param_norm)}, {reals(d.update_norm)}, {reals(d.update_ratio)}}}")
        norm = "std::nullopt" if res.grad_norm is None else real(res.grad_norm)
        lines.append(f"     {{/*rule_steps*/ {{{', '.join(map(str, s['rule_steps']))}}}, "
                     f"/*grad_scale*/ {real(case.grad_scale or 1.0)}, /*skipped*/ {str(res.skipped).lower()}, "
                     f"/*grad_norm*/ {norm}, /*diagnostics*/ {diag}}},")
    lines.append("   }},")
    return "\n".join(lines)


def generate() -> str:
    parts = ["// Generated by tests/cpp/make_rule_cases.py from fastopt's Python API: do not edit.",
             "// Regenerate: python tests/cpp/make_rule_cases.py (tests/test_cpp_rule_cases.py checks it).",
             "// Bits: float32 values as uint32, float16/bfloat16 as uint16; reals as hex literals.",
             "// clang-format off",
             "const std::vector<RuleCase> kRuleCases = {"]
    parts += [cxx_case(case, run(case)) for case in CASES]
    parts.append("};")
    return "\n".join(parts) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    args = ap.parse_args()
    text = generate()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
