"""``fastopt bench --plot`` (fastopt.bench_plot): the sweep's lines and the layouts' bars are
written as PNG files."""

from __future__ import annotations

import pytest

from fastopt.bench_plot import plot_report
from fastopt.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["--sweep", "--size", "2**11"],
                                  ["--size", "2**12", "--tensors", "4", "--optimizers", "sgd,adamw"]])
def test_plot_writes_a_png(argv, tmp_path, capsys):
    path = tmp_path / "bench.png"
    assert main(["bench", *argv, "--repeats", "1", "--warmup", "0", "--plot", str(path)]) == 0
    assert f"plot written to {path}" in capsys.readouterr().err
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000


def test_a_report_without_times_is_refused(tmp_path):
    report = {"rows": [{"impl": "fastopt", "ms_per_step": None}], "fastopt_version": "x", "cpu_isa": "x",
              "threads": 1}
    with pytest.raises(ValueError, match="no timed rows"):
        plot_report(report, str(tmp_path / "x.png"))
