"""Slow, plain references that define what "correct" means, built on ``scipy.signal``, in float64.

Shape legend: N = batch, C = input channels, M = channel multiplier, Cout = C*M, KH/KW = kernel size.

The depthwise references never loop over pixels: a dilated kernel is the kernel with ``dilation - 1``
zeros inserted between its taps; padding is explicit zero padding; a strided convolution is the
stride-1 convolution subsampled. The gradients follow from the same primitives:

- ``grad_input``: the stride-1 gradient is the *full convolution* of the (zero-upsampled) output
  gradient with the dilated kernel, cropped back from the padded to the real input;
- ``grad_weight``: the *valid correlation* of the padded input with the upsampled output gradient,
  read at the dilated taps.

Every function takes the same arguments as its namesake in :mod:`numba_dsconv` and returns float64.
"""

import numpy as np
from scipy import signal

from . import geometry


def dilate_kernel(kernel, dilation):
    """Insert ``dilation - 1`` zeros between the taps of a 2-D kernel."""
    dh, dw = dilation
    kh, kw = kernel.shape
    out = np.zeros((dh * (kh - 1) + 1, dw * (kw - 1) + 1))
    out[::dh, ::dw] = kernel
    return out


def _pad(x, pad):
    top, bottom, left, right = pad
    return np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))


def _upsample(grad_y_plane, stride, valid_hw):
    """Place a strided output gradient back on the stride-1 grid of the 'valid' correlation."""
    up = np.zeros(valid_hw)
    out_h, out_w = grad_y_plane.shape
    up[: out_h * stride[0] : stride[0], : out_w * stride[1] : stride[1]] = grad_y_plane
    return up


def depthwise_conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """Compute :func:`numba_dsconv.depthwise_conv2d` the slow way; float64 result."""
    problem = geometry.depthwise_problem(np.shape(x), np.shape(weight), stride, padding, dilation)
    g, m = problem.geometry, problem.multiplier
    xp = _pad(x, g.pad)
    w = np.asarray(weight, np.float64)
    y = np.empty(problem.output_shape)
    for n in range(problem.batch):
        for o in range(problem.out_channels):
            full = signal.correlate2d(xp[n, o // m], dilate_kernel(w[o, 0], g.dilation), mode="valid")
            y[n, o] = full[:: g.stride[0], :: g.stride[1]]
    if bias is not None:
        y += np.asarray(bias, np.float64)[None, :, None, None]
    return y


def depthwise_conv2d_grad_input(grad_y, weight, input_shape, *, stride=1, padding=0, dilation=1):
    """Compute :func:`numba_dsconv.depthwise_conv2d_grad_input` the slow way; float64 result."""
    problem = geometry.depthwise_problem(tuple(input_shape), np.shape(weight), stride, padding, dilation)
    g, m = problem.geometry, problem.multiplier
    top, bottom, left, right = g.pad
    height, width = g.in_hw
    padded_hw = (height + top + bottom, width + left + right)
    kernel_hw = (g.dilation[0] * (g.kernel[0] - 1) + 1, g.dilation[1] * (g.kernel[1] - 1) + 1)
    valid_hw = (padded_hw[0] - kernel_hw[0] + 1, padded_hw[1] - kernel_hw[1] + 1)
    gy = np.asarray(grad_y, np.float64)
    w = np.asarray(weight, np.float64)
    dx = np.zeros(problem.input_shape)
    for n in range(problem.batch):
        for o in range(problem.out_channels):
            up = _upsample(gy[n, o], g.stride, valid_hw)
            dxp = signal.convolve2d(up, dilate_kernel(w[o, 0], g.dilation), mode="full")
            dx[n, o // m] += dxp[top : top + height, left : left + width]
    return dx


def depthwise_conv2d_grad_weight(grad_y, x, weight_shape, *, stride=1, padding=0, dilation=1):
    """Compute :func:`numba_dsconv.depthwise_conv2d_grad_weight` the slow way; float64 result."""
    problem = geometry.depthwise_problem(np.shape(x), tuple(weight_shape), stride, padding, dilation)
    g, m = problem.geometry, problem.multiplier
    xp = _pad(x, g.pad)
    kernel_hw = (g.dilation[0] * (g.kernel[0] - 1) + 1, g.dilation[1] * (g.kernel[1] - 1) + 1)
    valid_hw = (xp.shape[2] - kernel_hw[0] + 1, xp.shape[3] - kernel_hw[1] + 1)
    gy = np.asarray(grad_y, np.float64)
    dw = np.zeros(problem.weight_shape)
    for n in range(problem.batch):
        for o in range(problem.out_channels):
            up = _upsample(gy[n, o], g.stride, valid_hw)
            dilated = signal.correlate2d(xp[n, o // m], up, mode="valid")
            dw[o, 0] += dilated[:: g.dilation[0], :: g.dilation[1]]
    return dw


def pointwise_conv2d(x, weight, bias=None):
    """Compute :func:`numba_dsconv.pointwise_conv2d` as a 1x1 ``correlate2d`` per channel pair."""
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    cout, cin = w.shape[:2]
    n = x.shape[0]
    y = np.zeros((n, cout) + x.shape[2:])
    for i in range(n):
        for o in range(cout):
            for c in range(cin):
                y[i, o] += signal.correlate2d(x[i, c], w[o, c].reshape(1, 1), mode="valid")
    if bias is not None:
        y += np.asarray(bias, np.float64)[None, :, None, None]
    return y


def pointwise_conv2d_grad_input(grad_y, weight):
    """Compute :func:`numba_dsconv.pointwise_conv2d_grad_input` as the transposed channel mix."""
    w = np.asarray(weight, np.float64)
    return pointwise_conv2d(grad_y, w.reshape(w.shape[:2]).T)


def pointwise_conv2d_grad_weight(grad_y, x, weight_shape=None):
    """Compute :func:`numba_dsconv.pointwise_conv2d_grad_weight` one channel pair at a time."""
    gy = np.asarray(grad_y, np.float64)
    x = np.asarray(x, np.float64)
    cout, cin = gy.shape[1], x.shape[1]
    dw = np.zeros((cout, cin))
    for o in range(cout):
        for c in range(cin):
            dw[o, c] = np.sum(gy[:, o] * x[:, c])
    return dw.reshape(weight_shape if weight_shape is not None else (cout, cin, 1, 1))


def conv2d_grad_bias(grad_y):
    """Compute :func:`numba_dsconv.conv2d_grad_bias` with NumPy's float64 sum."""
    return np.asarray(grad_y, np.float64).sum(axis=(0, 2, 3))
