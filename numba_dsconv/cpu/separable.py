"""Fused depthwise separable convolution on the CPU: depthwise then pointwise, a group of images at a time.

Shape legend: N = batch, C = input channels, M = channel multiplier, D = C*M depthwise channels, F = output
channels, H/W = input size, Ho/Wo = output size, T = KH*KW taps, G = images per group.

``separable_conv2d`` computes ``h = depthwise(x) + depthwise_bias`` and ``y = pointwise_weight @ h +
pointwise_bias`` group by group: the depthwise kernels (``depthwise``) write a group of G images' ``h`` into
one small buffer, the pointwise products (``pointwise``) turn it into those images' ``y``, and the buffer
serves the next group. G is chosen so that the buffer (about 4 MiB) stays in the last-level cache between
the two steps: the intermediate (N, D, Ho, Wo) activation is never allocated, never written to memory and
never read back from it, where a separate depthwise pass writes all of it and the pointwise pass reads it
again (at D3 + P2, 14 MiB each way). Where the whole intermediate fits half the last-level cache, the
forward takes the whole batch as one group instead (CACHED_SHARE): the cache holds it between the two steps
anyway, and every group costs two parallel calls.

``separable_conv2d_backward`` does the same for every gradient: per group it recomputes ``h``, computes
``dh = pointwise_weight.T @ grad_y`` into a second buffer, adds the group's pointwise weight gradient
``grad_y @ h.T`` and depthwise weight gradient, and writes the group's input gradient. Neither ``h`` nor
``dh`` exists in full. The depthwise bias gradient is ``pointwise_weight.T @ grad_pointwise_bias`` (the sum of
``dh``, taken after the product).

The pointwise products of a group run in Numba's threads: on register blocks where the channel counts
allow, else one BLAS call per image per thread, which is fast only when that BLAS runs one thread
(``OPENBLAS_NUM_THREADS=1``, as training sets; see ``pointwise``). With a multi-threaded BLAS the products
that go to BLAS run on BLAS's own threads, and alternating between its threads and Numba's at every group
would leave each pool spinning while the other works (a first version that alternated band by band took
600 ms at D3 + P2, against 4 ms): then the whole batch is one group, which is the two halves one after the
other.

Each image's values are computed by the same operations whatever the group, and the weight gradients are
summed group by group in a fixed order (groups depend on the shapes only): results do not depend on the
thread count and are identical run to run.
"""

import dataclasses
import os
from collections import namedtuple

import numpy as np

from .. import geometry
from ._arrays import as_host_array
from .depthwise import _flat_weight, forward_into, grad_input_into, grad_weight_sums
from .pointwise import _add_bias_kernel, _bias_grad_kernel, _per_image, _quiet, products_into, weight_products

# A group's intermediate activation holds about this many bytes, and at least MIN_GROUP_IMAGES images (so the
# products of a group keep two threads busy); IMAGES_PER_GROUP, when set, fixes the group (the tests force
# partial last groups). All are read at every call.
GROUP_BYTES = 4 << 20
MIN_GROUP_IMAGES = 2
IMAGES_PER_GROUP = None


def last_level_cache_bytes(root="/sys/devices/system/cpu/cpu0/cache"):
    """Return the size of the CPU's highest cache level from Linux's sysfs, or 0 where it cannot be read."""
    best_level, size = 0, 0
    try:
        entries = os.listdir(root)
    except OSError:
        return 0
    for entry in entries:
        try:
            with open(os.path.join(root, entry, "level")) as f:
                level = int(f.read())
            with open(os.path.join(root, entry, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        digits = text[:-1] if scale > 1 else text
        if level > best_level and digits.isdigit():
            best_level, size = level, int(digits) * scale
    return size


# The forward runs the whole batch as one group (the two halves one after the other) where the whole
# intermediate takes at most this share of the last-level cache: it stays there between the halves, and
# each group costs two parallel calls. At D3 + P2 on a 32 MiB L3, 4 MiB groups took 1.01 ms and the whole
# batch 0.83 (1.22x); at D1 + P1 1.20x. The backward keeps its groups (whole batches measured 0.92-1.16x).
# Read at every call; 0 where the cache size is unknown (then the groups always apply).
CACHED_SHARE = 0.5
LAST_LEVEL_CACHE_BYTES = last_level_cache_bytes()

SeparableGrads = namedtuple(
    "SeparableGrads",
    ["grad_input", "grad_depthwise_weight", "grad_depthwise_bias", "grad_pointwise_weight", "grad_pointwise_bias"],
)
SeparableGrads.__doc__ = """Gradients of :func:`separable_conv2d`, one per argument (``grad_input`` may be None)."""


def _images_per_group(problem, itemsize, whole_when_cached=False):
    """G: the whole batch with a multi-threaded BLAS, else as many images as fit GROUP_BYTES (at least two).

    With ``whole_when_cached``, also the whole batch where its intermediate fits CACHED_SHARE of the
    last-level cache.
    """
    if not _per_image():
        return problem.batch
    if IMAGES_PER_GROUP is not None:
        return max(1, min(problem.batch, int(IMAGES_PER_GROUP)))
    out_h, out_w = problem.geometry.out_hw
    per_image = problem.out_channels * out_h * out_w * itemsize
    if whole_when_cached and problem.batch * per_image <= CACHED_SHARE * LAST_LEVEL_CACHE_BYTES:
        return problem.batch
    return max(1, min(problem.batch, max(MIN_GROUP_IMAGES, GROUP_BYTES // per_image)))


def _groups(problem, images):
    """``(n0, count, problem of those count images)`` for each group, in order."""
    for n0 in range(0, problem.batch, images):
        count = min(images, problem.batch - n0)
        yield n0, count, dataclasses.replace(problem, batch=count)


def _operands(x, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, stride, padding, dilation):
    """Check the operands of a separable convolution; return the problem and the arrays the kernels take.

    Returns
    -------
    separable, dtype, x (N, C, H, W), w (D, T), b (D,), pw (F, D), pb (F,) or None
        ``geometry.SeparableProblem``, then contiguous arrays; an absent depthwise bias is zeros (the
        depthwise kernels always add one), an absent pointwise bias None (no bias pass).
    """
    x = as_host_array("x", x)
    depthwise_weight = as_host_array("depthwise_weight", depthwise_weight)
    pointwise_weight = as_host_array("pointwise_weight", pointwise_weight)
    depthwise_bias = None if depthwise_bias is None else as_host_array("depthwise_bias", depthwise_bias)
    pointwise_bias = None if pointwise_bias is None else as_host_array("pointwise_bias", pointwise_bias)
    separable, dtype = geometry.separable_problem(
        x, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, stride, padding, dilation
    )
    problem = separable.depthwise
    b = np.zeros(problem.out_channels, dtype) if depthwise_bias is None else np.ascontiguousarray(depthwise_bias)
    pb = None if pointwise_bias is None else np.ascontiguousarray(pointwise_bias)
    pw = np.ascontiguousarray(pointwise_weight).reshape(separable.features, problem.out_channels)
    return separable, dtype, np.ascontiguousarray(x), _flat_weight(depthwise_weight, problem), b, pw, pb


def separable_conv2d(
    x, depthwise_weight, pointwise_weight, depthwise_bias=None, pointwise_bias=None, *, stride=1, padding=0,
    dilation=1,
):  # fmt: skip
    """Depthwise separable convolution: a depthwise convolution, then a pointwise one, fused.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Input, float32 or float64.
    depthwise_weight : ndarray, shape (C*M, 1, KH, KW)
        As in :func:`depthwise_conv2d`.
    pointwise_weight : ndarray, shape (F, C*M, 1, 1) or (F, C*M)
    depthwise_bias : ndarray, shape (C*M,), optional
    pointwise_bias : ndarray, shape (F,), optional
    stride, padding, dilation
        Of the depthwise convolution, as in :func:`depthwise_conv2d`.

    Returns
    -------
    y : ndarray, shape (N, F, Ho, Wo)
        ``pointwise_conv2d(depthwise_conv2d(x, depthwise_weight, depthwise_bias, ...), pointwise_weight,
        pointwise_bias)``, computed a group of images at a time without the intermediate (N, C*M, Ho, Wo)
        array.
    """
    separable, dtype, x, w, b, pw, pb = _operands(
        x, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, stride, padding, dilation
    )
    problem, depth, features = separable.depthwise, separable.depthwise.out_channels, separable.features
    y = np.empty(separable.output_shape, dtype)
    y3 = y.reshape(problem.batch, features, -1)
    images = _images_per_group(problem, dtype.itemsize, whole_when_cached=True)
    h = np.empty((images, depth) + problem.geometry.out_hw, dtype)
    for n0, count, group in _groups(problem, images):
        forward_into(x[n0 : n0 + count], w, b, group, h[:count])
        products_into(pw, h[:count].reshape(count, depth, -1), y3[n0 : n0 + count])
        if pb is not None:
            _add_bias_kernel(y3[n0 : n0 + count], pb)
    return y


def separable_conv2d_backward(
    grad_y, x, depthwise_weight, pointwise_weight, depthwise_bias=None, *, stride=1, padding=0, dilation=1,
    need_input_grad=True, depthwise_output=None,
):  # fmt: skip
    """Gradients of :func:`separable_conv2d` with respect to its input and its four parameters.

    Parameters
    ----------
    grad_y : ndarray, shape (N, F, Ho, Wo)
        Gradient of the loss with respect to the output.
    x, depthwise_weight, pointwise_weight, depthwise_bias
        The forward pass's arguments (the intermediate activation is recomputed from them; the pointwise
        bias enters no gradient).
    stride, padding, dilation
        As in the forward pass.
    need_input_grad : bool
        When false, ``grad_input`` is not computed (the first layer of a model has no one to pass it to).
    depthwise_output : ndarray, shape (N, C*M, Ho, Wo), optional
        ``depthwise_conv2d(x, depthwise_weight, depthwise_bias, ...)``, when the caller kept it from the
        forward pass: it is then read instead of recomputed (one depthwise pass fewer, for the memory it
        holds). It must be that value; only its shape and dtype are checked.

    Returns
    -------
    SeparableGrads
        ``grad_input`` (N, C, H, W) or None, ``grad_depthwise_weight`` (C*M, 1, KH, KW),
        ``grad_depthwise_bias`` (C*M,), ``grad_pointwise_weight`` shaped like ``pointwise_weight``,
        ``grad_pointwise_bias`` (F,); all in ``x``'s dtype. The weight and bias gradients are summed over the
        groups in float64.

    Notes
    -----
    ``grad_depthwise_bias = pointwise_weight.T @ grad_pointwise_bias``: the sum of the intermediate's
    gradient over batch and pixels, taken after the pointwise product instead of before.
    """
    separable, dtype, x, w, b, pw, _ = _operands(
        x, depthwise_weight, pointwise_weight, depthwise_bias, None, stride, padding, dilation
    )
    problem, depth, features = separable.depthwise, separable.depthwise.out_channels, separable.features
    grad_y = as_host_array("grad_y", grad_y)
    geometry.check_same_dtype("x", x, grad_y=grad_y)
    geometry.check_shape("grad_y", grad_y.shape, separable.output_shape, "(N, F, Ho, Wo) for this geometry")
    gy3 = np.ascontiguousarray(grad_y).reshape(problem.batch, features, -1)
    if depthwise_output is not None:
        depthwise_output = as_host_array("depthwise_output", depthwise_output)
        geometry.check_same_dtype("x", x, depthwise_output=depthwise_output)
        geometry.check_shape("depthwise_output", depthwise_output.shape, problem.output_shape,
                             "(N, C*M, Ho, Wo): the depthwise convolution's output")
        depthwise_output = np.ascontiguousarray(depthwise_output)
    pw_t = np.ascontiguousarray(pw.T)
    images = _images_per_group(problem, dtype.itemsize)
    # The group's intermediate is recomputed into h, or read from the caller's depthwise_output.
    h = None if depthwise_output is not None else np.empty((images, depth) + problem.geometry.out_hw, dtype)
    dh = np.empty((images, depth) + problem.geometry.out_hw, dtype)
    grad_x = np.empty(problem.input_shape, dtype) if need_input_grad else None
    grad_pw = np.zeros((features, depth), np.float64)
    grad_dw = np.zeros(w.shape, np.float64)
    for n0, count, group in _groups(problem, images):
        x_group, dh_group = x[n0 : n0 + count], dh[:count]
        if h is None:
            h_group = depthwise_output[n0 : n0 + count]
        else:
            h_group = h[:count]
            forward_into(x_group, w, b, group, h_group)
        products_into(pw_t, gy3[n0 : n0 + count], dh_group.reshape(count, depth, -1))
        with _quiet():  # NaN and Inf propagate silently, as in every kernel
            grad_pw += weight_products(gy3[n0 : n0 + count], h_group.reshape(count, depth, -1))
            grad_dw += grad_weight_sums(dh_group, x_group, group)
        if need_input_grad:
            grad_input_into(dh_group, w, group, grad_x[n0 : n0 + count])
    grad_pb = np.empty(features, np.float64)
    _bias_grad_kernel(gy3, grad_pb)
    with _quiet():
        grad_db = pw_t.astype(np.float64) @ grad_pb
    return SeparableGrads(
        grad_x,
        grad_dw.astype(dtype).reshape(problem.weight_shape),
        grad_db.astype(dtype),
        grad_pw.astype(dtype).reshape(np.shape(pointwise_weight)),
        grad_pb.astype(dtype),
    )
