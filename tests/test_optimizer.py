"""The optimizer classes (python/fastopt/optimizer.py, sgd.py, adam.py).

Hyperparameter validation on every path that sets one, param groups, learning-rate
changes, checkpoints (state_dict / load_state_dict, resumed runs bit-identical), state
and master-weight access, momentum toggling, threads and the CPU ISA selection.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
import torch

import fastopt
from fastopt import functional as F
from registry import assert_rounding_close

SGD, Adam, AdamW = fastopt.SGD, fastopt.Adam, fastopt.AdamW
BF16, F16, F32 = ml_dtypes.bfloat16, np.float16, np.float32
SHAPES = [(64,), (3, 5), (7,)]


# ---- helpers ---------------------------------------------------------------------------

def rand(shape, dtype=F32, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal(shape)).astype(np.float32).astype(dtype)


def make_params(dtypes=(F32, F32, F32), shapes=SHAPES, seed=0):
    params = [rand(s, d, seed + k) for k, (s, d) in enumerate(zip(shapes, dtypes))]
    grads = [np.zeros(s, d) for s, d in zip(shapes, dtypes)]
    return params, grads


def fill_grads(grads, step):
    """Refills the grads in place with values that depend only on the global step."""
    for k, g in enumerate(grads):
        g[...] = rand(g.shape, F32, seed=1000 * step + k, scale=0.5).astype(g.dtype)


def run(opt, grads, start, count):
    for s in range(start, start + count):
        fill_grads(grads, s)
        opt.step()


def assert_bits_equal(a, b, what="array"):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    if a.tobytes() != b.tobytes():
        diff = np.flatnonzero(a.reshape(-1).view(f"u{a.itemsize}") != b.reshape(-1).view(f"u{b.itemsize}"))
        raise AssertionError(f"{what}: {diff.size} elements differ, first at {diff[:5]}: "
                             f"{a.reshape(-1)[diff[:5]]} vs {b.reshape(-1)[diff[:5]]}")


def assert_all_bits_equal(xs, ys, what="params"):
    assert len(xs) == len(ys)
    for k, (x, y) in enumerate(zip(xs, ys)):
        if x is None or y is None:
            assert x is None and y is None, f"{what} {k}"
        else:
            assert_bits_equal(x, y, f"{what} {k}")


def assert_state_dicts_equal(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"])
    for i in a["state"]:
        ea, eb = a["state"][i], b["state"][i]
        assert sorted(ea) == sorted(eb), f"param {i}: {sorted(ea)} vs {sorted(eb)}"
        for k in ea:
            if k == "step":
                assert ea[k] == eb[k], f"param {i} step"
            else:
                assert_bits_equal(ea[k], eb[k], f"state[{i}][{k!r}]")


def snapshot(opt):
    """Everything observable about an optimizer's state, deep-copied."""
    return {"state_dict": copy.deepcopy(opt.state_dict()), "groups": [dict(g) for g in opt.param_groups],
            "steps": opt.steps,
            "masters": [None if m is None else m.copy() for m in opt.master_params],
            "live": {i: {k: v.copy() for k, v in s.items()} for i, s in opt.state.items()}}


def assert_snapshot_equal(a, b):
    assert_state_dicts_equal(a["state_dict"], b["state_dict"])
    assert a["groups"] == b["groups"] and a["steps"] == b["steps"]
    assert_all_bits_equal(a["masters"], b["masters"], "master")
    assert sorted(a["live"]) == sorted(b["live"])
    for i in a["live"]:
        assert sorted(a["live"][i]) == sorted(b["live"][i])
        for k in a["live"][i]:
            assert_bits_equal(a["live"][i][k], b["live"][i][k], f"state[{i}][{k!r}]")


# ---- hyperparameter validation ---------------------------------------------------------

NAN, INF = float("nan"), float("inf")

# (id, class, base hyperparameters, key, bad value, exception, message pattern)
BAD_HYPERS = [
    ("sgd-lr-negative", SGD, {}, "lr", -0.1, ValueError, r"lr must be finite and >= 0, got -0\.1"),
    ("sgd-lr-nan", SGD, {}, "lr", NAN, ValueError, r"lr must be finite and >= 0"),
    ("sgd-lr-inf", SGD, {}, "lr", INF, ValueError, r"lr must be finite and >= 0"),
    ("sgd-momentum-negative", SGD, {}, "momentum", -0.5, ValueError, r"momentum must be finite and >= 0"),
    ("sgd-dampening-negative", SGD, {"momentum": 0.9}, "dampening", -0.1, ValueError,
     r"dampening must be in \[0, 1\]"),
    ("sgd-dampening-above-1", SGD, {"momentum": 0.9}, "dampening", 1.5, ValueError, r"dampening must be in \[0, 1\]"),
    ("sgd-weight-decay-negative", SGD, {}, "weight_decay", -1e-4, ValueError, r"weight_decay must be finite and >= 0"),
    ("sgd-nesterov-without-momentum", SGD, {}, "nesterov", True, ValueError, r"nesterov requires momentum > 0"),
    ("sgd-momentum-0-under-nesterov", SGD, {"momentum": 0.9, "nesterov": True}, "momentum", 0.0, ValueError,
     r"nesterov requires momentum > 0"),
    ("sgd-nesterov-with-dampening", SGD, {"momentum": 0.9, "dampening": 0.5}, "nesterov", True, ValueError,
     r"nesterov requires momentum > 0 and dampening = 0"),
    ("sgd-dampening-under-nesterov", SGD, {"momentum": 0.9, "nesterov": True}, "dampening", 0.1, ValueError,
     r"nesterov requires momentum > 0 and dampening = 0"),
    ("adam-lr-negative", Adam, {}, "lr", -1e-3, ValueError, r"lr must be finite and >= 0"),
    ("adam-beta1-1", Adam, {}, "betas", (1.0, 0.999), ValueError, r"beta1 must be in \[0, 1\), got 1"),
    ("adam-beta1-negative", Adam, {}, "betas", (-0.1, 0.999), ValueError, r"beta1 must be in \[0, 1\)"),
    ("adam-beta2-1", Adam, {}, "betas", (0.9, 1.0), ValueError, r"beta2 must be in \[0, 1\), got 1"),
    ("adam-beta2-nan", Adam, {}, "betas", (0.9, NAN), ValueError, r"beta2 must be in \[0, 1\)"),
    ("adam-eps-negative", Adam, {}, "eps", -1e-8, ValueError, r"eps must be finite and >= 0"),
    ("adam-weight-decay-negative", Adam, {}, "weight_decay", -0.01, ValueError, r"weight_decay must be finite"),
    ("adamw-lr-negative", AdamW, {}, "lr", -1.0, ValueError, r"lr must be finite and >= 0"),
    ("adamw-beta2-above-1", AdamW, {}, "betas", (0.9, 1.5), ValueError, r"beta2 must be in \[0, 1\)"),
    ("adamw-weight-decay-negative", AdamW, {}, "weight_decay", -0.01, ValueError, r"weight_decay must be finite"),
    ("adamw-eps-inf", AdamW, {}, "eps", INF, ValueError, r"eps must be finite and >= 0"),
    # wrong types
    ("sgd-lr-str", SGD, {}, "lr", "0.1", TypeError, r"lr must be a real number, got '0\.1'"),
    ("sgd-lr-none", SGD, {}, "lr", None, TypeError, r"lr must be a real number"),
    ("sgd-lr-bool", SGD, {}, "lr", True, TypeError, r"lr must be a real number"),
    ("sgd-lr-complex", SGD, {}, "lr", 0.1j, TypeError, r"lr must be a real number"),
    ("sgd-momentum-str", SGD, {}, "momentum", "0.9", TypeError, r"momentum must be a real number"),
    ("sgd-nesterov-int", SGD, {"momentum": 0.9}, "nesterov", 1, TypeError, r"nesterov must be a bool"),
    ("sgd-maximize-str", SGD, {}, "maximize", "yes", TypeError, r"maximize must be a bool"),
    ("adam-betas-float", Adam, {}, "betas", 0.9, TypeError, r"betas must be a pair"),
    ("adam-betas-triple", Adam, {}, "betas", (0.9, 0.99, 0.999), TypeError, r"betas must be a pair"),
    ("adam-beta2-str", Adam, {}, "betas", (0.9, "0.999"), TypeError, r"beta2 must be a real number"),
    ("adam-amsgrad-none", Adam, {}, "amsgrad", None, TypeError, r"amsgrad must be a bool"),
    ("adamw-eps-str", AdamW, {}, "eps", "1e-8", TypeError, r"eps must be a real number"),
]

PATHS = ["constructor", "group_dict", "param_groups_setitem", "lr_property"]
BAD_CASES = [pytest.param(case, path, id=f"{case[0]}-{path}")
             for case in BAD_HYPERS for path in PATHS if path != "lr_property" or case[3] == "lr"]


def _two_groups(params, grads, group1=None):
    return [{"params": params[:2], "grads": grads[:2]}, {"params": params[2:], "grads": grads[2:], **(group1 or {})}]


@pytest.mark.parametrize("case, path", BAD_CASES)
def test_bad_hyperparameter_rejected(case, path):
    _, cls, base, key, value, exc, pattern = case
    base = {"lr": 0.01, **base}
    params, grads = make_params()
    if path in ("constructor", "group_dict"):
        before = [p.copy() for p in params]
        with pytest.raises(exc, match=pattern) as info:
            if path == "constructor":
                cls(params, grads, **{**base, key: value})
            else:
                cls(_two_groups(params, grads, {key: value}), **base)
        if path == "group_dict":  # a constructor keyword is reported as itself
            assert str(info.value).startswith("param group 1: ")
        assert_all_bits_equal(params, before)
        return

    # Setting on a bound optimizer: the group keeps its old values and the run goes on as if
    # the bad set had never been tried (compared with an identical twin).
    ref_params, ref_grads = make_params()
    opt = cls(_two_groups(params, grads), **base)
    ref = cls(_two_groups(ref_params, ref_grads), **base)
    run(opt, grads, 0, 2)
    run(ref, ref_grads, 0, 2)
    groups_before = [dict(g) for g in opt.param_groups]
    with pytest.raises(exc, match=pattern):
        if path == "lr_property":
            opt.lr = value
        else:
            opt.param_groups[1][key] = value
    assert [dict(g) for g in opt.param_groups] == groups_before
    run(opt, grads, 2, 2)
    run(ref, ref_grads, 2, 2)
    assert_all_bits_equal(params, ref_params)
    assert_snapshot_equal(snapshot(opt), snapshot(ref))


def test_unknown_hyperparameters_rejected():
    params, grads = make_params()
    with pytest.raises(TypeError, match="SGD got an unknown hyperparameter 'betas'"):
        SGD(params, grads, betas=(0.9, 0.99))
    with pytest.raises(TypeError, match="param group 1: unknown hyperparameter 'momentum'"):
        Adam(_two_groups(params, grads, {"momentum": 0.9}))
    opt = Adam(params, grads)
    with pytest.raises(KeyError, match="unknown hyperparameter 'momentum'"):
        opt.param_groups[0]["momentum"] = 0.9
    with pytest.raises(KeyError, match="'params' of a bound optimizer cannot change"):
        opt.param_groups[0]["params"] = []
    with pytest.raises(KeyError):
        del opt.param_groups[0]["lr"]
    assert "momentum" not in opt.param_groups[0] and opt.param_groups[0]["lr"] == 1e-3


def test_param_group_update_validates_every_key_and_applies():
    params, grads = make_params()
    ref_params, ref_grads = make_params()
    opt = SGD(params, grads, lr=0.1)
    ref = SGD(ref_params, ref_grads, lr=0.05, momentum=0.9)
    with pytest.raises(ValueError, match="lr must be"):
        opt.param_groups[0].update(lr=-1.0)
    opt.param_groups[0].update({"lr": 0.05, "momentum": 0.9})
    run(opt, grads, 0, 3)
    run(ref, ref_grads, 0, 3)
    assert_all_bits_equal(params, ref_params)


def test_param_group_update_is_atomic():
    """``update`` validates the values together: one bad value leaves every key as it was,
    and a combination valid as a whole is accepted whatever the order of its keys."""
    params, grads = make_params()
    opt = SGD(params, grads, lr=0.1)
    before = dict(opt.param_groups[0])
    with pytest.raises(ValueError, match="momentum must be"):
        opt.param_groups[0].update(lr=0.05, momentum=-1.0)
    assert dict(opt.param_groups[0]) == before

    ref_params, ref_grads = make_params()
    nesterov = SGD(params, grads, lr=0.1, momentum=0.9, nesterov=True)
    ref = SGD(ref_params, ref_grads, lr=0.1, momentum=0.9, nesterov=True)
    run(nesterov, grads, 0, 1)
    run(ref, ref_grads, 0, 1)
    nesterov.param_groups[0].update(momentum=0.0, nesterov=False)  # valid together
    assert nesterov.param_groups[0]["momentum"] == 0.0 and nesterov.param_groups[0]["nesterov"] is False
    ref.param_groups[0]["nesterov"] = False
    ref.param_groups[0]["momentum"] = 0.0
    run(nesterov, grads, 1, 2)
    run(ref, ref_grads, 1, 2)
    assert_all_bits_equal(params, ref_params)


def test_param_group_in_place_or_cannot_bypass_validation():
    """``group |= {...}`` is another way to set hyperparameters: it must validate (and a
    valid value must reach the next step) like ``group[key] = value``."""
    params, grads = make_params()
    ref_params, ref_grads = make_params()
    opt = SGD(params, grads, lr=0.1)
    ref = SGD(ref_params, ref_grads, lr=0.1)
    run(opt, grads, 0, 1)
    run(ref, ref_grads, 0, 1)
    group = opt.param_groups[0]
    with pytest.raises(ValueError, match="lr must be"):
        group |= {"lr": -1.0}
    assert opt.param_groups[0]["lr"] == 0.1
    group = opt.param_groups[0]
    group |= {"lr": 0.25}
    ref.param_groups[0]["lr"] = 0.25
    run(opt, grads, 1, 2)
    run(ref, ref_grads, 1, 2)
    assert_all_bits_equal(params, ref_params)


@pytest.mark.parametrize("method", ["pop", "popitem", "clear"])
def test_param_group_entries_cannot_be_removed(method):
    """Like ``del group[key]``, removing entries through dict methods is refused."""
    params, grads = make_params()
    opt = Adam(params, grads, lr=0.01)
    before = dict(opt.param_groups[0])
    args = ("lr",) if method == "pop" else ()
    with pytest.raises(KeyError):
        getattr(opt.param_groups[0], method)(*args)
    assert dict(opt.param_groups[0]) == before


# ---- param groups and learning rates ------------------------------------------------

GROUP_OPTIMIZERS = {
    "sgd": (SGD, {"momentum": 0.9}),
    "sgd-nesterov": (SGD, {"momentum": 0.8, "nesterov": True}),
    "adam": (Adam, {"amsgrad": True}),
    "adamw": (AdamW, {}),
}


@pytest.mark.parametrize("name", sorted(GROUP_OPTIMIZERS))
def test_param_groups_match_separate_optimizers(name):
    cls, common = GROUP_OPTIMIZERS[name]
    g0, g1 = {"lr": 0.1, "weight_decay": 0.0}, {"lr": 0.01, "weight_decay": 0.1}
    params, grads = make_params()
    opt = cls([{"params": params[:2], **g0}, {"params": params[2:], **g1}], grads, **common)
    sep_params, sep_grads = make_params()
    sep = [cls(sep_params[:2], sep_grads[:2], **common, **g0), cls(sep_params[2:], sep_grads[2:], **common, **g1)]
    for s in range(5):
        fill_grads(grads, s)
        fill_grads(sep_grads, s)
        opt.step()
        for o in sep:
            o.step()
    assert_all_bits_equal(params, sep_params)
    assert opt.steps == [5, 5]
    for i in range(3):
        o, k = (sep[0], i) if i < 2 else (sep[1], i - 2)
        assert sorted(opt.state[i]) == sorted(o.state[k])
        for key in opt.state[i]:
            assert_bits_equal(opt.state[i][key], o.state[k][key], f"state[{i}][{key}]")
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.1
    with pytest.raises(ValueError, match="different learning rates"):
        _ = opt.lr


@pytest.mark.parametrize("cls", [SGD, Adam], ids=["sgd", "adam"])
def test_lr_settable_between_steps(cls):
    """Each step uses the lr set just before it (reference: the functional API)."""
    p, g = rand((100,), seed=1), np.zeros(100, F32)
    rp, rg = p.copy(), np.zeros(100, F32)
    if cls is SGD:
        opt = SGD([p], [g], lr=0.1, momentum=0.9)
        buf = [np.zeros(100, F32)]
    else:
        opt = Adam([p], [g], lr=0.1)
        m, v = [np.zeros(100, F32)], [np.zeros(100, F32)]
    for k, lr in enumerate([0.1, 0.1, 0.05, 0.05, 0.2, 0.0]):
        if k % 2:
            opt.lr = lr
        else:
            opt.param_groups[0]["lr"] = lr
        assert opt.lr == lr
        fill_grads([g], k)
        rg[...] = g
        opt.step()
        if cls is SGD:
            F.sgd_([rp], [rg], buf, step=k + 1, lr=lr, momentum=0.9)
        else:
            F.adam_([rp], [rg], m, v, step=k + 1, lr=lr)
        assert_bits_equal(p, rp, f"param after step {k + 1}")
    before = p.copy()
    fill_grads([g], 99)
    opt.step()  # lr = 0 leaves the param as it is
    assert_bits_equal(p, before)


def test_sgd_momentum_toggle_matches_torch():
    """Momentum 0 -> 0.9 mid-run allocates the buffer and its first update copies the grad;
    0.9 -> 0 -> 0.9 keeps and resumes the buffer, as torch.optim.SGD does."""
    p0 = rand((257,), seed=3)
    p = p0.copy()
    g = np.zeros_like(p)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    opt = SGD([p], [g], lr=0.1)
    topt = torch.optim.SGD([tp], lr=0.1)
    schedule = [0.0] * 3 + [0.9] * 3 + [0.0] * 2 + [0.9] * 2
    for k, momentum in enumerate(schedule):
        if momentum != opt.param_groups[0]["momentum"]:
            opt.param_groups[0]["momentum"] = momentum
            topt.param_groups[0]["momentum"] = momentum
        fill_grads([g], k)
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        if k < 3:
            assert "momentum_buffer" not in opt.state[0]
            assert opt.state_dict()["state"][0] == {"step": k + 1}
        else:
            buf = opt.state[0]["momentum_buffer"]
            assert_rounding_close([buf], [topt.state[tp]["momentum_buffer"].numpy()], k + 1, implementations=2)
            if k == 3:
                assert_bits_equal(buf, g, "first momentum buffer")
        assert_rounding_close([p], [tp.detach().numpy()], k + 1, implementations=2)


# ---- state and master weights -----------------------------------------------------

def test_state_arrays_readable_and_live():
    params, grads = make_params((F32, BF16, F16))
    opt = Adam(params, grads, lr=0.01, amsgrad=True, master_weights=True)
    run(opt, grads, 0, 2)
    assert opt.master_params[0] is None
    for i, p in enumerate(params):
        st = opt.state[i]
        assert {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"} <= set(st)
        for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert isinstance(st[name], np.ndarray) and st[name].dtype == F32 and st[name].shape == p.shape
        assert np.any(st["exp_avg"] != 0)
        if i:
            m = opt.master_params[i]
            assert isinstance(m, np.ndarray) and m.dtype == F32 and m.shape == p.shape
            assert st["master_param"] is m
            assert_bits_equal(m.astype(p.dtype), p, f"param {i} is its master rounded")
        else:
            assert "master_param" not in st
    live = opt.state[1]["exp_avg"]
    before = live.copy()
    run(opt, grads, 2, 1)
    assert not np.array_equal(live, before), "state arrays are live views"
    assert_bits_equal(live, opt.state_dict()["state"][1]["exp_avg"])


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_master_weights_initialised_exactly(dtype):
    info = ml_dtypes.finfo(dtype)
    special = np.array([0.0, -0.0, np.inf, -np.inf, float(info.max), -float(info.max), float(info.tiny),
                        float(info.smallest_subnormal), -float(info.smallest_subnormal), 1.0, -1.0],
                       dtype=F32).astype(dtype)
    wide = rand((1000,), seed=5, scale=1e3).astype(dtype)
    params = [special, wide, rand((3, 5), dtype, seed=6)]
    grads = [np.zeros_like(p) for p in params]
    for cls in (SGD, Adam):
        opt = cls(params, grads, master_weights=True)
        for p, m in zip(params, opt.master_params):
            assert m.dtype == F32 and m.shape == p.shape
            assert_bits_equal(m, p.astype(F32), "master")  # (placed as test_binding.py checks)


def test_master_weights_from_torch_bf16():
    t = torch.from_numpy(rand((300,), seed=7, scale=100.0)).to(torch.bfloat16)
    opt = Adam([t], [torch.zeros_like(t)], master_weights=True)
    assert_bits_equal(opt.master_params[0], t.float().numpy(), "master")


def test_no_master_weights_for_float32_or_when_off():
    params, grads = make_params((F32, BF16, F32))
    with_masters = SGD(params, grads, master_weights=True).master_params
    assert with_masters[0] is None and with_masters[2] is None and with_masters[1] is not None
    assert SGD(params, grads).master_params == [None, None, None]
    assert "master_param" not in SGD(params, grads).state[1]


# ---- state_dict / load_state_dict --------------------------------------------------

# name: (class, group hyperparameters (one dict per group: params[:2], params[2:]), defaults,
#        param dtypes, master_weights)
CONFIGS = {
    "sgd-momentum": (SGD, None, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}, (F32,) * 3, False),
    "sgd-nesterov": (SGD, None, {"lr": 0.05, "momentum": 0.9, "nesterov": True}, (F32,) * 3, False),
    "sgd-dampening-maximize": (SGD, None, {"lr": 0.05, "momentum": 0.5, "dampening": 0.3, "maximize": True},
                               (F32,) * 3, False),
    "sgd-groups-one-without-momentum": (SGD, [{"momentum": 0.9}, {"momentum": 0.0, "lr": 0.2}], {"lr": 0.05},
                                        (F32,) * 3, False),
    "adam-amsgrad": (Adam, None, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.01}, (F32,) * 3, False),
    "adamw": (AdamW, None, {"lr": 0.01, "betas": (0.8, 0.99)}, (F32,) * 3, False),
    "adamw-groups": (AdamW, [{"lr": 0.02}, {"weight_decay": 0.0, "amsgrad": True}], {}, (F32,) * 3, False),
    "sgd-fp16-master": (SGD, None, {"lr": 0.05, "momentum": 0.9, "nesterov": True}, (F16, F32, F16), True),
    "adam-bf16-master": (Adam, None, {"lr": 0.01, "amsgrad": True}, (BF16, BF16, F32), True),
    "adamw-bf16-master": (AdamW, None, {"lr": 0.01}, (BF16, F16, BF16), True),
}


def build(name, params, grads, with_hypers=True):
    cls, groups, defaults, _, master = CONFIGS[name]
    if not with_hypers:
        groups = [{}, {}] if groups else None
        defaults = {}
    if groups:
        spec = [{"params": params[:2], **groups[0]}, {"params": params[2:], **groups[1]}]
        return cls(spec, grads, master_weights=master, **defaults)
    return cls(params, grads, master_weights=master, **defaults)


def params_for(name, seed=0):
    return make_params(CONFIGS[name][3], seed=seed)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_round_trip(name):
    params, grads = params_for(name)
    opt = build(name, params, grads)
    run(opt, grads, 0, 3)
    sd = opt.state_dict()
    n_groups = len(opt.param_groups)
    assert [g["params"] for g in sd["param_groups"]] == ([[0, 1, 2]] if n_groups == 1 else [[0, 1], [2]])
    for i in range(3):
        assert sd["state"][i]["step"] == 3
    for g_sd, g in zip(sd["param_groups"], opt.param_groups):
        assert {k: v for k, v in g_sd.items() if k != "params"} == dict(g)

    other_params, other_grads = params_for(name, seed=50)
    other = build(name, other_params, other_grads, with_hypers=False)
    other.load_state_dict(sd)
    assert_state_dicts_equal(other.state_dict(), sd)
    assert other.steps == opt.steps == [3] * n_groups
    assert [dict(g) for g in other.param_groups] == [dict(g) for g in opt.param_groups]
    assert_all_bits_equal(other.master_params, opt.master_params, "master")
    assert sorted(other.state) == sorted(opt.state)
    for i in opt.state:
        assert sorted(other.state[i]) == sorted(opt.state[i])
        for k in opt.state[i]:
            assert_bits_equal(other.state[i][k], opt.state[i][k], f"state[{i}][{k}]")


@pytest.mark.parametrize("name", ["sgd-momentum", "adam-bf16-master"])
def test_state_dict_arrays_are_copies(name):
    params, grads = params_for(name)
    ref_params, ref_grads = params_for(name)
    opt, ref = build(name, params, grads), build(name, ref_params, ref_grads)
    run(opt, grads, 0, 2)
    run(ref, ref_grads, 0, 2)
    sd = opt.state_dict()
    kept = copy.deepcopy(sd)
    for entry in sd["state"].values():  # scribbling on the snapshot must not reach the optimizer
        for k, v in entry.items():
            if k != "step":
                v[...] = 7.0
    run(opt, grads, 2, 2)
    run(ref, ref_grads, 2, 2)
    assert_all_bits_equal(params, ref_params)
    assert_snapshot_equal(snapshot(opt), snapshot(ref))
    # and stepping does not reach a snapshot already taken
    sd2 = opt.state_dict()
    kept2 = copy.deepcopy(sd2)
    run(opt, grads, 4, 1)
    assert_state_dicts_equal(sd2, kept2)
    with pytest.raises(AssertionError):
        assert_state_dicts_equal(opt.state_dict(), kept2)  # (the optimizer did move on)
    # load_state_dict copies too: scribbling on the loaded dict afterwards changes nothing
    loaded_params, loaded_grads = params_for(name)
    loaded = build(name, loaded_params, loaded_grads)
    loaded.load_state_dict(kept)
    before = snapshot(loaded)
    for entry in kept["state"].values():
        for k, v in entry.items():
            if k != "step":
                v[...] = -3.0
    assert_snapshot_equal(snapshot(loaded), before)


@pytest.mark.parametrize("with_hypers", [True, False], ids=["same-config", "defaults-config"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resumed_run_is_bit_identical(name, with_hypers):
    """N steps, checkpoint, M more -> A; a new optimizer on copies of the checkpointed params,
    load_state_dict, M steps -> B: A and B agree bit for bit (params, state, masters)."""
    n, m = 3, 4
    params, grads = params_for(name)
    opt = build(name, params, grads)
    run(opt, grads, 0, n)
    saved_params = [p.copy() for p in params]
    sd = opt.state_dict()
    run(opt, grads, n, m)

    resumed_params = [p.copy() for p in saved_params]
    resumed_grads = [np.zeros_like(g) for g in grads]
    resumed = build(name, resumed_params, resumed_grads, with_hypers=with_hypers)
    resumed.load_state_dict(sd)
    run(resumed, resumed_grads, n, m)

    assert_all_bits_equal(resumed_params, params)
    assert_all_bits_equal(resumed.master_params, opt.master_params, "master")
    assert_state_dicts_equal(resumed.state_dict(), opt.state_dict())
    assert resumed.steps == opt.steps


def test_resume_from_checkpoint_before_first_momentum_step():
    """A checkpoint taken before any step has no momentum buffers; the resumed run's first
    step must still set the buffer to the gradient."""
    params, grads = params_for("sgd-momentum")
    opt = build("sgd-momentum", params, grads)
    sd = opt.state_dict()
    assert all(entry == {"step": 0} for entry in sd["state"].values())
    run(opt, grads, 0, 3)
    resumed_params, resumed_grads = params_for("sgd-momentum")
    resumed = build("sgd-momentum", resumed_params, resumed_grads)
    run(resumed, resumed_grads, 100, 2)  # diverge first (buffers filled), then restore
    for rp, fresh in zip(resumed_params, params_for("sgd-momentum")[0]):
        rp[...] = fresh
    resumed.load_state_dict(sd)
    run(resumed, resumed_grads, 0, 3)
    assert_all_bits_equal(resumed_params, params)


TARGET_SHAPES = [(64,), (3, 5), (3, 5)]


# Corruptions of a valid state_dict for the 2-group "load target" below; each names the
# param or group it is about. Params 0 and 1 (fp32) form group 0, param 2 (bf16) group 1.
def _c_shape(sd):
    sd["state"][2]["exp_avg"] = np.zeros((5, 3), F32)
    return ValueError, r"param 2: state 'exp_avg' is float32\[5, 3\], expected float32\[3, 5\]"


def _c_float64(sd):
    sd["state"][2]["exp_avg_sq"] = sd["state"][2]["exp_avg_sq"].astype(np.float64)
    return ValueError, r"param 2: state 'exp_avg_sq' is float64"


def _c_float64_master(sd):
    sd["state"][2]["master_param"] = sd["state"][2]["master_param"].astype(np.float64)
    return ValueError, r"param 2: state 'master_param' is float64"


def _c_groups(sd):
    sd["param_groups"] = sd["param_groups"][:1]
    return ValueError, r"state_dict has 1 param groups, this optimizer 2"


def _c_params(sd):
    sd["param_groups"][1]["params"] = [2, 3]
    return ValueError, r"param group 1: state_dict has 2 params, this optimizer 1"


def _c_missing_master(sd):
    del sd["state"][2]["master_param"]
    return ValueError, r"param 2: state_dict lacks its master weights"


def _c_unexpected_master(sd):
    sd["state"][1]["master_param"] = np.zeros(TARGET_SHAPES[1], F32)
    return ValueError, r"param 1: state_dict has master weights, this optimizer none"


def _c_unknown_state(sd):
    sd["state"][2]["momentum_buffer"] = np.zeros(TARGET_SHAPES[2], F32)
    return ValueError, r"param 2: unknown state 'momentum_buffer'"


def _c_unknown_hyper(sd):
    sd["param_groups"][1]["momentum"] = 0.9
    return ValueError, r"param group 1: unknown hyperparameters \['momentum'\]"


def _c_bad_hyper(sd):
    sd["param_groups"][1]["betas"] = (0.9, 1.0)
    return ValueError, r"beta2 must be in \[0, 1\)"


def _c_bad_hyper_type(sd):
    sd["param_groups"][1]["lr"] = "0.1"
    return TypeError, r"lr must be a real number"


def _c_step_mismatch(sd):
    sd["state"][1]["step"] = 99
    return ValueError, r"param group 0: params have different step counts \[5, 99\]"


CORRUPTIONS = {f.__name__[3:]: f for f in (_c_shape, _c_float64, _c_float64_master, _c_groups, _c_params,
                                            _c_missing_master, _c_unexpected_master, _c_unknown_state,
                                            _c_unknown_hyper, _c_bad_hyper, _c_bad_hyper_type,
                                            _c_step_mismatch)}


def load_target(seed, amsgrad):
    params = [rand(TARGET_SHAPES[0], F32, seed), rand(TARGET_SHAPES[1], F32, seed + 1),
              rand(TARGET_SHAPES[2], BF16, seed + 2)]
    grads = [np.zeros_like(p) for p in params]
    opt = Adam([{"params": params[:2], "lr": 0.02}, {"params": params[2:], "weight_decay": 0.1}], grads,
               master_weights=True, amsgrad=amsgrad)
    return opt, params, grads


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_load_state_dict_validates_before_changing_anything(corruption):
    # The source ran more steps, with amsgrad (an extra state array), so a partial load
    # would show in the target's values, hyperparameters, step counts or state keys.
    source, _, source_grads = load_target(seed=10, amsgrad=True)
    run(source, source_grads, 0, 5)
    sd = source.state_dict()
    exc, pattern = CORRUPTIONS[corruption](sd)

    opt, params, grads = load_target(seed=0, amsgrad=False)
    twin, twin_params, twin_grads = load_target(seed=0, amsgrad=False)
    run(opt, grads, 0, 2)
    run(twin, twin_grads, 0, 2)
    before = snapshot(opt)
    params_before = [p.copy() for p in params]
    with pytest.raises(exc, match=pattern):
        opt.load_state_dict(sd)
    assert_snapshot_equal(snapshot(opt), before)
    assert_all_bits_equal(params, params_before)
    run(opt, grads, 2, 2)
    run(twin, twin_grads, 2, 2)
    assert_all_bits_equal(params, twin_params)
    assert_snapshot_equal(snapshot(opt), snapshot(twin))


def test_load_state_dict_valid_source_for_corruptions():
    """Control for the test above: the uncorrupted state_dict loads."""
    source, _, source_grads = load_target(seed=10, amsgrad=True)
    run(source, source_grads, 0, 5)
    opt, _, _ = load_target(seed=0, amsgrad=False)
    opt.load_state_dict(source.state_dict())
    assert opt.steps == [5, 5] and opt.param_groups[1]["amsgrad"] is True
    assert_state_dicts_equal(opt.state_dict(), source.state_dict())


# ---- threads and ISA ----------------------------------------------------------------

def test_single_thread_is_bit_identical_to_default():
    default = fastopt.get_num_threads()
    task = fastopt._core.task_elems
    shapes = [(3 * task + 123,), (task // 2 + 5,), (17,)]

    def trial(threads):
        fastopt.set_num_threads(threads)
        assert fastopt.get_num_threads() == threads
        out = []
        for cls, kw, dtypes in ((Adam, {"amsgrad": True, "weight_decay": 0.01}, (F32, F32, F32)),
                                (SGD, {"momentum": 0.9, "nesterov": True}, (F32, F32, F32)),
                                (AdamW, {}, (BF16, F16, F32))):
            params, grads = make_params(dtypes, shapes)
            opt = cls(params, grads, lr=0.01, master_weights=True, **kw)
            run(opt, grads, 0, 3)
            out.append((params, opt.state_dict()))
        return out

    try:
        one = trial(1)
        many = trial(default)
    finally:
        fastopt.set_num_threads(default)
    assert fastopt.get_num_threads() == default
    for (p1, s1), (pn, sn) in zip(one, many):
        assert_all_bits_equal(p1, pn)
        assert_state_dicts_equal(s1, sn)


def test_cpu_isa_reported():
    assert fastopt.cpu_isa() in ("scalar", "avx2", "avx512")
    assert fastopt._core.cpu_isa_supported("scalar")
    assert fastopt._core.cpu_isa_supported(fastopt.cpu_isa())


def _python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=60)


def test_env_forces_scalar_isa():
    result = _python("""
        import numpy as np, fastopt
        print(fastopt.cpu_isa())
        p, g = np.ones(40, np.float32), np.full(40, 2, np.float32)
        fastopt.SGD([p], [g], lr=0.5).step()
        assert (p == 0).all(), p
        """, FASTOPT_CPU_ISA="scalar")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["scalar"]


def test_env_bogus_isa_fails_clearly():
    """An unknown FASTOPT_CPU_ISA fails the import with a ValueError naming the variable,
    its value and the valid targets."""
    result = _python("import fastopt", FASTOPT_CPU_ISA="bogus")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError:"), result.stderr
    assert "FASTOPT_CPU_ISA" in last and "'bogus'" in last, last
    assert "scalar" in last and "avx2" in last and "avx512" in last, last


# ---- regressions from review ------------------------------------------------------------

def _adam_after(steps: int):
    params, grads = make_params()
    for g in grads:
        g[...] = 0.5
    opt = fastopt.Adam(params, grads, lr=0.01)
    for _ in range(steps):
        opt.step()
    return opt, params


@pytest.mark.parametrize("mutate, message", [
    (lambda sd: sd.update(state={}), "lacks exp_avg, exp_avg_sq at step 0"),
    (lambda sd: sd["state"][1].pop("exp_avg_sq"), "param 1: state_dict lacks exp_avg_sq at step 3"),
    (lambda sd: sd["state"][0].update(step=-4), "param 0: step must be an integer >= 0"),
    (lambda sd: sd["state"][0].update(step=2.9), "param 0: step must be an integer >= 0"),
    (lambda sd: sd.update(state={str(k): v for k, v in sd["state"].items()}), "unknown param keys"),
    (lambda sd: sd["param_groups"][0].update(params=[0, 0, 1]), "lists a param key twice"),
])
def test_load_rejects_incomplete_or_bad_state(mutate, message):
    opt, _ = _adam_after(3)
    sd = opt.state_dict()
    if "at step 0" in message:  # a torch-style empty state means step 0, and is accepted
        mutate(sd)
        opt.load_state_dict(sd)
        assert opt.steps == [0]
        assert all((s["exp_avg"] == 0).all() and (s["exp_avg_sq"] == 0).all() for s in opt.state.values())
        return
    before = copy.deepcopy(opt.state_dict())
    mutate(sd)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i, entry in before["state"].items():
        for name, value in entry.items():
            np.testing.assert_array_equal(after["state"][i][name], value)


def test_step_zero_checkpoint_resumes_like_a_fresh_optimizer():
    opt, params = _adam_after(3)
    fresh_params = [p.copy() for p in params]
    fresh_grads = [np.full_like(p, 0.5) for p in params]
    fresh = fastopt.Adam(fresh_params, fresh_grads, lr=0.01)
    opt.load_state_dict(fresh.state_dict())  # step 0, zero state
    opt.step()
    fresh.step()
    for a, b in zip(params, fresh_params):
        np.testing.assert_array_equal(a, b)


def test_lr_change_does_not_rebind():
    params, grads = make_params()
    opt = fastopt.AdamW(params, grads, lr=0.01)
    opt.step()
    core = opt._core
    for k in range(5):
        opt.lr = 0.01 / (k + 1)
        opt.step()
    assert opt._core is core  # per-step work stays O(param groups), not O(tensors)


def test_momentum_switched_off_leaves_buffer_untouched_and_resumes_it():
    params, grads = make_params()
    for g in grads:
        g[...] = 1.0
    opt = fastopt.SGD(params, grads, lr=0.1, momentum=0.9)
    opt.step()
    opt.step()
    buffers = [s["momentum_buffer"].copy() for s in opt.state.values()]
    opt.param_groups[0]["momentum"] = 0.0
    opt.step()
    for s, b in zip(opt.state.values(), buffers):
        np.testing.assert_array_equal(s["momentum_buffer"], b)  # not bound: not moved
    opt.param_groups[0]["momentum"] = 0.9
    opt.step()  # torch keeps the buffer: buf = 0.9 * buf + g
    for s, b in zip(opt.state.values(), buffers):
        np.testing.assert_array_equal(s["momentum_buffer"], np.float32(0.9) * b + np.float32(1.0))


def test_sgd_load_rejects_momentum_buffers_for_some_params_only():
    params, grads = make_params()
    opt = fastopt.SGD(params, grads, lr=0.1, momentum=0.9)
    opt.step()
    sd = opt.state_dict()
    del sd["state"][1]["momentum_buffer"]
    with pytest.raises(ValueError, match="momentum buffers for some params only"):
        opt.load_state_dict(sd)


def test_param_group_copies_are_plain_dicts():
    params, grads = make_params()
    opt = fastopt.SGD(params, grads, lr=0.1, momentum=0.9)
    group = opt.param_groups[0]
    for clone in (copy.copy(group), copy.deepcopy(group)):
        assert type(clone) is dict and clone["momentum"] == 0.9
        clone["lr"] = -1.0  # a copy is detached from the optimizer
    assert group["lr"] == 0.1


# ---- lifetimes -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", fastopt.catalog.OPTIMIZERS, ids=lambda c: c.__name__)
def test_freed_when_the_last_reference_goes(cls):
    """No reference cycle: the optimizer and the state it allocated go at `del`, without a
    garbage collection (gc is off here); its param groups then say so instead of acting."""
    import gc
    import weakref
    params = [np.ones(6, np.float32), np.ones(3, np.float16)]
    grads = [np.full(6, 0.5, np.float32), np.full(3, 0.5, np.float16)]
    enabled = gc.isenabled()
    gc.disable()
    try:
        opt = cls(params, grads, master_weights=True, momentum=0.9) if "momentum" in cls.hyper_defaults \
            else cls(params, grads, master_weights=True)
        opt.step()
        opt.lr = 0.5 * opt.lr
        opt.state_dict()
        group = opt.param_groups[0]
        owned = [weakref.ref(a) for st in opt.state.values() for a in st.values()]
        assert owned  # master weights at least
        ref = weakref.ref(opt)
        del opt
        assert ref() is None, f"{cls.__name__} outlived its last reference"
        assert all(w() is None for w in owned), "state or master arrays outlived the optimizer"
        with pytest.raises(ReferenceError, match="optimizer has been freed"):
            group["lr"] = 0.1
    finally:
        if enabled:
            gc.enable()


# ---- one optimizer, one thread at a time (issue 12, failure 5) ---------------------------------


def test_a_step_while_another_thread_steps_is_refused():
    """The step releases the GIL: a second thread's step (or load_state_dict) of the same
    optimizer would update the same arrays at once. It raises; the first step completes."""
    import threading
    params, grads = [np.ones(8, np.float32)], [np.ones(8, np.float32)]
    opt = fastopt.SGD(params, grads, lr=0.5)
    saved = opt.state_dict()
    inside, release = threading.Event(), threading.Event()

    class SlowCore:  # the bound group, held inside its step until released
        def __init__(self, core):
            self.core = core

        def step(self, *args, **kwargs):
            inside.set()
            release.wait(10)
            return self.core.step(*args, **kwargs)

    opt._core = SlowCore(opt._core)
    worker = threading.Thread(target=opt.step)
    worker.start()
    assert inside.wait(10)
    try:
        with pytest.raises(RuntimeError, match="SGD.step: this optimizer is stepping in another thread"):
            opt.step()
        with pytest.raises(RuntimeError, match="SGD.load_state_dict: this optimizer is stepping"):
            opt.load_state_dict(saved)
    finally:
        release.set()
        worker.join(10)
    assert opt.steps == [1] and np.all(params[0] == 0.5)
    opt._core = opt._core.core
    opt.step()  # free again
    assert np.all(params[0] == 0.0)


# ---- clear errors for torch habits and misuse (issue 12, failure 9) ---------------------------


def test_step_with_a_closure_is_refused_clearly():
    p, g = [np.ones(3, np.float32)], [np.ones(3, np.float32)]
    opt = fastopt.SGD(p, g, lr=0.1)
    with pytest.raises(TypeError, match="takes no closure"):
        opt.step(lambda: 0.0)
    assert (p[0] == 1).all()


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "copy"])
def test_pickle_and_copy_are_refused_naming_the_optimizer(how):
    import pickle
    opt = fastopt.AdamW([np.ones(3, np.float32)], [np.ones(3, np.float32)])
    do = {"pickle": pickle.dumps, "deepcopy": copy.deepcopy, "copy": copy.copy}[how]
    with pytest.raises(TypeError, match="this AdamW cannot be pickled or copied"):
        do(opt)
    assert copy.deepcopy(opt.param_groups)[0]["lr"] == opt.lr  # its groups copy as plain dicts


@pytest.mark.parametrize("make", [lambda: np.ones(4, np.float32), lambda: np.ones((2, 4), np.float32),
                                  lambda: torch.ones(4)], ids=["1-d", "2-d", "tensor"])
def test_one_array_instead_of_a_list_is_refused(make):
    with pytest.raises(TypeError, match="params must be a list of arrays .* not one array"):
        fastopt.SGD(make(), [np.ones(4, np.float32)], lr=0.1)
    with pytest.raises(TypeError, match="grads must be a list of arrays"):
        fastopt.SGD([np.ones(4, np.float32)], make(), lr=0.1)


def test_step_count_beyond_int64_is_refused_at_load():
    p, g = [np.ones(3, np.float32)], [np.ones(3, np.float32)]
    opt = fastopt.Adam(p, g)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["step"] = 2**63 - 1
    with pytest.raises(ValueError, match=r"step must be an integer >= 0 and <= 2\*\*63 - 2"):
        opt.load_state_dict(sd)
    assert opt.steps == [1]
    opt.step()
    sd["state"][0]["step"] = 2**63 - 2  # the most a checkpoint may hold: one more step fits
    opt.load_state_dict(sd)
    opt.step()
    with pytest.raises(OverflowError, match=r"the step count reached 2\*\*63 - 1"):
        opt.step()


def test_state_dict_refused_while_another_thread_steps():
    opt = fastopt.Adam([np.ones(3, np.float32)], [np.ones(3, np.float32)])
    opt._busy.acquire()  # as a step running in another thread holds it
    try:
        with pytest.raises(RuntimeError, match="Adam.state_dict: this optimizer is stepping in another thread"):
            opt.state_dict()
    finally:
        opt._busy.release()


def test_set_num_threads_bounds_and_keeps_its_count():
    before = fastopt.get_num_threads()
    for n in (0, 10**6):
        with pytest.raises(ValueError, match="num_threads must be in"):
            fastopt.set_num_threads(n)
        assert fastopt.get_num_threads() == before
    for n in (2.9, True, "2"):
        with pytest.raises(TypeError):
            fastopt.set_num_threads(n)
        assert fastopt.get_num_threads() == before


# ---- lr schedules ------------------------------------------------------------------------


def _schedule_run(lr, steps=12, manual=None):
    from registry import grad_steps, random_params, refill
    shapes = [(37,), (4, 9)]
    params = random_params(np.random.default_rng(0), shapes)
    grads = [np.zeros(s, np.float32) for s in shapes]
    opt = fastopt.AdamW(params, grads, lr=lr)
    for t, gs in enumerate(grad_steps(1, shapes, steps)):
        refill(grads, gs)
        if manual is not None:
            opt.lr = manual(t)
        opt.step()
    return opt, params


def test_schedule_as_lr_equals_setting_lr_each_step():
    sched = fastopt.schedules.warmup_cosine(0.01, warmup_steps=3, total_steps=12)
    _, a = _schedule_run(sched)
    _, b = _schedule_run(0.0, manual=sched)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert sched(0) == 0.0 and sched(3) == 0.01  # the warmup was exercised


def test_schedule_matches_torch_cosine_annealing():
    import torch
    from registry import grad_steps, random_params, refill
    shapes = [(37,), (4, 9)]
    initial = random_params(np.random.default_rng(0), shapes)
    tparams = [torch.nn.Parameter(torch.tensor(p)) for p in initial]
    topt = torch.optim.AdamW(tparams, lr=0.01)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=8, eta_min=1e-4)
    params, grads = [p.copy() for p in initial], [np.zeros(s, np.float32) for s in shapes]
    opt = fastopt.AdamW(params, grads, lr=fastopt.schedules.cosine(0.01, T_max=8, eta_min=1e-4))
    for gs in grad_steps(2, shapes, 20):
        refill(grads, gs)
        for p, g in zip(tparams, gs):
            p.grad = torch.tensor(g)
        topt.step()
        tsched.step()
        opt.step()
    assert_rounding_close(params, [e.detach().numpy() for e in tparams], 20, implementations=2)


def test_schedule_survives_checkpoints():
    sched = fastopt.schedules.step(0.05, step_size=4, gamma=0.5)
    opt, params = _schedule_run(sched, steps=6)
    saved = opt.state_dict()
    assert saved["param_groups"][0]["lr"] == sched
    other = fastopt.AdamW([p.copy() for p in params], [np.zeros_like(p) for p in params], lr=0.1)
    other.load_state_dict(saved)
    assert other.param_groups[0]["lr"] == sched and other.steps == [6]


def test_bad_lr_type_still_rejected():
    with pytest.raises(TypeError, match="lr"):
        fastopt.Adam([np.zeros(3, np.float32)], [np.zeros(3, np.float32)], lr="0.1")


def test_state_held_in_torch_tensors_round_trips(monkeypatch):
    """The library-neutral array handling (_arrays: copy, fill, assign, to_host) that CUDA
    state relies on, exercised with torch CPU tensors as the state arrays."""
    import torch
    import fastopt.binding as binding_module
    monkeypatch.setattr(binding_module, "state_like",
                        lambda p, name, dtype, shape=None: torch.zeros(np.shape(p) if shape is None else shape,
                                                                        dtype=getattr(torch, dtype)))
    params, grads = [np.ones(5, np.float32)], [np.full(5, 0.5, np.float32)]
    opt = fastopt.SGD(params, grads, lr=0.1, momentum=0.9)
    assert isinstance(opt.state[0]["momentum_buffer"], torch.Tensor)
    before = opt.state_dict()  # no momentum step yet: no buffer saved, as in torch
    opt.step()
    opt.load_state_dict(before)  # resets the bound buffer (fill) without rebinding
    opt.step()
    saved = opt.state_dict()
    assert isinstance(saved["state"][0]["momentum_buffer"], torch.Tensor)
    other_params = [params[0].copy()]
    other = fastopt.SGD(other_params, [grads[0].copy()], lr=0.1, momentum=0.9)
    other.load_state_dict(saved)  # torch tensors in, NumPy state here
    opt.step()
    other.step()
    np.testing.assert_array_equal(params[0], other_params[0])
