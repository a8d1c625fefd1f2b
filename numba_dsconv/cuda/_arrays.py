"""Turning the GPU functions' array arguments into contiguous Numba device arrays, and the copy kernels.

Inputs are anything with ``__cuda_array_interface__`` (Numba device arrays, CuPy arrays, PyTorch CUDA
tensors) or the CUDA simulator's arrays. Foreign arrays are wrapped without a copy; a non-contiguous one is
copied once, on the device, into a C-contiguous array (the kernels index with fixed strides and coalesce
along W).
"""

import numpy as np
from numba import cuda

from .. import geometry
from ..cpu._arrays import is_cuda_array
from .launch import blocks

_COPY_THREADS = 256


def as_stream(stream):
    """Return the stream to launch on: the default stream for ``None`` or ``0``, else the Numba stream given.

    Streams of other libraries go through ``numba.cuda.external_stream(ptr)`` first.
    """
    return 0 if stream is None else stream


def as_device_array(name, obj, stream):
    """Return ``obj`` as a C-contiguous Numba device array (no copy when it already is one).

    Raises
    ------
    TypeError
        If ``obj`` is a host array (NumPy or anything else without the CUDA array interface), or its dtype
        is not float32/float64.
    """
    if not is_cuda_array(obj):
        dtype = getattr(obj, "dtype", None)
        if dtype is not None:
            geometry.check_dtype(name, obj)
        raise TypeError(
            f"{name} is a host array ({type(obj).__name__}); numba_dsconv.cuda takes CUDA arrays (Numba device "
            "arrays, CuPy arrays, PyTorch CUDA tensors). Copy it to the device first (numba.cuda.to_device), "
            "or pass only host arrays to the CPU backend"
        )
    if not getattr(obj, "__cuda_ndarray__", False):  # CuPy, PyTorch, ...: a zero-copy Numba view
        obj = cuda.as_cuda_array(obj)
    geometry.check_dtype(name, obj)
    if obj.is_c_contiguous() or obj.ndim not in _COPY_KERNELS:
        return obj  # a rank no function takes is refused by the shape checks, with the argument's name
    return contiguous_copy(obj, stream)


def optional_device_array(name, obj, stream):
    """:func:`as_device_array` for an optional argument."""
    return None if obj is None else as_device_array(name, obj, stream)


def empty(shape, dtype, stream):
    """Allocate a device array on ``stream``."""
    return cuda.device_array(tuple(int(s) for s in shape), np.dtype(dtype), stream=stream)


@cuda.jit(cache=True)
def _copy_1d_kernel(src, dst):
    i = cuda.grid(1)
    if i < dst.shape[0]:
        dst[i] = src[i]


@cuda.jit(cache=True)
def _copy_2d_kernel(src, dst):
    i = cuda.grid(1)
    cols = dst.shape[1]
    if i < dst.size:
        dst[i // cols, i % cols] = src[i // cols, i % cols]


@cuda.jit(cache=True)
def _copy_4d_kernel(src, dst):
    """dst[n, c, h, w] = src[n, c, h, w], one thread per element in dst's (row-major) order."""
    i = cuda.grid(1)
    n_, c_, h_, w_ = dst.shape
    if i < dst.size:
        w = i % w_
        rest = i // w_
        h = rest % h_
        rest //= h_
        dst[rest // c_, rest % c_, h, w] = src[rest // c_, rest % c_, h, w]


_COPY_KERNELS = {1: _copy_1d_kernel, 2: _copy_2d_kernel, 4: _copy_4d_kernel}


def contiguous_copy(array, stream):
    """Copy a strided device array of rank 1, 2 or 4 into a new C-contiguous one, on the device."""
    kernel = _COPY_KERNELS.get(array.ndim)
    if kernel is None:
        raise ValueError(f"cannot copy a non-contiguous array of rank {array.ndim}; expected rank 1, 2 or 4")
    out = empty(array.shape, array.dtype, stream)
    if out.size:
        kernel[blocks(out.size, _COPY_THREADS), _COPY_THREADS, stream](array, out)
    return out
