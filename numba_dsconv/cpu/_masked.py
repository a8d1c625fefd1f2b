"""Masked copies: stride-1, size-keeping depthwise convolutions computed on the planes' own pitch.

Shape legend: N = batch, C = input channels, M = channel multiplier, H/W = plane size (the output has the
input's size), A = H*W, T = KH*KW taps, K = distinct horizontal tap offsets (copies per plane).

When the output keeps the input's size at stride 1, output pixel ``q = i*W + j`` reads tap t at
``q + dy_t*W + dx_t`` of its plane: one constant flat shift, so a whole plane is one flat loop

    out[q] = bias + sum_t w[t] * src[q + s_t]

written straight into the output array, with scalar weights and no copy out. On the plane's own pitch a
tap with ``dx != 0`` wraps around the row ends: at columns ``j < -dx`` it reads the previous row's last
``-dx`` columns, at ``j >= W - dx`` the next row's first ``dx``. So each distinct ``dx`` reads its own copy
of the plane in which exactly the columns it would wrap into are zero, and zero rows above and below the
copies stand for the vertical padding. Every read of the padding is then a read of a zero, as in the
definition: NaN and Inf reach exactly the outputs they touch, with no test and no recomputation. A 3-wide
kernel needs three copies, each one long vectorised copy plus a few zeroed columns per row; wider kernels
go to the phase copies, one padded copy for all taps.

Against the phase copies this drops the copy out and the padded columns; against the channel runs, the
per-element weights (twice the loads per tap). It measured 10-40% faster than either on 28x28 and larger
planes with 3x3 kernels, and slower than the channel runs on 14x14 and smaller planes, whose one-plane
loops are short.

- forward: one task per (image, input channel); its copies serve the channel's M filters. A 3x3 kernel
  with M >= 2 runs its filters two at a time: each shifted value loaded feeds both (nine loads for
  eighteen multiply-adds instead of nine), 1.75x faster at 128x(1->16)x28x28.
- grad-input: the same correlation with every offset negated, summed over the channel's M output
  gradients.
- grad-weight: one task per (input channel, image group) takes the dots of each output-gradient plane,
  read in place, with the shifted copies of its input plane; float64 partial sums per (group, filter),
  summed by the caller in a fixed order, so results do not depend on the thread count. Filters go two at
  a time here too (3x3, M >= 2), 1.8x faster at the same shape.
"""

import functools

import numpy as np
from numba import prange

from . import _simd
from ._jit import helper, kernel
from ._planes import (
    BAND,
    chunk_bounds,
    chunk_count,
    correlate_flat,
    correlate_pair9,
    same_size_offsets,
    tap_dots,
    taps9,
    task_images,
    weight_gradient_groups,
)

# Copies per plane at most: one per distinct horizontal tap offset (three for a 3-wide kernel). Wider
# kernels write more copies than the phase copies' single padded one saves.
MAX_COPIES = 3
# Elements (64 bytes of float32) on whose multiples each copy's plane is placed: copy k's plane starts at
# ``starts[k]``, on the phase (mod ALIGN) that puts the most of the taps reading that copy on whole 64-byte
# lines (a vector load that straddles two lines costs two: 1.1 such loads per cycle on a Zen 5 core
# against 2 aligned ones). With a dilation of 2 on 28-wide planes two of each copy's three taps (rows -2
# and +2: 56 elements apart) are aligned. A/B on a 2-core AMD EPYC (Zen 5), float32 kernels, against
# copies whose planes start a line (whose stores are then aligned instead): 8x192x28x28 with dilation 2
# (D4) forward 1.04-1.09x, input gradient 1.04-1.07x, weight gradient 1.02-1.05x; 128x32x28x28 (D7)
# 1.10-1.11x, 1.07-1.11x, 0.96-1.07x; float64 D4 1.03-1.13x. Those line-aligned copies had in turn
# measured 1.02-1.09x (float32) and 1.10-1.15x (float64) against copies packed end to end.
ALIGN = 16


def applies(problem):
    """Tell whether a depthwise problem can run on masked copies: stride 1, size kept, at most MAX_COPIES."""
    if not problem.keeps_size:
        return False
    plan = _cached_plan(problem, False)
    return plan.columns.shape[0] <= MAX_COPIES and plan.widest < problem.geometry.in_hw[1]


def plan_args(problem, transpose=False):
    """Return the kernels' plan arguments ``(columns, shifts, starts, size, nchunks)``.

    ``transpose=True`` negates every tap offset: the gradient with respect to the input.
    """
    plan = _cached_plan(problem, transpose)
    tasks = problem.batch * problem.in_channels
    return plan.columns, plan.shifts, plan.starts, plan.size, chunk_count(tasks)


def grad_weight_args(problem):
    """Return the grad-weight kernel's arguments ``(columns, shifts, starts, size, images, nchunks)`` and groups."""
    plan = _cached_plan(problem, False)
    images, groups = weight_gradient_groups(problem.batch, problem.in_channels)
    args = (plan.columns, plan.shifts, plan.starts, plan.size, images, chunk_count(problem.in_channels * groups))
    return args, groups


@functools.lru_cache(maxsize=64)
def _cached_plan(problem, transpose):
    return MaskedPlan(problem, transpose)


class MaskedPlan:
    """Horizontal offsets of the copies (K,), tap shifts into the K stacked copies (T,), and the copy layout.

    Each copy of ``size`` elements (a multiple of ALIGN) holds zero rows above the plane, the plane's H
    rows from element ``starts[k]`` (see ALIGN), then zero rows. One guard row beyond the vertical padding
    on each side catches the row-end wrap of the first and last rows.
    """

    def __init__(self, problem, transpose):
        height, width = problem.geometry.in_hw
        offsets = same_size_offsets(problem, transpose)
        columns = sorted({dx for _, dx in offsets})
        lowest, highest = min(dy for dy, _ in offsets), max(dy for dy, _ in offsets)
        above = max(0, -lowest) + 1
        rows = above + height + max(0, highest) + 1
        # A tap reads element starts[k] + dy*W + dx + q of its copy: the vote picks starts[k] mod ALIGN.
        lowest_start = -(-above * width // ALIGN) * ALIGN
        self.size = -(-(lowest_start + ALIGN - above * width + rows * width) // ALIGN) * ALIGN
        starts, copy_of = [], {}  # copy_of[dx]: where copy dx's plane starts in the stacked copies
        for k, dx in enumerate(columns):
            votes = [0] * ALIGN
            for dy, tap_dx in offsets:
                if tap_dx == dx:
                    votes[-(dy * width + dx) % ALIGN] += 1
            starts.append(lowest_start + votes.index(max(votes)))
            copy_of[dx] = k * self.size + starts[k]
        shifts = [copy_of[dx] + dy * width + dx for dy, dx in offsets]
        self.starts = np.array(starts, np.int64)
        self.widest = max(abs(dx) for dx in columns)  # a wrap past a whole row is not a column mask
        self.columns = np.array(columns, np.int64)
        self.shifts = np.array(shifts, np.int64)
        self.columns.flags.writeable = self.shifts.flags.writeable = self.starts.flags.writeable = False


@helper
def masked_copies(plane, width, columns, starts, out):
    """Write one flat plane (A,) into its K masked copies in ``out`` (K*size,), copy k from ``starts[k]`` on.

    Copy k holds the plane with the columns that offset ``columns[k]`` wraps into set to zero. The guard
    rows are never written: a buffer zeroed once serves every plane.
    """
    area = plane.shape[0]
    height = area // width
    size = out.shape[0] // columns.shape[0]
    for k in range(columns.shape[0]):
        dx = columns[k]
        dst = out[k * size + starts[k] : k * size + starts[k] + area]
        for q in range(area):
            dst[q] = plane[q]
        # The wrapped columns: the first dx of each row for dx > 0, the last -dx for dx < 0.
        lo, hi = (0, dx) if dx > 0 else (width + dx, width)
        for i in range(height):
            for j in range(lo, hi):
                dst[np.uint64(i * width + j)] = 0


@kernel
def masked_forward_kernel(x, w, b, columns, shifts, starts, size, nchunks, y):
    """y[n, o] = b[o] + correlate(x[n, o // M], w[o]); x (N, C, H, W), w (C*M, T), y (N, C*M, H, W)."""
    n_batch, channels, height, width = x.shape
    out_channels, ntaps = w.shape
    multiplier = out_channels // channels
    pairs = multiplier // 2 if ntaps == 9 else 0
    area = height * width
    x_flat, y_flat = x.reshape(n_batch, channels, area), y.reshape(n_batch, out_channels, area)
    ntasks = n_batch * channels
    for chunk in prange(nchunks):
        src = _simd.aligned_zeros(columns.shape[0] * size, x.dtype)
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            n, c = task // channels, task % channels
            masked_copies(x_flat[n, c], width, columns, starts, src)
            for k in range(pairs):
                o = c * multiplier + 2 * k
                correlate_pair9(src, shifts, w[o], w[o + 1], b[o], b[o + 1], y_flat[n, o], y_flat[n, o + 1], area)
            for m in range(2 * pairs, multiplier):
                o = c * multiplier + m
                correlate_flat(src, w[o], shifts, ntaps, y_flat[n, o], area, True, b[o])


@kernel
def masked_grad_input_kernel(gy, w, columns, shifts, starts, size, nchunks, dx):
    """dx[n, c] = sum over m of the transposed correlation of gy[n, c*M + m] with w[c*M + m].

    gy (N, C*M, H, W), w (C*M, T), dx (N, C, H, W); ``shifts`` from the transposed plan.
    """
    n_batch, channels, height, width = dx.shape
    out_channels, ntaps = w.shape
    multiplier = out_channels // channels
    area = height * width
    gy_flat, dx_flat = gy.reshape(n_batch, out_channels, area), dx.reshape(n_batch, channels, area)
    ntasks = n_batch * channels
    for chunk in prange(nchunks):
        src = _simd.aligned_zeros(columns.shape[0] * size, gy.dtype)
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            n, c = task // channels, task % channels
            for m in range(multiplier):
                o = c * multiplier + m
                masked_copies(gy_flat[n, o], width, columns, starts, src)
                correlate_flat(src, w[o], shifts, ntaps, dx_flat[n, c], area, m == 0, 0)


@helper
def dots_pair9(grad_a, grad_b, src, shifts, length, acc_a, acc_b):
    """``acc_a[t] += sum_q grad_a[q] * src[q + shifts[t]]`` and the same for ``b``, 3x3 kernels (T = 9).

    Eighteen running sums in the data's dtype per band (vectorised), added to the float64 ``acc`` band by
    band, as ``tap_dots`` does; each shifted value loaded feeds both gradients.
    """
    for start in range(0, length, BAND):
        stop = min(start + BAND, length)
        ga, gb = grad_a[start:stop], grad_b[start:stop]
        x0, x1, x2, x3, x4, x5, x6, x7, x8 = taps9(src, shifts, 0, start, stop)
        zero = ga.dtype.type(0)
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
        r0 = r1 = r2 = r3 = r4 = r5 = r6 = r7 = r8 = zero
        for j in range(ga.shape[0]):
            u, v = ga[j], gb[j]
            v0, v1, v2, v3, v4, v5, v6, v7, v8 = x0[j], x1[j], x2[j], x3[j], x4[j], x5[j], x6[j], x7[j], x8[j]
            s0, s1, s2 = s0 + u * v0, s1 + u * v1, s2 + u * v2
            s3, s4, s5 = s3 + u * v3, s4 + u * v4, s5 + u * v5
            s6, s7, s8 = s6 + u * v6, s7 + u * v7, s8 + u * v8
            r0, r1, r2 = r0 + v * v0, r1 + v * v1, r2 + v * v2
            r3, r4, r5 = r3 + v * v3, r4 + v * v4, r5 + v * v5
            r6, r7, r8 = r6 + v * v6, r7 + v * v7, r8 + v * v8
        sums_a, sums_b = (s0, s1, s2, s3, s4, s5, s6, s7, s8), (r0, r1, r2, r3, r4, r5, r6, r7, r8)
        for t in range(9):
            acc_a[t] += sums_a[t]
            acc_b[t] += sums_b[t]


@kernel
def masked_grad_weight_kernel(gy, x, columns, shifts, starts, size, images, nchunks, partial):
    """partial[group, o, t] = sum over the group's images and pixels of gy[n, o] * x[n, o // M] at tap t, float64.

    gy (N, C*M, H, W), x (N, C, H, W), partial (groups, C*M, T) float64.
    """
    n_batch, channels, height, width = x.shape
    out_channels, ntaps = partial.shape[1], partial.shape[2]
    multiplier = out_channels // channels
    pairs = multiplier // 2 if ntaps == 9 else 0
    area = height * width
    x_flat, gy_flat = x.reshape(n_batch, channels, area), gy.reshape(n_batch, out_channels, area)
    groups = (n_batch + images - 1) // images
    ntasks = channels * groups
    for chunk in prange(nchunks):
        src = _simd.aligned_zeros(columns.shape[0] * size, x.dtype)
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            c, group, n0, count = task_images(task, groups, images, n_batch)
            acc = partial[group, c * multiplier : (c + 1) * multiplier]
            for m in range(multiplier):
                for t in range(ntaps):
                    acc[m, t] = 0.0
            for n in range(n0, n0 + count):
                masked_copies(x_flat[n, c], width, columns, starts, src)
                grads = gy_flat[n, c * multiplier : (c + 1) * multiplier]
                for k in range(pairs):
                    dots_pair9(grads[2 * k], grads[2 * k + 1], src, shifts, area, acc[2 * k], acc[2 * k + 1])
                # One image's plane has no padded columns: every product is a real one.
                for m in range(2 * pairs, multiplier):
                    tap_dots(grads[m], src, shifts, ntaps, height, width, width, height, height, False, acc[m])
