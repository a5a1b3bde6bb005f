"""examples/storage_modes_digits.py at reduced length (20 epochs, not 60): every storage mode
trains the digits MLP as fp32 params do, within the margins the README states, and the bf16
round-to-nearest baseline does not."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EPOCHS = 20
LOSS_MARGIN = 0.05  # of fp32's final train loss, relative
ACCURACY_MARGIN = 1.0  # percentage points of test accuracy: 3 of the 297 test samples
BASELINE = "bf16 round-to-nearest"


def _load_example():
    path = Path(__file__).resolve().parents[1] / "examples" / "storage_modes_digits.py"
    spec = importlib.util.spec_from_file_location("storage_modes_digits", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _load_example()


@pytest.fixture(scope="module")
def outcomes(example):
    return {o.mode.label: o for o in example.compare(EPOCHS)}


def test_every_mode_runs_with_its_bytes(outcomes):
    """Params and what the optimizer keeps, per param: fp32 param 4 or bf16 2, fp32 master 4,
    uint16 remainder or bf16 compensation 2, AdamW's two state arrays 8 in fp32, 4 in bf16, 2 in
    8 bits plus a float32 absmax per block of 2048 (the MLP's 4 tensors of 2410 params: one
    block each, 2 x 4 x 4 bytes)."""
    absmax = 2 * 4 * 4 / 2410
    assert {label: o.bytes_per_param for label, o in outcomes.items()} == pytest.approx({
        "fp32": 4 + 8, "bf16 + fp32 master": 2 + 4 + 8, "bf16 + remainder": 2 + 2 + 8, "bf16 + Kahan": 2 + 2 + 8,
        "bf16 + stochastic rounding": 2 + 8, BASELINE: 2 + 8, "fp32 + bf16 state": 4 + 4,
        "fp32 + bf16 state, stochastic": 4 + 4, "fp32 + 8-bit state": 4 + 2 + absmax,
        "bf16 + remainder + 8-bit state": 2 + 2 + 2 + absmax}, rel=1e-12)


def test_modes_within_the_margin_of_fp32(outcomes):
    fp32 = outcomes["fp32"]
    for label, o in outcomes.items():
        if label != BASELINE:
            assert abs(o.loss / fp32.loss - 1) <= LOSS_MARGIN, (label, o.loss, fp32.loss)
            assert abs(o.accuracy - fp32.accuracy) <= ACCURACY_MARGIN, (label, o.accuracy, fp32.accuracy)


def test_round_to_nearest_misses_the_margin(outcomes):
    """The margin tells the modes from the loss of rounding every update to nearest."""
    assert outcomes[BASELINE].loss / outcomes["fp32"].loss - 1 > LOSS_MARGIN


def test_markdown(example, outcomes):
    lines = example.markdown(list(outcomes.values())).splitlines()
    assert lines[0] == "| mode | bytes/param | train loss | vs fp32 | test accuracy | vs fp32 |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {label}" for label in outcomes]
    assert lines[2].endswith(" |  |") and lines[3].endswith(" pp |")


def test_zero_digits_trains_on_two_processes_as_one_does():
    """examples/zero_digits.py at 5 epochs: both ranks hold the same params, the run is within
    float32 summation error of the single-process one, and its checkpoint loads there."""
    import subprocess

    path = Path(__file__).resolve().parents[1] / "examples" / "zero_digits.py"
    out = subprocess.run([sys.executable, str(path), "5"], capture_output=True, text=True, timeout=300, check=True)
    lines = out.stdout.splitlines()
    assert "params identical on all 2 ranks: True" in lines
    accuracy = {line[:20].strip(): float(line.split()[-1].rstrip("%")) for line in lines if "test accuracy" in line}
    assert accuracy["ZeRO-1, 2 processes"] > 85 and abs(accuracy["ZeRO-1, 2 processes"] - accuracy["one process"]) <= 1
    gap = next(float(line.split()[-1]) for line in lines if line.startswith("largest param difference"))
    assert gap < 1e-4
    assert lines[-1] == "consolidated checkpoint loaded into fastopt.torch.AdamW at step 75"


def test_torch_digits_trains_as_torch_optim_does(tmp_path):
    """examples/torch_digits.py at 5 epochs: fastopt.torch and torch.optim reach the same losses
    and accuracy (params within float32 rounding of each other), and the loss curves are drawn."""
    path = Path(__file__).resolve().parents[1] / "examples" / "torch_digits.py"
    spec = importlib.util.spec_from_file_location("torch_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.compare(5)
    assert [(r["optimizer"], r["library"]) for r in rows] == [
        (name, lib) for name, _ in module.RUNS for lib in ("fastopt.torch", "torch.optim")]
    for ours, theirs in zip(rows[::2], rows[1::2]):
        assert ours["gap"] < 1e-5
        assert ours["losses"] == pytest.approx(theirs["losses"], rel=1e-4)
        assert abs(ours["accuracy"] - theirs["accuracy"]) <= 0.4  # (one test sample)
    assert "| AdamW | fastopt.torch |" in module.table(rows)
    png = tmp_path / "losses.png"
    assert module.plot(rows, str(png)) and png.read_bytes().startswith(b"\x89PNG")
