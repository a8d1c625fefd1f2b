"""Planes in place: stride-1, size-keeping depthwise convolutions that read each plane where it lies.

Shape legend: N = batch, C = input channels, M = channel multiplier, H/W = plane size (the output has the
input's size), A = H*W, T = KH*KW taps, Hp = H + top + bottom (a strip's column with its padding).

When the output keeps the input's size at stride 1, output pixel ``q = i*W + j`` reads tap t at
``q + s_t`` of its plane, ``s_t = dy_t*W + dx_t``. Let top, bottom, left and right be how far the taps
reach beyond a pixel (the padding). Over the *interior*, rows ``[top, H - bottom)`` and columns
``[left, W - right)``, every such read is the very pixel the definition reads, so the interior is one flat
loop

    out[q] = bias + sum_t w[t] * plane[q + s_t],   q in [top*W + left, (H - bottom)*W - right)

reading the input plane in place and writing the output plane in place: each element read from memory
once and written once, with no copy at all. That range also passes over the edge columns of each interior
row, whose reads wrap around into the neighbouring row: those outputs are computed, then replaced.

The rim comes from small zero-padded copies, each again one flat stride-1 correlation:

- the top and bottom *bands* (rows ``[0, top)`` and ``[H - bottom, H)``) from a copy of the rows they read
  below zero rows (top) or above them (bottom), on the plane's own pitch: the same tap shifts;
- the left and right *strips* (columns ``[0, left)`` and ``[W - right, W)``, every row) from a copy of the
  columns they read, stored column after column with zero rows above and below and zero columns for the
  padding: transposed, tap t is the flat shift ``(dx_t + left)*Hp + dy_t + top``, and a strip's columns
  are one flat loop. The strips are written last, over what the interior loop left in the edge columns.

Every read of the padding is a read of a zero, as in the definition (``0 * w``): NaN and Inf reach exactly
the outputs they touch. A rim output costs several times an interior one (copies in and out, short
loops), so only planes whose rim is thin run here (``MAX_RIM_SHARE``, with the measurements).

- forward: one task per (image, input channel); its rim copies serve the channel's M filters. A 3x3
  kernel with M >= 2 runs its filters two at a time over the interior: each value loaded feeds both (nine
  loads for eighteen multiply-adds; on the masked copies, which run 128x(1->16)x28x28, 1.75x faster).
- grad-input: the same correlation with every offset negated, summed over the channel's M output
  gradients; the rim's sums are kept apart and written once, after the last filter.
- grad-weight: one task per (input channel, image group), as the masked copies' (float64 partial sums per
  group and filter, summed by the caller in a fixed order). The dots ``sum_q g[q] * x[q + s_t]`` run over
  the same grids: the interior's range reads the input plane in place against a copy of the output
  gradient whose edge columns are zero, each rim region its input copy against the output gradient laid
  out on that region's grid, zero wherever the grid has no output. A zero that meets a NaN or Inf there
  makes a NaN the definition does not have: a filter whose sums come out non-finite is redone one term
  at a time (``exact_dots``).
"""

import functools

import numpy as np
from numba import prange

from ._jit import helper, kernel
from ._planes import (
    all_finite,
    chunk_bounds,
    chunk_count,
    correlate_flat,
    correlate_pair9,
    fill,
    same_size_offsets,
    tap_dots,
    task_images,
    weight_gradient_groups,
)

# Largest share of a plane's outputs on the rim for it to run in place. The rim's outputs cost several
# times what the interior's do (copies in and out, short loops), and their share grows as planes shrink
# and kernels widen. Measured against the masked copies (A/B in one process, 3x3 kernels, forward /
# grad-input / grad-weight, over several runs): 3.5% at 8x32x112x112, 1.32-1.53x / 1.27-1.51x /
# 1.04-1.26x faster; 7% at 112x112 with dilation 2, 1.48x / 1.49x / 1.14x, and at 8x144x56x56,
# 1.03-1.14x / 0.89-1.27x / 0.98-1.08x; 27% at 28x28 with dilation 2, 0.6-0.85x. Against the phase
# copies, 20% (56x56, 7x7): 0.96-1.07x, grad-weight 0.95x. Read at every call (the tests set it to 1 or
# -1: in place wherever a plane has an interior, or never).
MAX_RIM_SHARE = 0.1


def applies(problem):
    """Tell whether a depthwise problem runs in place: stride 1, size kept, at most MAX_RIM_SHARE on the rim."""
    if not problem.keeps_size:
        return False
    plan = _cached_plan(problem, False)
    return plan.fits and plan.rim_share <= MAX_RIM_SHARE


def plan_args(problem, transpose=False):
    """Return the kernels' plan arguments ``(shifts, strip_shifts, top, bottom, left, right, nchunks)``.

    ``transpose=True`` negates every tap offset: the gradient with respect to the input.
    """
    plan = _cached_plan(problem, transpose)
    tasks = problem.batch * problem.in_channels
    return plan.shifts, plan.strip_shifts, plan.top, plan.bottom, plan.left, plan.right, chunk_count(tasks)


def grad_weight_args(problem):
    """Return the grad-weight kernel's arguments and the number of image groups (the partial sums' first axis).

    The arguments are ``(shifts, strip_shifts, offsets, top, bottom, left, right, images, nchunks)``.
    """
    plan = _cached_plan(problem, False)
    images, groups = weight_gradient_groups(problem.batch, problem.in_channels)
    args = (plan.shifts, plan.strip_shifts, plan.offsets, plan.top, plan.bottom, plan.left, plan.right)
    return args + (images, chunk_count(problem.in_channels * groups)), groups


@functools.lru_cache(maxsize=64)
def _cached_plan(problem, transpose):
    return InPlacePlan(problem, transpose)


class InPlacePlan:
    """The taps' reach on each side, their offsets (T, 2) and flat shifts, in the plane (T,) and the strips (T,).

    ``shifts`` are relative to the first output of a flat region: ``top*W + left + s_t`` reads the plane
    from the interior's first pixel, and a band's copy from its first output (a band's copy has ``top``
    rows before its first output row, as the plane has before the interior).
    """

    def __init__(self, problem, transpose):
        height, width = problem.geometry.in_hw
        offsets = same_size_offsets(problem, transpose)
        dys, dxs = [dy for dy, _ in offsets], [dx for _, dx in offsets]
        self.top, self.bottom = max(0, -min(dys)), max(0, max(dys))
        self.left, self.right = max(0, -min(dxs)), max(0, max(dxs))
        # A plane no larger than the kernel's reach has no interior; a band or strip would also read rows
        # or columns of the opposite rim. Those go to the other kernels.
        self.fits = height > self.top + self.bottom and width > self.left + self.right
        interior = max(0, height - self.top - self.bottom) * max(0, width - self.left - self.right)
        self.rim_share = 1 - interior / (height * width)
        column = self.top + height + self.bottom
        self.shifts = np.array([self.top * width + self.left + dy * width + dx for dy, dx in offsets], np.int64)
        self.strip_shifts = np.array([(dx + self.left) * column + dy + self.top for dy, dx in offsets], np.int64)
        self.offsets = np.array(offsets, np.int64).reshape(-1, 2)  # (T, 2): dy, dx
        for array in (self.shifts, self.strip_shifts, self.offsets):
            array.flags.writeable = False


@helper
def rim_lengths(height, width, top, bottom, left, right):
    """Return the outputs of the four rim regions' correlations, and their buffers' length.

    The regions are the top band, the bottom band, the left strip and the right strip; the length is the
    furthest any of them reads, plus one.
    """
    column = top + height + bottom
    lengths = np.zeros(4, np.int64)
    if top > 0:
        lengths[0] = top * width - left - right
    if bottom > 0:
        lengths[1] = bottom * width - left - right
    if left > 0:
        lengths[2] = (left - 1) * column + height
    if right > 0:
        lengths[3] = (right - 1) * column + height
    band_reach = (top + bottom) * width + left + right
    strip_reach = (left + right) * column + top + bottom
    source = max(max(lengths[0], lengths[1]) + band_reach, max(lengths[2], lengths[3]) + strip_reach)
    return lengths, source + 1


@helper
def copy_rim(plane, height, width, top, bottom, left, right, rim):
    """Copy the rows and columns that the rim reads into the zeroed rim buffers ``rim`` (4, S).

    ``rim[0]`` (top band) holds ``top`` zero rows then the plane's first ``top + bottom`` rows; ``rim[1]``
    (bottom band) the plane's last ``top + bottom`` rows then zero rows. ``rim[2]`` (left strip) holds
    columns ``[-left, left + right)`` of the plane, ``rim[3]`` (right strip) columns
    ``[W - right - left, W + right)``, one after the other, each column below ``top`` zero rows and above
    ``bottom``. Only plane values are written: the zeros stay from the buffers' one fill.
    """
    reach = top + bottom
    column = top + height + bottom
    rows = plane[: reach * width]
    band = rim[0, top * width : (top + reach) * width]
    for q in range(reach * width):
        band[q] = rows[q]
    rows = plane[(height - reach) * width : height * width]
    band = rim[1, : reach * width]
    for q in range(reach * width):
        band[q] = rows[q]
    # Column by column: contiguous stores, loads one row apart.
    for k in range(left + right):  # the left strip's column left + k is plane column k
        left_column = rim[2, (left + k) * column + top : (left + k) * column + top + height]
        right_column = rim[3, k * column + top : k * column + top + height]
        for i in range(height):
            left_column[i] = plane[np.uint64(i * width + k)]
            right_column[i] = plane[np.uint64(i * width + width - right - left + k)]


@helper
def correlate_plane(plane, rim, w, shifts, strip_shifts, ntaps, interior, lengths, sums, from_region, assign, bias):
    """Correlate one filter over a plane's regions from ``from_region`` on, each one flat loop.

    Region 0 is the interior (``plane`` read in place, into ``interior``, the output's flat range; ``bias``
    added when ``assign``), regions 1 to 4 the rim's (its copies ``rim`` (4, S), into ``sums`` (4, L)).
    ``assign`` as in ``correlate_flat``: the input gradient adds its M filters' correlations. One call site
    for all five: each inlined copy of the flat loop costs seconds of compilation.
    """
    zero = interior.dtype.type(0)
    for r in range(from_region, 5):
        if r == 0:
            src, dst, tap_shifts, add = plane, interior, shifts, bias
        else:
            src, dst, add = rim[r - 1], sums[r - 1, : lengths[r - 1]], zero
            tap_shifts = shifts if r < 3 else strip_shifts
        if dst.shape[0] > 0:
            correlate_flat(src, w, tap_shifts, ntaps, dst, dst.shape[0], assign, add)


@helper
def write_rim(sums, height, width, top, bottom, left, right, bias, out):
    """Assign ``bias + sums`` to the rim of ``out`` (A,): the bands, then the strips over their edge columns."""
    column = top + height + bottom
    if top > 0:
        band, dst = sums[0], out[left : top * width - right]
        for q in range(dst.shape[0]):
            dst[q] = bias + band[q]
    if bottom > 0:
        band, dst = sums[1], out[(height - bottom) * width + left : height * width - right]
        for q in range(dst.shape[0]):
            dst[q] = bias + band[q]
    for k in range(left):
        sums_column = sums[2, k * column : k * column + height]
        for i in range(height):
            out[np.uint64(i * width + k)] = bias + sums_column[i]
    for k in range(right):
        sums_column = sums[3, k * column : k * column + height]
        for i in range(height):
            out[np.uint64(i * width + width - right + k)] = bias + sums_column[i]


@kernel
def inplace_forward_kernel(x, w, b, shifts, strip_shifts, top, bottom, left, right, nchunks, y):
    """y[n, o] = b[o] + correlate(x[n, o // M], w[o]); x (N, C, H, W), w (C*M, T), y (N, C*M, H, W)."""
    n_batch, channels, height, width = x.shape
    out_channels, ntaps = w.shape
    multiplier = out_channels // channels
    pairs = multiplier // 2 if ntaps == 9 else 0
    area = height * width
    first, last = top * width + left, (height - bottom) * width - right  # the interior's flat range
    x_flat, y_flat = x.reshape(n_batch, channels, area), y.reshape(n_batch, out_channels, area)
    ntasks = n_batch * channels
    for chunk in prange(nchunks):
        lengths, source = rim_lengths(height, width, top, bottom, left, right)
        rim = np.zeros((4, source), x.dtype)
        sums = np.empty((4, lengths.max()), x.dtype)
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            n, c = task // channels, task % channels
            plane = x_flat[n, c]
            copy_rim(plane, height, width, top, bottom, left, right, rim)
            for k in range(pairs):
                o = c * multiplier + 2 * k
                correlate_pair9(
                    plane, shifts, w[o], w[o + 1], b[o], b[o + 1],
                    y_flat[n, o, first:last], y_flat[n, o + 1, first:last], last - first,
                )  # fmt: skip
            for m in range(multiplier):
                o = c * multiplier + m
                out = y_flat[n, o]
                paired = 1 if m < 2 * pairs else 0  # the pairs above computed this filter's interior
                correlate_plane(
                    plane, rim, w[o], shifts, strip_shifts, ntaps, out[first:last], lengths, sums, paired, True, b[o]
                )
                write_rim(sums, height, width, top, bottom, left, right, b[o], out)


@kernel
def inplace_grad_input_kernel(gy, w, shifts, strip_shifts, top, bottom, left, right, nchunks, dx):
    """dx[n, c] = sum over m of the transposed correlation of gy[n, c*M + m] with w[c*M + m].

    gy (N, C*M, H, W), w (C*M, T), dx (N, C, H, W); the plan's offsets negated (``transpose=True``).
    """
    n_batch, channels, height, width = dx.shape
    out_channels, ntaps = w.shape
    multiplier = out_channels // channels
    area = height * width
    first, last = top * width + left, (height - bottom) * width - right
    gy_flat, dx_flat = gy.reshape(n_batch, out_channels, area), dx.reshape(n_batch, channels, area)
    zero = gy.dtype.type(0)
    ntasks = n_batch * channels
    for chunk in prange(nchunks):
        lengths, source = rim_lengths(height, width, top, bottom, left, right)
        rim = np.zeros((4, source), gy.dtype)
        sums = np.empty((4, lengths.max()), gy.dtype)
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            n, c = task // channels, task % channels
            out = dx_flat[n, c]
            for m in range(multiplier):
                o = c * multiplier + m
                plane = gy_flat[n, o]
                copy_rim(plane, height, width, top, bottom, left, right, rim)
                correlate_plane(
                    plane, rim, w[o], shifts, strip_shifts, ntaps, out[first:last], lengths, sums, 0, m == 0, zero
                )
            write_rim(sums, height, width, top, bottom, left, right, zero, out)


@helper
def copy_grad(plane, height, width, top, bottom, left, right, interior, rim_grad):
    """Lay one output-gradient plane (A,) out on the grids that the weight gradient's dots run over.

    ``interior`` (L,) takes the interior's flat range, ``rim_grad`` (4, R) the four rim regions on their
    correlations' grids (``rim_lengths``). Every position that is not an output of its region, the edge
    columns of the interior's range included, holds zero: those of ``interior`` are zeroed here, those of
    ``rim_grad`` stay from the buffer's one fill.
    """
    first = top * width + left
    source = plane[first : first + interior.shape[0]]
    for q in range(interior.shape[0]):
        interior[q] = source[q]
    for i in range(top, height - bottom):  # the range passes through the edge columns between its rows
        for j in range(left):
            q = i * width + j - first
            if q >= 0:
                interior[np.uint64(q)] = 0
        for j in range(width - right, width):
            q = i * width + j - first
            if q < interior.shape[0]:
                interior[np.uint64(q)] = 0
    column = top + height + bottom
    inner = width - left - right  # a band row's outputs: its interior columns
    for i in range(top + bottom):
        r, band, row = (i, 0, i) if i < top else (height - bottom + i - top, 1, i - top)
        src = plane[r * width + left : r * width + left + inner]
        dst = rim_grad[band, row * width : row * width + inner]
        for j in range(inner):
            dst[j] = src[j]
    for k in range(left):
        dst = rim_grad[2, k * column : k * column + height]
        for i in range(height):
            dst[i] = plane[np.uint64(i * width + k)]
    for k in range(right):
        dst = rim_grad[3, k * column : k * column + height]
        for i in range(height):
            dst[i] = plane[np.uint64(i * width + width - right + k)]


@helper
def exact_dots(grad, plane, offsets, height, width, acc):
    """``acc[t] = sum over pixels of grad * plane`` at tap t's offset, the padding read as zeros, float64.

    One term at a time: the path for planes whose fast dots came out NaN or Inf, where a zero of the fast
    path's grids may have met a NaN or Inf that the definition never multiplies.
    """
    for t in range(offsets.shape[0]):
        dy, dx = offsets[t, 0], offsets[t, 1]
        total = 0.0
        for i in range(height):
            for j in range(width):
                g = grad[i * width + j]
                r, col = i + dy, j + dx
                if 0 <= r < height and 0 <= col < width:
                    total += g * plane[r * width + col]
                else:
                    total += g * 0.0
        acc[t] = total


@kernel
def inplace_grad_weight_kernel(gy, x, shifts, strip_shifts, offsets, top, bottom, left, right, images, nchunks,
                               partial):  # fmt: skip
    """partial[group, o, t] = sum over the group's images and pixels of gy[n, o] * x[n, o // M] at tap t, float64.

    gy (N, C*M, H, W), x (N, C, H, W), partial (groups, C*M, T) float64. The dots read the input plane in
    place over the interior and its rim copies elsewhere; the output gradient goes onto the same grids with
    zeros where a grid position is not one of its outputs.
    """
    n_batch, channels, height, width = x.shape
    out_channels, ntaps = partial.shape[1], partial.shape[2]
    multiplier = out_channels // channels
    area = height * width
    first, last = top * width + left, (height - bottom) * width - right
    x_flat, gy_flat = x.reshape(n_batch, channels, area), gy.reshape(n_batch, out_channels, area)
    groups = (n_batch + images - 1) // images
    ntasks = channels * groups
    for chunk in prange(nchunks):
        lengths, source = rim_lengths(height, width, top, bottom, left, right)
        rim = np.zeros((4, source), x.dtype)
        rim_grad = np.zeros((4, lengths.max()), x.dtype)
        interior = np.empty(last - first, x.dtype)
        acc = np.empty(ntaps, np.float64)
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            c, group, n0, count = task_images(task, groups, images, n_batch)
            for m in range(multiplier):
                for t in range(ntaps):
                    partial[group, c * multiplier + m, t] = 0.0
            for n in range(n0, n0 + count):
                plane = x_flat[n, c]
                copy_rim(plane, height, width, top, bottom, left, right, rim)
                for m in range(multiplier):
                    o = c * multiplier + m
                    grad = gy_flat[n, o]
                    copy_grad(grad, height, width, top, bottom, left, right, interior, rim_grad)
                    fill(acc, 0)
                    for r in range(5):  # the interior (region 0, the plane in place), then the rim's regions
                        if r == 0:
                            grads, src, tap_shifts = interior, plane, shifts
                        else:
                            grads, src = rim_grad[r - 1, : lengths[r - 1]], rim[r - 1]
                            tap_shifts = shifts if r < 3 else strip_shifts
                        size = grads.shape[0]
                        if size > 0:
                            tap_dots(grads, src, tap_shifts, ntaps, 1, size, size, 1, 1, False, acc)
                    if not all_finite(acc):
                        exact_dots(grad, plane, offsets, height, width, acc)
                    for t in range(ntaps):
                        partial[group, o, t] += acc[t]
