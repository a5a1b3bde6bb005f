"""The fp32 arrays fastopt owns (optimizer state, master weights), allocated where the params
live, with the params' own library: PyTorch tensors for PyTorch params, CuPy arrays for CuPy
params, aligned NumPy arrays for other CPU params. Also the few library-neutral operations the optimizers need on them."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from . import _core

_ALIGN = 64  # one cache line, and one AVX-512 vector
_CPU = 1     # DLPack device type


def aligned_zeros(shape: tuple[int, ...], dtype: str = "float32", offset: int = 0) -> np.ndarray:
    """A zeroed, C-contiguous array whose data starts ``offset`` bytes (a multiple of the
    itemsize, below 64) past a 64-byte boundary."""
    n = int(np.prod(shape, dtype=np.int64))
    size = np.dtype(dtype).itemsize
    raw = np.zeros(n + _ALIGN // size, dtype=dtype)
    start = ((offset - raw.ctypes.data) % _ALIGN) // size
    return raw[start:start + n].reshape(shape)


def library(a: Any) -> str:
    """"numpy", "torch", "cupy" or "other": which library an array belongs to."""
    if isinstance(a, np.ndarray):
        return "numpy"
    root = type(a).__module__.split(".")[0]
    return root if root in ("torch", "cupy") else "other"


def state_like(param: Any, name: str, dtype: str = "float32", shape: tuple[int, ...] | None = None) -> Any:
    """A zeroed array of ``dtype`` with the shape of ``param`` (or ``shape``), on its device: a
    PyTorch tensor for a PyTorch param, a CuPy array for a CuPy one, else a NumPy array placed
    so that the elements at which the param's stream crosses a 64-byte boundary are those at
    which this one does (the kernels align the param's stream, and with it this one; NumPy puts
    large arrays 16 bytes past a boundary)."""
    if shape is None:
        shape = _core.describe(param, name)[0]
    kind, dev = _core.device_of(param)
    lib = library(param)
    if kind == _CPU and lib != "torch":
        at = 0
        if isinstance(param, np.ndarray) and param.ctypes.data % param.dtype.itemsize == 0:
            at = param.ctypes.data % _ALIGN // param.dtype.itemsize * np.dtype(dtype).itemsize % _ALIGN
        return aligned_zeros(tuple(shape), dtype, at)
    if lib == "torch":  # (torch's CPU allocator aligns to 64 bytes)
        import torch
        return torch.zeros(tuple(shape), dtype=getattr(torch, dtype), device=param.device)
    if lib == "cupy":
        import cupy
        if dtype == "bfloat16":
            raise TypeError(f"{name}: CuPy has no bfloat16 arrays; use PyTorch tensors for bfloat16 state "
                            "or compensations")
        with cupy.cuda.Device(dev):
            return cupy.zeros(tuple(shape), dtype=dtype)
    raise TypeError(f"{name}: fastopt allocates the state of GPU params with PyTorch or CuPy, and "
                    f"{type(param).__name__} is neither; use fastopt.functional with state arrays of your own")


def master_copy(param: Any, name: str, stream: int = 0) -> Any:
    """The exact float32 value of ``param``, in a new array on its device (written on
    ``stream`` for GPU params)."""
    out = state_like(param, name)
    if _core.device_of(param)[0] == _CPU:
        _core.widen_into(param, out)
    else:
        from .cuda import engine
        engine().widen_into(param, out, stream)
    return out


def device_empty(like: Any, shape: tuple[int, ...], dtype: str, stream: int) -> Any:
    """An uninitialised array of ``like``'s library on its GPU, allocated on ``stream`` (where
    kernels will write it), so that the library's stream-ordered allocator does not hand out
    memory that work on another stream still uses."""
    lib = _gpu_library(like)
    if lib == "torch":
        import torch
        if stream == torch.cuda.current_stream(like.device).cuda_stream:
            return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
        with torch.cuda.stream(torch.cuda.ExternalStream(stream, device=like.device)):
            return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    import cupy
    with cupy.cuda.Device(_core.device_of(like)[1]), cupy.cuda.ExternalStream(stream):
        return cupy.empty(shape, dtype=dtype)


def device_array(like: Any, value: np.ndarray) -> Any:
    """A copy of host array ``value`` in ``like``'s library on its GPU."""
    if _gpu_library(like) == "torch":
        import torch
        return torch.from_numpy(np.array(value, order="C")).to(like.device)  # (0-d stays 0-d)
    import cupy
    with cupy.cuda.Device(_core.device_of(like)[1]):
        return cupy.asarray(value)


def _gpu_library(like: Any) -> str:
    lib = library(like)
    if lib not in ("torch", "cupy"):
        raise TypeError(f"fastopt allocates its GPU arrays with PyTorch or CuPy, and {type(like).__name__} "
                        f"is neither: this needs torch or CuPy params")
    return lib


def data_ptr(a: Any) -> int:
    """The device address of a PyTorch tensor's or CuPy array's first element."""
    lib = library(a)
    if lib == "torch":
        return a.data_ptr()
    if lib == "cupy":
        return a.data.ptr
    raise TypeError(f"expected a PyTorch tensor or a CuPy array, got {type(a).__name__}")


def copy(a: Any) -> Any:
    """A copy of ``a`` on its device."""
    return a.clone() if library(a) == "torch" else a.copy()


def copy_into(dst: Any, src: Any) -> None:
    """``dst = src`` in place, arrays of one library on one device, same shape, src converted
    to dst's dtype (rounded to nearest even)."""
    lib = library(dst)
    if lib != library(src):
        raise TypeError(f"cannot copy a {type(src).__name__} into a {type(dst).__name__}")
    if lib == "torch":
        import torch
        with torch.no_grad():  # (params that require grad)
            dst.copy_(src)
    elif lib == "cupy":
        dst[...] = src
    elif lib == "numpy":
        np.copyto(dst, src, casting="unsafe")
    else:
        raise TypeError(f"fastopt copies NumPy arrays, PyTorch tensors and CuPy arrays, not {type(dst).__name__}")


def to_host(a: Any) -> np.ndarray:
    """``a`` as a NumPy array (copied from the GPU where it lives there; a bfloat16 tensor as an
    ml_dtypes.bfloat16 array)."""
    lib = library(a)
    if lib == "torch":
        import torch
        if a.dtype == torch.bfloat16:  # (NumPy has no bfloat16 of its own: through its bits)
            return a.detach().cpu().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return a.detach().cpu().numpy()
    if lib == "cupy":
        return a.get()
    return np.asarray(a)


def assign(dst: Any, src: np.ndarray) -> None:
    """Copies host array ``src`` into ``dst`` (same shape and dtype), wherever dst lives."""
    lib = library(dst)
    if lib == "torch":
        import torch
        host = np.array(src, order="C")
        if host.dtype == ml_dtypes.bfloat16:  # (torch reads no ml_dtypes array: through its bits)
            dst.view(torch.int16).copy_(torch.from_numpy(host.view(np.int16)))
        else:
            dst.copy_(torch.from_numpy(host))  # (0-d stays 0-d)
    elif lib == "cupy":
        dst.set(np.array(src, order="C"))
    else:
        np.copyto(dst, src)


def fill(a: Any, value: float) -> None:
    if library(a) == "torch":
        a.fill_(value)
    else:
        a.fill(value)
