"""Run every numba_dsconv kernel once and print its error against the scipy.signal reference.

    python examples/demo.py [--dtype float32|float64] [--seed N]

A small depthwise separable block (dilated depthwise 3x3, channel multiplier 2, stride 2, "same"
padding, then a pointwise 1x1 convolution) is pushed forward and backward; each result is compared with
``numba_dsconv.reference``, and the first (compiling) and second calls are timed.
"""

import argparse
import time

import numpy as np

import numba_dsconv as nd
from numba_dsconv import reference


def relative_error(actual, expected):
    """Norm-wise relative error of ``actual`` against the float64 ``expected``."""
    scale = np.linalg.norm(expected)
    return float(np.linalg.norm(np.asarray(actual, np.float64) - expected) / (scale if scale else 1.0))


def timed(func):
    """Call ``func`` twice; return its result and the two wall times in seconds."""
    start = time.perf_counter()
    func()
    first = time.perf_counter() - start
    start = time.perf_counter()
    result = func()
    return result, first, time.perf_counter() - start


def main(argv=None):
    """Run the demo; return 0 when every kernel is within tolerance."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    rng = np.random.default_rng(args.seed)

    n, c, m, h, w, cout = 4, 8, 2, 33, 29, 12
    opts = dict(stride=2, padding="same", dilation=2)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    dw_weight = rng.standard_normal((c * m, 1, 3, 3)).astype(dtype)
    dw_bias = rng.standard_normal(c * m).astype(dtype)
    pw_weight = rng.standard_normal((cout, c * m, 1, 1)).astype(dtype)
    pw_bias = rng.standard_normal(cout).astype(dtype)

    y = nd.depthwise_conv2d(x, dw_weight, dw_bias, **opts)
    z = nd.pointwise_conv2d(y, pw_weight, pw_bias)
    grad_z = rng.standard_normal(z.shape).astype(dtype)
    grad_y = nd.pointwise_conv2d_grad_input(grad_z, pw_weight)

    checks = [
        (
            "depthwise_conv2d",
            lambda: nd.depthwise_conv2d(x, dw_weight, dw_bias, **opts),
            lambda: reference.depthwise_conv2d(x, dw_weight, dw_bias, **opts),
        ),
        (
            "depthwise_conv2d_grad_input",
            lambda: nd.depthwise_conv2d_grad_input(grad_y, dw_weight, x.shape, **opts),
            lambda: reference.depthwise_conv2d_grad_input(grad_y, dw_weight, x.shape, **opts),
        ),
        (
            "depthwise_conv2d_grad_weight",
            lambda: nd.depthwise_conv2d_grad_weight(grad_y, x, dw_weight.shape, **opts),
            lambda: reference.depthwise_conv2d_grad_weight(grad_y, x, dw_weight.shape, **opts),
        ),
        (
            "pointwise_conv2d",
            lambda: nd.pointwise_conv2d(y, pw_weight, pw_bias),
            lambda: reference.pointwise_conv2d(y, pw_weight, pw_bias),
        ),
        (
            "pointwise_conv2d_grad_input",
            lambda: nd.pointwise_conv2d_grad_input(grad_z, pw_weight),
            lambda: reference.pointwise_conv2d_grad_input(grad_z, pw_weight),
        ),
        (
            "pointwise_conv2d_grad_weight",
            lambda: nd.pointwise_conv2d_grad_weight(grad_z, y),
            lambda: reference.pointwise_conv2d_grad_weight(grad_z, y),
        ),
        ("conv2d_grad_bias", lambda: nd.conv2d_grad_bias(grad_z), lambda: reference.conv2d_grad_bias(grad_z)),
    ]
    print(
        f"numba_dsconv {nd.__version__}: x {x.shape} {dtype}, depthwise 3x3 x{m} {opts} -> y {y.shape}, "
        f"pointwise -> z {z.shape}"
    )
    print(f"{'kernel':<30} {'rel. error':>11} {'first call':>11} {'next call':>10}")
    worst = 0.0
    for name, ours, ref in checks:
        result, first, second = timed(ours)
        err = relative_error(result, ref())
        worst = max(worst, err)
        print(f"{name:<30} {err:11.2e} {first * 1e3:9.1f}ms {second * 1e3:8.2f}ms")
    verdict = "OK" if worst <= tolerance else "FAILED"
    print(f"largest relative error {worst:.2e} (tolerance {tolerance:.0e}): {verdict}")
    return 0 if worst <= tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
