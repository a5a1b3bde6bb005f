"""fastopt.torch, the drop-in torch.optim optimizers: parity with torch.optim on real modules
(an MLP and a small conv net) under a scheduler with zero_grad both ways, params without
grads, closures, add_param_group, checkpoints both ways, and the PyTorch habits that replace a
param's memory or its grad tensor after the optimizer was built."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import numpy as np
import pytest
import torch

import fastopt
import fastopt.torch as ft
from registry import BASELINE, CASES, assert_rounding_close, case_by_id

TORCH_CASES = [c for c in CASES if c.in_torch]
# The MLP runs every case torch has; the conv net (slower) each optimizer's baseline case.
MODULE_CASES = [(c, "mlp") for c in TORCH_CASES] + [(case_by_id(BASELINE[c.name]), "convnet")
                                                     for c in TORCH_CASES if c.id == BASELINE.get(c.name)]
STEPS = 100


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def convnet() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))


MODELS = {"mlp": (mlp, (6,)), "convnet": (convnet, (2, 6, 6))}


def build(kind: str, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS[kind][0]().to(dtype)


def batches(kind: str, steps: int):
    g = torch.Generator().manual_seed(1)
    shape = MODELS[kind][1]
    return [(torch.randn(8, *shape, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64))
            for _ in range(steps)]


def train(model, opt, data, dtype, sign=1.0):
    """STEPS steps under a StepLR schedule; zero_grad alternates set_to_none=True/False. With
    sign -1 the objective is the negated loss (for maximize=True)."""
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.7)
    for t, (x, y) in enumerate(data):
        opt.zero_grad(set_to_none=t % 2 == 0)
        (sign * torch.nn.functional.mse_loss(model(x.to(dtype)), y.to(dtype))).backward()
        opt.step()
        sched.step()
    return [p.detach().to(torch.float64).numpy() for p in model.parameters()]


def fast_class(case):
    return getattr(ft, case.name)


@pytest.mark.parametrize("case, kind", MODULE_CASES, ids=[f"{c.id}-{k}" for c, k in MODULE_CASES])
def test_module_parity_with_torch_optim(case, kind):
    """fastopt.torch and torch.optim, both fp32, each within the rounding bound of torch.optim's
    float64 run (params feed back into the grads, so the bound's per-step growth covers both)."""
    data = batches(kind, STEPS)
    sign = -1.0 if case.kwargs.get("maximize") else 1.0
    exact = train(m := build(kind, torch.float64), getattr(torch.optim, case.name)(m.parameters(), **case.kwargs),
                  data, torch.float64, sign)
    theirs = train(m := build(kind), getattr(torch.optim, case.name)(m.parameters(), **case.kwargs), data,
                   torch.float32, sign)
    ours = train(m := build(kind), fast_class(case)(m.parameters(), **case.kwargs), data, torch.float32, sign)
    scale = max(float(np.abs(p).max()) for p in exact)
    assert_rounding_close(theirs, exact, STEPS, optimizer=case.name, scale=scale, implementations=2,
                          msg="torch.optim fp32 vs float64")
    assert_rounding_close(ours, exact, STEPS, optimizer=case.name, scale=scale, implementations=2,
                          msg="fastopt.torch fp32 vs float64")


def test_params_without_grad_are_skipped_as_torch_does():
    """A param outside the graph: no weight decay, no step count, no state (torch.optim too)."""
    def run(cls):
        torch.manual_seed(0)
        used, unused = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        opt = cls([*used.parameters(), *unused.parameters()], lr=0.1, weight_decay=0.5)
        for t in range(6):
            opt.zero_grad()
            model = used if t != 3 else unused  # step 3 trains the other layer only
            model(torch.ones(4, 3)).sum().backward()
            opt.step()
        return [p.detach().clone() for p in (*used.parameters(), *unused.parameters())], opt
    ours, opt = run(ft.AdamW)
    theirs, topt = run(torch.optim.AdamW)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    steps = [int(s["step"]) for s in opt.state_dict()["state"].values()]
    assert steps == [int(s["step"]) for s in topt.state_dict()["state"].values()] == [5, 5, 1, 1]


def test_closure_and_add_param_group():
    def run(cls):
        torch.manual_seed(0)
        a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
        opt = cls(a.parameters(), lr=0.05, momentum=0.9)
        x = torch.randn(5, 4)
        losses = []
        for t in range(8):
            if t == 3:
                opt.add_param_group({"params": b.parameters(), "lr": 0.01})

            def closure():
                opt.zero_grad()
                loss = b(torch.tanh(a(x))).pow(2).mean()
                loss.backward()
                return loss
            losses.append(float(opt.step(closure).detach()))
        return losses, [p.detach().clone() for p in (*a.parameters(), *b.parameters())]
    ours, theirs = run(ft.SGD), run(torch.optim.SGD)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
    for p, q in zip(ours[1], theirs[1]):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_invalid_hyperparameters_refused():
    with pytest.raises(TypeError, match="unknown hyperparameter 'lr_max'"):
        ft.Adam([torch.zeros(2, requires_grad=True)], lr_max=1.0)
    with pytest.raises(ValueError, match="lr"):
        ft.Adam([torch.zeros(2, requires_grad=True)], lr=-1.0)
    opt = ft.Adam([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match="param group 1"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "eps": -1.0})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("direction", ["fastopt->torch", "torch->fastopt"])
@pytest.mark.parametrize("name", ["AdamW", "SGD", "NAdam", "RMSprop", "Adagrad"])
def test_checkpoints_switch_either_way(name, direction):
    """Half a run in one implementation, a torch.save/torch.load (weights_only, the default) of
    its state_dict, the other half in the other: the same as a run in torch.optim alone."""
    kw = {"lr": 0.01, **({"momentum": 0.9} if name in ("SGD", "RMSprop") else {})}
    data = batches("mlp", 40)
    first, second = (getattr(ft, name), getattr(torch.optim, name))
    if direction == "torch->fastopt":
        first, second = second, first
    model = build("mlp")
    opt = first(model.parameters(), **kw)
    for x, y in data[:20]:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x.float()), y.float()).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt = second(model.parameters(), **kw)
    opt.load_state_dict(torch.load(buf))
    for x, y in data[20:]:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x.float()), y.float()).backward()
        opt.step()
    ref = build("mlp")
    ropt = torch.optim.__dict__[name](ref.parameters(), **kw)
    for x, y in data:
        ropt.zero_grad()
        torch.nn.functional.mse_loss(ref(x.float()), y.float()).backward()
        ropt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-6)


def test_bf16_state_stays_float32_through_a_checkpoint():
    model = build("mlp", torch.bfloat16)
    opt = ft.AdamW(model.parameters(), lr=1e-3, master_weights=True)
    x = torch.randn(4, 6, dtype=torch.bfloat16)
    model(x).sum().backward()
    opt.step()
    sd = opt.state_dict()
    assert all(s["exp_avg"].dtype == torch.float32 and s["master_param"].dtype == torch.float32
               for s in sd["state"].values())
    other = ft.AdamW(model.parameters(), lr=1e-3, master_weights=True)
    other.load_state_dict(sd)
    for p in model.parameters():
        assert torch.equal(other.state[p]["exp_avg_sq"], opt.state[p]["exp_avg_sq"])
        assert other.state[p]["exp_avg_sq"].dtype == torch.float32


def test_bad_checkpoint_changes_nothing():
    model = build("mlp")
    opt = ft.Adam(model.parameters())
    model(torch.randn(2, 6)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = torch.zeros(3)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"param 0: state 'exp_avg' is torch.float32\[3\], expected a tensor of shape \[16, 6\]"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    for i in before["state"]:
        for k, v in before["state"][i].items():
            assert torch.equal(v, after["state"][i][k]), (i, k)


def losses_fall(model, opt, steps=30, dtype=torch.float32, set_to_none=True):
    x, y = torch.randn(32, 6, dtype=dtype), torch.randn(32, 3, dtype=dtype)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=set_to_none)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses[-1] < 0.9 * losses[0]


HABITS = {
    "module.to(another dtype)": lambda m: m.to(torch.bfloat16 if first(m).dtype == torch.float32 else torch.float32),
    "p.data = new tensor": lambda m: [setattr(p, "data", p.detach().clone()) for p in m.parameters()],
    "module.share_memory()": lambda m: m.share_memory(),
    "load_state_dict(assign=True)": lambda m: m.load_state_dict({k: v.clone() for k, v in m.state_dict().items()},
                                                               assign=True),
}


# Storage modes (options, and the dtype the model starts in) whose arrays follow a param that moved.
STORAGE = {
    "fp32 master": ({"master_weights": True}, torch.float32),
    "remainder, 8-bit state": ({"master_weights": "remainder", "state_precision": "8bit"}, torch.bfloat16),
    "Kahan, bf16 state": ({"master_weights": "kahan", "state_precision": "bfloat16"}, torch.bfloat16),
    "stochastic": ({"master_weights": "stochastic", "state_precision": "bfloat16_stochastic", "seed": 1},
                   torch.bfloat16),
}


@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("habit", HABITS)
def test_follows_params_replaced_after_building(habit, storage):
    """Failure 2 and 3 of issue 12: the optimizer keeps training the module's params after the
    module moved them (before: fastopt updated the old memory and the model never changed)."""
    options, dtype = STORAGE[storage]
    torch.manual_seed(0)
    model = mlp().to(dtype)
    opt = ft.AdamW(model.parameters(), lr=1e-2, **options)
    assert losses_fall(model, opt, 5, dtype)
    HABITS[habit](model)
    dtype = next(model.parameters()).dtype
    before = [p.detach().clone() for p in model.parameters()]
    assert losses_fall(model, opt, 30, dtype)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    kept = {k: int(v["step"]) for k, v in opt.state_dict()["state"].items()}
    assert set(kept.values()) == {35}, "the state went with the params"


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("set_to_none", [True, False])
def test_grads_replaced_by_torch_are_followed(set_to_none):
    """Failure 1 of issue 12: new .grad tensors at every backward (zero_grad(set_to_none=True),
    create_graph=True) are the ones stepped on."""
    torch.manual_seed(0)
    model = mlp()
    opt = ft.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    ref = copy.deepcopy(model)
    ropt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for m, o in ((model, opt), (ref, ropt)):
        for _ in range(5):
            o.zero_grad(set_to_none=set_to_none)
            torch.nn.functional.mse_loss(m(x), y).backward(create_graph=True)
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_no_grads_at_all_warns():
    model = mlp()
    opt = ft.Adam(model.parameters())
    with pytest.warns(RuntimeWarning, match="no param has a grad"):
        opt.step()


def test_deepcopy_and_pickle_carry_state_and_options():
    """Copies of a (model, optimizer) pair step exactly as the original does from there."""
    x, y = torch.randn(8, 6), torch.randn(8, 3)

    def step(pair):
        pair["opt"].zero_grad()
        torch.nn.functional.mse_loss(pair["model"](x), y).backward()
        pair["opt"].step()
    model = build("mlp")
    pair = {"model": model, "opt": ft.AdamW(model.parameters(), lr=1e-2, max_grad_norm=0.5)}
    for _ in range(3):
        step(pair)
    twins = [copy.deepcopy(pair), pickle.loads(pickle.dumps(pair))]
    for p in [pair, *twins]:
        step(p)
    for twin in twins:
        assert twin["opt"]._options == pair["opt"]._options
        assert int(twin["opt"].state_dict()["state"][0]["step"]) == 4
        for a, b in zip(twin["model"].parameters(), model.parameters()):
            assert torch.equal(a, b)


def test_freed_with_last_reference():
    import gc
    import weakref
    model = mlp()
    opt = ft.Adam(model.parameters())
    losses_fall(model, opt, 2)
    ref = weakref.ref(opt)
    gc.disable()
    try:
        del opt
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_cuda_module_parity(name):
    kw = {"lr": 0.01, **({"momentum": 0.9} if name == "SGD" else {})}
    data = batches("mlp", 30)
    runs = []
    for cls in (getattr(ft, name), getattr(torch.optim, name)):
        model = build("mlp").cuda()
        opt = cls(model.parameters(), **kw)
        for t, (x, y) in enumerate(data):
            opt.zero_grad(set_to_none=t % 2 == 0)
            torch.nn.functional.mse_loss(model(x.float().cuda()), y.float().cuda()).backward()
            opt.step()
        runs.append([p.detach().cpu() for p in model.parameters()])
    for p, q in zip(*runs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_exported_names():
    assert set(ft.__all__) == {"Optimizer", "GradAccumulator", "gauss_newton_bartlett", "hutchinson",
                               *(cls.__name__ for cls in fastopt.OPTIMIZERS)}
    assert issubclass(ft.LAMB, torch.optim.Optimizer) and ft.LAMB.fastopt_class is fastopt.LAMB
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ft.Lion([torch.zeros(3, requires_grad=True)], lr=1e-4)


def test_ddp_gradient_as_bucket_view(tmp_path):
    """DDP with gradient_as_bucket_view=True makes .grad views of its buckets (new tensors even
    with set_to_none=False): the step reads them (a one-process gloo group)."""
    import datetime

    import torch.distributed as dist
    # A file rendezvous, not a TCP store on a port found free: no socket to wait on (a CI run
    # once hung here), and every collective gives up after a minute instead of the default 30.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        runs = []
        for cls in (ft.SGD, torch.optim.SGD):
            model = torch.nn.parallel.DistributedDataParallel(build("mlp"), gradient_as_bucket_view=True)
            opt = cls(model.parameters(), lr=0.05, momentum=0.9)
            for x, y in batches("mlp", 6):
                opt.zero_grad(set_to_none=False)
                torch.nn.functional.mse_loss(model(x.float()), y.float()).backward()
                opt.step()
            runs.append([p.detach().clone() for p in model.parameters()])
        for p, q in zip(*runs):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("first", ["bound", "fresh"])
def test_new_grads_are_validated(first):
    """A .grad that aliases its param is refused, naming it, before anything is written, whether
    it comes with the first binding or replaces a bound grad."""
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    opt = ft.SGD([a, b], lr=0.1)
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    if first == "bound":
        opt.step()
    b.grad = b.detach()  # the param's own memory
    before = [a.detach().clone(), b.detach().clone()]
    with pytest.raises(fastopt.TensorError, match="grad 1 is the same memory as param 1"):
        opt.step()
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])


# ---- what a review as a new user found (issue 12) ------------------------------------------


def twin_runs(setup, mutate, steps=(3, 3), name="Adam", **kw):
    """The same model trained by torch.optim and by fastopt.torch, with ``mutate(model, opt)``
    between the two runs of steps: the params of both."""
    out = []
    for cls in (getattr(torch.optim, name), getattr(ft, name)):
        torch.manual_seed(0)
        model = setup()
        opt = cls(model.parameters(), lr=0.1, **kw)
        x = torch.linspace(-1, 1, 6 * 4).reshape(4, 6)
        for phase, n in enumerate(steps):
            if phase:
                mutate(model, opt)
            for _ in range(n):
                opt.zero_grad()
                model(x).pow(2).mean().backward()
                opt.step()
        out.append([p.detach().float().clone() for p in model.parameters()])
    return out


def first(model):
    return next(iter(model.parameters()))


STATE_RESETS = {
    "state.clear()": lambda m, o: o.state.clear(),
    "state = defaultdict(dict)": lambda m, o: setattr(o, "state", __import__("collections").defaultdict(dict)),
    "del state[p]": lambda m, o: o.state.pop(first(m)),
    "state[p] = {}": lambda m, o: o.state.__setitem__(first(m), {}),
    "state[p].clear()": lambda m, o: o.state[first(m)].clear(),
    "state[p][exp_avg] = zeros": lambda m, o: o.state[first(m)].__setitem__("exp_avg", torch.zeros_like(first(m))),
    "state[p][step] = 0": lambda m, o: o.state[first(m)].__setitem__("step", torch.tensor(0.0)),
}


@pytest.mark.parametrize("reset", STATE_RESETS)
def test_state_reset_by_the_user_starts_afresh(reset):
    theirs, ours = twin_runs(mlp, STATE_RESETS[reset])
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


PARAM_LIST_EDITS = {
    "insert": lambda m, o: o.param_groups[0]["params"].insert(0, torch.nn.Parameter(torch.ones(3))),
    "pop": lambda m, o: o.param_groups[0]["params"].pop(0),
}


@pytest.mark.parametrize("edit", PARAM_LIST_EDITS)
def test_param_list_edited_in_place(edit):
    theirs, ours = twin_runs(mlp, PARAM_LIST_EDITS[edit], steps=(5, 3))
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_param_replaced_in_param_groups():
    def swap(model, opt):
        first = model[0].weight
        model[0].weight = torch.nn.Parameter(first.detach() * 2)
        opt.param_groups[0]["params"][0] = model[0].weight
    theirs, ours = twin_runs(mlp, swap, name="SGD")
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


MASTER_WRITES = {
    "in-place load_state_dict": lambda m: m.load_state_dict({k: torch.full_like(v, 0.5) for k, v in m.state_dict().items()}),
    "copy_": lambda m: [p.copy_(torch.full_like(p, 0.5)) for p in m.parameters()],  # (under no_grad)
    "p.data =": lambda m: [setattr(p, "data", torch.full_like(p, 0.5)) for p in m.parameters()],
    "assign=True": lambda m: m.load_state_dict({k: torch.full_like(v, 0.5) for k, v in m.state_dict().items()},
                                               assign=True),
}


# The master_weights that keep an array beside each bf16 param for its fp32 value, and its name.
KEEPING = {True: "master_param", "remainder": "master_remainder", "kahan": "kahan_compensation"}


def assert_params_are_their_values(opt, model, value, mode):
    """Each param is ``value``, and so is its fp32 value: its master, or a zero remainder or compensation."""
    for p in model.parameters():
        assert torch.all(p == value), p
        kept = opt.state[p][KEEPING[mode]]
        assert torch.equal(kept, torch.full_like(kept, value) if mode is True else torch.zeros_like(kept)), kept


@pytest.mark.parametrize("mode", KEEPING)
@pytest.mark.parametrize("write", MASTER_WRITES)
def test_params_written_by_the_user_are_not_overwritten_by_master_weights(write, mode):
    """bf16 params with fp32 master weights (a remainder, a compensation): after the user writes
    the params (0.5), the next step starts from 0.5 (before: the stale master overwrote them)."""
    torch.manual_seed(0)
    model = mlp().to(torch.bfloat16)
    opt = ft.SGD(model.parameters(), lr=1e-3, master_weights=mode)
    x = torch.ones(2, 6, dtype=torch.bfloat16)
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    assert all(opt.state[p][KEEPING[mode]].any() for p in model.parameters())
    with torch.no_grad():
        MASTER_WRITES[write](model)
    opt.param_groups[0]["lr"] = 0.0  # the step rewrites the params from their fp32 values alone
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
    assert_params_are_their_values(opt, model, 0.5, mode)


@pytest.mark.parametrize("mode", KEEPING)
def test_master_weights_follow_a_dtype_round_trip(mode):
    """bf16 -> fp32 -> bf16: the fp32 steps are kept (before: the old master came back)."""
    torch.manual_seed(0)
    model = mlp().to(torch.bfloat16)
    opt = ft.SGD(model.parameters(), lr=0.1, master_weights=mode)
    x = torch.ones(2, 6)

    def train(n):
        for _ in range(n):
            opt.zero_grad()
            model(x.to(next(model.parameters()).dtype)).sum().backward()
            opt.step()
    train(2)
    model.float()
    train(5)
    moved = [p.detach().clone() for p in model.parameters()]
    model.to(torch.bfloat16)
    for p, q in zip(model.parameters(), moved):
        torch.testing.assert_close(p.float(), q, rtol=1e-2, atol=1e-2)
    train(1)


def test_weight_tied_after_building():
    torch.manual_seed(0)
    enc, dec = torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False)
    opt = ft.Adam([enc.weight, dec.weight], lr=0.1)
    x = torch.ones(2, 4)
    for _ in range(2):
        opt.zero_grad()
        dec(enc(x)).sum().backward()
        opt.step()
    before = opt.state[enc.weight]["exp_avg"].clone()
    dec.weight = enc.weight
    opt.zero_grad()
    dec(enc(x)).sum().backward()
    opt.step()
    assert len(opt.param_groups[0]["params"]) == 1
    assert not torch.equal(opt.state[enc.weight]["exp_avg"], before)
    assert int(opt.state_dict()["state"][0]["step"]) == 3


def test_torch_options_accepted_or_refused():
    p = [torch.zeros(3, requires_grad=True)]
    ft.AdamW(p, lr=torch.tensor(0.01), foreach=True, fused=True, capturable=False)
    with pytest.raises(ValueError, match="differentiable=True is not supported"):
        ft.Adam(p, differentiable=True)
    with pytest.raises(ValueError, match="use fastopt.torch.AdamW"):
        ft.Adam(p, decoupled_weight_decay=True)
    decoupled = torch.optim.Adam([torch.zeros(3, requires_grad=True)], decoupled_weight_decay=True)
    with pytest.raises(ValueError, match="use fastopt.torch.AdamW"):
        ft.Adam(p).load_state_dict(decoupled.state_dict())


@pytest.mark.parametrize("entry, message", [
    ({"step": torch.tensor(-2.0)}, "step must be a whole number in"),
    ({"step": torch.tensor(float("nan"))}, "step must be a whole number in"),
    ({"step": 2**63 - 1}, "step must be a whole number in"),
    ({"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}, "lacks exp_avg_sq at step 3"),
])
def test_bad_checkpoint_entries_refused(entry, message):
    opt = ft.Adam([torch.zeros(3, requires_grad=True)])
    sd = {"state": {0: entry}, "param_groups": [{**opt.param_groups[0], "params": [0]}]}
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)


def test_step_is_in_state_and_seen_by_state_dict_hooks():
    model = mlp()
    opt = ft.Adam(model.parameters())
    seen = []
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(int(sd["state"][0]["step"])))
    for _ in range(2):
        opt.zero_grad()
        model(torch.ones(1, 6)).sum().backward()
        opt.step()
    opt.state_dict()
    assert seen == [2] and int(opt.state[next(model.parameters())]["step"]) == 2


def test_replaced_grad_errors_name_the_param_by_its_place():
    params = [torch.nn.Parameter(torch.ones(4)) for _ in range(3)]
    opt = ft.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1)
    for p in params:
        p.grad = torch.ones(4)
    opt.step()
    params[2].grad = torch.ones(8)[::2]  # a strided view
    with pytest.raises(fastopt.TensorError, match="^grad 2: is not C-contiguous"):
        opt.step()


@pytest.mark.parametrize("mode", KEEPING)
def test_model_weights_loaded_after_an_optimizer_checkpoint_are_kept(mode):
    """opt.load_state_dict(a checkpoint with master weights, remainders or compensations), then
    model.load_state_dict(other weights): the next step starts from the model's weights, not the
    checkpoint's fp32 values."""
    torch.manual_seed(0)
    model = mlp().to(torch.bfloat16)
    opt = ft.SGD(model.parameters(), lr=1e-2, master_weights=mode)
    for _ in range(2):
        model(torch.ones(1, 6, dtype=torch.bfloat16)).sum().backward()
        opt.step()
    ckpt = opt.state_dict()
    opt = ft.SGD(model.parameters(), master_weights=mode)
    opt.load_state_dict(ckpt)
    opt.param_groups[0]["lr"] = 0.0  # the step rewrites the params from their fp32 values alone
    with torch.no_grad():
        model.load_state_dict({k: torch.full_like(v, 0.25) for k, v in model.state_dict().items()})
    opt.step()
    assert_params_are_their_values(opt, model, 0.25, mode)


def test_one_thread_at_a_time():
    opt = ft.Adam([torch.nn.Parameter(torch.ones(3))])
    opt._busy.acquire()  # as a step running in another thread holds it
    try:
        for call in (opt.step, opt.state_dict, lambda: opt.load_state_dict({})):
            with pytest.raises(RuntimeError, match="stepping in another thread"):
                call()
    finally:
        opt._busy.release()



def test_grad_accumulator_feeds_the_step():
    """bf16 params, four micro-batches accumulated in float32 (zero_grad() between them sets .grad
    to None, as by default), then a clipped step that reads the accumulators and their sums: the
    bits of fastopt.AdamW stepped with its own norm pass over float32 grads summed by torch
    (0.25 * g is exact, so one fma is torch's multiply then add)."""
    import fastopt.torch as ft
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3).to(torch.bfloat16)
    twin = [p.detach().clone() for p in model.parameters()]
    summed = [torch.zeros(p.shape) for p in twin]
    opt = ft.AdamW(model.parameters(), lr=0.01, max_grad_norm=0.1, master_weights=True)
    ref = fastopt.AdamW(twin, summed, lr=0.01, max_grad_norm=0.1, master_weights=True)
    acc = ft.GradAccumulator(model.parameters())
    for step in range(3):
        for k in range(4):
            opt.zero_grad()
            model(torch.randn(5, 6, dtype=torch.bfloat16)).square().mean().backward()
            for t, p in zip(summed, model.parameters()):
                t.copy_((t if k else torch.zeros_like(t)) + 0.25 * p.grad.float())
            sums = acc.add(0.25, first=k == 0, last=k == 3)
        assert all(torch.equal(a, t) for a, t in zip(acc.accumulators, summed))
        opt.step(accumulated=sums)
        expected = ref.step()
        assert opt.last_step.grad_norm == expected.grad_norm == sums.norm
        assert all(torch.equal(p, t) for p, t in zip(model.parameters(), twin))
    with pytest.raises(TypeError, match="accumulated must come from fastopt.torch.GradAccumulator"):
        opt.step(accumulated=fastopt.GradAccumulator([torch.zeros(3)]).add(first=True, last=True))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match="accumulated is None: GradAccumulator.add returns the accumulated grads "
                                        "only with last=True"):
        opt.step(accumulated=acc.add(0.25))  # (last=True forgotten: not a step on the last .grad alone)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    model.weight.grad = None
    with pytest.raises(RuntimeError, match="param 0 has no grad"):
        acc.add()
