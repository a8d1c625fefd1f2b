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
from .shapes import (
    DEPTHWISE,
    POINTWISE,
    SEPARABLE,
    depthwise_arrays,
    depthwise_ops,
    pointwise_arrays,
    pointwise_ops,
    separable_arrays,
    separable_ops,
)

DTYPES = [np.float32, np.float64]
OPS = ["forward", "grad_input", "grad_weight"]


def _cases(shapes):
    return [
        pytest.param(s, op, d, id=f"{s.name}-{op}-{np.dtype(d).name}") for s in shapes for op in OPS for d in DTYPES
    ]


IMPLS = ["numba_dsconv"] + [f"torch-{layout}" for layout in peers.LAYOUTS]


def _call(impl, ours, theirs):
    """The callable of one implementation: ours, or PyTorch in one layout (skipped without PyTorch)."""
    if impl == "numba_dsconv":
        return ours()
    if not peers.available():
        pytest.skip("PyTorch is not installed: no peer comparison (pip install torch==2.13.0)")
    return theirs(impl.removeprefix("torch-"))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape, op, dtype", _cases(DEPTHWISE))
def test_depthwise(benchmark, shape, op, dtype, impl):
    x, w, gy = depthwise_arrays(shape, dtype, np.random.default_rng(0))
    call = _call(
        impl,
        lambda: depthwise_ops(shape, x, w, gy)[op],
        lambda layout: peers.depthwise_ops(x, w, gy, layout=layout, **shape.opts())[op],
    )
    benchmark.group = f"{shape.name} {op} {np.dtype(dtype).name}"
    benchmark(call)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape, op, dtype", _cases(POINTWISE))
def test_pointwise(benchmark, shape, op, dtype, impl):
    x, w, gy = pointwise_arrays(shape, dtype, np.random.default_rng(0))
    call = _call(
        impl, lambda: pointwise_ops(x, w, gy)[op], lambda layout: peers.pointwise_ops(x, w, gy, layout=layout)[op]
    )
    benchmark.group = f"{shape.name} {op} {np.dtype(dtype).name}"
    benchmark(call)


@pytest.mark.parametrize("impl", ["fused", "separate", "torch-contiguous", "torch-channels_last"])
@pytest.mark.parametrize("op", ["forward", "backward"])
@pytest.mark.parametrize("shape", SEPARABLE, ids=lambda s: s.name)
def test_separable(benchmark, shape, op, impl):
    """Fused against the two halves run separately (float32). The fusion needs a single-threaded BLAS: run
    with ``OPENBLAS_NUM_THREADS=1`` (``python -m bench.separable`` sets it), else both run the halves."""
    x, dw, pw, gy = separable_arrays(shape, np.float32, np.random.default_rng(0))
    if impl.startswith("torch"):
        if not peers.available():
            pytest.skip("PyTorch is not installed: no peer comparison (pip install torch==2.13.0)")
        call = peers.separable_ops(x, dw, pw, gy, layout=impl.removeprefix("torch-"), **shape.depthwise.opts())[op]
    else:
        call = separable_ops(shape, x, dw, pw, gy)[op][impl]
    benchmark.group = f"{shape.name} separable {op} float32"
    benchmark(call)


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
