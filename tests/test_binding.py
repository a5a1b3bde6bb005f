"""The binding's lifetime safety (issue 12, failures 1 to 3, on the plain optimizers): NumPy
arrays are pinned (NumPy refuses to reallocate them while bound); before every step a bound
torch tensor whose memory torch moved or freed, or a torch param whose ``.grad`` is no longer
the grad bound to it, raises fastopt.MemoryMoved naming it, and nothing is written
(src/cpp/python/binding.cpp, Binding::check)."""

from __future__ import annotations

import copy

import ml_dtypes
import numpy as np
import pytest
import torch

import fastopt
from fastopt import _core


def arrays(n=4):
    return [np.full(n, 1.0, np.float32), np.full(n, 2.0, np.float32)], [np.ones(n, np.float32), np.ones(n, np.float32)]


def assert_moved(opt, name, watched):
    """The step raises MemoryMoved naming ``name``, and ``watched`` arrays are unchanged."""
    before = [np.array(a, copy=True) for a in watched]
    with pytest.raises(_core.MemoryMoved, match=f"^{name}: "):
        opt.step()
    for a, b in zip(watched, before):
        np.testing.assert_array_equal(np.asarray(a), b)


NUMPY_PINNED = "cannot resize an array that references or is referenced"


@pytest.mark.parametrize("n", [1000, 2])
@pytest.mark.parametrize("role", ["param", "grad", "state"])
def test_numpy_arrays_cannot_be_resized_while_bound(n, role):
    """NumPy refuses to resize (reallocate) a bound array, even with refcheck=False, while the
    optimizer lives (it holds a weak reference to the array owning the memory); the step goes
    on; once the optimizer is freed, the array can be resized again."""
    params, grads = arrays()
    opt = fastopt.Adam(params, grads, lr=0.1)
    opt.step()
    array = {"param": params[1], "grad": grads[1], "state": opt.state[1]["exp_avg"].base}[role]
    with pytest.raises(ValueError, match=NUMPY_PINNED):
        array.resize(n, refcheck=False)
    opt.step()
    del opt
    array.resize(n, refcheck=False)


def test_numpy_base_of_a_bound_view_cannot_be_resized():
    base = np.zeros(16, np.float32)
    opt = fastopt.SGD([base[4:8]], [np.ones(4, np.float32)], lr=0.1)
    with pytest.raises(ValueError, match=NUMPY_PINNED):
        base.resize(1 << 20, refcheck=False)
    opt.step()
    np.testing.assert_array_equal(base[4:8], np.float32(-0.1))


TORCH_MOVES = {
    "resize_": lambda t: t.resize_(1000),
    "share_memory_": lambda t: t.share_memory_(),
    "set_": lambda t: t.set_(torch.zeros(4)),
    "data =": lambda t: setattr(t, "data", torch.zeros(4)),
}


@pytest.mark.parametrize("move", TORCH_MOVES)
@pytest.mark.parametrize("role", ["param", "grad"])
def test_torch_memory_moved_after_binding(move, role):
    params = [torch.ones(4), torch.ones(4)]
    grads = [torch.ones(4), torch.ones(4)]
    opt = fastopt.AdamW(params, grads, lr=0.1)
    opt.step()
    TORCH_MOVES[move]((params if role == "param" else grads)[1])
    assert_moved(opt, f"{role} 1", [params[0].numpy()])


def test_module_to_after_binding():
    model = torch.nn.Linear(3, 2)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = fastopt.SGD(params, [p.grad for p in params], lr=0.1)  # Parameters that require grad, as they are
    opt.step()
    model.to(torch.float16)
    with pytest.raises(_core.MemoryMoved, match="^param 0: its memory was moved or freed"):
        opt.step()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_torch_grad_replaced_after_binding(set_to_none):
    """zero_grad(set_to_none=True) then backward: new .grad tensors, refused; with
    set_to_none=False the bound grads are refilled and training goes on."""
    model = torch.nn.Linear(3, 1)
    params = list(model.parameters())
    model(torch.ones(2, 3)).sum().backward()
    opt = fastopt.SGD(params, [p.grad for p in params], lr=0.1)
    opt.step()
    model.zero_grad(set_to_none=set_to_none)
    model(torch.ones(2, 3)).sum().backward()
    if set_to_none:
        with pytest.raises(_core.MemoryMoved, match=r"^param 0: its \.grad is no longer the grad tensor"):
            opt.step()
    else:
        before = params[0].detach().clone()
        opt.step()
        assert not torch.equal(before, params[0])


def test_numpy_owner_behind_an_as_strided_view_cannot_be_resized():
    """as_strided's view keeps its array behind a non-array base: the owner is pinned too."""
    owner = np.zeros(16, np.float32)
    view = np.lib.stride_tricks.as_strided(owner, shape=(4,), strides=(4,))
    opt = fastopt.SGD([view], [np.ones(4, np.float32)], lr=0.1)
    for n in (1 << 20, 2):  # growing or shrinking (which keeps the address: the check could not see it)
        with pytest.raises(ValueError, match=NUMPY_PINNED):
            owner.resize(n, refcheck=False)
    opt.step()


@pytest.mark.parametrize("offset", [0, 4, 16, 60])
@pytest.mark.parametrize("dtype, options", [
    ("float32", {}), ("float32", {"state_precision": "bfloat16"}),
    ("bfloat16", {"master_weights": "remainder"}), ("bfloat16", {"master_weights": True}),
    ("bfloat16", {"master_weights": "kahan", "state_precision": "bfloat16"}),
])
def test_numpy_state_crosses_cache_lines_where_its_param_does(offset, dtype, options):
    # The vector kernels align the param's stream by taking its first elements one by one (up to
    # element k); every array fastopt keeps beside it (state, master, remainder, compensation)
    # is placed so that its vectors of 16 elements from element k never straddle a 64-byte line
    # either (NumPy puts large arrays 16 bytes past one).
    size = np.dtype(getattr(ml_dtypes, dtype, dtype)).itemsize
    offset -= offset % size
    raw = np.zeros(1000 + 64, getattr(ml_dtypes, dtype, dtype))
    start = ((offset - raw.ctypes.data) % 64) // size
    p = raw[start:start + 1000]
    k = (64 - offset) % 64 // size
    opt = fastopt.Adam([p], [np.zeros(1000, np.float32)], **options)
    opt.step()
    arrays = [a for a in opt.state[0].values() if isinstance(a, np.ndarray) and a.size == p.size]
    assert len(arrays) == 2 + bool(options.get("master_weights")), list(opt.state[0])
    assert [(a.ctypes.data + k * a.itemsize) % min(64, 16 * a.itemsize) for a in arrays] == [0] * len(arrays), options


def test_state_entries_are_made_when_read(monkeypatch):
    """opt.state[i] builds param i's entry alone (a loop over 10,000 params' state stays
    linear); the mapping reads as a dict of every param's arrays, without negative indices."""
    params = [np.ones(3, np.float32) for _ in range(50)]
    opt = fastopt.Adam(params, [np.ones(3, np.float32) for _ in params], master_weights=False)
    opt.step()
    built = []
    kept_beside = type(opt)._kept_beside
    monkeypatch.setattr(type(opt), "_kept_beside", lambda self, i: built.append(i) or kept_beside(self, i))
    entry = opt.state[7]
    assert built == [7]
    assert set(entry) == {"exp_avg", "exp_avg_sq"} and entry["exp_avg"] is opt._state[7]["exp_avg"]
    assert len(opt.state) == 50 and list(opt.state) == list(range(50)) and 49 in opt.state and -1 not in opt.state
    with pytest.raises(KeyError):
        opt.state[50]
    assert dict(opt.state)[3].keys() == opt.state[3].keys()
    copied = copy.deepcopy(opt.state)  # (a dict, as before: copies of the arrays)
    assert type(copied) is dict and np.array_equal(copied[3]["exp_avg"], opt._state[3]["exp_avg"])
    assert copied[3]["exp_avg"] is not opt._state[3]["exp_avg"] and type(opt.state.copy()) is dict
