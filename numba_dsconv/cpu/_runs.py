"""Channel runs: size-keeping, stride-1 depthwise convolutions over small planes, without padded copies.

Shape legend: N = batch, C = channels (multiplier 1: output channel ``c`` reads input channel ``c``),
H/W = plane size (the output has the input's size), A = H*W, T = KH*KW taps, P = planes per block.

When the output keeps the input's size, one image's consecutive planes form one flat run in the input and
the same run in the output, and a tap with offset (dy, dx) from its output pixel is one constant flat shift
``s = dy*W + dx`` of that run. A block of P consecutive planes is then, for every image,

    out[j] = bias[j] + sum_t wv[t, j] * src[j + s_t]

one long loop that LLVM vectorises, with no padded copy in and no copy out. ``wv[t, j]`` is tap t's
weight for the channel of ``j``, times 0 where tap t falls outside the plane (there it reads the
neighbouring row or plane); a block's ``wv`` is built once and serves the whole batch. The phase-copy
kernels of ``depthwise`` spend most of their time copying 7- to 28-wide rows on such planes; this path
removes those copies.

A zero weight cancels an out-of-plane read only when the value read is finite (0*NaN is NaN): an output
that comes out non-finite is recomputed from its in-plane taps alone (``run_point``), so NaN and Inf
still reach exactly the outputs they touch. ``run_point`` also computes the few outputs at the ends
of the array, whose out-of-plane taps would read outside it.

The gradient with respect to the input is the same correlation with every offset negated. The gradient
with respect to the weight accumulates ``grad_y[j] * src[j + s_t]`` element by element over the images,
then sums each plane's in-plane products in float64.
"""

import functools

import numpy as np
from numba import prange

from ._jit import helper, kernel
from ._planes import all_finite, chunk_bounds, chunk_count, fill, same_size_offsets, store, taps9, windows3

# Elements per block. Longer runs measured faster up to about 4096 (7x7 and 14x14 planes, 3x3 kernels,
# against 512 and 2048; 8192 no better) although a 3x3 kernel's expanded weights (144 KiB) then sit in
# L2: the fixed cost of each pass (eighteen views, a scalar remainder) is spread over more elements.
# RUN_MAX_AREA: larger planes go to the masked copies (``_masked``) or the phase copies, which measured as
# fast from 14x14 up and 25-40% faster at 28x28 (one plane per loop is long enough there, and their scalar
# weights take half the loads). PLANES_PER_BLOCK, when set, overrides the block size (the tests
# force blocks of two planes with a partial last one). All three are read at every call.
RUN_ELEMENTS = 4096
RUN_MAX_AREA = 256
PLANES_PER_BLOCK = None


def applies(problem):
    """Tell whether a depthwise problem runs as channel runs: stride 1, multiplier 1, size kept, small planes."""
    height, width = problem.geometry.in_hw
    return problem.multiplier == 1 and problem.keeps_size and height * width <= RUN_MAX_AREA


def plan_args(problem, dtype, transpose=False):
    """Return the kernels' plan arguments ``(mask, shifts, planes, nchunks)`` for one problem.

    ``transpose=True`` negates every offset: the correlation then computes the gradient with respect to the
    input from the gradient with respect to the output.
    """
    plan = _cached_plan(problem, np.dtype(dtype), transpose)
    height, width = problem.geometry.in_hw
    channels = problem.in_channels
    if PLANES_PER_BLOCK is not None:
        planes = max(1, min(channels, int(PLANES_PER_BLOCK)))
    else:
        # Up to RUN_ELEMENTS per block, and at least 16 blocks to keep every core busy. Not a count derived
        # from the thread count: an output's rounding depends on whether it falls in a loop's vector body or
        # its scalar remainder, so the blocks must not change with the threads.
        planes = max(1, min(RUN_ELEMENTS // (height * width), channels // 16))
    return plan.mask, plan.shifts, planes, chunk_count(-(-channels // planes))


@functools.lru_cache(maxsize=64)
def _cached_plan(problem, dtype, transpose):
    # Building the masks costs about 70 us of NumPy calls, more than a small plane's whole convolution;
    # a training loop asks for the same few plans at every step.
    return RunPlan(problem, dtype, transpose)


class RunPlan:
    """Tap shifts (T,) and in-plane masks (T, A) of one problem; read-only, shared."""

    def __init__(self, problem, dtype, transpose):
        height, width = problem.geometry.in_hw
        offsets = same_size_offsets(problem, transpose)
        rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
        mask = np.empty((len(offsets), height * width), dtype)
        for t, (dy, dx) in enumerate(offsets):
            inside = (rows + dy >= 0) & (rows + dy < height) & (cols + dx >= 0) & (cols + dx < width)
            mask[t] = inside.ravel()
        shifts = np.array([dy * width + dx for dy, dx in offsets], np.int64)
        mask.flags.writeable = shifts.flags.writeable = False
        self.mask, self.shifts = mask, shifts


@helper
def run_layout(src, shifts, planes):
    """Batch, channels, plane area, elements per image, lowest and highest tap shift, and block count."""
    n_batch, channels, height, width = src.shape
    area = height * width
    return n_batch, channels, area, channels * area, shifts.min(), shifts.max(), (channels + planes - 1) // planes


@helper
def block_span(block, planes, channels, area, total, lowest, highest):
    """Locate a block: first channel, plane count, flat start and length.

    Also the range ``[lo, hi)`` of its outputs whose every tap reads inside the image's ``total`` elements.
    """
    c0 = block * planes
    count = min(planes, channels - c0)
    start, length = c0 * area, count * area
    lo = min(length, max(0, -(start + lowest)))
    hi = max(lo, min(length, total - start - highest))
    return c0, count, start, length, lo, hi


@helper
def expand_weights(w, mask, c0, count, wv):
    """``wv[t, k*A + p] = w[c0 + k, t] * mask[t, p]`` for the ``count`` planes of a block."""
    ntaps, area = mask.shape
    for k in range(count):
        for t in range(ntaps):
            weight, inside = w[c0 + k, t], mask[t]
            row = wv[t, k * area : (k + 1) * area]
            for p in range(area):
                row[p] = weight * inside[p]


@helper
def tap_value(src, index, inside):
    """``src[index]`` for a tap inside its plane, else the padding's zero (never read: it may lie outside ``src``).

    Multiplying by that zero, rather than skipping the tap, keeps the definition's NaN for a non-finite
    weight or gradient times padding.
    """
    if inside != 0:
        return src[np.uint64(index)]
    return src.dtype.type(0)


@helper
def run_point(src, start, w, b, c0, mask, shifts, j):
    """Output ``j`` of the block that starts at channel ``c0`` (flat offset ``start``), reading in-plane taps only."""
    ntaps, area = mask.shape
    k, p = j // area, j % area
    acc = src.dtype.type(0)
    for t in range(ntaps):
        acc += w[c0 + k, t] * tap_value(src, start + j + shifts[t], mask[t, p])
    return b[c0 + k] + acc


@helper
def rows3(table, t, lo, hi):
    """Return the views ``table[t + i, lo:hi]`` of rows ``t`` to ``t + 2`` (one per tap)."""
    return table[t, lo:hi], table[t + 1, lo:hi], table[t + 2, lo:hi]


@helper
def correlate_weighted(src, start, wv, bv, shifts, ntaps, dst, lo, hi):
    """``dst[j] = bv[j] + sum_t wv[t, j] * src[start + j + shifts[t]]`` for ``j`` in ``[lo, hi)``.

    Nine taps per pass over ``dst`` (one 3x3 kernel), then three, then one, as ``_planes.correlate_flat``;
    the first pass writes the bias and its sum, so ``dst`` needs no fill pass.
    """
    d, bias = dst[lo:hi], bv[lo:hi]
    first = True
    t = 0
    while t + 9 <= ntaps:
        x0, x1, x2, x3, x4, x5, x6, x7, x8 = taps9(src, shifts, t, start + lo, start + hi)
        w0, w1, w2 = rows3(wv, t, lo, hi)
        w3, w4, w5 = rows3(wv, t + 3, lo, hi)
        w6, w7, w8 = rows3(wv, t + 6, lo, hi)
        for j in range(d.shape[0]):
            value = (
                (w0[j] * x0[j] + w1[j] * x1[j] + w2[j] * x2[j])
                + (w3[j] * x3[j] + w4[j] * x4[j] + w5[j] * x5[j])
                + (w6[j] * x6[j] + w7[j] * x7[j] + w8[j] * x8[j])
            )
            store(d, j, value, first, bias[j])
        first = False
        t += 9
    while t + 3 <= ntaps:
        x0, x1, x2 = windows3(src, shifts, t, start + lo, start + hi)
        w0, w1, w2 = rows3(wv, t, lo, hi)
        for j in range(d.shape[0]):
            store(d, j, w0[j] * x0[j] + w1[j] * x1[j] + w2[j] * x2[j], first, bias[j])
        first = False
        t += 3
    while t < ntaps:
        x0, w0 = src[start + lo + shifts[t] : start + hi + shifts[t]], wv[t, lo:hi]
        for j in range(d.shape[0]):
            store(d, j, w0[j] * x0[j], first, bias[j])
        first = False
        t += 1


@kernel
def run_correlate_kernel(src, w, b, mask, shifts, planes, nchunks, out):
    """out[n, c] = b[c] + sum_t w[c, t] * (src[n, c] shifted by tap t, zero outside the plane).

    src, out (N, C, H, W); w (C, T); b (C,); mask (T, A); shifts (T,).
    """
    n_batch, channels, area, total, lowest, highest, nblocks = run_layout(src, shifts, planes)
    ntaps = w.shape[1]
    src_flat, out_flat = src.reshape(n_batch, total), out.reshape(n_batch, total)
    for chunk in prange(nchunks):
        wv = np.empty((ntaps, planes * area), src.dtype)
        bv = np.empty(planes * area, src.dtype)  # each element's bias, built once per block like wv
        lo_block, hi_block = chunk_bounds(chunk, nchunks, nblocks)
        for block in range(lo_block, hi_block):
            c0, count, start, length, lo, hi = block_span(block, planes, channels, area, total, lowest, highest)
            expand_weights(w, mask, c0, count, wv)
            for k in range(count):
                fill(bv[k * area : (k + 1) * area], b[c0 + k])
            for n in range(n_batch):
                dst = out_flat[n, start : start + length]
                correlate_weighted(src_flat[n], start, wv, bv, shifts, ntaps, dst, lo, hi)
                for j in range(lo):
                    dst[j] = run_point(src_flat[n], start, w, b, c0, mask, shifts, j)
                for j in range(hi, length):
                    dst[j] = run_point(src_flat[n], start, w, b, c0, mask, shifts, j)
                if not all_finite(dst[lo:hi]):
                    for j in range(lo, hi):
                        if not np.isfinite(dst[j]):
                            dst[j] = run_point(src_flat[n], start, w, b, c0, mask, shifts, j)


@helper
def accumulate_products(g, src, start, shifts, ntaps, products, lo, hi):
    """``products[t, j] += g[j] * src[start + j + shifts[t]]`` for ``j`` in ``[lo, hi)``, nine taps per pass."""
    gj = g[lo:hi]
    t = 0
    while t + 9 <= ntaps:
        x0, x1, x2, x3, x4, x5, x6, x7, x8 = taps9(src, shifts, t, start + lo, start + hi)
        p0, p1, p2 = rows3(products, t, lo, hi)
        p3, p4, p5 = rows3(products, t + 3, lo, hi)
        p6, p7, p8 = rows3(products, t + 6, lo, hi)
        for j in range(gj.shape[0]):
            v = gj[j]
            p0[j] += v * x0[j]
            p1[j] += v * x1[j]
            p2[j] += v * x2[j]
            p3[j] += v * x3[j]
            p4[j] += v * x4[j]
            p5[j] += v * x5[j]
            p6[j] += v * x6[j]
            p7[j] += v * x7[j]
            p8[j] += v * x8[j]
        t += 9
    while t < ntaps:
        x0, p0 = src[start + lo + shifts[t] : start + hi + shifts[t]], products[t, lo:hi]
        for j in range(gj.shape[0]):
            p0[j] += gj[j] * x0[j]
        t += 1


@helper
def add_point_products(g, src, start, mask, shifts, j, products):
    """``products[t, j] += g[j] * src[start + j + shifts[t]]``, reading in-plane taps only."""
    ntaps, area = mask.shape
    p = j % area
    for t in range(ntaps):
        products[t, j] += g[j] * tap_value(src, start + j + shifts[t], mask[t, p])


@kernel
def run_grad_weight_kernel(gy, x, mask, shifts, planes, nchunks, grad_w):
    """grad_w[c, t] = sum over n and in-plane pixels p of gy[n, c, p] * x[n, c, p + shift_t], float64.

    gy, x (N, C, H, W); mask (T, A); grad_w (C, T) float64. An input or gradient value that is not finite
    can leave NaN in a tap it does not touch (0 * NaN): the caller then recomputes with the phase kernels.
    """
    n_batch, channels, area, total, lowest, highest, nblocks = run_layout(x, shifts, planes)
    ntaps = mask.shape[0]
    x_flat, gy_flat = x.reshape(n_batch, total), gy.reshape(n_batch, total)
    for chunk in prange(nchunks):
        products = np.empty((ntaps, planes * area), x.dtype)
        lo_block, hi_block = chunk_bounds(chunk, nchunks, nblocks)
        for block in range(lo_block, hi_block):
            c0, count, start, length, lo, hi = block_span(block, planes, channels, area, total, lowest, highest)
            for t in range(ntaps):
                fill(products[t, :length], 0)
            for n in range(n_batch):
                g = gy_flat[n, start : start + length]
                accumulate_products(g, x_flat[n], start, shifts, ntaps, products, lo, hi)
                # Outputs near the array's ends: only their in-plane taps (the others would read outside x).
                for j in range(lo):
                    add_point_products(g, x_flat[n], start, mask, shifts, j, products)
                for j in range(hi, length):
                    add_point_products(g, x_flat[n], start, mask, shifts, j, products)
            for k in range(count):
                for t in range(ntaps):
                    row, inside = products[t, k * area : (k + 1) * area], mask[t]
                    acc = 0.0
                    for p in range(area):
                        acc += row[p] * inside[p]
                    grad_w[c0 + k, t] = acc
