"""The fused separable convolution against its two halves run one after the other, and against PyTorch.

Usage::

    python -m bench.separable                    # float32, every SEPARABLE shape
    python -m bench.separable --dtype float64 --shapes S1 --json bench/results/separable.json

For each shape of ``shapes.SEPARABLE`` (a DESIGN.md depthwise shape and its pointwise partner), the forward
and the backward pass are timed interleaved (as in ``python -m bench``): numba_dsconv fused
(``separable_conv2d``, ``separable_conv2d_backward``), numba_dsconv's separate kernels (depthwise, then
pointwise; the backward keeps the depthwise output from its forward pass, as a caller of the halves would),
and PyTorch's two convolutions in both layouts (the backward with the depthwise output kept, as autograd
keeps it). Every call allocates its outputs. "prod ms" is the forward's own bound: its pointwise products
alone (as it runs them, one image per thread) on a ready intermediate, and "%fused" that time over the fused
forward's.

The fusion needs a single-threaded BLAS (one band product per Numba thread; see ``numba_dsconv.cpu.
separable``): this script sets ``OPENBLAS_NUM_THREADS=1`` before NumPy loads, as training does, unless the
environment says otherwise. PyTorch's CPU build does not use OpenBLAS.
"""

import os

from . import _pinned  # first: before any OpenMP runtime loads

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

import numba_dsconv as nd  # noqa: E402
from numba_dsconv.cpu import _blas  # noqa: E402
from numba_dsconv.cpu.pointwise import products_into  # noqa: E402

from . import peers  # noqa: E402
from .__main__ import interleaved_medians, summary_arguments  # noqa: E402
from .shapes import SEPARABLE, separable_arrays, separable_ops  # noqa: E402


def run_shape(shape, dtype, repeats, rng):
    """Rows for the forward and the backward pass of one shape."""
    x, dw, pw, gy = separable_arrays(shape, dtype, rng)
    ours = separable_ops(shape, x, dw, pw, gy)
    theirs = {
        layout: peers.separable_ops(x, dw, pw, gy, layout=layout, **shape.depthwise.opts())
        for layout in (peers.LAYOUTS if peers.available() else ())
    }
    d = shape.depthwise
    # The forward's own bound: its pointwise products alone, as it runs them, on a ready intermediate.
    h = nd.depthwise_conv2d(x, dw, **d.opts())
    h3, pw2 = h.reshape(d.n, d.c, -1), np.ascontiguousarray(pw.reshape(shape.features, d.c))
    out3 = np.empty((d.n, shape.features, h3.shape[2]), dtype)
    ours["forward"]["products only"] = lambda: products_into(pw2, h3, out3)
    h_elements = d.n * d.c * d.out_hw[0] * d.out_hw[1]
    flops = {"forward": 2.0 * h_elements * (d.k * d.k + shape.features)}
    flops["backward"] = 2 * flops["forward"] + 2.0 * h_elements * shape.features  # dh, dW_pw, dx, dW_dw; h again
    rows = []
    for op in ("forward", "backward"):
        funcs = dict(ours[op]) | {layout: ops[op] for layout, ops in theirs.items()}
        seconds = interleaved_medians(funcs, repeats)
        row = {
            "shape": shape.name,
            "describe": shape.describe(),
            "op": op,
            "dtype": np.dtype(dtype).name,
            "fused_ms": seconds["fused"] * 1e3,
            "separate_ms": seconds["separate"] * 1e3,
            "fused_vs_separate": seconds["separate"] / seconds["fused"],
            "fused_gflop_s": flops[op] / seconds["fused"] / 1e9,
        }
        if "products only" in seconds:
            row["products_ms"] = seconds["products only"] * 1e3
            row["products_fraction"] = seconds["products only"] / seconds["fused"]
        for layout in theirs:
            row[f"torch_{layout}_ms"] = seconds[layout] * 1e3
        if theirs:
            row["fused_vs_torch_best"] = min(seconds[k] for k in theirs) / seconds["fused"]
        rows.append(row)
    return rows


def _fmt(row):
    torch_part = ""
    if "fused_vs_torch_best" in row:
        torch_part = (f"{row['torch_contiguous_ms']:9.2f} {row['torch_channels_last_ms']:9.2f} "
                      f"{row['fused_vs_torch_best']:7.2f}x")
    bound = f"{row['products_ms']:9.3f} {100 * row['products_fraction']:5.0f}%" if "products_ms" in row else " " * 16
    return (f"{row['shape']:<3} {row['op']:<9} {row['dtype']:<8} {row['fused_ms']:9.3f} {row['separate_ms']:9.3f} "
            f"{row['fused_vs_separate']:7.2f}x {row['fused_gflop_s']:8.1f} {bound}  {torch_part}")


def main(argv=None):
    args, threads, dtypes, wanted = summary_arguments(
        "python -m bench.separable", __doc__.splitlines()[0], "float32", "S1..S4", argv
    )
    print(f"# numba_dsconv {nd.__version__}, numba {numba.__version__}, numpy {np.__version__}, {threads} threads, "
          f"BLAS threads {_blas.threads()}, {platform.processor() or platform.machine()}, "
          f"OMP_PROC_BIND={_pinned.setting()}")
    print(f"# peer: {peers.describe()}")
    for shape in SEPARABLE:
        if wanted is None or shape.name in wanted:
            print(f"# {shape.describe()}")
    print(f"{'':3} {'op':<9} {'dtype':<8} {'fused ms':>9} {'sep ms':>9} {'vs sep':>8} {'GFLOP/s':>8} "
          f"{'prod ms':>9} {'%fused':>6}  {'torch ms':>9} {'torch CL':>9} {'vs best':>8}")
    rows = []
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        for shape in SEPARABLE:
            if wanted is None or shape.name in wanted:
                for row in run_shape(shape, dtype, args.repeats, rng):
                    print(_fmt(row), flush=True)
                    rows.append(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": threads, "blas_threads": _blas.threads(),
                       "peer": peers.describe(), "rows": rows, "date": time.strftime("%Y-%m-%d"),
                       "python": sys.version.split()[0]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
