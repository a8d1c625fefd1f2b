"""pytest-benchmark suite: every op at the DESIGN.md shapes, PyTorch beside it when installed.

    python -m pytest bench --benchmark-only [--benchmark-json out.json]

Each case is one benchmark group ("D1 forward float32"): numba_dsconv, then PyTorch contiguous and
channels_last (skipped, with the reason, when PyTorch is not installed), so the table compares them
directly. ``python -m bench`` gives the same numbers interleaved, with GB/s and fractions of the limit.
"""

import numpy as np
import pytest

import numba_dsconv as nd
from numba_dsconv import reference

from . import peers
from .shapes import DEPTHWISE, POINTWISE

DTYPES = [np.float32, np.float64]
OPS = ["forward", "grad_input", "grad_weight"]


def _depthwise_arrays(shape, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((shape.n, shape.c, shape.h, shape.w)).astype(dtype)
    w = rng.standard_normal((shape.out_channels, 1, shape.k, shape.k)).astype(dtype)
    gy = rng.standard_normal((shape.n, shape.out_channels) + shape.out_hw).astype(dtype)
    return x, w, gy


def _pointwise_arrays(shape, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((shape.n, shape.cin, shape.h, shape.w)).astype(dtype)
    w = rng.standard_normal((shape.cout, shape.cin, 1, 1)).astype(dtype)
    gy = rng.standard_normal((shape.n, shape.cout, shape.h, shape.w)).astype(dtype)
    return x, w, gy


DW_CASES = [
    pytest.param(s, op, d, id=f"{s.name}-{op}-{np.dtype(d).name}") for s in DEPTHWISE for op in OPS for d in DTYPES
]
PW_CASES = [
    pytest.param(s, op, d, id=f"{s.name}-{op}-{np.dtype(d).name}") for s in POINTWISE for op in OPS for d in DTYPES
]


@pytest.mark.parametrize("shape, op, dtype", DW_CASES)
def test_depthwise_numba_dsconv(benchmark, shape, op, dtype):
    x, w, gy = _depthwise_arrays(shape, dtype)
    o = shape.opts()
    call = {
        "forward": lambda: nd.depthwise_conv2d(x, w, **o),
        "grad_input": lambda: nd.depthwise_conv2d_grad_input(gy, w, x.shape, **o),
        "grad_weight": lambda: nd.depthwise_conv2d_grad_weight(gy, x, w.shape, **o),
    }[op]
    benchmark.group = f"{shape.name} {op} {np.dtype(dtype).name}"
    benchmark(call)


@pytest.mark.parametrize("layout", peers.LAYOUTS)
@pytest.mark.parametrize("shape, op, dtype", DW_CASES)
def test_depthwise_torch(benchmark, shape, op, dtype, layout):
    if not peers.available():
        pytest.skip("PyTorch is not installed: no peer comparison (pip install torch==2.13.0)")
    x, w, gy = _depthwise_arrays(shape, dtype)
    benchmark.group = f"{shape.name} {op} {np.dtype(dtype).name}"
    benchmark(peers.depthwise_ops(x, w, gy, layout=layout, **shape.opts())[op])


@pytest.mark.parametrize("shape, op, dtype", PW_CASES)
def test_pointwise_numba_dsconv(benchmark, shape, op, dtype):
    x, w, gy = _pointwise_arrays(shape, dtype)
    call = {
        "forward": lambda: nd.pointwise_conv2d(x, w),
        "grad_input": lambda: nd.pointwise_conv2d_grad_input(gy, w),
        "grad_weight": lambda: nd.pointwise_conv2d_grad_weight(gy, x),
    }[op]
    benchmark.group = f"{shape.name} {op} {np.dtype(dtype).name}"
    benchmark(call)


@pytest.mark.parametrize("layout", peers.LAYOUTS)
@pytest.mark.parametrize("shape, op, dtype", PW_CASES)
def test_pointwise_torch(benchmark, shape, op, dtype, layout):
    if not peers.available():
        pytest.skip("PyTorch is not installed: no peer comparison (pip install torch==2.13.0)")
    x, w, gy = _pointwise_arrays(shape, dtype)
    benchmark.group = f"{shape.name} {op} {np.dtype(dtype).name}"
    benchmark(peers.pointwise_ops(x, w, gy, layout=layout)[op])


# The scipy.signal reference at a small shape (it loops over planes in Python): how much the kernels buy.
SMALL = dict(n=2, c=8, h=28, w=28)


@pytest.mark.parametrize("impl", ["numba_dsconv", "reference"])
def test_small_depthwise_forward_against_reference(benchmark, impl):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SMALL["n"], SMALL["c"], SMALL["h"], SMALL["w"])).astype(np.float32)
    w = rng.standard_normal((SMALL["c"], 1, 3, 3)).astype(np.float32)
    func = nd.depthwise_conv2d if impl == "numba_dsconv" else reference.depthwise_conv2d
    benchmark.group = "small depthwise forward: kernel vs scipy.signal reference"
    benchmark(func, x, w, padding=2, dilation=2)
