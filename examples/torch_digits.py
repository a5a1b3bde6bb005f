"""The digits MLP of examples/cpp/train_digits.py (its data and init) trained with PyTorch
autograd, once with fastopt.torch's optimizers and once with torch.optim's, from the same init
and in the same batch order: prints a comparison table and writes the loss curves to a PNG
(matplotlib, where installed).

fastopt.torch's optimizers are drop-in torch.optim optimizers: the training loops are the same
code, only the class differs. Their trajectories match torch's to float32 rounding (torch's
for-loop and fastopt's fused step round the same formulas in different orders).

(The same model with fastopt's NumPy API alone, forward and backward written by hand:
examples/cpp/train_digits.py.)

Usage: python examples/torch_digits.py [EPOCHS] [PNG]   (default 30 epochs, digits_losses.png;
about 10 s on 2 cores)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import fastopt.torch

sys.path.insert(0, str(Path(__file__).with_name("cpp")))
import train_digits as digits  # noqa: E402  (examples/cpp: the data and the init)

DATA = Path(__file__).with_name("cpp") / "data" / "digits.csv"
# (name, hyperparameters): each trained by fastopt.torch.<name> and torch.optim.<name>
RUNS = [("AdamW", dict(lr=1e-2, weight_decay=1e-2)), ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
        ("RMSprop", dict(lr=1e-3))]


def train(opt_class: type, hypers: dict, epochs: int) -> dict:
    """Trains the MLP; the per-epoch mean train loss, the test accuracy, the final params and
    the wall time of the optimizer steps."""
    x, y, p = digits.data_and_init(str(DATA))
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    params = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in (p.w1, p.b1, p.w2, p.b2)]
    opt = opt_class(params, **hypers)
    w1, b1, w2, b2 = params
    losses, stepping = [], 0.0
    for _ in range(epochs):
        total = 0.0
        for b in range(0, digits.TRAIN, digits.BATCH):
            loss = torch.nn.functional.cross_entropy(torch.relu(x[b:b + digits.BATCH] @ w1 + b1) @ w2 + b2,
                                                     y[b:b + digits.BATCH])
            opt.zero_grad()
            loss.backward()
            t0 = time.perf_counter()
            opt.step()
            stepping += time.perf_counter() - t0
            total += loss.item()
        losses.append(total / (digits.TRAIN // digits.BATCH))
    with torch.no_grad():
        test = (torch.relu(x[digits.TRAIN:] @ w1 + b1) @ w2 + b2).argmax(1).eq(y[digits.TRAIN:]).float().mean()
    return {"losses": losses, "accuracy": 100 * test.item(), "params": [q.detach() for q in params],
            "step_ms": 1e3 * stepping / (epochs * (digits.TRAIN // digits.BATCH))}


def compare(epochs: int) -> list[dict]:
    """Each optimizer trained by both libraries: one row per (optimizer, library)."""
    rows = []
    for name, hypers in RUNS:
        ours = train(getattr(fastopt.torch, name), hypers, epochs)
        theirs = train(getattr(torch.optim, name), hypers, epochs)
        gap = max((a - b).abs().max().item() for a, b in zip(ours["params"], theirs["params"]))
        rows.append({"optimizer": name, "library": "fastopt.torch", **ours, "gap": gap})
        rows.append({"optimizer": name, "library": "torch.optim", **theirs, "gap": gap})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| optimizer | library | final train loss | test accuracy | step (ms) | max param difference |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['optimizer']} | {r['library']} | {r['losses'][-1]:.4f} | {r['accuracy']:.2f}% | "
                     f"{r['step_ms']:.3f} | {r['gap']:.1e} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> bool:
    """The loss curves as a PNG; False where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        ax.plot(range(1, len(r["losses"]) + 1), r["losses"], linestyle="-" if r["library"] == "fastopt.torch" else ":",
                linewidth=2 if r["library"] == "fastopt.torch" else 3, label=f"{r['optimizer']}, {r['library']}")
    ax.set(yscale="log", xlabel="epoch", ylabel="mean train loss", title="digits MLP: fastopt.torch and torch.optim")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    path = sys.argv[2] if len(sys.argv) > 2 else "digits_losses.png"
    rows = compare(epochs)
    print(table(rows))
    print(f"loss curves written to {path}" if plot(rows, path) else "(matplotlib not installed: no plot)")


if __name__ == "__main__":
    main()
