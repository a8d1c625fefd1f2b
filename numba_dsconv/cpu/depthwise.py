"""Depthwise 2-D convolution on the CPU: forward, gradient with respect to the input and to the weight.

Shape legend: N = batch, C = input channels, M = channel multiplier (output channel ``o`` reads input
channel ``o // M``), H/W = input size, KH/KW = kernel size, T = KH*KW taps, Ho/Wo = output size,
G = images per task.

Seven algorithms, chosen per call:

- *Channel blocks* (``_blocked``, forward only) for kernels of 25 taps or more at horizontal stride 1:
  sixteen channels (eight in float64) interleaved into one vector per pixel, so that a tap is a shift by
  whole vectors and a run of output pixels keeps its sums in registers (1.3-1.8x the kernels below on 5x5
  and 7x7 kernels). Such input gradients run there too, as mirrored forward passes (below).
- *Row pairs and chains* (``_rows``, multiplier 1) for 3x3 kernels at stride 1 whose padding equals the
  dilation, on rows of three quarters of a vector to 640 bytes (12 to 160 float32, 6 to 80 float64 values):
  two output rows per pass share their middle input rows, the columns a tap reads come from lane shifts of
  three consecutive vectors, the padding is zero vectors and masked lanes, no copy and no rim apart (in
  float32 forwards 1.2-1.8x, input gradients 1.1-1.7x and weight gradients 1.3-2.4x the kernels below from
  28x28 to 160x160; float64 1.4-2.5x). Rows of up to two vectors are held whole and the plane walked down
  instead (chains: forwards 1.4-1.6x the pairs at 28x28 and 32x32, 1.7x the channel runs at 14x14), and
  float32 rows of 7 two planes to a vector (1.2-1.5x the channel runs at 7x7). Such input gradients run
  there too, as mirrored forward passes.
- *Channel runs* (``_runs``) for the other size-keeping problems at stride 1 with multiplier 1 on small
  planes (up to 16x16): one image's consecutive planes are one flat run, a tap one shift of it, and the
  padding a zero in expanded per-element weights; no copy of the data at all. Such planes (5x5, other
  kernels on 7x7 and 14x14) are where copying rows costs more than the arithmetic.
- *Planes in place* (``_inplace``) for the other size-keeping stride-1 problems whose rim (the rows and
  columns the padding reaches) holds at most a tenth of the outputs, such as 3x3 kernels on 56x56 planes
  and larger: the interior of each plane is one flat loop that reads the input plane (and, for the weight
  gradient, a copy of the output gradient) where it lies; only the rim is computed from small copies.
- *Masked copies* (``_masked``) for the size-keeping stride-1 problems with thicker rims whose kernel is
  at most three wide: each plane is one flat loop on its own pitch, written straight into the output,
  reading copies of the input plane whose wrapped-around columns are zero.
- *Strided rows* (``_strided``) for 3x3 kernels at horizontal stride 2: each output row straight from the
  three input rows it reads (and each input-gradient row from the output-gradient rows it takes), where
  they lie, instead of phase copies of the whole plane (mostly 1.1-2x faster). Forwards at stride 2 both
  ways with multiplier 1 and a padding of at most one at the top and left split each input row's columns
  into even and odd lanes and walk down the plane instead (*split columns*: 1.4-4x the strided rows).
- *Phase copies* otherwise (other strides and kernels, outputs of another size), described here.

The phase-copy kernels run as stride-1 correlations over flat, zero-padded, phase-split copies of the planes
(see ``_planes``): a stride ``s`` becomes ``s`` phases, a dilated tap becomes a constant shift, padding
becomes zeros in the copy. A task takes *one channel of G images*: they share their weights, so their
copies are stacked one after the other (image stride S) and each tap runs once over the whole stack.

- forward: one task per (input channel, image group); its copy serves all M output channels.
- grad-input: the transposed convolution as a *gather* into each input phase, so every task writes only
  its own input planes: no atomics, no races. At stride 1 with multiplier 1 the input gradient is itself a
  forward correlation (the output gradient under the mirrored padding, the kernel turned by 180 degrees)
  and runs through the forward kernel instead (``_mirrored_problem``): 1.1-1.5x faster than the gather on
  56x56 and 28x28 planes with 5x5 and 7x7 kernels, whose gather grid is larger than the forward's.
- grad-weight: one task per (input channel, image group) writes float64 partial sums for its M filters;
  the groups are summed afterwards in a fixed order. Every result is identical run to run, and does not
  depend on the number of threads.
"""

import functools

import numpy as np
from numba import prange

from .. import geometry
from . import _blocked, _inplace, _masked, _rows, _runs, _strided
from ._arrays import as_host_array
from ._jit import kernel
from ._planes import (
    all_finite,
    chunk_bounds,
    chunk_count,
    correlate_flat,
    fill,
    gather_phases,
    gather_stack,
    tap_dots,
    task_images,
)

# Stack images until a task's copy holds about this many elements (16 KiB of float32): long flat loops over
# small planes, and a copy and output band that stay in L1 while every tap passes over them. Measured against
# 8192 and 2048 (interleaved, threads pinned): 4096 and 2048 ran 5-20% faster than 8192 on 56x56 7x7 and
# 28x28 planes (one 56x56 image per task instead of two), and within noise of each other. IMAGES_PER_TASK,
# when set, overrides the choice (the tests force stacks with a partial last group); both are read at
# every call.
STACK_ELEMENTS = 4096
IMAGES_PER_TASK = None


def _images_per_task(n_batch, channels, image_elements, threads_hint=16):
    """G: enough images to make long loops, few enough to leave every thread several tasks."""
    if IMAGES_PER_TASK is not None:
        return max(1, min(n_batch, int(IMAGES_PER_TASK)))
    g = max(1, min(n_batch, STACK_ELEMENTS // max(1, image_elements)))
    while g > 1 and channels * -(-n_batch // g) < threads_hint:
        g //= 2
    return g


def _tap_offsets(geometry_):
    """Vertical and horizontal offset of each tap ``t = i*KW + j`` inside the padded input.

    The plans below are plain Python over a few dozen taps: NumPy's per-call overhead on arrays this small
    cost more (tens of microseconds per call) than the arithmetic.
    """
    (kh, kw), (dh, dw) = geometry_.kernel, geometry_.dilation
    return [(i * dh, j * dw) for i in range(kh) for j in range(kw)]


def _chunks(problem, images):
    """Chunks for the kernels' tasks: one per (input channel, group of ``images`` images)."""
    return chunk_count(problem.in_channels * -(-problem.batch // images))


class _PhasePlan:
    """Forward and grad-weight: the phases of the padded input, (sh*sw, Hq, Wq) per image, and tap shifts."""

    def __init__(self, problem):
        g = problem.geometry
        (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
        hq, wq = g.out_hw[0] + (kh - 1) * dh // sh, g.out_hw[1] + (kw - 1) * dw // sw
        shifts = np.array(
            [((a % sh) * sw + b % sw) * hq * wq + (a // sh) * wq + b // sw for a, b in _tap_offsets(g)], np.int64
        )
        self.images = _images_per_task(problem.batch, problem.in_channels, sh * sw * hq * wq)
        self.groups = -(-problem.batch // self.images)
        self.kernel_args = (shifts, sh, sw, g.pad[0], g.pad[2], hq, wq, self.images, _chunks(problem, self.images))


class _GatherPlan:
    """Grad-input: the output gradient padded by (A, B) on a (Hg, Wg) grid, gathered into input phases."""

    def __init__(self, problem):
        g = problem.geometry
        (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
        top, _, left, _ = g.pad
        pad_a, pad_b = (kh - 1) * dh // sh, (kw - 1) * dw // sw
        rows, cols = -(-(top + g.in_hw[0]) // sh), -(-(left + g.in_hw[1]) // sw)
        wg = cols + pad_b
        self.images = _images_per_task(problem.batch, problem.in_channels, problem.multiplier * (rows + pad_a) * wg)
        # Each input phase p gathers the taps with (a % sh, b % sw) == p, at shift (A - a//sh)*Wg + B - b//sw.
        members = [[] for _ in range(sh * sw)]
        for t, (a, b) in enumerate(_tap_offsets(g)):
            members[(a % sh) * sw + b % sw].append((t, (pad_a - a // sh) * wg + pad_b - b // sw))
        width = max(1, max(len(m) for m in members))
        taps = np.zeros((sh * sw, width), np.int64)
        shifts = np.zeros((sh * sw, width), np.int64)
        for p, phase_members in enumerate(members):
            for j, (t, shift) in enumerate(phase_members):
                taps[p, j] = t
                shifts[p, j] = shift
        counts = np.array([len(m) for m in members], np.int64)
        nchunks = _chunks(problem, self.images)
        self.kernel_args = (taps, shifts, counts, sh, sw, top, left, pad_a, pad_b, rows, cols, self.images, nchunks)


@kernel
def _forward_kernel(x, w, b, shifts, sh, sw, pad_top, pad_left, hq, wq, images, nchunks, y):
    """y[n, o] = b[o] + correlate(x[n, o // M], w[o]); x (N, C, H, W), w (C*M, T), y (N, C*M, Ho, Wo)."""
    n_batch, channels = x.shape[0], x.shape[1]
    out_channels, ntaps = w.shape
    multiplier = out_channels // channels
    out_h, out_w = y.shape[2], y.shape[3]
    stride = sh * sw * hq * wq  # one image's phase copy
    length = (images - 1) * stride + (out_h - 1) * wq + out_w
    groups = (n_batch + images - 1) // images
    ntasks = channels * groups
    for chunk in prange(nchunks):
        src = np.zeros(images * stride, x.dtype)  # the padding stays zero: gathers write only the planes
        out = np.empty(length, x.dtype)
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            c, group, n0, count = task_images(task, groups, images, n_batch)
            gather_stack(x, c, n0, count, pad_top, pad_left, sh, sw, hq, wq, src)
            run = (count - 1) * stride + (out_h - 1) * wq + out_w
            for m in range(multiplier):
                o = c * multiplier + m
                correlate_flat(src, w[o], shifts, ntaps, out, run, True, b[o])
                for g in range(count):
                    y_plane = y[n0 + g, o]
                    base = g * stride
                    for ho in range(out_h):
                        for wo in range(out_w):
                            y_plane[np.uint64(ho), np.uint64(wo)] = out[np.uint64(base + ho * wq + wo)]


@kernel
def _grad_input_kernel(
    gy, w, phase_taps, phase_shifts, phase_counts, sh, sw, pad_top, pad_left,
    grad_pad_h, grad_pad_w, rows, cols, images, nchunks, dx,
):  # fmt: skip
    """dx[n, c] = sum over m of the transposed correlation of gy[n, c*M + m] with w[c*M + m]."""
    n_batch, channels, height, width = dx.shape
    out_channels, ntaps = w.shape
    multiplier = out_channels // channels
    hg, wg = rows + grad_pad_h, cols + grad_pad_w
    nphases = sh * sw
    stride = multiplier * hg * wg  # one image's padded output-gradient planes
    length = (images - 1) * stride + (rows - 1) * wg + cols
    groups = (n_batch + images - 1) // images
    ntasks = channels * groups
    for chunk in prange(nchunks):
        src = np.zeros(images * stride, gy.dtype)  # the padding stays zero: gathers write only the planes
        out = np.empty((nphases, length), gy.dtype)
        weights = np.empty(multiplier * ntaps, gy.dtype)
        shifts = np.empty(multiplier * ntaps, np.int64)
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            c, group, n0, count = task_images(task, groups, images, n_batch)
            for g in range(count):
                for m in range(multiplier):
                    base = g * stride + m * hg * wg
                    gather_phases(
                        gy[n0 + g, c * multiplier + m], grad_pad_h, grad_pad_w, 1, 1, hg, wg, src[base : base + hg * wg]
                    )
            run = (count - 1) * stride + (rows - 1) * wg + cols
            for ph in range(nphases):
                k = 0
                for m in range(multiplier):
                    for j in range(phase_counts[ph]):
                        weights[k] = w[c * multiplier + m, phase_taps[ph, j]]
                        shifts[k] = m * hg * wg + phase_shifts[ph, j]
                        k += 1
                correlate_flat(src, weights, shifts, k, out[ph], run, True, 0)
            # Interleave the phases back into the input planes, dropping the padding: input column j is
            # column (j + pad_left) // sw of phase (j + pad_left) % sw.
            for g in range(count):
                dx_plane = dx[n0 + g, c]
                for i in range(height):
                    ip = i + pad_top
                    row_base = g * stride + (ip // sh) * wg
                    first_phase = (ip % sh) * sw
                    dst = dx_plane[i]
                    if sw == 1:  # one column phase: a straight row copy
                        src_row = out[first_phase, row_base + pad_left : row_base + pad_left + width]
                        for j in range(width):
                            dst[j] = src_row[j]
                    elif sw == 2:
                        # Both phases in one loop: LLVM vectorises it as an interleaving store, where one
                        # strided loop per phase ran scalar (it took 70% of the kernel at 28x28).
                        half = width // 2
                        start_even, start_odd = row_base + pad_left // 2, row_base + (pad_left + 1) // 2
                        even = out[first_phase + pad_left % 2, start_even : start_even + half + width % 2]
                        odd = out[first_phase + (pad_left + 1) % 2, start_odd : start_odd + half]
                        for k in range(half):
                            dst[2 * k] = even[k]
                            dst[2 * k + 1] = odd[k]
                        if width % 2:
                            dst[width - 1] = even[half]
                    else:
                        for q in range(sw):
                            j0 = (q - pad_left) % sw  # first column of this phase
                            col0 = row_base + (j0 + pad_left) // sw
                            src_row = out[first_phase + q, col0 : col0 + (width - j0 + sw - 1) // sw]
                            for k in range(src_row.shape[0]):
                                dst[j0 + k * sw] = src_row[k]


@kernel
def _grad_weight_partial_kernel(gy, x, shifts, sh, sw, pad_top, pad_left, hq, wq, images, nchunks, partial):
    """partial[group, o, t] = sum over the group's images and (ho, wo) of gy * x_padded at tap t, float64."""
    n_batch, channels = x.shape[0], x.shape[1]
    out_channels, ntaps = partial.shape[1], partial.shape[2]
    multiplier = out_channels // channels
    out_h, out_w = gy.shape[2], gy.shape[3]
    stride = sh * sw * hq * wq
    groups = (n_batch + images - 1) // images
    ntasks = channels * groups
    for chunk in prange(nchunks):
        src = np.zeros(images * stride, x.dtype)  # the padding stays zero: gathers write only the planes
        # The output gradient on the same stacked grid, zero in the extra columns and between images.
        grad = np.zeros(images * stride, x.dtype)
        acc = np.empty(ntaps, np.float64)
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            c, group, n0, count = task_images(task, groups, images, n_batch)
            gather_stack(x, c, n0, count, pad_top, pad_left, sh, sw, hq, wq, src)
            rows = (count - 1) * (stride // wq) + out_h  # rows of the stacked grid that hold real values
            for m in range(multiplier):
                o = c * multiplier + m
                gather_stack(gy, o, n0, count, 0, 0, 1, 1, stride // wq, wq, grad)
                fill(acc, 0)
                tap_dots(grad, src, shifts, ntaps, rows, out_w, wq, stride // wq, out_h, False, acc)
                if not all_finite(acc):
                    # The fast pass also multiplies the zeros of the extra columns with whatever the input
                    # holds there; redo this filter over the real columns only, so NaN/Inf reach exactly
                    # the taps that read them.
                    fill(acc, 0)
                    tap_dots(grad, src, shifts, ntaps, rows, out_w, wq, stride // wq, out_h, True, acc)
                for t in range(ntaps):
                    partial[group, o, t] = acc[t]


@kernel
def _sum_groups_kernel(partial, out):
    """out[o, t] = sum over groups of partial[group, o, t], in index order."""
    ngroups, out_channels, ntaps = partial.shape
    for o in prange(out_channels):
        for t in range(ntaps):
            acc = partial[0, o, t]
            for group in range(1, ngroups):
                acc += partial[group, o, t]
            out[o, t] = acc


def _flat_weight(weight, problem):
    return np.ascontiguousarray(weight).reshape(problem.out_channels, -1)


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
    b = np.zeros(problem.out_channels, dtype) if bias is None else np.ascontiguousarray(bias)
    y = np.empty(problem.output_shape, dtype)
    forward_into(np.ascontiguousarray(x), _flat_weight(weight, problem), b, problem, y)
    return y


def forward_into(x, w, b, problem, y):
    """Run the forward pass on checked, C-contiguous arrays: x (N, C, H, W), w (C*M, T), b (C*M,) into y."""
    if _blocked.applies(problem):
        _blocked.blocked_forward_kernel(x, w, b, *_blocked.forward_args(problem, x.dtype), y)
    elif _rows.applies(problem, x.dtype):
        _rows.forward_kernel(problem, x.dtype)(x, w, b, *_rows.forward_args(problem, x.dtype), y)
    elif _runs.applies(problem):
        _runs.run_correlate_kernel(x, w, b, *_runs.plan_args(problem, x.dtype), y)
    elif _inplace.applies(problem):
        _inplace.inplace_forward_kernel(x, w, b, *_inplace.plan_args(problem), y)
    elif _masked.applies(problem):
        _masked.masked_forward_kernel(x, w, b, *_masked.plan_args(problem), y)
    elif _strided.split_applies(problem, x.dtype):
        _strided.split_forward_kernel(x, w, b, *_strided.split_forward_args(problem), y)
    elif _strided.applies(problem):
        _strided.strided_forward_kernel(x, w, b, *_strided.forward_args(problem), y)
    else:
        _forward_kernel(x, w, b, *_PhasePlan(problem).kernel_args, y)


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
    grad_x = np.empty(problem.input_shape, dtype)
    grad_input_into(np.ascontiguousarray(grad_y), _flat_weight(weight, problem), problem, grad_x)
    return grad_x


def grad_input_into(grad_y, w, problem, grad_x):
    """Compute the input gradient of checked, C-contiguous grad_y (N, C*M, Ho, Wo), w (C*M, T) into grad_x."""
    mirrored = _mirrored_problem(problem)
    if mirrored is not None and (_blocked.applies(mirrored) or _rows.applies(mirrored, grad_y.dtype)):
        # Ahead of the channel runs too: at 8x576x14x14 with a 5x5 kernel 1.5x faster than them.
        _mirrored_forward(grad_y, w, mirrored, grad_x)
    elif _runs.applies(problem):
        no_bias = np.zeros(problem.in_channels, grad_y.dtype)
        _runs.run_correlate_kernel(grad_y, w, no_bias, *_runs.plan_args(problem, grad_y.dtype, transpose=True), grad_x)
    elif _inplace.applies(problem):
        _inplace.inplace_grad_input_kernel(grad_y, w, *_inplace.plan_args(problem, transpose=True), grad_x)
    elif _masked.applies(problem):
        _masked.masked_grad_input_kernel(grad_y, w, *_masked.plan_args(problem, transpose=True), grad_x)
    elif _strided.applies(problem):
        _strided.strided_grad_input_kernel(grad_y, w, *_strided.grad_input_args(problem), grad_x)
    elif mirrored is not None:
        _mirrored_forward(grad_y, w, mirrored, grad_x)
    else:
        _grad_input_kernel(grad_y, w, *_GatherPlan(problem).kernel_args, grad_x)


def _mirrored_forward(grad_y, w, mirrored, grad_x):
    # Reversing the flat tap order turns the kernel by 180 degrees: t = a*KW + b becomes T-1-t.
    no_bias = np.zeros(mirrored.out_channels, grad_y.dtype)
    forward_into(grad_y, np.ascontiguousarray(w[:, ::-1]), no_bias, mirrored, grad_x)


@functools.lru_cache(maxsize=64)  # looked up first on every stride-1 input gradient (7 us to build)
def _mirrored_problem(problem):
    """Return the forward problem that computes this problem's input gradient, or None where there is none.

    At stride 1 with multiplier 1, ``grad_x = correlate(grad_y padded by d*(K-1) - pad, kernel turned by
    180 degrees)`` on each side of each axis: a forward convolution of the output gradient, which the
    forward kernels run faster than the gather kernel (at 56x56 with a 7x7 kernel the gather grid is 59x65
    output positions where the forward's is 56x62). A padding wider than the kernel's reach would make a
    mirrored padding negative: those problems keep the gather kernel.
    """
    g = problem.geometry
    if g.stride != (1, 1) or problem.multiplier != 1:
        return None
    (kh, kw), (dh, dw) = g.kernel, g.dilation
    top, bottom, left, right = g.pad
    pad = ((dh * (kh - 1) - top, dh * (kh - 1) - bottom), (dw * (kw - 1) - left, dw * (kw - 1) - right))
    if min(pad[0] + pad[1]) < 0:
        return None
    grad_shape = (problem.batch, problem.in_channels) + g.out_hw
    return geometry.depthwise_problem(grad_shape, problem.weight_shape, 1, pad, g.dilation)


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
        Same dtype as ``x``. Runs of up to 2048 products are summed in the data's dtype (vectorised), the runs
        and the image groups in float64, in a fixed order.
    """
    grad_y = as_host_array("grad_y", grad_y)
    x = as_host_array("x", x)
    dtype = geometry.check_same_dtype("x", x, grad_y=grad_y)
    weight_shape = geometry.check_shape_argument("weight_shape", weight_shape, 4, "(C*M, 1, KH, KW)")
    problem = geometry.depthwise_problem(x.shape, weight_shape, stride, padding, dilation)
    geometry.check_shape("grad_y", grad_y.shape, problem.output_shape, "(N, C*M, Ho, Wo) for this geometry")
    total = grad_weight_sums(np.ascontiguousarray(grad_y), np.ascontiguousarray(x), problem)
    return total.astype(dtype).reshape(problem.weight_shape)


def grad_weight_sums(grad_y, x, problem):
    """Return the weight gradient of checked, C-contiguous arrays as float64 sums (C*M, T), not yet cast."""
    kernel_h, kernel_w = problem.geometry.kernel
    ntaps = kernel_h * kernel_w
    if _runs.applies(problem) and not _rows.applies(problem, x.dtype):
        total = np.empty((problem.out_channels, ntaps), np.float64)
        _runs.run_grad_weight_kernel(grad_y, x, *_runs.plan_args(problem, x.dtype), total)
        # A non-finite value may have reached taps it does not touch (0 * NaN): the phase kernels below
        # multiply by the padding's zeros exactly as the definition does.
        if np.isfinite(total).all():
            return total
    # Each algorithm writes float64 partial sums per (image group, filter, tap); the groups are added below.
    if _rows.applies(problem, x.dtype):
        partial_kernel = _rows.grad_weight_kernel(problem, x.dtype)
        args, groups = _rows.grad_weight_args(problem, x.dtype)
    elif _inplace.applies(problem):
        partial_kernel, (args, groups) = _inplace.inplace_grad_weight_kernel, _inplace.grad_weight_args(problem)
    elif _masked.applies(problem):
        partial_kernel, (args, groups) = _masked.masked_grad_weight_kernel, _masked.grad_weight_args(problem)
    elif _strided.applies(problem):
        partial_kernel, (args, groups) = _strided.strided_grad_weight_kernel, _strided.grad_weight_args(problem)
    else:
        plan = _PhasePlan(problem)
        partial_kernel, args, groups = _grad_weight_partial_kernel, plan.kernel_args, plan.groups
    partial = np.empty((groups, problem.out_channels, ntaps), np.float64)
    partial_kernel(grad_y, x, *args, partial)
    total = np.empty((problem.out_channels, ntaps), np.float64)
    _sum_groups_kernel(partial, total)
    return total
