"""The optimizer base class: its description attributes, construction and the step. Its other
sides are mixins named for what they hold: hyperparams.py (param groups, hyperparameters),
binding.py (arrays and the engine group), step_options.py, checkpoints.py."""

from __future__ import annotations

import operator
import threading
from typing import Any, Callable, ClassVar, Mapping, Sequence


from ._arrays import data_ptr, device_empty
from .binding import Binding, Keeps
from .checkpoints import Checkpoints
from . import _core
from .engine import engine_for
from .hyperparams import Array, HyperParams, ParamGroup, betas, flag, real, split_groups
from .results import Diagnostics, StepResult
from .step_options import StepOptions
from .storage import Storage, check_seed, check_seed_used, check_storage

__all__ = ["Optimizer", "ParamGroup", "StepResult", "Diagnostics", "real", "flag", "betas"]


def alone(lock: threading.Lock, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) holding an optimizer's ``lock``, or RuntimeError at once (naming the call,
    ``name``) if another thread holds it: a step releases the GIL, and a second call would race
    it on the same arrays."""
    if not lock.acquire(False):
        raise RuntimeError(f"{name}: this optimizer is stepping in another thread; "
                           "step one optimizer from one thread at a time")
    try:
        return fn(*args)
    finally:
        lock.release()


_PLAIN_STEP = StepResult(None, False)  # a step taken, with no norm, diagnostics or sums


class Optimizer(HyperParams, Binding, StepOptions, Checkpoints):
    """Base of fastopt's optimizers: binds params, grads and state once, steps many times.

    Args:
        params: a list of arrays (NumPy arrays, PyTorch tensors, any DLPack tensor), or a
            list of param-group dicts, each with ``"params"``, optionally ``"grads"`` and any
            hyperparameters that override the defaults for that group.
        grads: the gradient buffers, one per param in order (across groups when the groups
            carry no ``"grads"``). They are read at every step, so they must stay the same
            buffers: refill them in place (e.g. ``zero_grad(set_to_none=False)`` in PyTorch).
        master_weights: ``True``: keep an fp32 master copy of every float16/bfloat16 param, owned
            by the optimizer, initialised exactly from the param; each step updates the master
            and rewrites the param from it, rounded to nearest even (6 bytes per param).
            ``"remainder"`` (bfloat16 params): keep the same fp32 master as the
            bfloat16 param (its high half: the master truncated toward zero, which the model
            uses) plus a uint16 remainder (its low half) owned by the optimizer: the very same
            master trajectory in 4 bytes per param. The remainder belongs to the param's current
            bits: a param written from outside (a model loaded into it) keeps the old low half
            (load the optimizer's checkpoint after the model: ``load_state_dict`` writes the
            params' high halves too). ``"kahan"`` (bfloat16 params): no
            master; a bfloat16 Kahan compensation per param carries what each rounding of the
            param loses into the next update (4 bytes per param; updates far below the param's
            resolution accumulate instead of vanishing). ``"stochastic"`` (float16/bfloat16 params):
            no master; each step rounds the param stochastically (unbiased), with random bits
            fixed by ``seed``, the step count and the param's index (2 bytes per param: the same
            bits on every CPU target and thread count, on the GPU, and after a checkpoint).
            Every mode runs on both engines.
            float32 params need none.
        state_precision: how the state arrays (moments, buffers) are stored; each step loads
            them, computes in float32 and stores them back. ``"float32"`` (default; 4 bytes per
            element); ``"bfloat16"`` (rounded to nearest even, 2 bytes); ``"bfloat16_stochastic"``
            (rounded stochastically with ``seed``'s bits: unbiased, so EMAs of tiny increments
            keep moving; 2 bytes); ``"8bit"``: block-wise 8-bit state (Dettmers et al. 2022,
            "8-bit Optimizers via Block-wise Quantization"): each state array is cut into blocks of
            2048 elements, each with a float32 absmax (its array named ``<state>_absmax`` beside
            the uint8 codes), every element the nearest value of the dynamic map times its block's
            absmax (the unsigned map for state that is never negative: second moments); about
            1 byte per element. Not for Adagrad (its state is a running sum: increments below the
            8-bit resolution would vanish). As bitsandbytes advises, small tensors (biases,
            norms) lose most to quantization: give them a param group of their own with
            ``"float32"``.
        Both ``master_weights`` and ``state_precision`` may also be set per param group (keys of a
            param-group dict), fixed at construction.
        seed: the seed of stochastic rounding (``master_weights="stochastic"``,
            ``state_precision="bfloat16_stochastic"``; an integer in [0, 2**64); default 0:
            optimizers with the same seed round the same arrays of the same param index with the
            same bits). Checkpoints carry it (``state_dict()["seed"]``), and loading one sets it.
        max_grad_norm: clip by global norm, as ``torch.nn.utils.clip_grad_norm_`` (norm 2) before
            each step: when the grads' global L2 norm exceeds it, every grad is scaled by
            ``max_grad_norm / (norm + 1e-6)``. Folded into the update (one norm pass, then the
            update pass); the grad buffers are never rewritten. None: no clipping.
        clip_value: clamp every grad element to [-clip_value, clip_value] (after unscaling and
            norm clipping), as ``torch.nn.utils.clip_grad_value_``; None: no clamping.
        skip_nonfinite: skip the whole step when any grad holds an inf or NaN, or when an
            unscaled grad may overflow float32 (a ``grad_scale`` below 1, no max_grad_norm, and
            an unscaled norm beyond float32's range): nothing is written and the step count
            does not advance (``step()`` reports it).
        report_grad_norm: compute the global grad norm at every step even when neither
            clipping nor skipping needs it.
        diagnostics: report per-tensor grad, param and update norms, update/param ratios and
            non-finite grad counts with every step (:class:`Diagnostics`), from fused
            reductions (a norm pass over the grads, and the update pass summing as it goes).
            Off by default, and then free: the plain update kernels run.
        capturable: (CUDA params only) keep each group's lr in device memory too (the step
            counts always are, on CUDA), so that :meth:`step` can be captured in a CUDA graph
            and replayed; lr changes made between replays (``opt.lr = ...``, enqueued on the
            current stream) are seen by the next replay. A captured graph holds the device
            group it was captured with: switching momentum or amsgrad on or off, or loading a
            checkpoint that brings new state arrays, rebinds it, and the step must then be
            captured again (the replaced device group stays allocated until the optimizer is
            freed, so that an old graph replayed by mistake never touches freed memory). A number ``grad_scale`` and the step options are fixed in a
            captured step (a loss scale in device memory is read at every replay).

    Any group's ``lr`` may be a :mod:`fastopt.schedules` schedule instead of a number: each
    step then uses ``lr(steps taken by the group)``, and checkpoints carry the schedule. On
    CUDA the schedule is evaluated on the device from its step counts, so graph replays and
    skipped steps follow it.

    The engine follows the params: CPU memory (NumPy arrays, CPU tensors) runs on the CPU
    engine, CUDA memory (PyTorch CUDA tensors, CuPy arrays, any DLPack CUDA tensor) on the
    CUDA engine, where state and master weights are allocated with the params' library and a
    step is one kernel launch on the caller's current stream (or ``step(stream=...)``); each
    step option adds a pass (the grad norm, a two-pass rule's first pass, the diagnostics'
    sums), all enqueued on that stream. Between steps, lrs, schedules and step counts are
    written and read on the current stream (after ``step(stream=...)`` on another stream,
    synchronise it before reading ``steps`` or a checkpoint). The CUDA engine counts steps on
    the device, per group: SGD with momentum switched on after the first step (and dampening
    != 0) starts its buffer as if momentum had been on, unlike torch.
    """

    # ---- the description each optimizer gives (in fastopt/<rule>.py; see catalog.py) -------
    rule: ClassVar[str]                       # its C++ rule id, a key of _core.rules
    state_names: ClassVar[tuple[str, ...]]    # its float32 state arrays, in binding order: the rule's
    # (set from the C++ rule header's state_names, through _core.state_shapes; a factored rule's
    # (Adafactor's) those of its matrices, then those of its vectors: see state_shapes)
    hyper_defaults: ClassVar[dict[str, Any]]  # hyperparameters (torch.optim's names) -> default;
    # a real default makes a real-valued field of the rule's Hyper struct, a bool a flag,
    # "betas" its beta1/beta2; others are custom_hypers, which the class's _to_hyper maps.
    custom_hypers: ClassVar[tuple[str, ...]] = ()
    hyper_fields: ClassVar[dict[str, str]] = {}  # a hyperparameter whose Hyper field is named otherwise
    fixed_fields: ClassVar[dict[str, Any]] = {}  # Hyper fields the class sets (AdamW: decoupled)
    optional_state: ClassVar[dict[str, str]] = {}  # state bound only under an option -> that option
    in_torch: ClassVar[bool] = False  # torch.optim has this optimizer, with these semantics
    eight_bit_state: ClassVar[bool] = True  # its state may be 8-bit (False: its C++ rule's no_8bit_state)
    factored: ClassVar[bool] = False  # its C++ rule keeps factored state (state_shapes depend on the param's dims)
    # The functional form (fastopt.functional.<name>_): whether the update depends on the step
    # count (then `step` is required), hyperparameters it takes no keyword for, and those it
    # requires, and what its docstring adds to the generic one.
    step_dependent: ClassVar[bool] = True
    functional_excluded: ClassVar[tuple[str, ...]] = ()
    functional_required: ClassVar[tuple[str, ...]] = ()
    functional_note: ClassVar[str] = ""
    # The functional form's name for a state list where not the state's name + "s".
    functional_state_args: ClassVar[dict[str, str]] = {}
    # The benchmark: its hyperparameters, and for a two-pass rule its other pass: a name and the
    # fp32 streams that pass reads beyond those of the elementwise update.
    bench_hypers: ClassVar[dict[str, Any]] = {}
    extra_pass: ClassVar[tuple[str, tuple[str, ...]] | None] = None
    # The README's table of optimizers (catalog.markdown_table): rows of (label, "" for the
    # class name; the update in short; bytes moved per fp32 param and step).
    doc_rows: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    defaults: dict[str, Any]

    def __init__(self, params: Sequence[Array] | Sequence[Mapping[str, Any]],
                 grads: Sequence[Array] | None = None, *, master_weights: bool | str = False,
                 state_precision: str = "float32", seed: int = 0,
                 max_grad_norm: float | None = None, clip_value: float | None = None,
                 skip_nonfinite: bool = False, report_grad_norm: bool = False, diagnostics: bool = False,
                 capturable: bool = False, **defaults: Any):
        self._busy = threading.Lock()  # held by a step: see _alone
        if not hasattr(type(self), "rule"):
            raise TypeError("Optimizer is the base class: build one of fastopt's optimizers (fastopt.SGD, ...)")
        self.defaults = dict(type(self).default_hypers())
        for k in defaults:
            if k not in self.defaults:
                raise TypeError(f"{type(self).__name__} got an unknown hyperparameter '{k}'")
        self.defaults.update(defaults)
        self._hyper_at(self.defaults, 0)
        raw_groups = split_groups(params, grads)
        check_storage(master_weights, state_precision)
        self._storage: list[Storage] = [  # per group
            check_storage(values.pop("master_weights", master_weights), values.pop("state_precision", state_precision),
                          f"param group {j}") for j, (values, _, _) in enumerate(raw_groups)]
        self.param_groups: list[ParamGroup] = []
        for j, (values, _, _) in enumerate(raw_groups):
            for k in values:
                if k not in self.defaults:
                    raise TypeError(f"param group {j}: unknown hyperparameter '{k}'")
            merged = {**self.defaults, **values}
            try:
                self._hyper_at(merged, 0)
            except (TypeError, ValueError) as e:
                raise type(e)(f"param group {j}: {e}") from None
            self.param_groups.append(ParamGroup(self, merged))
        self._params = [p for _, ps, _ in raw_groups for p in ps]
        self._grads = [g for _, _, gs in raw_groups for g in gs]
        self._group_sizes = [len(ps) for _, ps, _ in raw_groups]
        self._group_of = [j for j, n in enumerate(self._group_sizes) for _ in range(n)]
        self.max_grad_norm = max_grad_norm
        self.clip_value = clip_value
        self.skip_nonfinite = skip_nonfinite
        self.report_grad_norm = report_grad_norm
        self.diagnostics = diagnostics
        self._engine = engine_for(self._params[0] if self._params else None)
        self._capturable = flag("capturable", capturable)
        if self._capturable and not self._engine.is_cuda:
            raise ValueError("capturable=True needs CUDA params (it keeps lr and step on the GPU)")
        # Bind the user's arrays alone first: every bad input is reported before anything
        # is allocated or written.
        self._engine.bind(self.rule, self._params, self._grads, Keeps.none(len(self._params)),
                          [[] for _ in self._params], self._group_sizes)
        self._layouts = [self.state_shapes(_core.describe(p, f"param {i}")[0]) for i, p in enumerate(self._params)]
        self._kept = self._keeps()
        self._seed = check_seed(seed)
        check_seed_used(self._seed, self._storage)
        self._masters: list[Array | None] = self._kept.masters
        self._state: list[dict[str, Array]] = [{} for _ in self._params]
        self._steps = [0] * len(self.param_groups)
        self._steps_exact = True  # CUDA: whether self._steps are the device's counts
        self._bound_states: list[int] | None = None  # state streams bound per group
        self._captured = False  # CUDA: a step was captured into a graph
        self._skip_pending = False  # CUDA: the last step's skip decision is not yet back on the host
        self._retired: list = []  # CUDA: device groups replaced after a capture, kept for its replays
        self._refresh()

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "rule" in cls.__dict__:
            names = [n for shape in ((1, 1), ()) for n, _ in _core.state_shapes(cls.rule, list(shape))]
            cls.state_names = tuple(dict.fromkeys(names))
            cls.factored = cls.rule in _core.factored

    @classmethod
    def state_shapes(cls, shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """The state arrays that a param of ``shape`` binds, by name in binding order, and their
        shapes: the param's, but for factored state (:class:`fastopt.Adafactor`'s matrices: one
        value per row, ``row_var``, and per column, ``col_var``; the C++ rule's layout)."""
        return {n: tuple(s) for n, s in _core.state_shapes(cls.rule, list(shape))}

    @classmethod
    def torch_state(cls, group: Mapping[str, Any], step: int) -> dict[str, Any]:
        """State that torch.optim keeps per param and fastopt derives from the step count (NAdam's
        ``mu_product``), as torch.optim's checkpoints hold it after ``step`` steps of ``group``."""
        return {}

    def _alone(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        return alone(self._busy, f"{type(self).__name__}.{what}", fn, *args)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"this {type(self).__name__} cannot be pickled or copied: it is bound to its arrays, which it "
                        "updates in place; save state_dict() and load it into a new optimizer")

    def _rule_steps(self) -> list[int]:
        """The step count the rule sees for each group at the step being taken."""
        return [s + 1 for s in self._steps]

    def _count_step(self) -> None:
        """Called after a step that was taken (not skipped), for counts the rule keeps apart."""

    def step(self, grad_scale: Any = None, stream: Any = None, *,
             skip_nonfinite: bool | None = None, grad_sums: Any = None) -> StepResult:
        """Applies one update to every param, in place (one C++ call, GIL released).

        ``grad_scale``: the loss scale the grads carry; they are unscaled (multiplied by
        ``1 / grad_scale``, in float32 as torch's GradScaler does) inside the update, never
        rewritten. On CUDA it may also be a one-element float32 array on the params' GPU (read
        by the step's kernels, as :class:`DynamicLossScaler` keeps it). Then the step options
        apply (``max_grad_norm``, ``clip_value``, ``skip_nonfinite``): a norm pass over the
        grads first when one of them (or ``report_grad_norm``) needs the norm, then the update
        pass.

        On CUDA the step is enqueued on ``stream`` (an int handle, a ``torch.cuda.Stream`` or a
        ``cupy.cuda.Stream``; default: the params' library's current stream) and never waits
        for the GPU: the norm, the clip factor and the skip decision are taken on the device,
        and a skipped step leaves the device step counts as they were. A plain step is one
        kernel launch. ``skip_nonfinite`` overrides the optimizer's setting for this step (a
        loss scaler needs it on).

        ``grad_sums``: the :class:`fastopt.GradSums` that :meth:`fastopt.GradAccumulator.add`
        returned for the last micro-batch, when this optimizer's grads are that accumulator's
        arrays (ValueError otherwise): the step then takes no norm pass, its options deciding
        from those sums (the same bits as from its own).

        One optimizer steps in one thread at a time: a step (or ``load_state_dict``) called
        while another thread steps the same optimizer raises RuntimeError, as both would
        update the same arrays."""
        sums = None
        if grad_sums is not None:
            mine = self._grads
            if len(grad_sums.accumulators) != len(mine) or not all(map(operator.is_, grad_sums.accumulators, mine)):
                raise ValueError(f"{type(self).__name__}.step: grad_sums are the sums of other arrays than this "
                                 "optimizer's grads (bind the accumulator's arrays as its grads, in order)")
            sums = ((grad_sums.sumsq, grad_sums.nonfinite) if self._engine.is_cuda else
                    (list(map(float, grad_sums.sumsq)), list(map(int, grad_sums.nonfinite))))
        return self._alone("step", self._step, grad_scale, stream, skip_nonfinite, None, None, sums)

    def _step(self, grad_scale: Any, stream: Any, skip_nonfinite: bool | None, grad_factor: float | None = None,
              combine_sums: Callable[[Any], None] | None = None, grad_sums: Any = None,
              value_sums: bool = False) -> StepResult:
        # (grad_factor, combine_sums: fastopt.distributed's; grad_sums, value_sums: gradient
        # accumulation's; see StepOptions in fastopt/optimizer.h)
        if callable(grad_scale):
            raise TypeError(f"{type(self).__name__}.step takes no closure (torch.optim's step(closure)): "
                            "compute the loss and the grads before calling step()")
        if self._steps and max(self._steps) >= 2**63 - 1:  # the next rule step would not fit in int64
            raise OverflowError(f"{type(self).__name__}.step: the step count reached 2**63 - 1, the most it can hold")
        if self._stale:
            self._refresh()
        skip = self._skip_nonfinite if skip_nonfinite is None else flag("skip_nonfinite", skip_nonfinite)
        scale, loss_scale = self._grad_scale(grad_scale)
        if self._engine.is_cuda:
            return self._step_cuda(scale, loss_scale, stream, skip, grad_sums, value_sums)
        for j in self._scheduled:  # an lr schedule gives this step's lr
            self._hypers[j] = self._hyper_at(self.param_groups[j], self._steps[j])
        # One call: the norm pass where an option needs it, the clip factor and the skip decision
        # (fastopt/step_control.h, as the CUDA engine takes them), then the update pass.
        norm, skipped, diag, values = self._core.step(
            self._hypers, self._rule_steps(), scale, self._clip_value or 0.0, self._max_grad_norm or 0.0, skip,
            self._report_grad_norm, self._diagnostics, max(self._steps, default=0) + 1, grad_factor, combine_sums,
            grad_sums, value_sums)
        if not skipped:
            self._count_step()
            self._steps = [s + 1 for s in self._steps]
        if norm is None and not skipped and diag is None and values is None:
            return _PLAIN_STEP  # (immutable: one for every plain step saves its construction, 0.5 us)
        return StepResult(norm, skipped, None if diag is None else Diagnostics(*diag), values)

    def _step_cuda(self, scale: float, loss_scale: int, stream: Any, skip: bool, grad_sums: Any = None,
                   value_sums: bool = False) -> StepResult:
        """step() on the CUDA engine: every option decided on the device, nothing waited for.
        The coefficients are computed on the host, as the CPU engine's, while the host knows the
        step counts (each skip decision is copied back to the host in the background, and read
        at the next step if it has arrived: a loop that reads its loss keeps them known) and the
        step is neither capturable nor being captured (a graph replays it: it must read the
        device's counts, lrs and schedules)."""
        like = self._params[0]
        handle = self._engine.stream(stream, like)
        need_norm = self._max_grad_norm is not None or skip or self._report_grad_norm or self._diagnostics
        n = len(self._params)
        norm = device_empty(like, (), "float64", handle) if need_norm else None
        skipped = device_empty(like, (), "bool", handle) if need_norm else None
        diag = device_empty(like, (4, n), "float64", handle) if self._diagnostics else None
        nonfinite = device_empty(like, (n,), "int64", handle) if self._diagnostics else None
        values = (device_empty(like, (n,), "float64", handle), device_empty(like, (n,), "int64", handle)) \
            if value_sums else None
        capturing = self._engine.capturing(handle)
        self._captured = self._captured or capturing
        if not capturing:  # (an event query is illegal in a capture)
            self._settle()
        if self._captured:  # each graph's replays write its grads: so does each step, inside a graph or not
            self._core.write_grads(handle)
        host = self._steps_exact and not self._capturable and not capturing
        if host:  # the CPU engine's lrs and coefficients, at the device's step counts
            for j in self._scheduled:
                self._hypers[j] = self._hyper_at(self.param_groups[j], self._steps[j])
        self._core.step(self._hypers, handle, steps=[s + 1 for s in self._steps] if host else None, grad_scale=scale,
                        loss_scale=loss_scale, clip_value=self._clip_value or 0.0, capturable=self._capturable,
                        grad_norm=need_norm, skip_nonfinite=skip, max_grad_norm=self._max_grad_norm or 0.0,
                        grad_norm_out=data_ptr(norm) if need_norm else 0,
                        skipped_out=data_ptr(skipped) if need_norm else 0,
                        diagnostics=data_ptr(diag) if diag is not None else 0,
                        nonfinite=data_ptr(nonfinite) if diag is not None else 0,
                        track_skip=skip and not capturing,
                        grad_sumsq=data_ptr(grad_sums[0]) if grad_sums else 0,
                        grad_nonfinite=data_ptr(grad_sums[1]) if grad_sums else 0,
                        value_sumsq=data_ptr(values[0]) if values else 0,
                        value_nonfinite=data_ptr(values[1]) if values else 0)
        self._count_step()  # host bookkeeping only (SGD's momentum count): the device counts the steps
        self._steps = [s + 1 for s in self._steps]
        # A skip is decided on the device: its flag comes back to the host in the background
        # (_settle); a captured step advances the counts at each replay.
        self._skip_pending = skip and not capturing
        self._steps_exact = self._steps_exact and not capturing
        diagnostics = None if diag is None else Diagnostics(diag[0], nonfinite, diag[2], diag[1], diag[3])
        return StepResult(norm, skipped if need_norm else False, diagnostics, values)

    def _update_loss_scale(self, scale: Any, clean_steps: Any, floor_skips: Any, growth: float, backoff: float,
                           interval: int, min_scale: float, stream: Any) -> None:
        """On CUDA: a loss scaler's update from the last step's skip decision, on the device
        (``scale``, ``clean_steps`` and ``floor_skips`` are its 0-d device arrays)."""
        self._core.update_loss_scale(data_ptr(scale), data_ptr(clean_steps), data_ptr(floor_skips), growth, backoff,
                                     interval, min_scale,
                                     self._engine.stream(stream, self._params[0]) if stream is not None
                                     else self._cuda_stream())

    @property
    def steps(self) -> list[int]:
        """Steps taken by each param group (CUDA: read from the device, so that graph replays
        and steps skipped on the device count; this waits for the GPU)."""
        if self._engine.is_cuda:
            self._steps = self._device_steps()
        return list(self._steps)
