"""The GPU check's parts that run without a GPU (benchmarks/gpu_check.sh, gpu_smoke.py,
test_timeout.py): a fault in them would waste the one call a lent GPU allows."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_smoke_test_runs_every_optimizer_on_cpu_tensors(capsys):
    """The smoke test's optimizers, storage modes and fastopt.torch part, on CPU torch tensors
    (the same binding and validation as on CUDA): every mode it asks for is one the optimizer keeps."""
    import fastopt
    spec = importlib.util.spec_from_file_location("gpu_smoke", BENCHMARKS / "gpu_smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    smoke.main("cpu")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-2] for line in lines] == [c.__name__ + ":" for c in fastopt.OPTIMIZERS] + ["fastopt.torch:"]


def run_check(tmp_path: Path, sanitizer: str) -> subprocess.CompletedProcess:
    """gpu_check.sh with stand-ins for Python (its pytest fails, the rest passes) and
    compute-sanitizer (``sanitizer``: its script's body), from another folder with a relative
    OUT_DIR."""
    tools = tmp_path / "tools"
    tools.mkdir()
    stand_ins = {"python": 'case "$*" in *"-m pytest"*) exit 1;; esac\nexit 0\n', "compute-sanitizer": sanitizer}
    for name, body in stand_ins.items():
        (tools / name).write_text("#!/bin/sh\n" + body)
        (tools / name).chmod(0o755)
    env = dict(os.environ, PYTHON=str(tools / "python"), PATH=f"{tools}:{os.environ['PATH']}")
    return subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "out"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_check_script_with_stand_in_tools(tmp_path):
    """Every stage runs, summary.json records each, at most 8 files come back, and the exit
    status counts the failed stages."""
    run = run_check(tmp_path, "exit 0\n")
    assert run.returncode == 1, run.stdout + run.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(s["stage"], s["rc"]) for s in summary] == [("build", 0), ("tests", 1), ("sanitizer", 0), ("bench", 0)]
    assert len(list((tmp_path / "out").iterdir())) <= 8
    assert "cannot use this GPU" not in run.stdout


def test_check_script_says_when_the_sanitizer_refuses_the_gpu(tmp_path):
    """compute-sanitizer refuses the GPU under gVisor: the stage fails, saying it is the tool's."""
    run = run_check(tmp_path, 'echo "========= Error: Device not supported"\nexit 1\n')
    assert run.returncode == 2, run.stdout + run.stderr
    assert "compute-sanitizer cannot use this GPU here" in run.stdout


def test_check_script_stages_fit_nine_minutes():
    """The stages' limits and each kill's 5 s of grace stay within the 9 minutes the issue allows
    (a device call may run 10)."""
    limits = [int(line.split()[2]) for line in (BENCHMARKS / "gpu_check.sh").read_text().splitlines()
              if line.startswith("stage ")]
    assert len(limits) == 4 and sum(limits) + 5 * len(limits) <= 540, limits


def run_pytest(folder: Path, limit: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(BENCHMARKS), FASTOPT_TEST_TIMEOUT=limit)
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-p",
                             "test_timeout", str(folder)],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_timeout_plugin_fails_a_test_past_its_limit(tmp_path):
    (tmp_path / "test_slow.py").write_text("import time\n\ndef test_hangs():\n    time.sleep(30)\n")
    out, _ = run_pytest(tmp_path, "1").communicate(timeout=60)
    assert "TimeoutError" in out and "test_hangs ran past 1 s" in out and "1 failed" in out, out


def test_timeout_plugin_reports_when_the_stage_limit_terminates_it(tmp_path):
    """A SIGTERM (the stage's limit) ends the run with pytest's report of the failures so far."""
    started = tmp_path / "started"
    (tmp_path / "test_slow.py").write_text(
        "import pathlib, time\n\ndef test_fails():\n    assert False\n\n"
        f"def test_waits():\n    pathlib.Path({str(started)!r}).touch()\n    time.sleep(60)\n")
    proc = run_pytest(tmp_path, "120")
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in out and "FAILED" in out and "test_fails" in out, out
