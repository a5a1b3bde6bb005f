"""ZeRO-1 on two processes of one machine: the digits MLP of examples/cpp/train_digits.py (its
data and init) trained with PyTorch autograd and fastopt.distributed.ZeroOptimizer(AdamW), each
process on its half of every batch (gloo; each keeps the AdamW state of half the params).

ZeroOptimizer averages the two halves' grads (average_grads=True), so each step is the
full batch's; the same run in one process with fastopt.torch.AdamW is printed beside it (not bit
for bit: the batch's mean grad is summed in another order). Then the consolidated checkpoint
is loaded into that single-process optimizer.

Usage: python examples/zero_digits.py [EPOCHS]   (default 20: a few seconds on 2 cores)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastopt
import fastopt.torch
from fastopt.distributed import ZeroOptimizer

sys.path.insert(0, str(Path(__file__).with_name("cpp")))
import train_digits as digits  # noqa: E402  (examples/cpp: the data and the init)

DATA = Path(__file__).with_name("cpp") / "data" / "digits.csv"
WORLD = 2


def model() -> tuple[list[torch.nn.Parameter], torch.Tensor, torch.Tensor]:
    """The MLP's params (w1, b1, w2, b2) from train_digits.py's init, and its shuffled data."""
    x, y, p = digits.data_and_init(str(DATA))
    params = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in (p.w1, p.b1, p.w2, p.b2)]
    return params, torch.from_numpy(x), torch.from_numpy(y)


def groups(params: list[torch.nn.Parameter]) -> list[dict]:
    w1, b1, w2, b2 = params
    return [{"params": [w1, w2]}, {"params": [b1, b2], "weight_decay": 0.0}]


def loss_of(params: list[torch.nn.Parameter], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = params
    return torch.nn.functional.cross_entropy(torch.relu(x @ w1 + b1) @ w2 + b2, y)


def train(rank: int, world: int, epochs: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{path}/rendezvous", rank=rank, world_size=world)
    params, x, y = model()
    opt = ZeroOptimizer(groups(params), fastopt.torch.AdamW, lr=digits.LR, weight_decay=digits.WEIGHT_DECAY)
    part = digits.BATCH // world
    for epoch in range(epochs):
        total = 0.0
        for b in range(0, digits.TRAIN, digits.BATCH):
            mine = slice(b + rank * part, b + (rank + 1) * part)
            loss = loss_of(params, x[mine], y[mine])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        if rank == 0 and (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1:3d}  rank 0's mean train loss {total / (digits.TRAIN // digits.BATCH):.4f}")
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    everyone = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    state = opt.consolidated_state_dict(to=0)
    if rank == 0:
        print(f"params identical on all {world} ranks: {all(torch.equal(e, flat) for e in everyone)}")
        torch.save({"params": [p.detach() for p in params], "optimizer": state}, f"{path}/zero.pt")
    dist.barrier()  # (no rank tears gloo down while another still talks to it)
    dist.destroy_process_group()


def main() -> None:
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    path = tempfile.mkdtemp(prefix="fastopt-zero-")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(train, args=(WORLD, epochs, path), nprocs=WORLD)

    saved = torch.load(f"{path}/zero.pt", weights_only=False)
    params, x, y = model()
    single = fastopt.torch.AdamW(groups(params), lr=digits.LR, weight_decay=digits.WEIGHT_DECAY)
    for _ in range(epochs):
        for b in range(0, digits.TRAIN, digits.BATCH):
            single.zero_grad()
            loss_of(params, x[b:b + digits.BATCH], y[b:b + digits.BATCH]).backward()
            single.step()
    test_x, test_y = x[digits.TRAIN:], y[digits.TRAIN:]
    for name, ps in (("ZeRO-1, 2 processes", saved["params"]), ("one process", params)):
        with torch.no_grad():
            accuracy = (torch.relu(test_x @ ps[0] + ps[1]) @ ps[2] + ps[3]).argmax(1).eq(test_y).float().mean()
        print(f"{name:20s} test accuracy {100 * accuracy.item():.1f}%")
    gap = max((a - b.detach()).abs().max().item() for a, b in zip(saved["params"], params))
    print(f"largest param difference between the two runs: {gap:.2e}")
    single.load_state_dict(saved["optimizer"])  # the consolidated checkpoint, into one process
    print(f"consolidated checkpoint loaded into fastopt.torch.AdamW at step "
          f"{int(single.state_dict()['state'][0]['step'])}")


if __name__ == "__main__":
    main()
