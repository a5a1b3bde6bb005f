"""The digits MLP of examples/cpp/train_digits.py (its data, init, batches and float32 forward
and backward passes) trained with AdamW in each storage mode of ``fastopt.storage_modes``, from
the same init; prints a markdown table of each mode against fp32 params.

The forward and backward passes run in float32 on the params' values (bfloat16 params
upcast), the grads are float32. lr is 1e-3, not train_digits.py's 1e-2: an AdamW update of
about lr against weights of 0.05 to 0.2, whose bfloat16 steps are 2**-12 to 2**-10, is where
rounding a bfloat16 param to nearest loses updates (and the decay, lr * 1e-2 of the weight,
entirely); the modes that keep the rest of the value (master, remainder, Kahan) or round
without bias (stochastic) follow fp32. Deterministic: same data order, init and rounding seed
every run.

Usage: python examples/storage_modes_digits.py [EPOCHS]   (default 60: about 13 s on 2 cores)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastopt.storage_modes import MODES, StorageMode

sys.path.insert(0, str(Path(__file__).with_name("cpp")))
import train_digits as digits  # noqa: E402  (examples/cpp: the model, its data and its init)

LR = 1e-3
EPOCHS = 60
DATA = Path(__file__).with_name("cpp") / "data" / "digits.csv"


@dataclass
class Outcome:
    """A mode's run: the bytes per param of the params and what the optimizer keeps beside them
    (master, remainder or compensation, state; the float32 grads, 4 B, are not counted), the
    mean train loss at the final params and the test accuracy in %."""

    mode: StorageMode
    bytes_per_param: float
    loss: float
    accuracy: float


def as_float32(p: digits.Params) -> digits.Params:
    """The params' values in float32 (a copy), as the forward and backward passes take them."""
    return digits.Params(*(t.astype(np.float32) for t in p.tensors()))


def train(mode: StorageMode, x: np.ndarray, y: np.ndarray, init: digits.Params, epochs: int) -> Outcome:
    """``epochs`` epochs of AdamW from ``init``, the params stored and stepped as ``mode`` says."""
    p = digits.Params(*(t.astype(mode.dtype) for t in init.tensors()))
    g = digits.Params()
    opt = digits.adamw(p, g, lr=LR, **mode.options)
    for _ in range(epochs):
        digits.train_epoch(lambda: as_float32(p), g, opt, x, y)
    final = as_float32(p)
    train_loss, _ = digits.softmax_xent(digits.forward(final, x[:digits.TRAIN])[1], y[:digits.TRAIN])
    correct = digits.count_correct(final, x[digits.TRAIN:], y[digits.TRAIN:])
    arrays = [*p.tensors(), *(a for state in opt.state.values() for a in state.values())]
    return Outcome(mode, sum(a.nbytes for a in arrays) / sum(t.size for t in p.tensors()),
                   train_loss / digits.TRAIN, 100.0 * correct / (len(y) - digits.TRAIN))


def compare(epochs: int = EPOCHS) -> list[Outcome]:
    """Every mode of MODES trained for ``epochs`` epochs on the same data from the same init."""
    x, y, init = digits.data_and_init(str(DATA))
    return [train(mode, x, y, init, epochs) for mode in MODES]


def markdown(outcomes: list[Outcome]) -> str:
    """The outcomes as a markdown table, each against the first (fp32): the loss's relative
    difference in %, the accuracy's in percentage points."""
    ref = outcomes[0]
    lines = ["| mode | bytes/param | train loss | vs fp32 | test accuracy | vs fp32 |",
             "|---|---|---|---|---|---|"]
    for o in outcomes:
        loss_vs, accuracy_vs = ("", "") if o is ref else (
            f"{100 * (o.loss / ref.loss - 1):+.2f}%", f"{o.accuracy - ref.accuracy:+.2f} pp")
        lines.append(f"| {o.mode.label} | {o.bytes_per_param:.4g} | {o.loss:.4f} | {loss_vs} | {o.accuracy:.2f}% "
                     f"| {accuracy_vs} |")
    return "\n".join(lines)


def main() -> None:
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else EPOCHS
    print(f"AdamW lr {LR:g}, weight decay {digits.WEIGHT_DECAY:g} (weights only), {epochs} epochs of "
          f"{digits.TRAIN // digits.BATCH} batches of {digits.BATCH}; train loss: the mean over the {digits.TRAIN} "
          "training samples at the final params; test accuracy: the samples not trained on\n")
    print(markdown(compare(epochs)))


if __name__ == "__main__":
    main()
