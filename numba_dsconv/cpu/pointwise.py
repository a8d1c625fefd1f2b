"""Pointwise (1x1) convolution on the CPU: a channel-mixing matrix product per image.

Shape legend: N = batch, Cin/Cout = input/output channels, P = H*W pixels.

``y[n] = weight @ x[n] + bias`` with ``x[n]`` viewed as a (Cin, P) matrix. The products run on register
blocks of AVX-512 vectors where the channel and pixel counts suit them and the BLAS has no AVX-512 kernels
of its own (``_blas.register_blocks``): 1.5-2.7x faster than OpenBLAS's AVX2 kernels at the DESIGN.md
shapes, built for large square products where here two of the three sides are channel counts. The forward
and input gradient in ``_broadcast``, the weight gradient in ``_outer`` (whose widest blocks run whatever
the BLAS). The other products go to BLAS, in one of two ways:

- *per image in Numba's threads* (``np.dot`` inside a ``prange`` over images, one single-threaded BLAS call
  per image) when the BLAS that Numba calls runs one thread (``OPENBLAS_NUM_THREADS=1``, as training sets:
  see the README). The small products of a training batch (a 128x128 weight times 49 pixels) gain nothing
  from BLAS threads inside one product, and twice as much from two products at once.
- *batched through NumPy's* ``matmul`` otherwise, each product using BLAS's own threads: calling a
  multi-threaded BLAS from several threads at once serialises them (``_blas``).

The choice depends on the BLAS configuration only, never on Numba's thread count, and each way sums the
batch in a fixed order: results are identical run to run and for any number of threads.

NaN and Inf propagate silently, as in the depthwise kernels: NumPy's floating-point warnings are switched
off around the products (``_quiet``), so a user's ``np.seterr``/``-W error`` does not turn a NaN into an
exception in one half of a separable convolution only.
"""

import numpy as np
from numba import prange

from .. import geometry
from . import _blas, _broadcast, _outer
from ._arrays import as_host_array
from ._jit import kernel

# None: per-image products in Numba's threads exactly when Numba's BLAS runs one thread; True/False force
# one way (the tests run both). Read at every call.
PER_IMAGE_PRODUCTS = None
# The batch of a weight gradient is summed in this many fixed slices (then the slices in order), so the
# result does not depend on the thread count.
GRAD_WEIGHT_SLICES = 8


def _per_image():
    if PER_IMAGE_PRODUCTS is not None:
        return bool(PER_IMAGE_PRODUCTS)
    return _blas.threads() == 1


@kernel
def _image_products_kernel(a, b, out):
    """out[n] = a @ b[n] for every image n: a (R, K), b (N, K, P), out (N, R, P); one BLAS call per image."""
    for n in prange(b.shape[0]):
        np.dot(a, b[n], out[n])


@kernel
def _batch_products_kernel(gy, x, partial):
    """partial[k] = sum over the images n of slice k of gy[n] @ x[n].T; gy (N, Cout, P), x (N, Cin, P)."""
    n_batch, nslices = gy.shape[0], partial.shape[0]
    for k in prange(nslices):
        acc = partial[k]
        product = np.empty(acc.shape, acc.dtype)
        acc[:] = 0
        for n in range(k * n_batch // nslices, (k + 1) * n_batch // nslices):
            np.dot(gy[n], x[n].T, product)
            acc += product


@kernel
def _add_bias_kernel(y, b):
    """y[n, o, :] += b[o] for y (N, Cout, P)."""
    n_batch, out_channels = y.shape[0], y.shape[1]
    for task in prange(n_batch * out_channels):
        row = y[task // out_channels, task % out_channels]
        row += b[task % out_channels]


@kernel
def _bias_grad_kernel(gy, out):
    """out[o] = sum over (n, p) of gy[n, o, p], every addition in float64.

    A bias gradient can be a small sum of large terms of both signs (a separable convolution's
    ``grad_pointwise_bias`` over a few pixels): with row sums in float32, the rounding of terms near 1
    (about 1e-7) left a relative error of 3e-4 on a sum of 15 terms that came to -3.7e-4.
    """
    n_batch, channels = gy.shape[0], gy.shape[1]
    for o in prange(channels):
        acc = 0.0
        for n in range(n_batch):
            row = gy[n, o]
            for j in range(row.shape[0]):
                acc += row[j]
        out[o] = acc


def _quiet():
    return np.errstate(all="ignore")


def _weight_matrix(weight, shape):
    """Return the weight as a C-contiguous (Cout, Cin) matrix."""
    return np.ascontiguousarray(weight.reshape(shape))


def _as_images(name, array):
    """Check an NCHW array; return it C-contiguous as (N, C, H*W) and its shape."""
    shape = geometry.check_rank(name, array.shape, 4, "(N, C, H, W)")
    return np.ascontiguousarray(array).reshape(shape[0], shape[1], shape[2] * shape[3]), shape


def pointwise_conv2d(x, weight, bias=None):
    """Pointwise (1x1) convolution: mixes channels at every pixel.

    Parameters
    ----------
    x : ndarray, shape (N, Cin, H, W)
    weight : ndarray, shape (Cout, Cin, 1, 1) or (Cout, Cin)
    bias : ndarray, shape (Cout,), optional

    Returns
    -------
    y : ndarray, shape (N, Cout, H, W)
        ``y[n, o, h, w] = bias[o] + sum_c weight[o, c] * x[n, c, h, w]``; same dtype as ``x``.
    """
    x = as_host_array("x", x)
    weight = as_host_array("weight", weight)
    bias = None if bias is None else as_host_array("bias", bias)
    geometry.check_same_dtype("x", x, weight=weight, bias=bias)
    x3, (n, cin, h, w) = _as_images("x", x)
    wmat = _weight_matrix(weight, geometry.pointwise_weight_for_input(weight.shape, cin))
    geometry.check_bias(bias, wmat.shape[0])
    y = np.empty((n, wmat.shape[0], h * w), x3.dtype)
    products_into(wmat, x3, y)
    if bias is not None:
        _add_bias_kernel(y, np.ascontiguousarray(bias))
    return y.reshape(n, wmat.shape[0], h, w)


def products_into(a, b, out):
    """``out[n] = a @ b[n]`` for every image: a (R, K), b (N, K, P), out (N, R, P), all C-contiguous."""
    block = _broadcast.block_for(a.shape[0], b.shape[2], b.dtype)
    if block is not None:
        _broadcast.products_into(block, a, b, out)
    elif _per_image():
        _image_products_kernel(a, b, out)
    else:
        with _quiet():
            np.matmul(a, b, out=out)


def weight_products(gy, x):
    """``sum over n of gy[n] @ x[n].T`` (Cout, Cin) in the data's dtype, the batch summed in a fixed order."""
    block = _outer.block_for(gy.shape[1], x.shape[1], x.dtype)
    if block is not None:
        partial = np.empty((_outer.SLICES, gy.shape[1], x.shape[1]), x.dtype)
        _outer.weight_products_into(block, gy, x, partial)
        out = np.empty(partial.shape[1:], x.dtype)
        _outer.sum_slices_kernel(partial, out)
        return out
    if _per_image():
        partial = np.empty((GRAD_WEIGHT_SLICES, gy.shape[1], x.shape[1]), x.dtype)
        _batch_products_kernel(gy, x, partial)
        with _quiet():  # Inf + -Inf across slices is NaN, silently, as everywhere else
            return partial.sum(axis=0)
    with _quiet():
        # One batched product, then the batch summed in index order (deterministic).
        return np.matmul(gy, x.transpose(0, 2, 1)).sum(axis=0)


def pointwise_conv2d_grad_input(grad_y, weight):
    """Gradient of :func:`pointwise_conv2d` with respect to its input.

    Parameters
    ----------
    grad_y : ndarray, shape (N, Cout, H, W)
    weight : ndarray, shape (Cout, Cin, 1, 1) or (Cout, Cin)

    Returns
    -------
    grad_x : ndarray, shape (N, Cin, H, W)
        ``grad_x[n] = weight.T @ grad_y[n]``.
    """
    grad_y = as_host_array("grad_y", grad_y)
    weight = as_host_array("weight", weight)
    geometry.check_same_dtype("grad_y", grad_y, weight=weight)
    gy3, (n, cout, h, w) = _as_images("grad_y", grad_y)
    wmat = _weight_matrix(weight, geometry.pointwise_weight_for_grad(weight.shape, cout))
    grad_x = np.empty((n, wmat.shape[1], h * w), gy3.dtype)
    products_into(np.ascontiguousarray(wmat.T), gy3, grad_x)
    return grad_x.reshape(n, wmat.shape[1], h, w)


def pointwise_conv2d_grad_weight(grad_y, x, weight_shape=None):
    """Gradient of :func:`pointwise_conv2d` with respect to its weight.

    Parameters
    ----------
    grad_y : ndarray, shape (N, Cout, H, W)
    x : ndarray, shape (N, Cin, H, W)
    weight_shape : (Cout, Cin, 1, 1) or (Cout, Cin), optional
        Layout of the result; (Cout, Cin, 1, 1) when omitted.

    Returns
    -------
    grad_weight : ndarray, shape ``weight_shape``
        ``sum_n grad_y[n] @ x[n].T``, summed over the batch in a fixed order.
    """
    grad_y = as_host_array("grad_y", grad_y)
    x = as_host_array("x", x)
    geometry.check_same_dtype("x", x, grad_y=grad_y)
    weight_shape = geometry.pointwise_grad_weight_shape(grad_y.shape, x.shape, weight_shape)
    x3, _ = _as_images("x", x)
    gy3, _ = _as_images("grad_y", grad_y)
    return weight_products(gy3, x3).reshape(weight_shape)


def conv2d_grad_bias(grad_y):
    """Gradient of a convolution's bias: ``grad_y`` summed over batch, height and width.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C, H, W)

    Returns
    -------
    grad_bias : ndarray, shape (C,)
        Same dtype as ``grad_y``; accumulated in float64.
    """
    grad_y = as_host_array("grad_y", grad_y)
    dtype = geometry.check_dtype("grad_y", grad_y)
    gy3, shape = _as_images("grad_y", grad_y)
    out = np.empty(shape[1], np.float64)
    _bias_grad_kernel(gy3, out)
    return out.astype(dtype)
