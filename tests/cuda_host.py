"""The GPU backend seen from the host, so the CPU test suites run on it unchanged.

Every NumPy argument goes to the device (``numba.cuda.to_device``) and every device result comes back
(``copy_to_host``); arguments that cannot live on a device (object arrays, tuples) pass through, so the
GPU functions' own checks answer them.
"""

import os
import sys
import types
import warnings

import numpy as np
import pytest
from conftest import OPS

# Shrunk launch configuration: a 4x2-thread depthwise block covers a 4x4 tile, a 2x2-thread pointwise block
# an 8x8 tile in slices 3 deep, a reduction block has 8 threads and sums 16 products: the tests' small
# inputs span several blocks with partial last ones, along every axis.
SMALL = dict(
    tile_threads=(4, 2),
    rows_per_thread=2,
    reduce_threads=8,
    reduce_elements=16,
    gemm_threads=(2, 2),
    gemm_tile_k=3,
    gemm_target_blocks=8,
)

def simulated():
    """True when the CUDA simulator stands in for a GPU."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def available():
    """(True, '') when a GPU or the simulator can run the GPU backend, else (False, why)."""
    try:
        from numba import cuda
    except ImportError:
        return False, "numba-cuda is not installed (pip install '.[test]')"
    if not cuda.is_available():
        return False, "no GPU; run the GPU suite in the simulator: NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cuda"
    return True, ""


def _to_device(value):
    from numba import cuda

    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        return cuda.to_device(np.ascontiguousarray(value))
    return value


def is_device_array(value):
    """True for a Numba device array (or the simulator's stand-in)."""
    return getattr(value, "__cuda_ndarray__", False) is True


def _to_host(value):
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # SeparableGrads: each gradient comes back
        return type(value)(*(_to_host(v) for v in value))
    return value.copy_to_host() if hasattr(value, "copy_to_host") else value


def _host_function(name):
    def call(*args, **kwargs):
        import numba_dsconv.cuda

        args = [_to_device(a) for a in args]
        kwargs = {k: _to_device(v) for k, v in kwargs.items()}
        return _to_host(getattr(numba_dsconv.cuda, name)(*args, **kwargs))

    call.__name__ = name
    return call


def prepare(request, monkeypatch):
    """Skip when no GPU (real or simulated) is there; else shrink the launch configuration, return the shim."""
    ok, why = available()
    if not ok:
        pytest.skip(why)
    from numba_dsconv.cuda import launch

    monkeypatch.setattr(launch, "CONFIG", launch.LaunchConfig(**SMALL))
    # On a GPU, Numba warns that grids this small under-use the card: they are small on purpose here. The
    # message, not the class, is matched: numba-cuda raises its own NumbaPerformanceWarning, not numba's.
    warnings.filterwarnings("ignore", message=".*Grid size .* under-utilization")
    if simulated():
        # The simulator runs a block's threads as Python threads that meet at every barrier; a short
        # switch interval lets them meet in microseconds instead of the default 5 ms.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        request.addfinalizer(lambda: sys.setswitchinterval(interval))
        # It also computes with NumPy scalars, which warn where a GPU silently makes Inf or NaN (Inf * 0 in
        # the propagation tests, whose results the tests check). pytest restores the filters after the test.
        warnings.filterwarnings("ignore", message=".*encountered in scalar", category=RuntimeWarning)
    return host_backend()


def host_backend():
    """The GPU functions, taking and returning NumPy arrays."""
    functions = {name: _host_function(name) for name in OPS}
    return types.SimpleNamespace(simulated=simulated(), **functions)
