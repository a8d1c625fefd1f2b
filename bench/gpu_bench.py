"""GPU benchmark: every op at the DESIGN.md shapes with N = 64, against PyTorch on the same card, in one run.

Usage (on a machine with a GPU, PyTorch with CUDA and numba-cuda; fits one 10-minute call)::

    python -m bench.gpu_bench [--repeats 15] [--dtype float32] [--json bench/results/gpu-<card>-<date>.json]

Every input is a PyTorch CUDA tensor; numba_dsconv reads it through ``__cuda_array_interface__`` (no copy)
and returns Numba device arrays. Each callable is timed as the median, over ``repeats`` rounds taken in
turns (numba_dsconv, PyTorch, numba_dsconv, ...), of the mean time of ``calls`` back-to-back launches
between two device synchronisations. GB/s counts each input read once and each output written once;
the limit is the card's device-to-device copy bandwidth measured at the start (bytes read + written).
PyTorch runs cuDNN (or its native depthwise kernels) with TF32 switched off, so that float32 means float32.
Each row also records numba_dsconv's first call (``first_call_s``): compilation on a cold Numba cache (the
first shape of each op and dtype), a cache load or nothing after that; run the script twice to see both.

``--smoke`` runs two tiny shapes without PyTorch: with ``NUMBA_ENABLE_CUDASIM=1`` it checks the script on a
machine without a GPU.
"""

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

import numpy as np

from .shapes import DEPTHWISE, POINTWISE, DepthwiseShape, PointwiseShape

OPS = ("forward", "grad_input", "grad_weight")


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _sync(torch):
    from numba import cuda

    cuda.synchronize()
    if torch is not None:
        torch.cuda.synchronize()


def timed(funcs, repeats, calls, torch, first=None):
    """Median seconds per call of each callable, rounds interleaved across the callables.

    ``first``, a dict, receives each callable's first call in seconds (compilation or a disk-cache load
    for numba_dsconv, algorithm selection for PyTorch), timed to the end of its GPU work.
    """
    for name, f in funcs.items():
        _sync(torch)
        start = time.perf_counter()
        f()
        _sync(torch)
        if first is not None:
            first[name] = time.perf_counter() - start
    times = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, f in funcs.items():
            _sync(torch)
            start = time.perf_counter()
            for _ in range(calls):
                f()
            _sync(torch)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def copy_bandwidth(torch, n_bytes=1 << 30, repeats=20):
    """Device-to-device copy rate in GB/s (bytes read + bytes written), the card's practical limit."""
    a = torch.empty(n_bytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    seconds = timed({"copy": lambda: b.copy_(a)}, repeats, 5, torch)["copy"]
    return 2 * n_bytes / seconds / 1e9


def _inputs(shape, dtype, torch, rng):
    """Device arrays x, weight, grad_y: PyTorch CUDA tensors when PyTorch is there, else Numba arrays."""
    if isinstance(shape, DepthwiseShape):
        arrays = (
            rng.standard_normal((shape.n, shape.c, shape.h, shape.w)),
            rng.standard_normal((shape.out_channels, 1, shape.k, shape.k)),
            rng.standard_normal((shape.n, shape.out_channels) + shape.out_hw),
        )
    else:
        arrays = (
            rng.standard_normal((shape.n, shape.cin, shape.h, shape.w)),
            rng.standard_normal((shape.cout, shape.cin, 1, 1)),
            rng.standard_normal((shape.n, shape.cout, shape.h, shape.w)),
        )
    arrays = [a.astype(dtype) for a in arrays]
    if torch is not None:
        return [torch.from_numpy(a).cuda() for a in arrays]
    from numba import cuda

    return [cuda.to_device(a) for a in arrays]


def _ours(shape, x, w, gy):
    import numba_dsconv.cuda as gpu

    if isinstance(shape, DepthwiseShape):
        o = shape.opts()
        return {
            "forward": lambda: gpu.depthwise_conv2d(x, w, **o),
            "grad_input": lambda: gpu.depthwise_conv2d_grad_input(gy, w, tuple(x.shape), **o),
            "grad_weight": lambda: gpu.depthwise_conv2d_grad_weight(gy, x, tuple(w.shape), **o),
        }
    return {
        "forward": lambda: gpu.pointwise_conv2d(x, w),
        "grad_input": lambda: gpu.pointwise_conv2d_grad_input(gy, w),
        "grad_weight": lambda: gpu.pointwise_conv2d_grad_weight(gy, x),
    }


def _theirs(torch, shape, x, w, gy):
    if isinstance(shape, DepthwiseShape):
        stride, padding, dilation, groups = shape.stride, shape.padding, shape.dilation, shape.c
    else:
        stride, padding, dilation, groups = 1, 0, 1, 1
    conv_args = ([stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], groups)

    def backward(mask):
        return torch.ops.aten.convolution_backward(gy, x, w, None, *conv_args, mask)

    return {
        "forward": lambda: torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, groups),
        "grad_input": lambda: backward([True, False, False])[0],
        "grad_weight": lambda: backward([False, True, False])[1],
    }


def run(shape, dtype, repeats, calls, torch, limit_gbs, rng):
    x, w, gy = _inputs(shape, dtype, torch, rng)
    itemsize = np.dtype(dtype).itemsize
    moved = (math.prod(x.shape) + math.prod(w.shape) + math.prod(gy.shape)) * itemsize
    if isinstance(shape, DepthwiseShape):
        flops = 2.0 * shape.k * shape.k * math.prod(gy.shape)
    else:
        flops = 2.0 * shape.n * shape.cin * shape.cout * shape.h * shape.w
    ours = _ours(shape, x, w, gy)
    theirs = _theirs(torch, shape, x, w, gy) if torch is not None else {}
    rows = []
    for op in OPS:
        funcs = {"numba_dsconv": ours[op]} | ({"torch": theirs[op]} if theirs else {})
        first = {}
        seconds = timed(funcs, repeats, calls, torch, first)
        ours_s = seconds["numba_dsconv"]
        row = {
            "shape": shape.name,
            "op": op,
            "dtype": np.dtype(dtype).name,
            "ms": ours_s * 1e3,
            "gb_s": moved / ours_s / 1e9,
            "tflop_s": flops / ours_s / 1e12,
            "copy_fraction": moved / ours_s / 1e9 / limit_gbs if limit_gbs else None,
            "first_call_s": first["numba_dsconv"],
        }
        if "torch" in seconds:
            row["torch_ms"] = seconds["torch"] * 1e3
            row["torch_tflop_s"] = flops / seconds["torch"] / 1e12
            row["speedup"] = seconds["torch"] / ours_s
        rows.append(row)
        print(_fmt(row), flush=True)
    return rows


def _fmt(row):
    line = f"{row['shape']:3s} {row['op']:11s} {row['dtype']:7s} {row['ms']:9.4f} ms {row['gb_s']:8.1f} GB/s"
    line += f" {row['tflop_s']:7.2f} TFLOP/s"
    if row["copy_fraction"] is not None:
        line += f" {100 * row['copy_fraction']:5.1f}% of copy"
    if "torch_ms" in row:
        line += f" | torch {row['torch_ms']:9.4f} ms  speedup {row['speedup']:5.2f}x"
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10, help="launches per timed round")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="float32")
    parser.add_argument("--batch", type=int, default=64, help="N of every shape (DESIGN.md's shapes, N = 64)")
    parser.add_argument("--json", help="write the rows and the card's description here")
    parser.add_argument("--smoke", action="store_true", help="two tiny shapes, no PyTorch (checks the script)")
    args = parser.parse_args(argv)

    from numba import cuda

    torch = None if args.smoke else _torch()
    if torch is not None:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    if args.smoke:
        shapes = [DepthwiseShape("S1", 2, 3, 9, 10, 3, 1, 2), PointwiseShape("S2", 2, 5, 4, 6, 7)]
        args.repeats, args.calls = 1, 1
    else:
        shapes = [_with_batch(s, args.batch) for s in DEPTHWISE + POINTWISE]
    name = getattr(cuda.get_current_device(), "name", "CUDA simulator")
    name = name.decode() if isinstance(name, bytes) else str(name)
    limit = copy_bandwidth(torch) if torch is not None else None
    header = {
        "device": name,
        "date": datetime.date.today().isoformat(),
        "copy_gb_s": limit,
        "torch": None if torch is None else f"{torch.__version__} (cuDNN {torch.backends.cudnn.version()}), TF32 off",
        "numba_cuda": _version("numba-cuda"),
        "simulator": os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
        "batch": args.batch,
    }
    print(json.dumps(header), flush=True)
    rng = np.random.default_rng(0)
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            rows += run(shape, dtype, args.repeats, args.calls, torch, limit, rng)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    return 0


def _with_batch(shape, n):
    fields = dict(shape.__dict__)
    fields["n"] = n
    return type(shape)(**fields)


def _version(dist):
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
