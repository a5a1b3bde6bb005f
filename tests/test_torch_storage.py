"""fastopt.torch in every storage mode (``master_weights``, ``state_precision``, ``seed``): the drop-in
is a layer over fastopt's optimizer, so each mode steps a torch model bit for bit as the plain
optimizer does; a checkpoint resumes bit for bit; per-group modes, add_param_group, copies and
state resets keep working; what cannot work is refused, naming the group."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import fastopt
import fastopt.torch as ft
from fastopt.storage import Storage
from fastopt.storage_modes import MODES, BF16

SEED = 7  # given wherever something rounds stochastically


def mode_case(label, dtype, master_weights=False, state_precision="float32"):
    options = {"master_weights": master_weights, "state_precision": state_precision}
    if Storage(master_weights, state_precision).random:
        options["seed"] = SEED
    return pytest.param(dtype, options, id=label)


# Every row of fastopt.storage_modes.MODES, and the combinations those leave out.
CASES = [mode_case(m.label, torch.bfloat16 if m.dtype == BF16 else torch.float32, m.master_weights,
                   m.state_precision) for m in MODES] + [
    mode_case("fp16 + stochastic rounding", torch.float16, "stochastic"),
    mode_case("fp16 + fp32 master + 8-bit state", torch.float16, True, "8bit"),
    mode_case("bf16 + Kahan + bf16 state", torch.bfloat16, "kahan", "bfloat16"),
    mode_case("bf16 + stochastic rounding + bf16 state, stochastic", torch.bfloat16, "stochastic",
              "bfloat16_stochastic"),
]
OPTIMIZERS = {"AdamW": {"lr": 1e-2, "weight_decay": 0.1}, "SGD": {"lr": 0.05, "momentum": 0.9}}


def model(dtype) -> torch.nn.Module:
    """An MLP whose middle weight spans two blocks of 8-bit state (3072 elements)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.Tanh(), torch.nn.Linear(64, 48), torch.nn.Tanh(),
                               torch.nn.Linear(48, 3)).to(dtype)


def loss(m, t):
    g = torch.Generator().manual_seed(t)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
    dtype = next(m.parameters()).dtype
    return torch.nn.functional.mse_loss(m(x.to(dtype)), y.to(dtype))


def train(m, opt, steps):
    for t in steps:
        opt.zero_grad(set_to_none=t % 2 == 0)
        loss(m, t).backward()
        opt.step()


def bits(t):
    return t.detach().reshape(-1).view(torch.uint8)


def assert_same_bits(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert torch.equal(bits(a), bits(b)), what


def assert_same_run(m1, opt1, m2, opt2):
    """Params, state and step counts equal bit for bit."""
    for k, (p, q) in enumerate(zip(m1.parameters(), m2.parameters())):
        assert_same_bits(p, q, f"param {k}")
    sd1, sd2 = opt1.state_dict(), opt2.state_dict()
    assert sd1.get("seed") == sd2.get("seed")
    assert sd1["state"].keys() == sd2["state"].keys()
    for k in sd1["state"]:
        assert sd1["state"][k].keys() == sd2["state"][k].keys(), k
        for name, a in sd1["state"][k].items():
            assert_same_bits(a, sd2["state"][k][name], f"param {k}: {name}")


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype, options", CASES)
def test_each_mode_steps_as_the_plain_optimizer(dtype, options, name):
    """The drop-in (grads from backward, zero_grad both ways) and fastopt.<name> bound once to grad
    buffers refilled in place: the same params and state, bit for bit, under the same names."""
    kw = OPTIMIZERS[name]
    ours, theirs = model(dtype), model(dtype)
    opt = getattr(ft, name)(ours.parameters(), **options, **kw)
    params = list(theirs.parameters())
    grads = [torch.zeros_like(p) for p in params]
    plain = getattr(fastopt, name)(params, grads, **options, **kw)
    for t in range(8):
        opt.zero_grad(set_to_none=t % 2 == 0)
        loss(ours, t).backward()
        opt.step()
        for g, new in zip(grads, torch.autograd.grad(loss(theirs, t), params)):
            g.copy_(new)
        plain.step()
    for i, (p, q) in enumerate(zip(ours.parameters(), params)):
        assert_same_bits(p, q, f"param {i}")
        state = opt.state[p]
        assert state.keys() - {"step"} == plain.state[i].keys(), i
        for k, a in plain.state[i].items():
            assert_same_bits(state[k], a, f"param {i}: {k}")


def test_state_holds_the_stored_tensors():
    m = model(torch.bfloat16)
    opt = ft.AdamW([{"params": [m[2].weight], "master_weights": "remainder", "state_precision": "8bit"},
                    {"params": [m[2].bias], "master_weights": "kahan", "state_precision": "bfloat16"}])
    loss(m, 0).backward()
    opt.step()
    forms = {k: (v.dtype, tuple(v.shape)) for k, v in opt.state[m[2].weight].items()}
    assert forms == {"exp_avg": (torch.uint8, (48, 64)), "exp_avg_absmax": (torch.float32, (2,)),
                     "exp_avg_sq": (torch.uint8, (48, 64)), "exp_avg_sq_absmax": (torch.float32, (2,)),
                     "master_remainder": (torch.uint16, (48, 64))}
    forms = {k: (v.dtype, tuple(v.shape)) for k, v in opt.state[m[2].bias].items()}
    assert forms == {"exp_avg": (torch.bfloat16, (48,)), "exp_avg_sq": (torch.bfloat16, (48,)),
                     "kahan_compensation": (torch.bfloat16, (48,))}
    assert [g["state_precision"] for g in opt.param_groups] == ["8bit", "bfloat16"]
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == torch.uint8 and int(sd["state"][0]["step"]) == 1
    assert "seed" not in sd


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype, options", CASES)
def test_checkpoint_resumes_bit_for_bit(dtype, options, name):
    """10 steps straight == 4 steps, torch.save of the model's and the optimizer's state_dict, a new
    model and optimizer (built without the seed: the checkpoint brings it) loading them, 6 steps."""
    kw = OPTIMIZERS[name]
    cls = getattr(ft, name)
    straight = model(dtype)
    opt = cls(straight.parameters(), **options, **kw)
    train(straight, opt, range(10))

    first = model(dtype)
    opt1 = cls(first.parameters(), **options, **kw)
    train(first, opt1, range(4))
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    resumed = model(dtype)
    resumed.load_state_dict(saved["model"])
    opt2 = cls(resumed.parameters(), **{k: v for k, v in options.items() if k != "seed"}, **kw)
    opt2.load_state_dict(saved["opt"])
    train(resumed, opt2, range(4, 10))
    assert_same_run(straight, opt, resumed, opt2)


def test_per_group_modes_as_the_plain_optimizer():
    """Weights and biases in groups of their own modes (given as constructor defaults overridden
    per group): the same bits as the plain optimizer with the same groups."""
    def groups(m):
        return [{"params": [m[0].weight, m[2].weight], "state_precision": "8bit"},
                {"params": [m[4].weight], "master_weights": "stochastic", "lr": 1e-3},
                {"params": [m[0].bias, m[2].bias, m[4].bias], "master_weights": "kahan"}]
    kw = {"master_weights": "remainder", "state_precision": "bfloat16_stochastic", "seed": 3, "lr": 1e-2}
    ours, theirs = model(torch.bfloat16), model(torch.bfloat16)
    opt = ft.Adam(groups(ours), **kw)
    params = list(theirs.parameters())
    grads = {p: torch.zeros_like(p) for p in params}
    plain = fastopt.Adam([{**g, "grads": [grads[p] for p in g["params"]]} for g in groups(theirs)], **kw)
    for t in range(6):
        opt.zero_grad()
        loss(ours, t).backward()
        opt.step()
        for p, new in zip(params, torch.autograd.grad(loss(theirs, t), params)):
            grads[p].copy_(new)
        plain.step()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert_same_bits(p, q, "param")
    order = [p for g in groups(ours) for p in g["params"]]
    for i, p in enumerate(order):
        for k, a in plain.state[i].items():
            assert_same_bits(opt.state[p][k], a, f"param {i}: {k}")
    assert opt.param_groups[2]["master_weights"] == "kahan" and opt.param_groups[2]["state_precision"] == \
        "bfloat16_stochastic"


def test_add_param_group_with_its_own_modes():
    """A group added after 3 steps, with modes of its own, steps as it would have from the start
    had its params no grads for those 3 steps."""
    def run(add_late):
        m = model(torch.bfloat16)
        head = list(m[4].parameters())
        body = [p for p in m.parameters() if all(p is not q for q in head)]
        group = {"params": head, "master_weights": "kahan", "state_precision": "8bit", "lr": 1e-3}
        opt = ft.AdamW([{"params": body}] if add_late else [{"params": body}, group], lr=1e-2,
                       master_weights="remainder")
        for t in range(8):
            if add_late and t == 3:
                opt.add_param_group(group)
            opt.zero_grad()
            loss(m, t).backward()
            if t < 3:
                for p in head:
                    p.grad = None
            opt.step()
        return m, opt
    late, early = run(True), run(False)
    assert_same_run(*late, *early)
    opt = late[1]
    assert opt.state[opt.param_groups[1]["params"][0]]["exp_avg"].dtype == torch.uint8
    with pytest.raises(ValueError, match="param group 2: state_precision must be one of"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "state_precision": "int8"})
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize("dtype, options", CASES)
def test_deepcopy_and_pickle_step_as_the_original(dtype, options):
    m = model(dtype)
    pair = {"model": m, "opt": ft.AdamW(m.parameters(), lr=1e-2, **options)}
    train(pair["model"], pair["opt"], range(3))
    twins = [copy.deepcopy(pair), pickle.loads(pickle.dumps(pair))]
    for p in [pair, *twins]:
        train(p["model"], p["opt"], range(3, 5))
    for twin in twins:
        assert_same_run(twin["model"], twin["opt"], pair["model"], pair["opt"])


@pytest.mark.parametrize("dtype, options", CASES)
def test_state_cleared_starts_afresh(dtype, options):
    """opt.state.clear() after 3 steps: the next steps are a new optimizer's from those params
    (masters taken from the params again, remainders and compensations zero)."""
    m = model(dtype)
    opt = ft.AdamW(m.parameters(), lr=1e-2, **options)
    train(m, opt, range(3))
    fresh_model = copy.deepcopy(m)
    fresh = ft.AdamW(fresh_model.parameters(), lr=1e-2, **options)
    opt.state.clear()
    train(m, opt, range(3, 6))
    train(fresh_model, fresh, range(3, 6))
    assert_same_run(m, opt, fresh_model, fresh)


# ---- refusals ----------------------------------------------------------------------------------


def bf16_params(n=2):
    return [torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16)) for _ in range(n)]


@pytest.mark.parametrize("build, error, message", [
    (lambda: ft.AdamW(bf16_params(), master_weights="fp32"), ValueError,
     "^master_weights must be True, False, 'remainder', 'kahan' or 'stochastic', got 'fp32'"),
    (lambda: ft.AdamW(bf16_params(), state_precision="int8"), ValueError, "^state_precision must be one of"),
    (lambda: ft.AdamW([{"params": bf16_params()}, {"params": bf16_params(), "master_weights": "bf16"}]),
     ValueError, "^param group 1: master_weights must be True, False"),
    (lambda: ft.AdamW([torch.nn.Parameter(torch.ones(3, dtype=torch.float16))], master_weights="remainder"),
     ValueError, "^param group 0: param 0: master_weights='remainder' is for bfloat16 params; this param is "
                 "float16: use master_weights=True"),
    (lambda: ft.SGD([{"params": bf16_params()}, {"params": [torch.nn.Parameter(torch.ones(3, dtype=torch.float16))],
                                                 "master_weights": "kahan"}]),
     ValueError, "^param group 1: param 2: master_weights='kahan' is for bfloat16 params"),
    (lambda: ft.Adagrad(bf16_params(), state_precision="8bit"), ValueError,
     r"^state_precision='8bit': Adagrad cannot keep 8-bit state \(see fastopt.Adagrad\): use 'bfloat16' or "
     "'float32'$"),
    (lambda: ft.Adagrad([{"params": bf16_params()}, {"params": bf16_params(), "state_precision": "8bit"}]),
     ValueError, "^param group 1: state_precision='8bit': Adagrad cannot keep 8-bit state"),
    (lambda: ft.AdamW(bf16_params(), seed=-1), ValueError, r"^seed must be an integer in \[0, 2\*\*64\), got -1"),
    (lambda: ft.AdamW([{"params": bf16_params(), "master_weights": "stochastic", "seed": 5}]), ValueError,
     "^param group 0: seed is the optimizer's, not a param group's"),
])
def test_refused_when_built(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_adagrad_takes_bfloat16_state():
    m = model(torch.float32)
    opt = ft.Adagrad(m.parameters(), state_precision="bfloat16")
    train(m, opt, range(2))
    assert opt.state[m[0].weight]["sum"].dtype == torch.bfloat16


def test_the_seed_serves_groups_added_later():
    """A seed given while no group rounds stochastically is kept for a group added later."""
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(0)
        m, extra = model(torch.float32), model(torch.bfloat16)
        opt = ft.AdamW(m.parameters(), seed=seed)
        opt.add_param_group({"params": list(extra.parameters()), "master_weights": "stochastic"})
        train(extra, opt, range(2))
        runs.append([p.detach().clone() for p in extra.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_adagrad_set_to_8bit_before_its_first_step_refused_and_nothing_made():
    """The group's modes change until there is state: 8-bit Adagrad set then is refused at the
    step with the constructor's message, before any state is made; set back, it steps."""
    m = model(torch.float32)
    opt = ft.Adagrad(m.parameters())
    opt.param_groups[0]["state_precision"] = "8bit"
    with pytest.raises(ValueError, match=r"^param group 0: state_precision='8bit': Adagrad cannot keep 8-bit state"):
        train(m, opt, range(1))
    assert all(not opt.state[p] for p in m.parameters())
    opt.param_groups[0]["state_precision"] = "float32"
    train(m, opt, range(1, 2))
    assert opt.state[m[0].weight]["sum"].dtype == torch.float32


def test_params_turned_float16_refused_at_the_step():
    m = model(torch.bfloat16)
    opt = ft.AdamW(m.parameters(), master_weights="remainder")
    train(m, opt, range(2))
    m.half()
    with pytest.raises(ValueError, match="^param group 0: param 0: master_weights='remainder' is for bfloat16 params"):
        train(m, opt, range(2, 3))


def test_group_modes_change_until_there_is_state():
    m = model(torch.float32)
    opt = ft.AdamW(m.parameters())
    opt.param_groups[0]["state_precision"] = "bfloat16"  # no state yet: taken
    train(m, opt, range(2))
    assert opt.state[m[0].weight]["exp_avg"].dtype == torch.bfloat16
    opt.param_groups[0]["state_precision"] = "8bit"
    with pytest.raises(ValueError, match=r"^param 0: state 'exp_avg' is torch.bfloat16; param group 0 keeps torch.uint8 "
                                         r"\(state_precision='8bit'\); a group's storage modes are fixed once its "
                                         "params have state, and state set by hand must match them$"):
        train(m, opt, range(2, 3))
    opt.param_groups[0]["state_precision"] = "bfloat16"
    opt.param_groups[0]["master_weights"] = "bad"
    with pytest.raises(ValueError, match="^param group 0: master_weights must be"):
        train(m, opt, range(2, 3))
    opt.param_groups[0]["master_weights"] = False
    train(m, opt, range(2, 4))
    assert int(opt.state_dict()["state"][0]["step"]) == 4


def trained(**options):
    """A bf16 model and its AdamW after 2 steps."""
    m = model(torch.bfloat16)
    opt = ft.AdamW(m.parameters(), lr=1e-2, **options)
    train(m, opt, range(2))
    return m, opt


@pytest.mark.parametrize("saved, loading, message", [
    ({"state_precision": "8bit"}, {},
     r"^param 0: state 'exp_avg' is torch.uint8; param group 0 keeps torch.float32 \(state_precision='float32'\); a "
     r"checkpoint loads into the storage modes it was saved with \(the checkpoint's group has state_precision='8bit'\)"),
    ({}, {"state_precision": "8bit"}, r"^param 0: state 'exp_avg' is torch.float32; param group 0 keeps torch.uint8"),
    ({}, {"state_precision": "bfloat16"}, r"^param 0: state 'exp_avg' is torch.float32; param group 0 keeps "
                                          r"torch.bfloat16"),
    ({"master_weights": True}, {"master_weights": "remainder"},
     r"^param 0: state 'master_param' is kept with master_weights=True; param group 0 has "
     r"master_weights='remainder'; .* \(the checkpoint's group has master_weights=True\)"),
    ({"master_weights": "remainder"}, {"master_weights": True},
     r"^param 0: state 'master_remainder' is kept with master_weights='remainder'; param group 0 has "
     r"master_weights=True"),
    ({"master_weights": "kahan"}, {}, "^param 0: state 'kahan_compensation' is kept with master_weights='kahan'"),
])
def test_checkpoint_of_another_mode_refused_and_nothing_changes(saved, loading, message):
    sd = trained(**saved)[1].state_dict()
    opt = trained(**loading)[1]
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    for k, entry in before["state"].items():
        for name, a in entry.items():
            assert_same_bits(after["state"][k][name], a, f"param {k}: {name}")


def test_checkpoints_convert_where_that_is_exact():
    """bf16 state into bf16 state rounded stochastically, a torch.optim checkpoint of bf16 params
    (bf16 state) into bf16 state, one without a master into the Kahan and remainder modes (zero
    compensation and remainder: the param is the value)."""
    m, opt = trained(state_precision="bfloat16")
    other = ft.AdamW(m.parameters(), state_precision="bfloat16_stochastic", seed=1)
    other.load_state_dict(opt.state_dict())
    for p in m.parameters():
        assert_same_bits(other.state[p]["exp_avg"], opt.state[p]["exp_avg"], "exp_avg")

    torch_opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    train(m, torch_opt, range(2))
    ours = ft.AdamW(m.parameters(), lr=1e-2, state_precision="bfloat16")
    ours.load_state_dict(torch_opt.state_dict())
    for p in m.parameters():
        assert_same_bits(ours.state[p]["exp_avg_sq"], torch_opt.state[p]["exp_avg_sq"], "exp_avg_sq")
    train(m, ours, range(2, 4))

    sd = trained(master_weights="stochastic", seed=4)[1].state_dict()
    for mode, name in (("kahan", "kahan_compensation"), ("remainder", "master_remainder")):
        m, opt = trained(master_weights=mode)
        opt.load_state_dict(sd)
        opt.param_groups[0]["lr"] = 0.0  # the step rewrites the params from their fp32 values alone
        before = [p.detach().clone() for p in m.parameters()]
        train(m, opt, range(2, 3))
        for p, q in zip(m.parameters(), before):
            assert_same_bits(p, q, "param")
            assert opt.state[p][name].dtype in (torch.bfloat16, torch.uint16) and not opt.state[p][name].any()


def test_bad_8bit_checkpoints_refused():
    m, opt = trained(state_precision="8bit")
    sd = opt.state_dict()
    del sd["state"][1]["exp_avg_absmax"]
    with pytest.raises(ValueError, match=r"^param 1: state 'exp_avg' and 'exp_avg_absmax' \(8-bit codes and their "
                                         "absmax\\) go together"):
        opt.load_state_dict(sd)
    sd = opt.state_dict()
    sd["state"][2]["exp_avg_absmax"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"^param 2: state 'exp_avg_absmax' is torch.float32\[1\], expected a tensor "
                                         r"of shape \[2\]"):
        opt.load_state_dict(sd)
