"""``fastopt bench --distributed N`` and ``--offload`` (fastopt.bench_distributed) at tiny sizes:
the rows, the table, and the options they refuse."""

from __future__ import annotations

import json

import pytest

from fastopt.bench_distributed import ZERO_PAIRS
from fastopt.cli import main

TINY = ["--size", "2**10", "--repeats", "2", "--warmup", "1"]


def test_distributed_times_fastopt_and_torch_zero(capsys):
    assert main(["bench", "--distributed", "2", *TINY, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "distributed" and report["config"]["world"] == 2
    assert [r["impl"] for r in report["rows"]] == [name for pair in ZERO_PAIRS for name in pair]
    assert all(r["ms"] > 0 for r in report["rows"])


def test_offload_times_the_cpu_steps_alone(capsys):
    assert main(["bench", "--offload", *TINY]) == 0
    table = capsys.readouterr().out
    for name in ("fastopt OffloadOptimizer (copies + CPU step)", "fastopt AdamW (CPU step alone)",
                 "torch AdamW fused (CPU step alone)", "DeepSpeedCPUAdam"):
        assert name in table
    assert "fastopt faster" in table.splitlines()[2]


@pytest.mark.parametrize("argv", [["--distributed", "2", "--storage"], ["--offload", "--dtype", "float32"],
                                  ["--distributed", "2", "--offload"], ["--distributed", "2", "--device", "cuda"]])
def test_options_it_does_not_take(argv, capsys):
    assert main(["bench", *argv, *TINY]) == 2
    assert "error" in capsys.readouterr().err
