"""Depthwise separable convolution on the GPU: the depthwise kernel, then the pointwise one.

Shape legend: N = batch, C = input channels, M = channel multiplier, D = C*M, F = output channels.

The same functions, arguments, results and errors as ``numba_dsconv.cpu.separable``, computed as the
composition of this backend's kernels: on the GPU the intermediate (N, D, Ho, Wo) activation is written to
device memory between the two (the CPU backend's fusion keeps it in cache; no fused GPU kernel yet). The
depthwise bias gradient is ``pointwise_weight.T @ grad_pointwise_bias`` in float64, as on the CPU.
"""

import numpy as np
from numba import cuda, float64

from .. import geometry
from ..cpu.separable import SeparableGrads
from ._arrays import as_device_array, as_stream, empty, optional_device_array
from ._reduce import SUM_X, channel_sums
from .depthwise import depthwise_conv2d, depthwise_conv2d_grad_input, depthwise_conv2d_grad_weight
from .launch import blocks
from .pointwise import pointwise_conv2d, pointwise_conv2d_grad_input, pointwise_conv2d_grad_weight

# Threads per block of the bias gradients (one thread per depthwise and per output channel).
BIAS_THREADS = 128


def _operands(x, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, stride, padding, dilation,
              stream):
    arrays = (
        as_device_array("x", x, stream),
        as_device_array("depthwise_weight", depthwise_weight, stream),
        as_device_array("pointwise_weight", pointwise_weight, stream),
        optional_device_array("depthwise_bias", depthwise_bias, stream),
        optional_device_array("pointwise_bias", pointwise_bias, stream),
    )
    problem, _ = geometry.separable_problem(*arrays, stride, padding, dilation)
    return problem, arrays


def separable_conv2d(
    x, depthwise_weight, pointwise_weight, depthwise_bias=None, pointwise_bias=None, *, stride=1, padding=0,
    dilation=1, stream=None,
):  # fmt: skip
    """Depthwise then pointwise convolution on the GPU; see :func:`numba_dsconv.cpu.separable_conv2d`.

    Returns
    -------
    y : numba.cuda.DeviceNDArray, shape (N, F, Ho, Wo)
    """
    stream = as_stream(stream)
    _, (x, dw, pw, db, pb) = _operands(x, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias,
                                       stride, padding, dilation, stream)
    h = depthwise_conv2d(x, dw, db, stride=stride, padding=padding, dilation=dilation, stream=stream)
    return pointwise_conv2d(h, pw, pb, stream=stream)


@cuda.jit(cache=True)
def _bias_grads_kernel(pw, sums, grad_db, grad_pb):
    """grad_db[d] = sum over f of pw[f, d] * sums[f] in float64, grad_pb[f] = sums[f], each cast on store.

    pw (F, D), sums (F,) float64 (grad_y summed per channel). Consecutive threads read consecutive
    ``pw[f, d]``: coalesced.
    """
    i = cuda.grid(1)
    if i < grad_db.shape[0]:
        acc = float64(0.0)
        for f in range(pw.shape[0]):
            acc += float64(pw[f, i]) * sums[f]
        grad_db[i] = acc
    if i < grad_pb.shape[0]:
        grad_pb[i] = sums[i]


def _bias_grads(grad_y, pw, features, depth, dtype, stream):
    """Return the depthwise bias gradient (D,) and the pointwise one (F,), from one float64 sum of grad_y.

    The depthwise one is ``pointwise_weight.T @ grad_pointwise_bias`` in float64, as on the CPU. Summing
    ``dh = pointwise_weight.T @ grad_y`` instead adds up the float32 rounding of every ``dh`` value: on a
    bias gradient that is a small sum of large terms of both signs (7.5e-3 from terms near 5) it left a
    relative error of 2.9e-5. The pointwise one is the same float64 sums cast, as ``conv2d_grad_bias``
    writes them.
    """
    n, _, height, width = grad_y.shape
    sums = channel_sums(grad_y.reshape(n, features, height * width), SUM_X, np.float64, stream)[0]
    grad_db, grad_pb = empty((depth,), dtype, stream), empty((features,), dtype, stream)
    _bias_grads_kernel[blocks(max(depth, features), BIAS_THREADS), BIAS_THREADS, stream](
        pw.reshape(features, depth), sums, grad_db, grad_pb
    )
    return grad_db, grad_pb


def separable_conv2d_backward(
    grad_y, x, depthwise_weight, pointwise_weight, depthwise_bias=None, *, stride=1, padding=0, dilation=1,
    need_input_grad=True, depthwise_output=None, stream=None,
):  # fmt: skip
    """Gradients of :func:`separable_conv2d` on the GPU; see :func:`numba_dsconv.cpu.separable_conv2d_backward`.

    Returns
    -------
    SeparableGrads
        Of device arrays (``grad_input`` None when ``need_input_grad`` is false).
    """
    stream = as_stream(stream)
    problem, (x, dw, pw, db, _) = _operands(x, depthwise_weight, pointwise_weight, depthwise_bias, None, stride,
                                            padding, dilation, stream)
    grad_y = as_device_array("grad_y", grad_y, stream)
    geometry.check_same_dtype("x", x, grad_y=grad_y)
    geometry.check_shape("grad_y", grad_y.shape, problem.output_shape, "(N, F, Ho, Wo) for this geometry")
    options = {"stride": stride, "padding": padding, "dilation": dilation, "stream": stream}
    if depthwise_output is None:
        h = depthwise_conv2d(x, dw, db, **options)
    else:
        h = as_device_array("depthwise_output", depthwise_output, stream)
        geometry.check_same_dtype("x", x, depthwise_output=h)
        geometry.check_shape("depthwise_output", h.shape, problem.depthwise.output_shape,
                             "(N, C*M, Ho, Wo): the depthwise convolution's output")
    dh = pointwise_conv2d_grad_input(grad_y, pw, stream=stream)
    grad_db, grad_pb = _bias_grads(grad_y, pw, problem.features, problem.depthwise.out_channels, x.dtype, stream)
    return SeparableGrads(
        depthwise_conv2d_grad_input(dh, dw, x.shape, **options) if need_input_grad else None,
        depthwise_conv2d_grad_weight(dh, x, dw.shape, **options),
        grad_db,
        pointwise_conv2d_grad_weight(grad_y, h, pw.shape, stream=stream),
        grad_pb,
    )
