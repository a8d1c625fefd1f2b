"""Depthwise 2-D convolution on the CPU: forward, gradient with respect to the input and to the weight.

Shape legend: N = batch, C = input channels, M = channel multiplier (output channel ``o`` reads input
channel ``o // M``), H/W = input size, KH/KW = kernel size, Ho/Wo = output size.

Each kernel works row by row: for one output row and one kernel tap, the input columns it reads form a
strided slice of one input row, so the inner loop is an ``axpy`` (forward, grad-input) or a ``dot``
(grad-weight) over contiguous memory when the stride is 1. Work is split over (image, channel) planes,
and every plane is written by exactly one thread: no atomics, no races, the same result on every run.
"""

import numpy as np
from numba import prange

from .. import geometry
from ._arrays import as_host_array
from ._jit import axpy, dot, kernel, valid_range


@kernel
def _forward_kernel(x, w, b, sh, sw, dh, dw, pad_top, pad_left, y):
    """y[n, o] = b[o] + correlate(x[n, o // M], w[o]); x (N, C, H, W), w (C*M, KH, KW), y (N, C*M, Ho, Wo)."""
    n_batch, channels, height, width = x.shape
    out_channels, kh_size, kw_size = w.shape
    multiplier = out_channels // channels
    out_h, out_w = y.shape[2], y.shape[3]
    for task in prange(n_batch * out_channels):
        n = task // out_channels
        o = task % out_channels
        x_plane = x[n, o // multiplier]
        y_plane = y[n, o]
        for ho in range(out_h):
            y_row = y_plane[ho]
            y_row[:] = b[o]
            for kh in range(kh_size):
                hi = ho * sh - pad_top + kh * dh
                if hi < 0 or hi >= height:
                    continue
                x_row = x_plane[hi]
                for kw in range(kw_size):
                    offset = kw * dw - pad_left
                    lo, hi_w = valid_range(offset, sw, width, out_w)
                    if lo == hi_w:
                        continue
                    start = lo * sw + offset
                    axpy(y_row[lo:hi_w], w[o, kh, kw], x_row[start : start + (hi_w - lo - 1) * sw + 1 : sw])


@kernel
def _grad_input_kernel(gy, w, sh, sw, dh, dw, pad_top, pad_left, dx):
    """dx[n, c] = sum over m of the transposed correlation of gy[n, c*M + m] with w[c*M + m]."""
    n_batch, channels, height, width = dx.shape
    out_channels, kh_size, kw_size = w.shape
    multiplier = out_channels // channels
    out_h, out_w = gy.shape[2], gy.shape[3]
    for task in prange(n_batch * channels):
        n = task // channels
        c = task % channels
        dx_plane = dx[n, c]
        dx_plane[:] = 0
        # Scatter into this thread's own input plane; the order of the additions is fixed.
        for m in range(multiplier):
            o = c * multiplier + m
            gy_plane = gy[n, o]
            for ho in range(out_h):
                gy_row = gy_plane[ho]
                for kh in range(kh_size):
                    hi = ho * sh - pad_top + kh * dh
                    if hi < 0 or hi >= height:
                        continue
                    dx_row = dx_plane[hi]
                    for kw in range(kw_size):
                        offset = kw * dw - pad_left
                        lo, hi_w = valid_range(offset, sw, width, out_w)
                        if lo == hi_w:
                            continue
                        start = lo * sw + offset
                        axpy(dx_row[start : start + (hi_w - lo - 1) * sw + 1 : sw], w[o, kh, kw], gy_row[lo:hi_w])


@kernel
def _grad_weight_partial_kernel(gy, x, sh, sw, dh, dw, pad_top, pad_left, partial):
    """partial[n, o, kh, kw] = sum over (ho, wo) of gy[n, o, ho, wo] * x[n, o // M, hi, wi], in float64."""
    n_batch, channels, height, width = x.shape
    out_channels, kh_size, kw_size = partial.shape[1], partial.shape[2], partial.shape[3]
    multiplier = out_channels // channels
    out_h, out_w = gy.shape[2], gy.shape[3]
    for task in prange(n_batch * out_channels):
        n = task // out_channels
        o = task % out_channels
        x_plane = x[n, o // multiplier]
        gy_plane = gy[n, o]
        for kh in range(kh_size):
            for kw in range(kw_size):
                offset = kw * dw - pad_left
                lo, hi_w = valid_range(offset, sw, width, out_w)
                start = lo * sw + offset
                stop = start + (hi_w - lo - 1) * sw + 1
                # Each row's dot runs in the data's dtype (vectorised); rows add up in float64, so the
                # float32 result stays accurate for large images.
                acc = 0.0
                if lo < hi_w:
                    for ho in range(out_h):
                        hi = ho * sh - pad_top + kh * dh
                        if hi < 0 or hi >= height:
                            continue
                        acc += dot(gy_plane[ho, lo:hi_w], x_plane[hi, start:stop:sw])
                partial[n, o, kh, kw] = acc


@kernel
def _sum_batch_kernel(partial, out):
    """out[o, kh, kw] = sum over n of partial[n, o, kh, kw], in a fixed order."""
    n_batch, out_channels = partial.shape[0], partial.shape[1]
    for o in prange(out_channels):
        acc = partial[0, o].copy()
        for n in range(1, n_batch):
            acc += partial[n, o]
        out[o] = acc


def _kernel_args(problem):
    g = problem.geometry
    return (g.stride[0], g.stride[1], g.dilation[0], g.dilation[1], g.pad[0], g.pad[2])


def depthwise_conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """Depthwise 2-D cross-correlation with optional channel multiplier, stride, padding and dilation.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Input, float32 or float64.
    weight : ndarray, shape (C*M, 1, KH, KW)
        One filter per output channel; output channel ``o`` reads input channel ``o // M``.
    bias : ndarray, shape (C*M,), optional
    stride, dilation : int or (int, int)
        Each >= 1.
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same"
        Zero padding; ``"same"`` follows TensorFlow's rule (asymmetric where it must be).

    Returns
    -------
    y : ndarray, shape (N, C*M, Ho, Wo)
        Same dtype as ``x``. ``Ho = (H + pad_top + pad_bottom - dilation_h*(KH-1) - 1) // stride_h + 1``.

    Notes
    -----
    ``y[n, o, i, j] = bias[o] + sum_{a,b} weight[o, 0, a, b] *
    x_padded[n, o // M, i*stride_h + a*dilation_h, j*stride_w + b*dilation_w]``.
    """
    x = as_host_array("x", x)
    weight = as_host_array("weight", weight)
    bias = None if bias is None else as_host_array("bias", bias)
    dtype = geometry.check_same_dtype("x", x, weight=weight, bias=bias)
    problem = geometry.depthwise_problem(x.shape, weight.shape, stride, padding, dilation)
    geometry.check_bias(bias, problem.out_channels)
    w = np.ascontiguousarray(weight).reshape(problem.out_channels, *problem.geometry.kernel)
    b = np.zeros(problem.out_channels, dtype) if bias is None else np.ascontiguousarray(bias)
    y = np.empty(problem.output_shape, dtype)
    _forward_kernel(np.ascontiguousarray(x), w, b, *_kernel_args(problem), y)
    return y


def depthwise_conv2d_grad_input(grad_y, weight, input_shape, *, stride=1, padding=0, dilation=1):
    """Gradient of :func:`depthwise_conv2d` with respect to its input.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C*M, Ho, Wo)
        Gradient of the loss with respect to the output.
    weight : ndarray, shape (C*M, 1, KH, KW)
    input_shape : (N, C, H, W)
        Shape of the forward pass's input (several input sizes map to one output size under stride > 1).
    stride, padding, dilation
        As in the forward pass.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
        Same dtype as ``grad_y``.
    """
    grad_y = as_host_array("grad_y", grad_y)
    weight = as_host_array("weight", weight)
    dtype = geometry.check_same_dtype("grad_y", grad_y, weight=weight)
    input_shape = geometry.check_shape_argument("input_shape", input_shape, 4, "(N, C, H, W)")
    problem = geometry.depthwise_problem(input_shape, weight.shape, stride, padding, dilation, input_name="input_shape")
    geometry.check_shape("grad_y", grad_y.shape, problem.output_shape, "(N, C*M, Ho, Wo) for this geometry")
    w = np.ascontiguousarray(weight).reshape(problem.out_channels, *problem.geometry.kernel)
    grad_x = np.empty(problem.input_shape, dtype)
    _grad_input_kernel(np.ascontiguousarray(grad_y), w, *_kernel_args(problem), grad_x)
    return grad_x


def depthwise_conv2d_grad_weight(grad_y, x, weight_shape, *, stride=1, padding=0, dilation=1):
    """Gradient of :func:`depthwise_conv2d` with respect to its weight.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C*M, Ho, Wo)
    x : ndarray, shape (N, C, H, W)
        The forward pass's input.
    weight_shape : (C*M, 1, KH, KW)
    stride, padding, dilation
        As in the forward pass.

    Returns
    -------
    grad_weight : ndarray, shape (C*M, 1, KH, KW)
        Same dtype as ``x``. Sums are accumulated in float64 and summed over the batch in a fixed order.
    """
    grad_y = as_host_array("grad_y", grad_y)
    x = as_host_array("x", x)
    dtype = geometry.check_same_dtype("x", x, grad_y=grad_y)
    weight_shape = geometry.check_shape_argument("weight_shape", weight_shape, 4, "(C*M, 1, KH, KW)")
    problem = geometry.depthwise_problem(x.shape, weight_shape, stride, padding, dilation)
    geometry.check_shape("grad_y", grad_y.shape, problem.output_shape, "(N, C*M, Ho, Wo) for this geometry")
    g = problem.geometry
    partial = np.empty((problem.batch, problem.out_channels) + g.kernel, np.float64)
    _grad_weight_partial_kernel(np.ascontiguousarray(grad_y), np.ascontiguousarray(x), *_kernel_args(problem), partial)
    total = np.empty((problem.out_channels,) + g.kernel, np.float64)
    _sum_batch_kernel(partial, total)
    return total.astype(dtype).reshape(problem.weight_shape)
