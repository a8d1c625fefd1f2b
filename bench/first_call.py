"""First-call latency of every kernel in a fresh process, with a cold and with a warm on-disk cache.

    python -m bench.first_call [--dtype float32]

Each measurement starts a new Python process with its own ``NUMBA_CACHE_DIR``: "cold" on an empty cache
(Numba compiles), "warm" on the cache the cold run left (Numba loads). It reports the import time and, per
kernel, the time of its first call on a small input (compile or load, plus the tiny computation).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import numba_dsconv as nd
timings = {"import numba_dsconv": time.perf_counter() - t0}
dtype = np.dtype(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 4, 9, 9)).astype(dtype)
w = rng.standard_normal((8, 1, 3, 3)).astype(dtype)
pw = rng.standard_normal((5, 8, 1, 1)).astype(dtype)
gy = rng.standard_normal((2, 8, 5, 5)).astype(dtype)
gz = rng.standard_normal((2, 5, 5, 5)).astype(dtype)
y = rng.standard_normal((2, 8, 5, 5)).astype(dtype)
x2 = rng.standard_normal((2, 8, 5, 5)).astype(dtype)
w2 = rng.standard_normal((8, 1, 3, 3)).astype(dtype)
x3 = rng.standard_normal((2, 4, 20, 20)).astype(dtype)
g3 = rng.standard_normal((2, 8, 20, 20)).astype(dtype)
x4 = rng.standard_normal((2, 4, 40, 40)).astype(dtype)
g4 = rng.standard_normal((2, 8, 40, 40)).astype(dtype)
w5 = rng.standard_normal((8, 1, 5, 5)).astype(dtype)
g5 = rng.standard_normal((2, 8, 4, 4)).astype(dtype)
x6 = rng.standard_normal((2, 4, 12, 12)).astype(dtype)
x7 = rng.standard_normal((2, 64, 5, 5)).astype(dtype)
g7 = rng.standard_normal((2, 4, 5, 5)).astype(dtype)
lanes = 64 // dtype.itemsize
x8 = rng.standard_normal((2, 8, 8, 8)).astype(dtype)
w12 = rng.standard_normal((12, 8, 1, 1)).astype(dtype)
x9 = rng.standard_normal((2, 8, 5, 7)).astype(dtype)
w8 = rng.standard_normal((8, 8, 1, 1)).astype(dtype)
g8 = rng.standard_normal((2, 8, 5, 5)).astype(dtype)
x10 = rng.standard_normal((2, 2 * lanes, 5, 5)).astype(dtype)
x11 = rng.standard_normal((2, lanes, 5, 5)).astype(dtype)
x12 = rng.standard_normal((2, 4, 20, 20)).astype(dtype)
x13 = rng.standard_normal((2, 4, 7, 7)).astype(dtype)
x14 = rng.standard_normal((2, 4, 8, 40)).astype(dtype)
w4 = rng.standard_normal((4, 1, 3, 3)).astype(dtype)
o = dict(stride=2, padding=1, dilation=1)
calls = [
    # 3x3 at stride 2: the strided-row kernels, on the planes in place (multiplier 2).
    ("depthwise_conv2d", lambda: nd.depthwise_conv2d(x, w, **o)),
    ("depthwise_conv2d_grad_input", lambda: nd.depthwise_conv2d_grad_input(gy, w, x.shape, **o)),
    ("depthwise_conv2d_grad_weight", lambda: nd.depthwise_conv2d_grad_weight(gy, x, w.shape, **o)),
    # 3x3 at stride 2, multiplier 1: the split-column forward.
    ("depthwise_conv2d, split columns", lambda: nd.depthwise_conv2d(x12, w4, **o)),
    # A 5x5 kernel at stride 2: the phase copies.
    ("depthwise_conv2d, phase copies", lambda: nd.depthwise_conv2d(x, w5, **o)),
    ("depthwise_conv2d_grad_input, phase copies", lambda: nd.depthwise_conv2d_grad_input(g5, w5, x.shape, **o)),
    ("depthwise_conv2d_grad_weight, phase copies", lambda: nd.depthwise_conv2d_grad_weight(g5, x, w5.shape, **o)),
    ("pointwise_conv2d", lambda: nd.pointwise_conv2d(y, pw, np.ones(5, dtype))),
    ("pointwise_conv2d_grad_input", lambda: nd.pointwise_conv2d_grad_input(gz, pw)),
    ("pointwise_conv2d_grad_weight", lambda: nd.pointwise_conv2d_grad_weight(gz, y)),
    ("conv2d_grad_bias", lambda: nd.conv2d_grad_bias(gz)),
    # 12 output channels over 64 pixels, 8 over 35: the broadcast products in blocks of 4x4 and 8x2 vectors.
    ("pointwise_conv2d, broadcast 4x4", lambda: nd.pointwise_conv2d(x8, w12)),
    ("pointwise_conv2d, broadcast 8x2", lambda: nd.pointwise_conv2d(x9, w8)),
    # 64 input channels to 4 outputs, two vectors' worth to 8, one vector's: the outer products' blocks.
    ("pointwise_conv2d_grad_weight, outer 4x4", lambda: nd.pointwise_conv2d_grad_weight(g7, x7)),
    ("pointwise_conv2d_grad_weight, outer 8x2", lambda: nd.pointwise_conv2d_grad_weight(g8, x10)),
    ("pointwise_conv2d_grad_weight, outer 8x1", lambda: nd.pointwise_conv2d_grad_weight(g8, x11)),
    # Stride 1, size kept, small planes: the channel-run kernels.
    ("depthwise_conv2d, runs", lambda: nd.depthwise_conv2d(x2, w2, padding=1)),
    ("depthwise_conv2d_grad_input, runs", lambda: nd.depthwise_conv2d_grad_input(x2, w2, x2.shape, padding=1)),
    ("depthwise_conv2d_grad_weight, runs", lambda: nd.depthwise_conv2d_grad_weight(x2, x2, w2.shape, padding=1)),
    # A 3x3 kernel at stride 1, size kept, multiplier 1, rows of 40: the row pairs (in float64 too).
    ("depthwise_conv2d, row pairs", lambda: nd.depthwise_conv2d(x14, w4, padding=1)),
    ("depthwise_conv2d_grad_input, row pairs", lambda: nd.depthwise_conv2d_grad_input(x14, w4, x14.shape, padding=1)),
    ("depthwise_conv2d_grad_weight, row pairs", lambda: nd.depthwise_conv2d_grad_weight(x14, x14, w4.shape, padding=1)),
    # Rows of 20: chains in float32 (row pairs in float64).
    ("depthwise_conv2d, chains", lambda: nd.depthwise_conv2d(x12, w4, padding=1)),
    ("depthwise_conv2d_grad_weight, chains", lambda: nd.depthwise_conv2d_grad_weight(x12, x12, w4.shape, padding=1)),
    # Rows of 7: two planes to a vector in float32, chains in float64.
    ("depthwise_conv2d, 7 wide", lambda: nd.depthwise_conv2d(x13, w4, padding=1)),
    ("depthwise_conv2d_grad_weight, 7 wide", lambda: nd.depthwise_conv2d_grad_weight(x13, x13, w4.shape, padding=1)),
    # Stride 1, size kept, planes larger than 16x16: the masked-copy kernels (multiplier 2: filters in pairs).
    ("depthwise_conv2d, masked", lambda: nd.depthwise_conv2d(x3, w, padding=1)),
    ("depthwise_conv2d_grad_input, masked", lambda: nd.depthwise_conv2d_grad_input(g3, w, x3.shape, padding=1)),
    ("depthwise_conv2d_grad_weight, masked", lambda: nd.depthwise_conv2d_grad_weight(g3, x3, w.shape, padding=1)),
    # Stride 1, size kept, a rim of at most a tenth of the plane: the in-place kernels.
    ("depthwise_conv2d, in place", lambda: nd.depthwise_conv2d(x4, w, padding=1)),
    ("depthwise_conv2d_grad_input, in place", lambda: nd.depthwise_conv2d_grad_input(g4, w, x4.shape, padding=1)),
    ("depthwise_conv2d_grad_weight, in place", lambda: nd.depthwise_conv2d_grad_weight(g4, x4, w.shape, padding=1)),
    # A 5x5 kernel at stride 1 (forward only): the channel-block kernel.
    ("depthwise_conv2d, channel blocks", lambda: nd.depthwise_conv2d(x6, w5, padding=2)),
    # The separable convolution runs the kernels above: after them its first call compiles nothing.
    ("separable_conv2d", lambda: nd.separable_conv2d(x, w, pw, **o)),
    ("separable_conv2d_backward", lambda: nd.separable_conv2d_backward(gz, x, w, pw, **o)),
]
for name, call in calls:
    t0 = time.perf_counter()
    call()
    timings[name] = time.perf_counter() - t0
print(json.dumps(timings))
"""


def run_child(dtype, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", CHILD, dtype], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    """Print the cold and warm first-call latencies; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--json", help="also write the timings to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        cold = run_child(args.dtype, cache)
        warm = run_child(args.dtype, cache)
    print(f"first call in a fresh process, {args.dtype} (seconds)")
    print(f"{'':44} {'cold cache':>11} {'warm cache':>11}")
    for name in cold:
        print(f"{name:44} {cold[name]:11.3f} {warm[name]:11.3f}")
    kernels = [k for k in cold if k != "import numba_dsconv"]
    print(f"{'all kernels':44} {sum(cold[k] for k in kernels):11.3f} {sum(warm[k] for k in kernels):11.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"dtype": args.dtype, "cold": cold, "warm": warm}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
