"""The functional forms' own argument checks (python/fastopt/functional.py), and their storage
modes against the optimizer classes' (their float32 results are checked against the classes in
test_rules.py)."""

import functools

import ml_dtypes
import numpy as np
import pytest

import fastopt
from fastopt import functional as F
from registry import assert_bits_equal, bits, case_by_id, grad_steps, random_params, refill


def arrays(n=3, size=8, value=1.0):
    return [np.full(size, value, np.float32) for _ in range(n)]


def test_sgd_step_is_required():
    with pytest.raises(TypeError):
        F.sgd_(arrays(), arrays(), arrays(value=0.0), lr=0.1, momentum=0.9)


def test_sgd_momentum_needs_buffers():
    params = arrays()
    with pytest.raises(ValueError, match="momentum != 0 needs momentum_buffers"):
        F.sgd_(params, arrays(), None, step=1, lr=0.1, momentum=0.9)
    assert all((p == 1).all() for p in params)


def test_sgd_momentum_builds_up_across_calls():
    params, grads, bufs = arrays(1), arrays(1), arrays(1, value=0.0)
    for step in (1, 2, 3):
        F.sgd_(params, grads, bufs, step=step, lr=0.1, momentum=0.5)
    np.testing.assert_allclose(bufs[0], 1 + 0.5 + 0.25)


@pytest.mark.parametrize("short", ["exp_avgs", "exp_avg_sqs", "master_params"])
def test_adam_list_lengths_checked(short):
    lists = {"exp_avgs": arrays(value=0.0), "exp_avg_sqs": arrays(value=0.0), "master_params": None}
    lists[short] = arrays(2, value=0.0) if short != "master_params" else [None, None]
    params = arrays()
    with pytest.raises(ValueError, match="got 3 params but 2"):
        F.adam_(params, arrays(), lists["exp_avgs"], lists["exp_avg_sqs"], step=1,
                master_params=lists["master_params"])
    assert all((p == 1).all() for p in params)


# ---- bound once, stepped many times (<form>.bind) ------------------------------------------


def _arrays(n_state, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(5,), (3, 7)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    states = [[np.zeros(s, np.float32) for s in shapes] for _ in range(n_state)]
    return params, grads, states


def test_bound_step_is_the_functional_step():
    """adamw_.bind(...)(step=t, lr=...) gives the bits adamw_(..., step=t, lr=...) gives, with
    hyperparameters changing between calls (and ``stream``, as the classes' step takes it: no
    hyperparameter)."""
    a, b = _arrays(2), _arrays(2)
    step = fastopt.functional.adamw_.bind(a[0], a[1], *a[2])
    for t in range(1, 6):
        lr = 1e-3 * t
        step(step=t, lr=lr, weight_decay=0.1, stream=None)
        fastopt.functional.adamw_(b[0], b[1], *b[2], step=t, lr=lr, weight_decay=0.1)
        for x, y in zip(a[0] + a[2][0] + a[2][1], b[0] + b[2][0] + b[2][1]):
            np.testing.assert_array_equal(x, y)


def test_bound_step_needs_the_state_its_hyperparameters_use():
    params, grads, states = _arrays(2)
    step = fastopt.functional.adam_.bind(params, grads, *states)
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match="amsgrad needs max_exp_avg_sqs, which were not bound"):
        step(step=1, lr=0.1, amsgrad=True)
    with pytest.raises(TypeError, match="step= is required"):
        step(lr=0.1)
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        step(step=1, lr_max=0.1)
    for bad in (1.5, "2", True, 0, 2**63):  # (the step keys bias corrections and random bits)
        with pytest.raises(ValueError, match=r"step must be >= 1 and <= 2\*\*63 - 1, an integer"):
            step(step=bad, lr=0.1)
    for p, q in zip(params, before):
        np.testing.assert_array_equal(p, q)
    sgd = fastopt.functional.sgd_.bind(params, grads)
    with pytest.raises(ValueError, match="momentum_buffers, which were not bound"):
        sgd(step=1, lr=0.1, momentum=0.9)


def test_bind_validates_at_bind_time():
    params, grads, states = _arrays(2)
    with pytest.raises(fastopt.TensorError, match="exp_avg_sq 1: shape"):
        fastopt.functional.adam_.bind(params, grads, states[0], [states[1][0], np.zeros(4, np.float32)])
    with pytest.raises(ValueError, match="got 2 params but 1 exp_avgs"):
        fastopt.functional.adam_.bind(params, grads, states[0][:1], states[1])


def test_bound_step_watches_the_callers_state():
    """A bound form's state is the caller's: a torch state tensor moved after binding
    (resize_ reallocates it) is refused before anything is written, as a param would be."""
    import torch
    params, grads = [torch.zeros(4)], [torch.ones(4)]
    m, v = [torch.zeros(4)], [torch.zeros(4)]
    step = fastopt.functional.adam_.bind(params, grads, m, v)
    step(step=1, lr=0.1)
    before = params[0].clone()
    v[0].resize_(1 << 16)
    with pytest.raises(fastopt.MemoryMoved, match="^exp_avg_sq 0: its memory was moved"):
        step(step=2, lr=0.1)
    assert torch.equal(params[0], before)


# ---- storage modes: the caller's arrays decide them, as master_weights / state_precision do --


BF16, F16 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)
SHAPES = [(3, 1000), (37,), ()]  # (3000 elements: two absmax blocks of 8-bit state)
SEED = 7

# (id, param dtype, the class's master_weights, its state_precision)
MODES = [
    ("bf16_state", np.float32, False, "bfloat16"),
    ("bf16_stochastic_state", np.float32, False, "bfloat16_stochastic"),
    ("8bit_state", np.float32, False, "8bit"),
    ("master", BF16, True, "float32"),
    ("remainder", BF16, "remainder", "float32"),
    ("kahan", BF16, "kahan", "float32"),
    ("stochastic_bf16", BF16, "stochastic", "float32"),
    ("stochastic_f16", F16, "stochastic", "float32"),
    ("remainder_8bit", BF16, "remainder", "8bit"),
    ("stochastic_bf16_stochastic_state", BF16, "stochastic", "bfloat16_stochastic"),
]
# AdamW, SGD with momentum, Lion (whose update does not depend on the step: its bits still do)
# and LAMB (two passes).
RULE_CASES = [case_by_id(i) for i in ("adamw-weight_decay", "sgd-momentum", "lion-plain", "lamb-weight_decay_betas")]


def hypers(case):
    """The case's hyperparameters as the functional keywords (betas as beta1, beta2)."""
    kw = dict(case.kwargs)
    if "betas" in kw:
        kw["beta1"], kw["beta2"] = kw.pop("betas")
    return kw


def caller_arrays(case, params, master_weights, state_precision, place=lambda a: a):
    """What a functional caller allocates for a storage mode: the state the case's step uses and
    the storage keywords, by the class's names (``state[i]`` of the optimizer) and by the form's
    (the same arrays: NumPy arrays of the NumPy ``params``, moved by ``place``)."""
    cls = case.cls
    used = cls.state_names[:cls._to_hyper({**cls.default_hypers(), **case.kwargs}).num_state()]
    dtype = {"float32": np.float32, "bfloat16": BF16, "bfloat16_stochastic": BF16, "8bit": np.uint8}[state_precision]
    names = {s: [place(np.zeros(p.shape, dtype)) for p in params] for s in used}
    kw = {}
    if state_precision == "8bit":
        for s in used:
            names[s + "_absmax"] = kw[s + "_absmaxs"] = [place(np.zeros(-(-p.size // 2048), np.float32))
                                                        for p in params]
    if master_weights is True:
        names["master_param"] = kw["master_params"] = [place(p.astype(np.float32)) for p in params]
    elif master_weights == "remainder":
        names["master_remainder"] = kw["remainders"] = [place(np.zeros(p.shape, np.uint16)) for p in params]
    elif master_weights == "kahan":
        names["kahan_compensation"] = kw["compensations"] = [place(np.zeros(p.shape, BF16)) for p in params]
    kw["stochastic_rounding"] = master_weights == "stochastic"
    kw["state_stochastic_rounding"] = state_precision == "bfloat16_stochastic"
    if kw["stochastic_rounding"] or kw["state_stochastic_rounding"]:
        kw["seed"] = SEED
    return names, kw


def assert_state_equal(ours, theirs, opt, mine, t):
    """Our params and every array the optimizer keeps (``mine``: per param, by the names of its
    ``state[i]``: state, absmax, master or its remainder or compensation) are the class's, bit
    for bit."""
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert_bits_equal(p, q, f"step {t}: param {i}")
        assert set(opt.state[i]) == set(mine[i])
        for name, a in mine[i].items():
            assert_bits_equal(a, opt.state[i][name], f"step {t}: {name} {i}")


@pytest.mark.parametrize("bound", [False, True], ids=["call", "bound"])
@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
@pytest.mark.parametrize("case", RULE_CASES, ids=[c.id for c in RULE_CASES])
def test_storage_mode_is_the_classs(case, mode, bound):
    """Each storage mode, chosen by the caller's arrays and keywords, steps as the class in that
    mode, bit for bit at every step: params, state, absmax arrays, masters and their
    alternatives (the stochastic modes: the class's random bits, step for step)."""
    _, dtype, master_weights, state_precision = mode
    rng = np.random.default_rng(case.seed)
    start = random_params(rng, SHAPES, "float32")
    grads = [np.zeros(s, np.float32) for s in SHAPES]
    ours = [p.astype(dtype) for p in start]
    theirs = [p.astype(dtype) for p in start]
    opt = case.cls(theirs, grads, master_weights=master_weights, state_precision=state_precision,
                   seed=SEED if master_weights == "stochastic" or state_precision == "bfloat16_stochastic" else 0,
                   **case.kwargs)
    names, storage = caller_arrays(case, ours, master_weights, state_precision)
    states = [names[s] for s in case.cls.state_names if s in names]
    step = case.fn.bind(ours, grads, *states, **storage) if bound else None
    for t, g in enumerate(grad_steps(case.seed, SHAPES, 4), start=1):
        refill(grads, g)
        opt.step()
        if bound:
            step(step=t, **hypers(case))
        else:
            case.fn(ours, grads, *states, step=t, **hypers(case), **storage)
        assert_state_equal(ours, theirs, opt, [{k: v[i] for k, v in names.items()} for i in range(len(ours))], t)


def test_state_precision_per_param():
    """The dtype of each param's state decides its storage: 8-bit state for one param beside
    float32 state for another (absmax None there) steps as the class with a param group each."""
    case = case_by_id("adamw-weight_decay")
    rng = np.random.default_rng(3)
    start = random_params(rng, SHAPES[:2], "float32")
    grads = [np.zeros(s, np.float32) for s in SHAPES[:2]]
    ours, theirs = [p.copy() for p in start], [p.copy() for p in start]
    opt = case.cls([{"params": theirs[:1], "state_precision": "8bit"}, {"params": theirs[1:]}], grads, **case.kwargs)
    m = [np.zeros(SHAPES[0], np.uint8), np.zeros(SHAPES[1], np.float32)]
    v = [np.zeros(SHAPES[0], np.uint8), np.zeros(SHAPES[1], np.float32)]
    m_absmax, v_absmax = [np.zeros(2, np.float32), None], [np.zeros(2, np.float32), None]
    step = F.adamw_.bind(ours, grads, m, v, exp_avg_absmaxs=m_absmax, exp_avg_sq_absmaxs=v_absmax)
    mine = [{"exp_avg": m[0], "exp_avg_sq": v[0], "exp_avg_absmax": m_absmax[0], "exp_avg_sq_absmax": v_absmax[0]},
            {"exp_avg": m[1], "exp_avg_sq": v[1]}]
    for t, g in enumerate(grad_steps(case.seed, SHAPES[:2], 3), start=1):
        refill(grads, g)
        opt.step()
        step(step=t, **hypers(case))
        assert_state_equal(ours, theirs, opt, mine, t)


@pytest.mark.parametrize("bound", [False, True], ids=["call", "bound"])
@pytest.mark.parametrize("case", [case_by_id("adamw-weight_decay"), case_by_id("lion-plain")], ids=lambda c: c.id)
def test_resumed_loop_continues_bit_for_bit(case, bound):
    """Stochastic rounding (bf16 params, bfloat16 state) draws the bits of ``step``, not of the
    calls made: a loop stopped after step 3 and resumed at step 4 (a new binding, or calls)
    ends where the unbroken loop ends; resumed as if at step 1 it does not (Lion's update does
    not depend on the step: only its bits do)."""
    rng = np.random.default_rng(case.seed)
    start = [p.astype(BF16) for p in random_params(rng, SHAPES, "float32")]
    grads = [np.zeros(s, np.float32) for s in SHAPES]

    def run(resume_at):
        """Steps 1-3 on one binding, then three more numbered from ``resume_at`` on a new binding
        or by calls (None: from 4 on the same binding); every array's bits at the end."""
        params = [p.copy() for p in start]
        names, storage = caller_arrays(case, params, "stochastic", "bfloat16_stochastic")
        states = [names[s] for s in case.cls.state_names if s in names]
        first = case.fn.bind(params, grads, *states, **storage)
        later = (first if resume_at is None else case.fn.bind(params, grads, *states, **storage) if bound
                 else functools.partial(case.fn, params, grads, *states, **storage))
        for t, g in enumerate(grad_steps(case.seed, SHAPES, 6), start=1):
            refill(grads, g)
            if t <= 3:
                first(step=t, **hypers(case))
            else:
                later(step=t - 4 + (resume_at or 4), **hypers(case))
        return [bits(a).copy() for a in params + [x for s in states for x in s]]

    unbroken = run(None)
    assert all(np.array_equal(a, b) for a, b in zip(run(4), unbroken))
    assert not all(np.array_equal(a, b) for a, b in zip(run(1), unbroken))


def test_stochastic_rounding_needs_the_step():
    """Lion's update does not depend on the step (default 1), but stochastic rounding's bits do."""
    params, grads, m = [np.ones(4, BF16)], [np.ones(4, np.float32)], [np.zeros(4, np.float32)]
    with pytest.raises(TypeError, match="step= is required with stochastic rounding"):
        F.lion_(params, grads, m, stochastic_rounding=True)
    with pytest.raises(TypeError, match="step= is required with stochastic rounding"):
        F.lion_.bind(params, grads, m, stochastic_rounding=True)()
    assert (params[0] == 1).all() and (m[0] == 0).all()
    F.lion_(params, grads, m)  # (rounding to nearest: the step does not matter)


def refusal_arrays(param_dtype, state_dtype):
    """Two params, their grads and AdamW state, and arrays of every kind a refusal may pass."""
    params = [np.full((5,), 1.5, param_dtype), np.full((3, 7), -0.5, param_dtype)]
    return {
        "params": params,
        "grads": [np.ones(p.shape, np.float32) for p in params],
        "exp_avgs": [np.zeros(p.shape, state_dtype) for p in params],
        "exp_avg_sqs": [np.zeros(p.shape, state_dtype) for p in params],
        "absmaxes": [np.zeros(1, np.float32) for _ in params],
        "other_absmaxes": [np.zeros(1, np.float32) for _ in params],
        "masters": [p.astype(np.float32) for p in params],
        "remainders": [np.zeros(p.shape, np.uint16) for p in params],
        "bf16": [np.zeros(p.shape, BF16) for p in params],
        "f32": [np.zeros(p.shape, np.float32) for p in params],
    }


# (id, param dtype, state dtype, the keywords beyond params, grads and state, the error)
REFUSALS = [
    ("8bit_without_absmax", np.float32, np.uint8, lambda a: {},
     ValueError, r"param 0: its state is 8-bit \(uint8\), which needs exp_avg_absmaxs and exp_avg_sq_absmaxs"),
    ("8bit_one_absmax_list", np.float32, np.uint8, lambda a: {"exp_avg_absmaxs": a["absmaxes"]},
     ValueError, r"param 0: .* needs exp_avg_sq_absmaxs \(float32, shape \(ceil\(numel / 2048\),\)"),
    ("8bit_absmax_of_one_param", np.float32, np.uint8,
     lambda a: {"exp_avg_absmaxs": [a["absmaxes"][0], None], "exp_avg_sq_absmaxs": a["other_absmaxes"]},
     ValueError, r"param 1: .* needs exp_avg_absmaxs "),
    ("absmax_shape", np.float32, np.uint8,
     lambda a: {"exp_avg_absmaxs": a["absmaxes"], "exp_avg_sq_absmaxs": [np.zeros(2, np.float32) for _ in range(2)]},
     fastopt.TensorError, r"exp_avg_sq absmax 0: shape \(2,\), expected \(1,\)"),
    ("absmax_short", np.float32, np.uint8,
     lambda a: {"exp_avg_absmaxs": a["absmaxes"][:1], "exp_avg_sq_absmaxs": a["other_absmaxes"]},
     ValueError, "got 2 params but 1 exp_avg_absmaxs"),
    ("absmax_with_float32_state", np.float32, np.float32,
     lambda a: {"exp_avg_absmaxs": a["absmaxes"], "exp_avg_sq_absmaxs": a["other_absmaxes"]},
     fastopt.TensorError, "param 0: absmax arrays are for uint8"),
    ("state_dtypes_mixed", np.float32, BF16, lambda a: {"exp_avg_sqs": a["f32"]},
     fastopt.TensorError, "exp_avg_sq 0: dtype float32, but exp_avg 0 is bfloat16: a param's state arrays share one"),
    ("state_dtype", np.float32, np.float16, lambda a: {},
     fastopt.TensorError, "exp_avg 0: dtype float16, expected float32, bfloat16 or uint8"),
    ("remainder_of_float16", np.float16, np.float32, lambda a: {"remainders": a["remainders"]},
     fastopt.TensorError, "param 0: a remainder is for bfloat16 params; this one is float16"),
    ("remainder_dtype", BF16, np.float32, lambda a: {"remainders": a["bf16"]},
     fastopt.TensorError, "remainder 0: dtype bfloat16, expected uint16"),
    ("remainder_short", BF16, np.float32, lambda a: {"remainders": a["remainders"][:1]},
     ValueError, "got 2 params but 1 remainders"),
    ("compensation_dtype", BF16, np.float32, lambda a: {"compensations": a["remainders"]},
     fastopt.TensorError, "compensation 0: dtype uint16, expected bfloat16"),
    ("master_and_remainder", BF16, np.float32, lambda a: {"master_params": a["masters"], "remainders": a["remainders"]},
     fastopt.TensorError, "master weights, a remainder and a compensation are alternatives"),
    ("stochastic_with_compensation", BF16, np.float32,
     lambda a: {"compensations": a["bf16"], "stochastic_rounding": True},
     fastopt.TensorError, "stochastic rounding is for float16/bfloat16 params without master weights"),
    ("stochastic_not_a_flag", BF16, np.float32, lambda a: {"stochastic_rounding": 1},
     TypeError, "stochastic_rounding must be a bool"),
    ("seed_without_stochastic_rounding", BF16, BF16, lambda a: {"seed": 3},
     ValueError, r"seed is the seed of stochastic rounding \(stochastic_rounding=True or"),
    ("seed_out_of_range", BF16, BF16, lambda a: {"state_stochastic_rounding": True, "seed": 2 ** 64},
     ValueError, r"seed must be an integer in \[0, 2\*\*64\)"),
    ("stochastic_rounding_of_float32_params", np.float32, np.float32, lambda a: {"stochastic_rounding": True},
     ValueError, "stochastic_rounding=True rounds float16/bfloat16 params, and every param is float32"),
    ("stochastic_rounding_of_float32_state", np.float32, np.float32, lambda a: {"state_stochastic_rounding": True},
     ValueError, "state_stochastic_rounding=True rounds bfloat16 state, and no param has bfloat16 state"),
]


@pytest.mark.parametrize("bound", [False, True], ids=["call", "bound"])
@pytest.mark.parametrize("refusal", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_storage_refusals_write_nothing(refusal, bound):
    _, param_dtype, state_dtype, keywords, error, match = refusal
    a = refusal_arrays(param_dtype, state_dtype)
    kw = keywords(a)
    lists = {"exp_avgs": kw.pop("exp_avgs", a["exp_avgs"]), "exp_avg_sqs": kw.pop("exp_avg_sqs", a["exp_avg_sqs"])}
    before = [bits(x).copy() for v in a.values() for x in v]
    with pytest.raises(error, match=match):
        if bound:
            F.adamw_.bind(a["params"], a["grads"], **lists, **kw)(step=1, lr=0.1)
        else:
            F.adamw_(a["params"], a["grads"], **lists, step=1, lr=0.1, **kw)
    assert all(np.array_equal(x, bits(y)) for x, y in zip(before, (y for v in a.values() for y in v)))


@pytest.mark.parametrize("cls", fastopt.catalog.OPTIMIZERS, ids=lambda c: c.__name__)
def test_eight_bit_state_is_the_engines(cls):
    """Each class's ``eight_bit_state`` (whether its form takes absmax arrays) is what the
    engine accepts."""
    form = getattr(F, cls.__name__.lower() + "_")
    params, grads = [np.ones(3, np.float32)], [np.ones(3, np.float32)]
    kept = cls.state_shapes((3,))  # (a factored class's vectors keep other state than its matrices)
    states = [[np.zeros(3, np.uint8) if s in kept else None] for s in cls.state_names]
    if cls.eight_bit_state:
        form.bind(params, grads, *states, **{f"{s}_absmaxs": [np.zeros(1, np.float32)] for s in cls.state_names})
    else:
        with pytest.raises(fastopt.TensorError, match="cannot keep 8-bit state"):
            form.bind(params, grads, *states)
