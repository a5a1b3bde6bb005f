"""``fastopt bench --sweep`` (fastopt.bench_sweep) at tiny sizes."""

from __future__ import annotations

import json

import pytest

from fastopt.bench_sweep import many, sweep_sizes
from fastopt.cli import main


def test_sizes_are_the_powers_of_two_and_odd_sizes_between():
    assert sweep_sizes(2 ** 12) == [1024, 1537, 2048, 3073, 4096]
    assert sweep_sizes(5000) == [1024, 1537, 2048, 3073, 4096]
    assert sweep_sizes(2 ** 26)[-1] == 2 ** 26 and len(sweep_sizes(2 ** 26)) == 33
    assert [many(s) for s in (1024, 2 ** 20, 2 ** 26)] == [2, 1024, 4096]


def test_sweep_rows_and_table(capsys):
    argv = ["bench", "--sweep", "--size", "2**11", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    assert {(r["size"], r["layout"]) for r in rows} == {(s, layout) for s in (1024, 1537, 2048)
                                                        for layout in ("single", "multi")}
    assert {r["impl"] for r in rows} == {"fastopt", "torch-fused", "torch-foreach", "torch-forloop", "deepspeed-cpuadam"}
    for r in rows:
        if r["impl"] == "deepspeed-cpuadam" and r["error"]:  # (not installed here)
            continue
        assert r["ms_per_step"] > 0 and r["num_tensors"] == (1 if r["layout"] == "single" else 2)
        if r["impl"] == "fastopt":
            assert r["speedup_vs"] == 1.0
    assert main(argv) == 0
    table = capsys.readouterr().out
    rows = [line.split() for line in table.splitlines() if line.startswith("adamw")]
    assert "fastest torch ms" in table and "deepspeed ms" in table and len(rows) == 6
    assert all(r[5] in ("fused", "foreach", "forloop") and r[6].endswith("x") for r in rows)
    # A peer that could not run shows "-", and the table says why under it.
    for r in report["rows"]:
        if r["error"]:
            assert f"{r['impl']}: n/a ({r['error']})" in table


@pytest.mark.parametrize("argv", [["--dtype", "bfloat16"], ["--tensors", "8"], ["--layout", "single"],
                                  ["--device", "cuda"], ["--size", "512"]])
def test_what_the_sweep_does_not_take(argv, capsys):
    assert main(["bench", "--sweep", *argv]) == 2
    assert "error" in capsys.readouterr().err


def test_a_plot_into_no_folder_is_refused_before_the_run(tmp_path, capsys):
    argv = ["bench", "--sweep", "--size", "2**11", "--repeats", "1", "--warmup", "0",
            "--plot", str(tmp_path / "missing" / "sweep.png")]
    assert main(argv) == 2
    out = capsys.readouterr()
    assert "no folder" in out.err and "adamw" not in out.out  # (no table: nothing was run)
