"""fastopt bench --utilities (python/fastopt/bench_utilities.py): every pass, dtype, layout and
implementation has a row with its bytes; the table's text; bad configurations refused."""

from __future__ import annotations

import json

import pytest

from fastopt.bench_utilities import UTILITIES, UtilityBenchConfig, format_utility_table, run_utility_bench
from fastopt.cli import main

TINY = ["bench", "--utilities", "--size", "4096", "--tensors", "7", "--repeats", "2", "--warmup", "1"]


def test_rows_and_bytes(capsys):
    assert main([*TINY, "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert "[1/" in err
    got = {(r["utility"], r["dtype"], r["layout"], r["impl"]) for r in report["rows"]}
    impls = {"ema": ("probe", "fastopt", "torch-foreach"), "accumulate": ("probe", "fastopt", "torch-foreach"),
             "sophia-hessian": ("probe", "fastopt")}
    assert got == {(u, d, layout, i) for u in UTILITIES for d in ("float32", "bfloat16")
                   for layout in ("single", "mixed 7") for i in impls[u]}
    for r in report["rows"]:
        extra = 0 if r["utility"] != "sophia-hessian" or r["impl"] == "probe" else (4 if r["dtype"] == "float32" else 2)
        assert r["bytes_per_param"] == (12 if r["dtype"] == "float32" else 10) + extra
        assert r["ms_per_step"] > 0 and r["gb_per_s"] > 0
        assert r["impl"] != "probe" or r["fraction_of_probe"] == 1.0
    text = format_utility_table(report)
    assert "accumulate bfloat16: 10 B = accumulator r+w 4+4, grad r 2" in text
    assert "ema float32: 12 B = average r+w 4+4, param r 4" in text


def test_no_torch_has_no_peer_rows():
    report = run_utility_bench(UtilityBenchConfig(size=64, tensors=1, repeats=1, warmup=0, use_torch=False),
                               progress_stream=None)
    assert {r["impl"] for r in report["rows"]} == {"probe", "fastopt"}
    assert {r["layout"] for r in report["rows"]} == {"single"}


@pytest.mark.parametrize("args, message", [
    (["--dtype", "bfloat16"], "--utilities times its own passes and dtypes on the CPU: drop --dtype"),
    (["--optimizers", "adamw"], "drop --optimizers"),
    (["--tensors", "5000"], "tensors must be in [1, size], got 5000"),
])
def test_bad_configurations(capsys, args, message):
    assert main([*TINY, *args]) == 2
    assert message in capsys.readouterr().err
