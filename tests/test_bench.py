"""Smoke tests of ``fastopt bench`` at tiny sizes (the numbers are not checked, only their shape)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import fastopt
import fastopt.cuda
from fastopt import bench
from fastopt.bench_storage import format_storage_table, storage_streams
from fastopt.cli import main, parse_count
from fastopt.storage_modes import MODES

TINY = ["--size", "4096", "--tensors", "8", "--repeats", "2", "--warmup", "1"]
ENV_KEYS = {"cpu_isa", "threads", "torch", "size", "tensors", "dtype", "rows"}
ROW_KEYS = {"optimizer", "layout", "impl", "ms_per_step", "gb_per_s", "bytes_per_param",
            "fraction_of_probe", "speedup_vs"}


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run_json(capsys, *args: str) -> dict:
    assert main(["bench", *TINY, "--json", *args]) == 0
    out, err = capsys.readouterr()
    assert "[1/" in err  # progress goes to stderr, the report alone to stdout
    return json.loads(out)


def check_rows(report: dict, optimizers: list[str], impls, bytes_per_param: dict) -> None:
    """impls: the impls every optimizer has, or a function of the optimizer's name giving them."""
    assert ENV_KEYS <= report.keys()
    rows = report["rows"]
    impls_of = impls if callable(impls) else (lambda o: impls)
    got = {(r["optimizer"], r["layout"], r["impl"]) for r in rows}
    want = {(o, "single", "probe") for o in optimizers}
    want |= {(o, layout, i) for o in optimizers for layout in ("single", "multi") for i in impls_of(o)}
    assert got == want and len(rows) == len(want)
    fixed = report["fixed_cost_us"]  # AdamW over 1000 one-element tensors
    assert fixed["fastopt"] > 0 and set(fixed) <= {"fastopt", "torch-fused"}
    for r in rows:
        assert ROW_KEYS <= r.keys()
        # the probe moves the elementwise streams once (not a 2nd pass: LARS, LAMB, Adafactor) and
        # writes every state stream (Sophia's Hessian average, which its update only reads, too)
        extra = {"lars": -8, "lamb": -12, "adafactor": -12, "sophia": 4}
        extra = extra.get(r["optimizer"], 0) if r["impl"] == "probe" else 0
        assert r["bytes_per_param"] == bytes_per_param[r["optimizer"]] + extra
        if r["error"]:
            assert r["impl"].startswith(("torch-", "deepspeed-")) and r["ms_per_step"] is None
            continue
        assert r["ms_per_step"] > 0 and r["gb_per_s"] > 0
        assert r["gb_per_s"] == pytest.approx(
            r["bytes_per_param"] * report["size"] / (r["ms_per_step"] * 1e-3) / 1e9, rel=0.01)
        if r["impl"] in ("fastopt", "probe"):
            assert r["fraction_of_probe"] > 0
        else:
            assert r["fraction_of_probe"] is None
        if r["impl"] == "probe":
            assert r["fraction_of_probe"] == 1.0
        else:
            assert r["speedup_vs"] > 0
            assert r["max_abs_diff"] is None if r["impl"] == "fastopt" else r["max_abs_diff"] < 1e-3
        if r["impl"] == "fastopt":
            assert r["speedup_vs"] == 1.0


def test_json_fp32_all_optimizers(capsys):
    report = run_json(capsys)
    assert report["size"] == 4096 and report["tensors"] == 8 and report["dtype"] == "float32"
    assert isinstance(report["threads"], int) and report["threads"] >= 1
    torch = _torch_available()
    if torch:
        assert isinstance(report["torch"], str)
    paper_only = [n for n, s in bench.SPECS.items() if s.torch_name is None]  # torch.optim has none of these

    def impls(o):
        return (["fastopt"] + (["numpy"] if o in ("sgd", "adam", "adamw") else [])
                + (["torch-fused", "torch-foreach", "torch-forloop"] if torch and o not in paper_only else [])
                + (["deepspeed-cpuadam"] if torch and o in ("adam", "adamw") else []))

    bpp = {"sgd": 20, "adam": 28, "adamw": 28, "adagrad": 20, "adadelta": 28, "rmsprop": 20, "adamax": 28,
           "nadam": 28, "radam": 28, "adabelief": 28, "lion": 20, "lars": 28, "lamb": 40, "sophia": 24,
           "adamwschedulefree": 28, "sgdschedulefree": 20,
           "adafactor": 32}  # (the bench's tensors are 1-D: Adafactor's vectors, with a variance)
    check_rows(report, list(bpp), impls, bpp)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_json_half_params_no_torch(capsys, dtype):
    report = run_json(capsys, "--dtype", dtype, "--optimizers", "adamw,sgd", "--no-torch")
    assert report["torch"] is None and report["dtype"] == dtype
    check_rows(report, ["adamw", "sgd"], ["fastopt", "numpy"], {"sgd": 22, "adamw": 30})


@pytest.fixture
def restore_threads():
    import fastopt

    before = fastopt.get_num_threads()
    torch_before = None
    if _torch_available():
        import torch
        torch_before = torch.get_num_threads()
    yield
    fastopt.set_num_threads(before)
    if torch_before is not None:
        import torch
        torch.set_num_threads(torch_before)


def test_table(capsys, restore_threads):
    assert main(["bench", *TINY, "--optimizers", "adam", "--no-torch", "--threads", "1"]) == 0
    out, _ = capsys.readouterr()
    assert "28 B = param r+w 4+4, grad r 4, exp_avg r+w 4+4, exp_avg_sq r+w 4+4" in out
    assert "1 threads" in out
    for impl in ("probe", "fastopt", "numpy"):
        assert f" {impl} " in out or out.rstrip().endswith(impl)
    assert "8 tensors" in out and "1 tensor " in out


@pytest.mark.parametrize("name", ["torch-broken", "torch-fused"])  # timed alone / interleaved
def test_failing_peer_is_na(capsys, monkeypatch, name):
    def broken(spec, layout, data):
        raise RuntimeError("not supported here\nsecond line")

    impls = (bench.IMPLS[0], bench.Impl(name, broken, needs_torch=True))
    monkeypatch.setattr(bench, "IMPLS", impls)
    report = run_json(capsys, "--optimizers", "sgd")
    broken_rows = [r for r in report["rows"] if r["impl"] == name]
    if report["torch"] is None:
        assert not broken_rows
        return
    assert len(broken_rows) == 2
    for r in broken_rows:
        assert r["error"] == "RuntimeError: not supported here"
        assert r["ms_per_step"] is None and r["speedup_vs"] is None
    assert main(["bench", *TINY, "--optimizers", "sgd"]) == 0
    assert "n/a" in capsys.readouterr().out


def test_subprocess_module():
    proc = subprocess.run(
        [sys.executable, "-m", "fastopt", "bench", *TINY, "--optimizers", "sgd", "--no-torch", "--json"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    check_rows(report, ["sgd"], ["fastopt", "numpy"], {"sgd": 20})
    assert "[1/4] sgd probe, 1 tensor fastopt, 8 tensors fastopt (interleaved)" in proc.stderr
    assert "[3/4] sgd 8 tensors numpy" in proc.stderr
    assert "[4/4] fixed cost: adamw, 1000 tensors of 1 element" in proc.stderr


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "bench" in capsys.readouterr().err


def test_version(capsys):
    import fastopt

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"fastopt {fastopt.__version__}\n"


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--size", "--tensors", "--dtype", "--optimizers", "--threads", "--no-torch",
                 "--storage", "--distributed", "--offload", "--json", "28 B", "probe", "floor/time", "no ceiling"):
        assert word in out


@pytest.mark.parametrize("argv", [["--size", "2**"], ["--size", "0"], ["--optimizers", "lambda"],
                                  ["--dtype", "int8"], ["--size", "__import__('os')"]])
def test_bad_arguments(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    assert e.value.code == 2


def test_tensors_larger_than_size(capsys):
    assert main(["bench", "--size", "64", "--tensors", "65"]) == 2
    assert "tensors" in capsys.readouterr().err


@pytest.mark.parametrize("text,value", [("4096", 4096), ("2**25", 2 ** 25), ("1<<20", 2 ** 20),
                                        ("3*2**10", 3072), (" 2 ** 4 ", 16)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("total,count", [(4096, 8), (2 ** 25, 4096), (100, 100), (1000, 1)])
def test_tensor_sizes(total, count):
    sizes = bench.tensor_sizes(total, count)
    assert len(sizes) == count and sum(sizes) == total and min(sizes) >= 1
    assert sizes == bench.tensor_sizes(total, count)  # deterministic
    if count >= 100 and total // count >= 1000:
        assert max(sizes) / min(sizes) >= 100  # sizes span 2+ orders of magnitude


def test_streams_bytes():
    f32, bf16 = bench.DTYPES["float32"], bench.DTYPES["bfloat16"]
    assert sum(s.bytes for s in bench.SPECS["sgd"].streams(f32)) == 20
    assert sum(s.bytes for s in bench.SPECS["adam"].streams(f32)) == 28
    assert sum(s.bytes for s in bench.SPECS["adamw"].streams(bf16)) == 30  # the master is read, the param only written
    assert sum(s.bytes for s in bench.SPECS["sgd"].streams(bf16)) == 22


# ---- fastopt bench --storage ------------------------------------------------------------------

STORAGE_TINY = ["bench", "--storage", "--size", "4096", "--repeats", "2", "--warmup", "1"]
# Bytes per param and step of each mode, worked out by hand: param (fp32 r+w 4+4, bf16 r+w 2+2,
# bf16 beside an fp32 master w 2), grad r 4, what keeps the rest of a bf16 param's value (fp32
# master r+w 4+4, uint16 remainder or bf16 compensation r+w 2+2, nothing) and the fp32 state
# r+w 4+4 each: AdamW's exp_avg and exp_avg_sq (16), SGD's momentum_buffer (8).
STORAGE_BYTES = {
    "fp32": {"adamw": 8 + 4 + 16, "sgd": 8 + 4 + 8},  # 28, 20
    "bf16 + fp32 master": {"adamw": 2 + 4 + 8 + 16, "sgd": 2 + 4 + 8 + 8},  # 30, 22
    "bf16 + remainder": {"adamw": 4 + 4 + 4 + 16, "sgd": 4 + 4 + 4 + 8},  # 28, 20
    "bf16 + Kahan": {"adamw": 4 + 4 + 4 + 16, "sgd": 4 + 4 + 4 + 8},  # 28, 20
    "bf16 + stochastic rounding": {"adamw": 4 + 4 + 16, "sgd": 4 + 4 + 8},  # 24, 16
    "bf16 round-to-nearest": {"adamw": 4 + 4 + 16, "sgd": 4 + 4 + 8},  # 24, 16
    "fp32 + bf16 state": {"adamw": 8 + 4 + 8, "sgd": 8 + 4 + 4},  # 20, 16
    "fp32 + bf16 state, stochastic": {"adamw": 8 + 4 + 8, "sgd": 8 + 4 + 4},
    # 8-bit: a byte read and written per state element, and a float32 absmax per 2048
    "fp32 + 8-bit state": {"adamw": 8 + 4 + 4 + 2 * 8 / 2048, "sgd": 8 + 4 + 2 + 8 / 2048},
    "bf16 + remainder + 8-bit state": {"adamw": 4 + 4 + 4 + 4 + 2 * 8 / 2048, "sgd": 4 + 4 + 4 + 2 + 8 / 2048},
}


def test_storage_leaves_out_what_the_optimizer_cannot_keep(capsys):
    """Adagrad keeps no 8-bit state: its table has every other mode (bf16 state included)."""
    assert main([*STORAGE_TINY, "--optimizers", "adagrad", "--json"]) == 0
    modes = [r["mode"] for r in json.loads(capsys.readouterr().out)["rows"]]
    assert modes == ["probe", *(m for m in STORAGE_BYTES if "8-bit" not in m)]


def test_storage_json(capsys):
    assert main([*STORAGE_TINY, "--optimizers", "adamw,sgd", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    assert [(r["optimizer"], r["mode"]) for r in rows] == [
        (o, m) for o in ("adamw", "sgd") for m in ("probe", *STORAGE_BYTES)]  # every mode, in the table's order
    probe = {}
    for r in rows:
        if r["mode"] == "probe":  # the optimizer's fp32 streams
            assert r["bytes_per_param"] == STORAGE_BYTES["fp32"][r["optimizer"]] and r["floor_fraction"] == 1.0
            probe = r
            continue
        assert r["bytes_per_param"] == STORAGE_BYTES[r["mode"]][r["optimizer"]]
        assert r["ms_per_step"] > 0
        assert r["gb_per_s"] == pytest.approx(r["bytes_per_param"] * 4096 / (r["ms_per_step"] * 1e-3) / 1e9)
        floor_ms = r["bytes_per_param"] * 4096 / (probe["gb_per_s"] * 1e9) * 1e3
        assert r["floor_ms"] == pytest.approx(floor_ms)
        assert r["floor_fraction"] == pytest.approx(floor_ms / r["ms_per_step"])
        assert r["probe_is_ceiling"] == (r["floor_fraction"] <= 1.0)


def test_storage_model_matches_the_arrays():
    """Each mode's streams, less the grad, are the arrays the optimizer keeps: the param and
    what it allocates (master, remainder or compensation, state) at the modeled dtypes."""
    n = 4096
    for name in ("adamw", "sgd"):
        spec = bench.SPECS[name]
        for mode in MODES:
            params = [np.zeros(n, mode.dtype)]
            opt = spec.fastopt_cls(params, [np.zeros(n, np.float32)], **mode.options, **spec.hypers)
            kept = params[0].nbytes + sum(a.nbytes for a in opt.state[0].values())
            modeled = sum(s.dtype.itemsize / s.block for s in storage_streams(spec, mode) if s.name != "grad")
            assert kept == modeled * n, (name, mode.label)


def test_storage_table(capsys):
    assert main([*STORAGE_TINY, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    remainder, kahan = (next(r for r in report["rows"] if r["mode"] == m) for m in ("bf16 + remainder", "bf16 + Kahan"))
    remainder.update(floor_fraction=1.07, probe_is_ceiling=False)  # faster than its bytes allow
    kahan.update(floor_fraction=0.95, probe_is_ceiling=True)
    text = format_storage_table(report)
    assert "30 B = param w 2, grad r 4, master r+w 4+4, exp_avg r+w 4+4, exp_avg_sq r+w 4+4" in text
    table = {re.split(r"\s{2,}", line)[1]: line for line in text.splitlines() if line.startswith("adamw ")}
    assert list(table) == ["probe", *STORAGE_BYTES]
    assert table["bf16 + remainder"].endswith("107% no ceiling")
    assert table["bf16 + Kahan"].endswith(" 95%")
    assert "\nno ceiling: faster than its bytes allow" in text
    remainder.update(floor_fraction=0.99, probe_is_ceiling=True)
    assert "no ceiling" not in format_storage_table(report)


@pytest.mark.parametrize("argv,why", [(["--dtype", "bfloat16"], "drop --dtype"), (["--tensors", "8"], "drop --tensors"),
                                      (["--device", "cuda"], "drop --device cuda"),
                                      (["--optimizers", "adamw,lamb"], "other pass of lamb")])
def test_storage_refuses(capsys, argv, why):
    assert main([*STORAGE_TINY, *argv]) == 2
    assert why in capsys.readouterr().err


def test_cuda_device_without_gpu_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(fastopt.cuda, "cuda_available", lambda: False)  # as on a machine without one
    assert main(["bench", "--device", "cuda", "--size", "1024", "--tensors", "2", "--tensor-elems", "8"]) == 2
    err = capsys.readouterr().err
    assert "fastopt bench: error:" in err and ("CUDA" in err or "PyTorch" in err)


@pytest.mark.cuda
def test_cuda_bench_runs_and_compares(capsys):
    assert main(["bench", "--device", "cuda", "--size", "2**16", "--tensors", "64", "--tensor-elems", "1000",
                 "--optimizers", "adam", "--repeats", "3", "--warmup", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    impls = {(r["layout"], r["impl"]) for r in report["rows"]}
    assert {("single", "probe"), ("single", "fastopt"), ("multi", "fastopt"), ("single", "torch-fused")} <= impls
    for r in report["rows"]:
        if r["impl"].startswith("torch") and r["error"] is None:
            assert r["max_abs_diff"] < 1e-5, r
        if r["impl"] == "fastopt":
            assert 0 < r["fraction_of_probe"] and r["ms_per_step"] > 0


def test_the_table_flags_a_probe_that_is_no_ceiling_and_a_faster_peer():
    from fastopt.bench_report import table_lines

    base = {"optimizer": "sgd", "layout": "single", "num_tensors": 1, "gb_per_s": 30.0, "bytes_per_param": 20,
            "max_abs_diff": None, "error": None}
    rows = [{**base, "impl": "fastopt", "ms_per_step": 0.70, "fraction_of_probe": 1.18, "speedup_vs": 1.0},
            {**base, "impl": "torch-forloop", "ms_per_step": 0.47, "fraction_of_probe": None, "speedup_vs": 0.67},
            {**base, "impl": "torch-fused", "ms_per_step": 0.90, "fraction_of_probe": None, "speedup_vs": 1.29}]
    fastopt_line, forloop, fused = table_lines(rows)[1:]
    assert "no ceiling" in fastopt_line and "118%" not in fastopt_line
    assert forloop.split()[-2:] == ["(slower)", "-"] and "0.67x (slower)" in forloop
    assert fused.split()[-2:] == ["1.29x", "-"]


def test_deepspeed_is_a_peer_of_adam_where_importable(capsys):
    """DeepSpeedCPUAdam runs beside Adam and AdamW, interleaved with fastopt; where deepspeed is
    not installed, its rows say why."""
    if not _torch_available():
        pytest.skip("torch is not installed")
    report = run_json(capsys, "--optimizers", "adamw,sgd")
    ds = [r for r in report["rows"] if r["impl"] == "deepspeed-cpuadam"]
    assert {(r["optimizer"], r["layout"]) for r in ds} == {("adamw", "single"), ("adamw", "multi")}
    try:
        import deepspeed.ops.adam  # noqa: F401
    except ImportError:
        assert all(r["error"].startswith(("ModuleNotFoundError", "ImportError")) for r in ds)
    else:
        assert all(r["error"] is None and r["max_abs_diff"] < 1e-5 for r in ds)


def test_progress_estimates_the_time_left_from_the_work_done():
    import io

    from fastopt.bench_report import Progress

    now = [100.0]
    out = io.StringIO()
    progress = Progress(3, out, weights=[1, 1, 2], clock=lambda: now[0])
    progress.start("a")
    now[0] += 10
    progress.end("done")
    progress.start("b")
    progress.end("done")
    now[0] += 50
    progress.start("c")
    assert out.getvalue().splitlines() == [
        "[1/3] a ... done",
        "[2/3] b (0:10 elapsed, about 0:30 left at the pace so far) ... done",
        "[3/3] c (1:00 elapsed, about 1:00 left at the pace so far) ... "]


def test_each_timed_step_follows_untimed_steps_of_its_own():
    from fastopt.bench_measure import interleaved_times

    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    times = interleaved_times(steps, warmup=1, repeats=2, settle=0.0)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 2  # (a settle of 0: one untimed step before each)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    calls.clear()
    interleaved_times(steps, warmup=0, repeats=3)  # every one takes the same number of steps
    assert calls.count("a") == calls.count("b") > 3


def test_own_pace_settles_each_implementation_for_its_own_time():
    from fastopt.bench_measure import interleaved_times

    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.004)

    steps = {"fast": lambda: calls.append("fast"), "slow": slow}
    times = interleaved_times(steps, warmup=1, repeats=2, settle=0.01, own_pace=True)
    assert times.untimed == 0
    # The fast one steps for 10 ms before each timed step (many steps), the slow one a few.
    assert calls.count("fast") > 10 * calls.count("slow")
    assert 2 + 2 * 2 <= calls.count("slow") <= 2 * 5
