"""Tensor intake and group binding (src/cpp/python/intake.cpp, bind_group.cpp).

Every rejected input must raise ``fastopt.TensorError`` (a ValueError) naming the tensor by
role and index ("param 3", "grad 1", "exp_avg 0", ...) and the reason, and must leave every
array exactly as it was: no param, grad or state element written, no state or master
weights allocated. Accepted inputs (read-only grads, legacy DLPack producers, DLPack byte
offsets, PyTorch tensors, ml_dtypes bfloat16 / float16 NumPy arrays) are updated in place.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch

import fastopt
import fastopt.binding as binding_module
from fastopt import functional as F

SUPPORTED = "fastopt takes float32, float16 and bfloat16"
NOT_CONTIGUOUS = "is not C-contiguous"
OVERLAP_TAIL = "(every tensor of a group must have its own memory)"


# ---- helpers ---------------------------------------------------------------------------

def rand(n=8, dtype=np.float32, seed=0, shape=None):
    """Random values (exactly representable in ``dtype``), shape ``shape`` or ``(n,)``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape if shape is not None else (n,)).astype(np.float32).astype(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    """A float tensor's elements as integers, for bitwise comparison."""
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


def trand(n=8, dtype=torch.float32, seed=0):
    return torch.from_numpy(rand(n, seed=seed)).to(dtype)


def raw_bytes(x) -> bytes | None:
    """The exact bytes of an array's elements (None for objects that are not arrays)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().contiguous()
        return bytes(t.reshape(-1).view(torch.uint8).numpy()) + str(t.dtype).encode()
    if isinstance(x, np.ndarray):
        return x.tobytes() + str(x.dtype).encode()
    if isinstance(x, DLPackWrapper):
        return raw_bytes(x.array)
    return None


def flatten_groups(params):
    """The params (and group grads) of a params argument, in order."""
    out = []
    for p in params:
        if isinstance(p, dict):
            out.extend(p["params"])
            out.extend(p.get("grads", []))
        else:
            out.append(p)
    return out


class Snapshot:
    """Bitwise copies of arrays, to show that nothing was written."""

    def __init__(self, *arrays):
        self.arrays = [a for a in arrays if raw_bytes(a) is not None]
        self.before = [raw_bytes(a) for a in self.arrays]

    def assert_unchanged(self):
        for k, (a, b) in enumerate(zip(self.arrays, self.before)):
            assert raw_bytes(a) == b, f"array {k} of the snapshot was modified"


class DLPackWrapper:
    """An object that is not a buffer and exports ``array`` through DLPack only."""

    def __init__(self, array):
        self.array = array
        self.calls: list[dict] = []

    def __dlpack__(self, **kwargs):
        self.calls.append(kwargs)
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


class LegacyDLPack:
    """A producer that predates DLPack 1.0: ``__dlpack__`` takes no ``max_version``."""

    def __init__(self, array):
        self.array = array
        self.calls = 0

    def __dlpack__(self, stream=None):
        self.calls += 1
        capsule = self.array.__dlpack__()  # a legacy "dltensor" capsule
        assert "dltensor" in repr(capsule) and "versioned" not in repr(capsule)
        return capsule

    def __dlpack_device__(self):
        return (1, 0)


class FakeCuda:
    """Claims to live on a CUDA device; exporting it is a test failure."""

    def __init__(self, device_id=0):
        self.device_id = device_id
        self.exported = 0

    def __dlpack_device__(self):
        return (2, self.device_id)

    def __dlpack__(self, **kwargs):
        self.exported += 1
        raise AssertionError("a tensor on another device must not be exported")


# A hand-made DLPack 1.0 producer, to control byte_offset (PyTorch folds offsets into data).
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", _DLVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p),
                ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_CAPSULE_NAME = ctypes.c_char_p(b"dltensor_versioned")


class OffsetDLPack:
    """Exports ``base[offset:offset + n]`` (float32) as data=base, byte_offset=4*offset."""

    def __init__(self, base: np.ndarray, offset: int, n: int, *, major: int = 1, flags: int = 0):
        assert base.dtype == np.float32 and base.flags.c_contiguous
        self.base, self.n = base, n
        self.shape = (ctypes.c_int64 * 1)(n)
        m = _DLManagedTensorVersioned()
        m.version.major, m.version.minor = major, 0
        m.flags = flags
        m.dl_tensor.data = base.ctypes.data
        m.dl_tensor.device.device_type, m.dl_tensor.device.device_id = 1, 0
        m.dl_tensor.ndim = 1
        m.dl_tensor.dtype.code, m.dl_tensor.dtype.bits, m.dl_tensor.dtype.lanes = 2, 32, 1
        m.dl_tensor.shape = self.shape
        m.dl_tensor.byte_offset = 4 * offset
        self.managed = m  # no deleter: this object owns the memory and outlives the binding

    def __dlpack__(self, **kwargs):
        return _capsule_new(ctypes.addressof(self.managed), _CAPSULE_NAME, None)

    def __dlpack_device__(self):
        return (1, 0)


@pytest.fixture
def allocations(monkeypatch):
    """Records every state / master-weight allocation the optimizer classes make."""
    made = []
    real_zeros, real_master = binding_module.state_like, binding_module.master_copy

    def zeros(*args, **kwargs):
        made.append(("state", args))
        return real_zeros(*args, **kwargs)

    def master(*args, **kwargs):
        made.append(("master", args))
        return real_master(*args, **kwargs)

    monkeypatch.setattr(binding_module, "state_like", zeros)
    monkeypatch.setattr(binding_module, "master_copy", master)
    return made


# Optimizers configured to need state (and master weights where a param is 16-bit), so that
# a binding that went wrong would have something to allocate or write.
OPTIMIZERS = {
    "sgd": lambda params, grads: fastopt.SGD(params, grads, lr=0.1, momentum=0.9, master_weights=True),
    "adam": lambda params, grads: fastopt.Adam(params, grads, lr=0.1, amsgrad=True, master_weights=True),
}


def assert_rejected(make, params, grads, parts, allocations, *, watch=(), exc=fastopt.TensorError):
    """``make(params, grads)`` raises ``exc`` mentioning every one of ``parts``; nothing changed."""
    snap = Snapshot(*flatten_groups(params), *grads, *watch)
    with pytest.raises(exc) as info:
        make(params, grads)
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in error message {message!r}"
    assert isinstance(info.value, ValueError)
    snap.assert_unchanged()
    assert allocations == [], f"state allocated before the error: {allocations}"
    return message


# ---- rejected inputs: each case builds (params, grads, message parts, watched arrays) ------

def _readonly_param():
    ro = rand(8, ml_dtypes.bfloat16, seed=1)  # 16-bit: a master copy would be made if bound
    ro.flags.writeable = False
    return [rand(8, ml_dtypes.bfloat16), ro], [rand(8, seed=2), rand(8, seed=3)], ["param 1", "read-only"], []


def _readonly_param_dlpack():
    ro = rand(8, seed=1)
    ro.flags.writeable = False  # NumPy flags the DLPack 1.0 export read-only
    return [DLPackWrapper(ro)], [rand(8, seed=2)], ["param 0", "read-only"], [ro]


def _readonly_param_second_group():
    ro = rand(8, seed=1)
    ro.flags.writeable = False
    params = [{"params": [rand(8)]}, {"params": [rand(8, seed=4), ro], "lr": 0.01}]
    return params, [rand(8, seed=2), rand(8, seed=3), rand(8, seed=5)], ["param 2", "read-only"], []


def _strided_param():
    base = rand(16, seed=1)
    return [rand(8), base[::2]], [rand(8, seed=2), rand(8, seed=3)], ["param 1", NOT_CONTIGUOUS], [base]


def _transposed_param():
    base = rand(shape=(4, 3), seed=1)
    return [base.T], [rand(shape=(3, 4), seed=2)], ["param 0", NOT_CONTIGUOUS], [base]


def _transposed_torch_param():
    base = torch.from_numpy(rand(shape=(4, 3), seed=1))
    return [base.t()], [torch.from_numpy(rand(shape=(3, 4), seed=2))], ["param 0", NOT_CONTIGUOUS], [base]


def _reversed_param():
    base = rand(8, seed=1)
    return [base[::-1]], [rand(8, seed=2)], ["param 0", NOT_CONTIGUOUS], [base]


def _expanded_torch_param():
    base = torch.from_numpy(rand(1, seed=1))
    return [base.expand(8)], [trand(8, seed=2)], ["param 0", NOT_CONTIGUOUS], [base]


def _strided_torch_grad():
    base = trand(16, seed=1)
    return [trand(8)], [base[::2]], ["grad 0", NOT_CONTIGUOUS], [base]


def _readonly_flag_dlpack():
    base = rand(8, seed=1)
    return [OffsetDLPack(base, 0, 8, flags=1)], [rand(8, seed=2)], ["param 0", "read-only"], [base]


def _dlpack_version_2():
    base = rand(8, seed=1)
    return [OffsetDLPack(base, 0, 8, major=2)], [rand(8, seed=2)], ["param 0", "DLPack version 2"], [base]


def _torch_views_overlap():
    base = trand(16)
    return [base[:8]], [base[4:12]], ["grad 0 overlaps param 0"], [base]


def _strided_grad():
    base = rand(16, seed=1)
    return [rand(8)], [base[::2]], ["grad 0", NOT_CONTIGUOUS], [base]


def _grad_shape_length():
    return [rand(8), rand(8, seed=1)], [rand(8, seed=2), rand(7, seed=3)], \
        ["grad 1", "shape (7,) differs from param 1's shape (8,)"], []


def _grad_shape_same_numel():
    return [rand(shape=(2, 4))], [rand(8, seed=2)], ["grad 0", "shape (8,) differs from param 0's shape (2, 4)"], []


def _grad_none():
    return [rand(8, np.float16), rand(8, np.float16, seed=1)], [rand(8, seed=2), None], ["grad 1", "is None"], []


def _non_array_param():
    return [rand(8), [1.0, 2.0]], [rand(8, seed=2), rand(2, seed=3)], ["param 1", "list", "not an array"], []


def _non_array_grad():
    return [rand(8)], [object()], ["grad 0", "object", "not an array"], []


def _mixed_devices_param():
    cuda = FakeCuda()
    return [rand(8), cuda], [rand(8, seed=2), rand(8, seed=3)], ["param 1", "cuda:0", "param 0", "cpu"], []


def _mixed_devices_grad():
    cuda = FakeCuda()
    return [rand(8)], [cuda], ["grad 0", "cuda:0", "param 0", "cpu", "one device"], []


def _mixed_devices_cuda_first():
    return [FakeCuda()], [rand(8, seed=2)], ["grad 0 is on cpu", "param 0 is on cuda:0"], []


def _all_cuda():
    return [FakeCuda(), FakeCuda()], [FakeCuda(), FakeCuda()], ["param 0", "cuda:0", "CUDA engine is not available"], []


def _grad_is_param():
    p = rand(8)
    return [rand(8, seed=1), p], [rand(8, seed=2), p], ["grad 1 is the same memory as param 1", OVERLAP_TAIL], []


def _grad_overlaps_param():
    base = rand(16)
    return [base[:8]], [base[4:12]], ["grad 0 overlaps param 0"], [base]


def _params_overlap():
    base = rand(16)
    return [base[:8], base[6:14]], [rand(8, seed=2), rand(8, seed=3)], ["param 1 overlaps param 0"], [base]


def _param_twice():
    p = rand(8)
    return [p, rand(8, seed=1), p], [rand(8, seed=2), rand(8, seed=3), rand(8, seed=4)], \
        ["param 2 is the same memory as param 0"], []


def _param_twice_across_groups():
    p = rand(8)
    params = [{"params": [p]}, {"params": [p], "lr": 0.5}]
    return params, [rand(8, seed=2), rand(8, seed=3)], ["param 1 is the same memory as param 0"], []


def _grads_in_groups_overlap():
    g = rand(8, seed=5)
    params = [{"params": [rand(8)], "grads": [g]}, {"params": [rand(8, seed=1)], "grads": [g]}]
    return params, [], ["grad 1 is the same memory as grad 0"], []


CASES = {
    "readonly_param": _readonly_param,
    "readonly_param_dlpack": _readonly_param_dlpack,
    "readonly_param_second_group": _readonly_param_second_group,
    "strided_param": _strided_param,
    "transposed_param": _transposed_param,
    "transposed_torch_param": _transposed_torch_param,
    "strided_grad": _strided_grad,
    "reversed_param": _reversed_param,
    "expanded_torch_param": _expanded_torch_param,
    "strided_torch_grad": _strided_torch_grad,
    "readonly_flag_dlpack": _readonly_flag_dlpack,
    "dlpack_version_2": _dlpack_version_2,
    "torch_views_overlap": _torch_views_overlap,
    "grad_shape_length": _grad_shape_length,
    "grad_shape_same_numel": _grad_shape_same_numel,
    "grad_none": _grad_none,
    "non_array_param": _non_array_param,
    "non_array_grad": _non_array_grad,
    "mixed_devices_param": _mixed_devices_param,
    "mixed_devices_grad": _mixed_devices_grad,
    "mixed_devices_cuda_first": _mixed_devices_cuda_first,
    "all_cuda": _all_cuda,
    "grad_is_param": _grad_is_param,
    "grad_overlaps_param": _grad_overlaps_param,
    "params_overlap": _params_overlap,
    "param_twice": _param_twice,
    "param_twice_across_groups": _param_twice_across_groups,
    "grads_in_groups_overlap": _grads_in_groups_overlap,
}
GROUP_CASES = {"readonly_param_second_group", "param_twice_across_groups", "grads_in_groups_overlap"}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected_by_optimizer(case, opt, allocations):
    params, grads, parts, watch = CASES[case]()
    assert_rejected(OPTIMIZERS[opt], params, grads, parts, allocations, watch=watch)
    for obj in flatten_groups(params) + list(grads):
        if isinstance(obj, FakeCuda):
            assert obj.exported == 0, "a tensor on a CUDA device was exported"


@pytest.mark.parametrize("case", sorted(set(CASES) - GROUP_CASES))
def test_rejected_by_functional(case):
    """The functional API binds the same way; its (caller-owned) state arrays stay intact."""
    params, grads, parts, watch = CASES[case]()
    n = len(params)
    exp_avgs = [rand(8, seed=10 + i) for i in range(n)]
    exp_avg_sqs = [np.abs(rand(8, seed=20 + i)) for i in range(n)]
    snap = Snapshot(*params, *grads, *watch, *exp_avgs, *exp_avg_sqs)
    with pytest.raises(fastopt.TensorError) as info:
        F.adam_(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.1)
    for part in parts:
        assert part in str(info.value)
    snap.assert_unchanged()


@pytest.mark.parametrize("where", ["param", "grad"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float64, np.complex64, np.complex128],
                         ids=lambda d: np.dtype(d).name)
def test_unsupported_numpy_dtype(dtype, where, allocations):
    bad = np.arange(8).astype(dtype)
    params, grads = [rand(8), rand(8, seed=1)], [rand(8, seed=2), rand(8, seed=3)]
    (params if where == "param" else grads)[1] = bad
    name = np.dtype(dtype).name
    assert_rejected(OPTIMIZERS["sgd"], params, grads, [f"{where} 1", f"unsupported dtype {name}", SUPPORTED],
                    allocations)


@pytest.mark.parametrize("where", ["param", "grad"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float64, torch.complex64, torch.complex128,
                                   torch.bool], ids=str)
def test_unsupported_torch_dtype(dtype, where, allocations):
    """Via DLPack, the dtype is reported by its usual name (e.g. 'complex64', not a type code)."""
    bad = torch.arange(8).to(dtype)
    params, grads = [trand(8), trand(8, seed=1)], [trand(8, seed=2), trand(8, seed=3)]
    (params if where == "param" else grads)[0] = bad
    name = str(dtype).removeprefix("torch.")
    assert_rejected(OPTIMIZERS["adam"], params, grads, [f"{where} 0", f"unsupported dtype {name}", SUPPORTED],
                    allocations)


def test_params_grads_count_mismatch(allocations):
    """No single tensor is at fault: a plain ValueError that states both counts."""
    params, grads = [rand(8), rand(8, seed=1), rand(8, seed=2)], [rand(8, seed=3), rand(8, seed=4)]
    message = assert_rejected(OPTIMIZERS["sgd"], params, grads, ["3 params", "2 grads"], allocations,
                              exc=ValueError)
    assert "every param needs its grad" in message


def test_group_params_grads_count_mismatch(allocations):
    params = [{"params": [rand(8), rand(8, seed=1)], "grads": [rand(8, seed=2)]}]
    assert_rejected(OPTIMIZERS["adam"], params, [], ["param group 0", "2 params but 1 grads"], allocations,
                    exc=ValueError)


class RefusingExport:
    """A DLPack producer whose export fails."""
    def __dlpack_device__(self):
        return (1, 0)

    def __dlpack__(self, **kwargs):
        raise BufferError("cannot export this one today")


def test_dlpack_export_failure_reported_cleanly(allocations):
    """A producer whose export fails: the error names the tensor and gives the producer's reason
    on one line, without a traceback dump."""
    message = assert_rejected(OPTIMIZERS["sgd"], [trand(8, seed=1), RefusingExport()], [trand(8, seed=2), trand(8, seed=3)],
                              ["param 1", "__dlpack__ failed", "BufferError: cannot export this one today"],
                              allocations)
    assert "\n" not in message, f"multi-line error message: {message!r}"


def test_params_that_require_grad_are_bound_as_they_are():
    """torch refuses to export a tensor that requires grad: fastopt exports a detached alias
    (and watches the param itself), so model.parameters() can be passed directly."""
    param = torch.nn.Parameter(trand(8))
    before = param.detach().clone()
    fastopt.SGD([param], [torch.ones(8)], lr=0.5).step()
    torch.testing.assert_close(param.detach(), before - 0.5)


def test_all_cuda_not_exported():
    params, grads = [FakeCuda()], [FakeCuda()]
    with pytest.raises(fastopt.TensorError, match="param 0: is on cuda:0, but fastopt's CUDA engine is not available"):
        fastopt.SGD(params, grads, lr=0.1)
    assert params[0].exported == 0 and grads[0].exported == 0


def test_two_cuda_devices_named():
    with pytest.raises(fastopt.TensorError, match=r"grad 0 is on cuda:1 but param 0 is on cuda:0"):
        fastopt.SGD([FakeCuda(0)], [FakeCuda(1)], lr=0.1)


def test_cuda_tensors_without_the_engine_say_why():
    """The error carries fastopt.cuda.unavailable_reason() (here: no driver, no device, or not built)."""
    reason = fastopt.cuda.unavailable_reason()
    assert reason
    with pytest.raises(fastopt.TensorError, match="param 0: .*not available here: " + re.escape(reason)):
        fastopt.SGD([FakeCuda()], [FakeCuda()], lr=0.1)


class HostArrayOnDevice(np.ndarray):
    """A NumPy array whose producer reports device ``device`` (type, id)."""

    device = (2, 0)

    def __dlpack_device__(self):
        return self.device


@pytest.mark.parametrize("available", [False, True])
def test_cuda_arrays_beside_host_params_are_a_device_mix(monkeypatch, available):
    """CUDA memory beside params in host memory is a mix of devices, not a missing engine,
    whether the CUDA engine is available or not."""
    if available:
        monkeypatch.setattr(fastopt.cuda, "unavailable_reason", lambda: "")  # as on a GPU machine
    param, master = np.ones(5, np.float16), np.ones(5, np.float32).view(HostArrayOnDevice)
    mix = "is on cuda:0 but param 0 is on cpu: all tensors of a group must be on one device"
    with pytest.raises(fastopt.TensorError, match="master 0 " + mix):
        F.sgd_([param], [np.ones(5, np.float16)], master_params=[master], step=1, lr=0.1)
    params, grads = [np.ones(5, np.float32)], [np.ones(5, np.float32)]
    with pytest.raises(fastopt.TensorError, match="exp_avg_sq 0 " + mix):
        F.adamw_.bind(params, grads, [np.zeros(5, np.float32)], [np.zeros(5, np.float32).view(HostArrayOnDevice)])
    assert (param == 1).all() and (np.asarray(master) == 1).all() and (params[0] == 1).all()


def test_cuda_array_read_on_the_cpu_engine_where_cuda_is_available(monkeypatch):
    monkeypatch.setattr(fastopt.cuda, "unavailable_reason", lambda: "")  # as on a GPU machine
    with pytest.raises(fastopt.TensorError, match="tensor 0: is on cuda:0, but the group runs on the CPU engine"):
        fastopt._core.sumsq([np.ones(5, np.float32).view(HostArrayOnDevice)])


@pytest.mark.parametrize("device, shown", [((10, 0), "rocm:0"), ((8, 1), "metal:1"), ((99, 0), "device type 99:0")])
def test_other_devices_refused_by_name(device, shown):
    kind = type("OnDevice", (HostArrayOnDevice,), {"device": device})
    param = np.ones(4, np.float32).view(kind)
    with pytest.raises(fastopt.TensorError,
                       match=f"param 0: is on {shown}: fastopt takes host \\(CPU\\) and CUDA device memory only"):
        fastopt.SGD([param], [np.ones(4, np.float32).view(kind)], lr=0.1)
    assert (np.asarray(param) == 1).all()


class DeviceFails(np.ndarray):
    def __dlpack_device__(self):
        raise RuntimeError("the array was deleted")


class DeviceJunk(np.ndarray):
    def __dlpack_device__(self):
        return (2,)


@pytest.mark.parametrize("kind, expected", [
    (DeviceFails, r"grad 0: its __dlpack_device__\(\) failed: RuntimeError: the array was deleted"),
    (DeviceJunk, r"grad 0: its __dlpack_device__\(\) returned \(2,\), not \(device_type, device_id\)")])
def test_a_producer_that_cannot_say_its_device_is_named(kind, expected):
    param = np.ones(4, np.float32)
    with pytest.raises(fastopt.TensorError, match=expected):
        fastopt.SGD([param], [np.ones(4, np.float32).view(kind)], lr=0.1)
    with pytest.raises(fastopt.TensorError, match=expected.replace("grad 0", "param 0")):
        fastopt.SGD([np.ones(4, np.float32).view(kind)], [param], lr=0.1)
    assert (param == 1).all()


def test_torch_meta_tensor_refused_by_name():
    with pytest.raises(fastopt.TensorError, match="param 0: is on meta: fastopt takes host"):
        fastopt.SGD([torch.ones(4, device="meta")], [torch.ones(4, device="meta")], lr=0.1)


def test_allocation_probe_sees_allocations(allocations):
    """Control for the checks above: a valid binding does allocate state and masters."""
    OPTIMIZERS["sgd"]([rand(8, ml_dtypes.bfloat16)], [rand(8, seed=1)])
    assert {kind for kind, _ in allocations} == {"state", "master"}


def test_tensor_error_is_value_error():
    assert issubclass(fastopt.TensorError, ValueError)


# ---- state arrays and master weights (functional API) -----------------------------------

def _adam_arrays(n=2, param_dtype=np.float32):
    params = [rand(8, param_dtype, seed=i) for i in range(n)]
    grads = [rand(8, seed=10 + i) for i in range(n)]
    exp_avgs = [rand(8, seed=20 + i) for i in range(n)]
    exp_avg_sqs = [np.abs(rand(8, seed=30 + i)) for i in range(n)]
    return params, grads, exp_avgs, exp_avg_sqs


def _state_fp16(a):
    a[2][1] = a[2][1].astype(np.float16)
    return ["exp_avg 1", "dtype float16, expected float32"]


def _state_shape(a):
    a[3][0] = rand(7)
    return ["exp_avg_sq 0", "shape (7,) differs from param 0's shape (8,)"]


def _state_readonly(a):
    a[2][1].flags.writeable = False
    return ["exp_avg 1", "read-only"]


def _state_aliases_state(a):
    a[3][0] = a[2][0]
    return ["exp_avg_sq 0 is the same memory as exp_avg 0"]


def _state_overlaps_grad(a):
    base = rand(16, seed=99)
    a[2][0] = base[:8]  # exp_avg 0
    a[1][1] = base[4:12]  # grad 1, bound later
    return ["grad 1 overlaps exp_avg 0", OVERLAP_TAIL]


STATE_CASES = {
    "state_fp16": _state_fp16,
    "state_shape": _state_shape,
    "state_readonly": _state_readonly,
    "state_aliases_state": _state_aliases_state,
    "state_overlaps_grad": _state_overlaps_grad,
}


@pytest.mark.parametrize("case", sorted(STATE_CASES))
def test_rejected_state_arrays(case):
    arrays = list(map(list, _adam_arrays()))
    parts = STATE_CASES[case](arrays)
    params, grads, exp_avgs, exp_avg_sqs = arrays
    snap = Snapshot(*params, *grads, *exp_avgs, *exp_avg_sqs)
    with pytest.raises(fastopt.TensorError) as info:
        F.adam_(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.1)
    for part in parts:
        assert part in str(info.value), str(info.value)
    snap.assert_unchanged()


def test_rejected_master_dtype():
    params, grads, exp_avgs, exp_avg_sqs = _adam_arrays(param_dtype=ml_dtypes.bfloat16)
    masters = [params[0].astype(np.float32), params[1].astype(np.float16)]
    snap = Snapshot(*params, *grads, *exp_avgs, *exp_avg_sqs, *masters)
    with pytest.raises(fastopt.TensorError, match="master 1: dtype float16, expected float32"):
        F.adam_(params, grads, exp_avgs, exp_avg_sqs, step=1, master_params=masters)
    snap.assert_unchanged()


def test_rejected_master_for_float32_param():
    params, grads, exp_avgs, exp_avg_sqs = _adam_arrays()
    masters = [None, params[1].copy()]
    snap = Snapshot(*params, *grads, *exp_avgs, *exp_avg_sqs, *masters[1:])
    with pytest.raises(fastopt.TensorError, match="param 1: master weights are for float16/bfloat16"):
        F.adam_(params, grads, exp_avgs, exp_avg_sqs, step=1, master_params=masters)
    snap.assert_unchanged()


def test_rejected_master_shape():
    params, grads, exp_avgs, exp_avg_sqs = _adam_arrays(param_dtype=np.float16)
    masters = [params[0].astype(np.float32), rand(shape=(2, 4))]
    snap = Snapshot(*params, *grads, *exp_avgs, *exp_avg_sqs, *masters)
    with pytest.raises(fastopt.TensorError, match=r"master 1: shape \(2, 4\) differs from param 1's shape \(8,\)"):
        F.adam_(params, grads, exp_avgs, exp_avg_sqs, step=1, master_params=masters)
    snap.assert_unchanged()


# ---- accepted inputs ------------------------------------------------------------------

def sgd_expected(p, g, lr):
    """p - lr * g computed in float32, rounded to p's dtype (exact for lr = 0.5)."""
    return (p.astype(np.float32) - np.float32(lr) * g.astype(np.float32)).astype(p.dtype)


def test_readonly_grads_are_accepted():
    """Grads are only read by a step, so read-only grads (NumPy or DLPack 1.0) are accepted,
    left intact, and the params are updated from them."""
    p0, p1 = rand(8), rand(8, seed=1)
    g0, g1 = rand(8, seed=2), rand(8, seed=3)
    g0.flags.writeable = False
    g1.flags.writeable = False
    expected = [sgd_expected(p0, g0, 0.5), sgd_expected(p1, g1, 0.5)]
    snap = Snapshot(g0, g1)
    opt = fastopt.SGD([p0, p1], [g0, DLPackWrapper(g1)], lr=0.5)
    opt.step()
    np.testing.assert_array_equal(p0, expected[0])
    np.testing.assert_array_equal(p1, expected[1])
    snap.assert_unchanged()


def test_dlpack_wrapper_asks_for_version_1():
    p, g = rand(8), rand(8, seed=1)
    wp, wg = DLPackWrapper(p), DLPackWrapper(g)
    expected = sgd_expected(p, g, 0.5)
    fastopt.SGD([wp], [wg], lr=0.5).step()
    np.testing.assert_array_equal(p, expected)
    assert wp.calls and all(tuple(c.get("max_version", ())) == (1, 0) for c in wp.calls)


def test_legacy_dlpack_producer():
    p, g = rand(8), rand(8, seed=1)
    expected = sgd_expected(p, g, 0.5)
    lp, lg = LegacyDLPack(p), LegacyDLPack(g)
    opt = fastopt.SGD([lp], [lg], lr=0.5)
    opt.step()
    np.testing.assert_array_equal(p, expected)
    assert lp.calls >= 1 and lg.calls >= 1


def test_torch_view_offset_updates_the_right_elements():
    base = torch.from_numpy(rand(12))
    before = base.clone()
    view = base[3:]
    grad = torch.from_numpy(rand(9, seed=1))
    fastopt.SGD([view], [grad], lr=0.5).step()
    assert torch.equal(base[:3], before[:3])
    expected = sgd_expected(before[3:].numpy(), grad.numpy(), 0.5)
    np.testing.assert_array_equal(base[3:].numpy(), expected)


def test_dlpack_byte_offset_honoured():
    """A producer that reports its start through byte_offset (not through data)."""
    base = rand(16)
    before = base.copy()
    grad = rand(5, seed=1)
    param = OffsetDLPack(base, offset=7, n=5)
    opt = fastopt.SGD([param], [grad], lr=0.5)
    opt.step()
    np.testing.assert_array_equal(base[:7], before[:7])
    np.testing.assert_array_equal(base[12:], before[12:])
    np.testing.assert_array_equal(base[7:12], sgd_expected(before[7:12], grad, 0.5))


def test_dlpack_byte_offset_overlap_detected():
    """Overlap checks use the offset start, not the producer's base pointer."""
    base = rand(16)
    before = base.copy()
    a = OffsetDLPack(base, offset=0, n=8)
    b = OffsetDLPack(base, offset=8, n=8)  # same data pointer, disjoint elements: accepted
    fastopt.SGD([a, b], [rand(8, seed=1), rand(8, seed=2)], lr=0.5)
    c = OffsetDLPack(base, offset=6, n=8)  # elements 6..13 overlap a (0..7)
    with pytest.raises(fastopt.TensorError, match="param 1 overlaps param 0"):
        fastopt.SGD([a, c], [rand(8, seed=1), rand(8, seed=2)], lr=0.5)
    np.testing.assert_array_equal(base, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_tensors_updated_in_place(dtype):
    params = [trand(8, dtype, seed=0), trand(33, dtype, seed=1).reshape(3, 11)]
    grads = [trand(8, dtype, seed=2), trand(33, dtype, seed=3).reshape(3, 11)]
    ptrs = [p.data_ptr() for p in params]
    expected = [(p.float() - 0.5 * g.float()).to(dtype) for p, g in zip(params, grads)]
    grads_before = [g.clone() for g in grads]
    fastopt.SGD(params, grads, lr=0.5).step()
    for p, e, ptr in zip(params, expected, ptrs):
        assert p.dtype == dtype and p.data_ptr() == ptr
        assert torch.equal(bits(p), bits(e))
    for g, b in zip(grads, grads_before):
        assert torch.equal(g, b)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_16bit_numpy_buffer_protocol(dtype):
    p, g = rand(40, dtype), rand(40, dtype, seed=1)
    expected = sgd_expected(p, g, 0.5)
    addr = p.ctypes.data
    fastopt.SGD([p], [g], lr=0.5).step()
    assert p.ctypes.data == addr and p.dtype == np.dtype(dtype)
    assert p.tobytes() == expected.tobytes()


def test_16bit_numpy_matches_torch():
    """The buffer-protocol and DLPack routes read and write 16-bit elements alike."""
    p_np, g_np = rand(64, ml_dtypes.bfloat16), rand(64, ml_dtypes.bfloat16, seed=1)
    p_t = torch.from_numpy(p_np.astype(np.float32)).to(torch.bfloat16)
    g_t = torch.from_numpy(g_np.astype(np.float32)).to(torch.bfloat16)
    for opt in (fastopt.Adam([p_np], [g_np], lr=0.01), fastopt.Adam([p_t], [g_t], lr=0.01)):
        for _ in range(3):
            opt.step()
    np.testing.assert_array_equal(p_np.astype(np.float32), p_t.float().numpy())


# ---- regressions from review ------------------------------------------------------------

class CapsuleOnCuda:
    """A producer without __dlpack_device__ whose capsule says the data is on CUDA."""

    def __init__(self, base: np.ndarray):
        self.inner = OffsetDLPack(base, 0, base.size)
        self.inner.managed.dl_tensor.device.device_type = 2

    def __dlpack__(self, **kwargs):
        return self.inner.__dlpack__(**kwargs)


def test_capsule_device_is_checked():
    base, grad = rand(8), rand(8, seed=1)
    before = base.copy()
    with pytest.raises(fastopt.TensorError, match=r"param 0: its DLPack capsule is on cuda:0"):
        fastopt.SGD([CapsuleOnCuda(base)], [grad], lr=0.1)
    assert np.array_equal(base, before)


def test_failed_buffer_export_is_a_clean_error():
    # A released memoryview refuses to export its buffer; the error must not release a
    # buffer that was never filled in. The allocator settings make stale memory visible.
    code = """
import numpy as np, fastopt
m = memoryview(np.zeros(8, np.float32)); m.release()
for _ in range(200):
    try:
        fastopt.SGD([m], [np.zeros(8, np.float32)], lr=0.1)
    except fastopt.TensorError as e:
        assert "param 0: cannot read its buffer" in str(e), e
print("ok")
"""
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "MALLOC_PERTURB_": "85"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_zero_size_param_twice_rejected():
    empty, grads = np.zeros(0, np.float32), [np.zeros(0, np.float32), np.zeros(0, np.float32)]
    with pytest.raises(fastopt.TensorError, match="param 1 is the same memory as param 0"):
        fastopt.SGD([empty, empty], grads, lr=0.1)
    with pytest.raises(fastopt.TensorError, match="grad 0 is the same memory as param 0"):
        fastopt.SGD([empty], [empty], lr=0.1)


# ---- tensors whose memory does not hold their values (issue 12) ---------------------------------


@pytest.mark.parametrize("where", ["param", "grad"])
def test_numpy_masked_arrays_are_refused(where):
    """The buffer protocol gives a masked array's data without its mask: masked elements would
    be updated and masked grads used. Refused at bind, naming the tensor; nothing written."""
    params = [np.ones(4, np.float32), np.ones(3, np.float32)]
    grads = [np.ones(4, np.float32), np.ones(3, np.float32)]
    masked = np.ma.masked_array(np.ones(3, np.float32), mask=[False, True, False])
    (params if where == "param" else grads)[1] = masked
    with pytest.raises(fastopt.TensorError, match=f"{where} 1: is a NumPy masked array"):
        fastopt.SGD(params, grads, lr=0.1)
    assert np.all(np.asarray(params[0]) == 1) and np.all(masked.data == 1)


def test_masked_state_in_a_functional_call_is_refused():
    p, g = [np.ones(3, np.float32)], [np.ones(3, np.float32)]
    m = [np.ma.masked_array(np.zeros(3, np.float32), mask=[True, False, False])]
    with pytest.raises(fastopt.TensorError, match="exp_avg 0: is a NumPy masked array"):
        F.lion_(p, g, m, lr=0.1)
    assert np.all(p[0] == 1)


@pytest.mark.parametrize("where", ["param", "grad"])
def test_torch_negative_view_is_refused(where):
    """A tensor with the lazy negation bit: its memory holds -x. DLPack hands over the memory,
    so the sign would be lost (a step gave -0.5 where -1.5 was right)."""
    params = [torch.ones(4), torch.ones(4)]
    grads = [torch.ones(4), torch.ones(4)]
    if where == "param":
        params[0] = torch.ones(4)._neg_view()
    else:
        grads[0] = torch.full((4,), 0.5)._neg_view()
    with pytest.raises(fastopt.TensorError, match=f"{where} 0: has PyTorch's lazy negation"):
        fastopt.SGD(params, grads, lr=1.0)
    assert torch.all(params[1] == 1)


class HostBufferOnCuda(np.ndarray):
    """Has the buffer protocol yet reports CUDA memory (as CuPy >= 13.6 does): never read as
    host memory."""

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, **kwargs):
        raise AssertionError("a CUDA tensor must not be exported to the CPU engine")


def test_buffer_protocol_object_on_cuda_goes_to_the_cuda_engine():
    params = [np.zeros(4, np.float32).view(HostBufferOnCuda)]
    grads = [np.zeros(4, np.float32).view(HostBufferOnCuda)]
    # Without a CUDA engine: refused as CUDA memory; with one: exported through DLPack (which
    # this fake refuses), never read through the buffer protocol.
    with pytest.raises(fastopt.TensorError, match="param 0: (is on cuda:0, but fastopt's CUDA engine is not "
                                                  "available|__dlpack__ failed: AssertionError)"):
        fastopt.SGD(params, grads, lr=0.1)


class CopyingProducer:
    """A DLPack producer that hands over a copy (DLPack 1.x's is-copied flag)."""

    def __init__(self, array):
        self.array = array

    def __dlpack_device__(self):
        return (1, 0)

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(max_version=(1, 0), copy=True)


def test_copied_capsule_refused():
    with pytest.raises(fastopt.TensorError, match="param 0: its producer exported a copy"):
        fastopt.SGD([CopyingProducer(np.zeros(4, np.float32))], [np.ones(4, np.float32)], lr=0.1)


class OldProducer:
    """A producer that refuses DLPack 1.x's keywords with BufferError (as torch does for some)."""

    def __init__(self, array):
        self.array = array

    def __dlpack_device__(self):
        return (1, 0)

    def __dlpack__(self, **kwargs):
        if kwargs.keys() - {"stream"}:
            raise BufferError("no max_version here")
        return self.array.__dlpack__()


def test_legacy_export_after_a_buffer_error():
    param = np.zeros(4, np.float32)
    fastopt.SGD([OldProducer(param)], [np.ones(4, np.float32)], lr=0.5).step()
    np.testing.assert_array_equal(param, -0.5)
