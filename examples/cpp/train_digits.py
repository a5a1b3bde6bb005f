"""The Python twin of train_digits.cpp: the same run through fastopt's Python API, printing the
same lines to the last bit.

Every float32 operation of the C++ loops is repeated here as one NumPy float32 operation, in
the same order: a sum over an inner index is a loop over that index that adds one rounded
product at a time (``h += x[:, d:d+1] * w1[d]`` is ``acc += x[n][d] * w1[d][j]`` for every n
and j at once). exp and log are math.exp and math.log, libm's functions, as in C++ (NumPy's
own exp and log may differ from libm in the last bit), and Python floats are C doubles.

Usage: python train_digits.py [digits.csv]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import fastopt

IN, HIDDEN, CLASSES = 64, 32, 10
TRAIN = 1500  # after a shuffle, the first 1500 samples train, the other 297 test
BATCH = 100  # 15 batches per epoch, in the same order every epoch
EPOCHS = 20
LR, WEIGHT_DECAY = 1e-2, 1e-2  # AdamW; no weight decay on the biases
F32 = np.float32


def zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=F32)


@dataclass
class Params:
    """The model's four tensors; the grads have the same layout. w1[d, j] maps input d to hidden
    unit j, w2[j, k] hidden j to class k."""

    w1: np.ndarray = field(default_factory=lambda: zeros(IN, HIDDEN))
    b1: np.ndarray = field(default_factory=lambda: zeros(HIDDEN))
    w2: np.ndarray = field(default_factory=lambda: zeros(HIDDEN, CLASSES))
    b2: np.ndarray = field(default_factory=lambda: zeros(CLASSES))

    def tensors(self) -> list[np.ndarray]:
        return [self.w1, self.b1, self.w2, self.b2]


class XorShift64:
    """xorshift64 (Marsaglia, 2003): the run's random numbers."""

    def __init__(self, seed: int):
        self.s = seed

    def next(self) -> int:
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFFFFFFFFFF
        s ^= s >> 7
        s ^= (s << 17) & 0xFFFFFFFFFFFFFFFF
        self.s = s
        return s


def load_digits(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The pixels scaled to [0, 1] (x / 16, exact in float32) and the labels."""
    values = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    if values.shape[1] != IN + 1 or len(values) <= TRAIN or not np.isin(values[:, IN], range(CLASSES)).all():
        raise SystemExit(f"train_digits.py: {path}: expected more than {TRAIN} lines of 64 pixels and a label 0..9")
    return values[:, :IN].astype(F32) / F32(16), values[:, IN]


def shuffled(x: np.ndarray, y: np.ndarray, rng: XorShift64) -> tuple[np.ndarray, np.ndarray]:
    """The samples in a random order (Fisher-Yates: for i from the last down to 1, swap sample i
    with sample rng() % (i + 1))."""
    order = list(range(len(y)))
    for i in range(len(y) - 1, 0, -1):
        j = rng.next() % (i + 1)
        order[i], order[j] = order[j], order[i]
    return x[order], y[order]


def init_params(rng: XorShift64) -> Params:
    """Weights uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)) in float32: u = the top 24 bits of
    the next number / 2^24 (exact), w = (2u - 1) * bound; drawn in memory order, w1 then w2.
    Biases start at 0."""
    p = Params()
    for w, fan_in in ((p.w1, IN), (p.w2, HIDDEN)):
        bound = F32(1.0 / math.sqrt(fan_in))
        u = np.array([rng.next() >> 40 for _ in range(w.size)], dtype=F32).reshape(w.shape) * F32(2.0**-24)
        w[...] = (F32(2) * u - F32(1)) * bound
    return p


def forward(p: Params, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """h = relu(x w1 + b1) and logits z = h w2 + b2; each sum starts from the bias and adds the
    products in the order of the inner index."""
    h = np.tile(p.b1, (len(x), 1))
    for d in range(IN):
        h += x[:, d:d + 1] * p.w1[d]
    h = np.where(h > 0, h, F32(0))
    z = np.tile(p.b2, (len(x), 1))
    for j in range(HIDDEN):
        z += h[:, j:j + 1] * p.w2[j]
    return h, z


def softmax_xent(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy in double with libm's exp and log: the summed loss of the samples,
    and the mean loss's gradient dz = (float32(softmax(z)) - onehot(y)) / rows in float32."""
    total = 0.0
    probs = np.empty_like(z)
    for n, (row, label) in enumerate(zip(z.tolist(), y)):
        m = max(row)
        e = [math.exp(v - m) for v in row]
        s = 0.0
        for v in e:  # left to right (sum() may compensate: Python 3.12's does)
            s += v
        total += m + math.log(s) - row[label]
        probs[n] = [v / s for v in e]  # rounded to float32 by the store
    onehot = np.eye(CLASSES, dtype=F32)[y]
    return total, (probs - onehot) / F32(len(y))


def backward(p: Params, x: np.ndarray, h: np.ndarray, dz: np.ndarray, g: Params) -> None:
    """The grads of the batch's mean loss, written over g in place: each weight's and bias's
    grad is summed over the samples in order, from 0."""
    da = zeros(*h.shape)
    for k in range(CLASSES):
        da += dz[:, k:k + 1] * p.w2[:, k]
    dh = np.where(h > 0, da, F32(0))  # through the ReLU
    for t in g.tensors():
        t.fill(0)
    for n in range(len(x)):
        g.w2 += h[n][:, None] * dz[n]
        g.b2 += dz[n]
        g.w1 += x[n][:, None] * dh[n]
        g.b1 += dh[n]


def count_correct(p: Params, x: np.ndarray, y: np.ndarray) -> int:
    """The samples whose largest logit (the first, on a tie) is their label's."""
    _, z = forward(p, x)
    return int((z.argmax(axis=1) == y).sum())


def fnv1a(p: Params) -> int:
    """FNV-1a (64-bit) of the params' bytes, w1, b1, w2, b2 in turn."""
    h = 0xCBF29CE484222325
    for t in p.tensors():
        for byte in t.tobytes():
            h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def data_and_init(path: str) -> tuple[np.ndarray, np.ndarray, Params]:
    """The shuffled samples (pixels, labels) and the initial params: the run's random numbers."""
    rng = XorShift64(0x9E3779B97F4A7C15)  # the shuffle's numbers, then the init's
    x, y = shuffled(*load_digits(path), rng)
    return x, y, init_params(rng)


def adamw(p: Params, g: Params, lr: float = LR, **options) -> fastopt.AdamW:
    """AdamW bound once to the params (any float dtype) and the grads: two param groups, the
    weights with weight decay and the biases without. ``options``: more of its arguments."""
    return fastopt.AdamW([{"params": [p.w1, p.w2], "grads": [g.w1, g.w2]},
                          {"params": [p.b1, p.b2], "grads": [g.b1, g.b2], "weight_decay": 0.0}],
                         lr=lr, weight_decay=WEIGHT_DECAY, **options)


def train_epoch(values: Callable[[], Params], g: Params, opt: fastopt.AdamW, x: np.ndarray, y: np.ndarray) -> float:
    """One epoch over the first TRAIN samples, in batches of BATCH: the float32 forward and
    backward passes on ``values()`` (the params as the model sees them, taken before each batch),
    the grads into g, then one step. Returns the loss summed over the epoch's samples."""
    loss = 0.0
    for start in range(0, TRAIN, BATCH):
        xb, yb = x[start:start + BATCH], y[start:start + BATCH]
        p = values()
        h, z = forward(p, xb)
        batch_loss, dz = softmax_xent(z, yb)
        loss += batch_loss
        backward(p, xb, h, dz, g)
        opt.step()
    return loss


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name("data") / "digits.csv")
    x, y, p = data_and_init(path)
    g = Params()  # the grads, refilled in place by backward()
    opt = adamw(p, g)

    tests = len(y) - TRAIN
    for epoch in range(1, EPOCHS + 1):
        loss = train_epoch(lambda: p, g, opt, x, y)  # with the params each batch saw
        correct = count_correct(p, x[TRAIN:], y[TRAIN:])
        print("epoch %2d  train loss %.17g  test accuracy %d/%d = %.2f%%"
              % (epoch, loss / TRAIN, correct, tests, 100.0 * correct / tests))
    print("params fnv1a64 %016x" % fnv1a(p))


if __name__ == "__main__":
    main()
