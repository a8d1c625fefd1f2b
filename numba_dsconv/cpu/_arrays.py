"""Turning the CPU functions' array arguments into NumPy arrays, with errors that name the argument."""

import numpy as np


def is_cuda_array(obj):
    """Tell whether ``obj`` lives on a GPU (Numba device arrays, CuPy arrays, PyTorch CUDA tensors).

    Numba's device arrays also say so with ``__cuda_ndarray__``; the CUDA simulator's arrays only that way.
    """
    return hasattr(obj, "__cuda_array_interface__") or getattr(obj, "__cuda_ndarray__", False) is True


def as_host_array(name, obj):
    """Return ``obj`` as a NumPy array without copying it when it already is one.

    Raises
    ------
    TypeError
        If ``obj`` is a CUDA array (the CPU backend never moves data between devices) or cannot be read as a
        numeric array.
    """
    if isinstance(obj, np.ndarray):
        return obj
    if is_cuda_array(obj):
        raise TypeError(
            f"{name} is a CUDA array ({type(obj).__name__}); numba_dsconv.cpu takes NumPy arrays. "
            "Copy it to the host first, or pass only CUDA arrays to the GPU backend"
        )
    try:
        return np.asarray(obj)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} cannot be read as an array: {exc}") from None
