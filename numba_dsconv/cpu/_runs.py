"""Channel runs: size-keeping, stride-1 depthwise convolutions over small planes, without padded copies.

Shape legend: N = batch, C = channels (multiplier 1: output channel ``c`` reads input channel ``c``),
H/W = plane size (the output has the input's size), A = H*W, T = KH*KW taps, P = planes per block.

When the output keeps the input's size, one image's consecutive planes form one flat run in the input and
the same run in the output, and a tap with offset (dy, dx) from its output pixel is one constant flat shift
``s = dy*W + dx`` of that run. A block of P consecutive planes is then, for every image,

    out[j] = bias[j] + sum_t wv[t, j] * src[j + s_t]

with no padded copy in and no copy out. ``wv[t, j]`` is tap t's weight for the channel of ``j``, times 0
where tap t falls outside the plane (there it reads the neighbouring row or plane); a block's ``wv`` is
built once and serves the whole batch. The phase-copy kernels of ``depthwise`` spend most of their time
copying 7- to 28-wide rows on such planes; this path removes those copies.

The loops take a run of V vectors of ``j`` (``VECTORS``) at a time and pass the whole batch over it: the
nine weights of a 3x3 kernel stay in registers for every image (loaded once per batch, not once per image
from a ``wv`` of 144 KiB in L2), and in the weight gradient the nine taps' sums stay in registers over
the images. Measured on a 2-core AMD EPYC (Zen 5), float32, against one image at a time over the whole
block: 8x576x14x14 with dilation 2 (DESIGN.md's D5), forward kernel 0.177 ms against 0.272, weight
gradient kernel 0.144 against 0.359; 8x960x7x7 (D6) 0.080 against 0.125 and 0.076 against 0.168. Runs of
two vectors took 171 us at D5 where runs of one took 228 (half the address registers per load: with one,
LLVM kept a pointer per tap and reloaded it from the stack for every multiply-add).

A zero weight cancels an out-of-plane read only when the value read is finite (0*NaN is NaN): an output
that comes out non-finite is recomputed from its in-plane taps alone (``run_point``), so NaN and Inf
still reach exactly the outputs they touch. ``run_point`` also computes the few outputs at the ends
of the array, whose out-of-plane taps would read outside it.

The gradient with respect to the input is the same correlation with every offset negated. The gradient
with respect to the weight sums ``grad_y[j] * src[j + s_t]`` element by element over the images (in the
data's dtype, images in order), then each plane's in-plane sums in float64.
"""

import functools

import numpy as np
from numba import prange

from . import _simd
from ._jit import helper, kernel
from ._planes import all_finite, chunk_bounds, chunk_count, fill, same_size_offsets

# Elements per block: its expanded weights (144 KiB for a 3x3 kernel) are built once per block. With one
# image at a time over a block, 4096 measured faster than 512 and 2048 (7x7 and 14x14 planes); with the
# batch inside the runs, 2048, 4096 and 8192 are within noise of each other (D5, D6 on Zen 5).
# RUN_MAX_AREA: larger planes go to the masked copies (``_masked``) or the phase copies, which measured as
# fast from 14x14 up and 25-40% faster at 28x28 (one plane per loop is long enough there, and their scalar
# weights take half the loads). PLANES_PER_BLOCK, when set, overrides the block size (the tests
# force blocks of two planes with a partial last one). All three are read at every call.
RUN_ELEMENTS = 4096
# Vectors of outputs per run of the loops (a power of two).
VECTORS = 2
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
def correlate_run(sf, of, n_batch, total, start, wf, row, ntaps, bv, shifts, j):
    """One run of :func:`correlate_images`: outputs ``j`` to ``j + V*L`` of every image."""
    bias = _simd.load_run(bv, j, VECTORS)
    t = 0
    while t + 9 <= ntaps:
        s0, s1, s2, s3, s4 = shifts[t], shifts[t + 1], shifts[t + 2], shifts[t + 3], shifts[t + 4]
        s5, s6, s7, s8 = shifts[t + 5], shifts[t + 6], shifts[t + 7], shifts[t + 8]
        w = t * row + j
        w0, w1 = _simd.load_run(wf, w, VECTORS), _simd.load_run(wf, w + row, VECTORS)
        w2, w3 = _simd.load_run(wf, w + 2 * row, VECTORS), _simd.load_run(wf, w + 3 * row, VECTORS)
        w4, w5 = _simd.load_run(wf, w + 4 * row, VECTORS), _simd.load_run(wf, w + 5 * row, VECTORS)
        w6, w7 = _simd.load_run(wf, w + 6 * row, VECTORS), _simd.load_run(wf, w + 7 * row, VECTORS)
        w8 = _simd.load_run(wf, w + 8 * row, VECTORS)
        for n in range(n_batch):
            at = n * total + start + j
            acc = bias if t == 0 else _simd.load_run(of, at, VECTORS)
            acc = _simd.fma(w0, _simd.load_run(sf, at + s0, VECTORS), acc)
            acc = _simd.fma(w1, _simd.load_run(sf, at + s1, VECTORS), acc)
            acc = _simd.fma(w2, _simd.load_run(sf, at + s2, VECTORS), acc)
            acc = _simd.fma(w3, _simd.load_run(sf, at + s3, VECTORS), acc)
            acc = _simd.fma(w4, _simd.load_run(sf, at + s4, VECTORS), acc)
            acc = _simd.fma(w5, _simd.load_run(sf, at + s5, VECTORS), acc)
            acc = _simd.fma(w6, _simd.load_run(sf, at + s6, VECTORS), acc)
            acc = _simd.fma(w7, _simd.load_run(sf, at + s7, VECTORS), acc)
            acc = _simd.fma(w8, _simd.load_run(sf, at + s8, VECTORS), acc)
            _simd.store(of, at, acc)
        t += 9
    while t < ntaps:
        s0, w0 = shifts[t], _simd.load_run(wf, t * row + j, VECTORS)
        for n in range(n_batch):
            at = n * total + start + j
            acc = bias if t == 0 else _simd.load_run(of, at, VECTORS)
            _simd.store(of, at, _simd.fma(w0, _simd.load_run(sf, at + s0, VECTORS), acc))
        t += 1


@helper
def correlate_images(sf, of, n_batch, total, start, wv, bv, shifts, lo, hi):
    """``of[i + j] = bv[j] + sum_t wv[t, j] * sf[i + j + shifts[t]]``, ``i = n*total + start``, every image n.

    For ``j`` in ``[lo, hi)``; sf, of flat (N*total,), wv (T, planes*A) and bv C-contiguous. A run of
    V vectors of ``j`` at a time keeps nine taps' weights in registers while the batch passes (nine runs of
    the input loaded per nine multiply-adds and one store; the weights once per batch); taps after the
    last nine one at a time, adding to the output. The last run ends at ``hi``, overlapping the one
    before: it starts again from the bias, so the outputs it shares come out the same. Only a range
    shorter than one run goes element by element.
    """
    ntaps, row = wv.shape
    wf = wv.reshape(-1)
    width = VECTORS * _simd.lanes(sf)
    if hi - lo >= width:
        for j in range(lo, hi, width):
            correlate_run(sf, of, n_batch, total, start, wf, row, ntaps, bv, shifts, min(j, hi - width))
        return
    for j in range(lo, hi):
        for n in range(n_batch):
            at = n * total + start + j  # never negative: indexed without wraparound checks
            acc = bv[j]
            for t in range(ntaps):
                acc += wv[t, j] * sf[np.uint64(at + shifts[t])]
            of[np.uint64(at)] = acc


@kernel
def run_correlate_kernel(src, w, b, mask, shifts, planes, nchunks, out):
    """out[n, c] = b[c] + sum_t w[c, t] * (src[n, c] shifted by tap t, zero outside the plane).

    src, out (N, C, H, W); w (C, T); b (C,); mask (T, A); shifts (T,).
    """
    n_batch, channels, area, total, lowest, highest, nblocks = run_layout(src, shifts, planes)
    ntaps = w.shape[1]
    src_flat, out_flat = src.reshape(n_batch, total), out.reshape(n_batch, total)
    src_all, out_all = src.reshape(-1), out.reshape(-1)
    for chunk in prange(nchunks):
        wv = np.empty((ntaps, planes * area), src.dtype)
        bv = np.empty(planes * area, src.dtype)  # each element's bias, built once per block like wv
        lo_block, hi_block = chunk_bounds(chunk, nchunks, nblocks)
        for block in range(lo_block, hi_block):
            c0, count, start, length, lo, hi = block_span(block, planes, channels, area, total, lowest, highest)
            expand_weights(w, mask, c0, count, wv)
            for k in range(count):
                fill(bv[k * area : (k + 1) * area], b[c0 + k])
            correlate_images(src_all, out_all, n_batch, total, start, wv, bv, shifts, lo, hi)
            for n in range(n_batch):
                dst = out_flat[n, start : start + length]
                for j in range(lo):
                    dst[j] = run_point(src_flat[n], start, w, b, c0, mask, shifts, j)
                for j in range(hi, length):
                    dst[j] = run_point(src_flat[n], start, w, b, c0, mask, shifts, j)
                if not all_finite(dst[lo:hi]):
                    for j in range(lo, hi):
                        if not np.isfinite(dst[j]):
                            dst[j] = run_point(src_flat[n], start, w, b, c0, mask, shifts, j)


@helper
def products_run(gf, xf, n_batch, total, start, shifts, pf, row, ntaps, j):
    """One run of :func:`batch_products`: columns ``j`` to ``j + V*L`` of every tap's sums (flat ``pf``)."""
    t = 0
    while t + 9 <= ntaps:
        s0, s1, s2, s3, s4 = shifts[t], shifts[t + 1], shifts[t + 2], shifts[t + 3], shifts[t + 4]
        s5, s6, s7, s8 = shifts[t + 5], shifts[t + 6], shifts[t + 7], shifts[t + 8]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = _simd.zeros(gf, VECTORS)
        for n in range(n_batch):
            at = n * total + start + j
            v = _simd.load_run(gf, at, VECTORS)
            a0 = _simd.fma(v, _simd.load_run(xf, at + s0, VECTORS), a0)
            a1 = _simd.fma(v, _simd.load_run(xf, at + s1, VECTORS), a1)
            a2 = _simd.fma(v, _simd.load_run(xf, at + s2, VECTORS), a2)
            a3 = _simd.fma(v, _simd.load_run(xf, at + s3, VECTORS), a3)
            a4 = _simd.fma(v, _simd.load_run(xf, at + s4, VECTORS), a4)
            a5 = _simd.fma(v, _simd.load_run(xf, at + s5, VECTORS), a5)
            a6 = _simd.fma(v, _simd.load_run(xf, at + s6, VECTORS), a6)
            a7 = _simd.fma(v, _simd.load_run(xf, at + s7, VECTORS), a7)
            a8 = _simd.fma(v, _simd.load_run(xf, at + s8, VECTORS), a8)
        p = t * row + j
        _simd.store(pf, p, a0)
        _simd.store(pf, p + row, a1)
        _simd.store(pf, p + 2 * row, a2)
        _simd.store(pf, p + 3 * row, a3)
        _simd.store(pf, p + 4 * row, a4)
        _simd.store(pf, p + 5 * row, a5)
        _simd.store(pf, p + 6 * row, a6)
        _simd.store(pf, p + 7 * row, a7)
        _simd.store(pf, p + 8 * row, a8)
        t += 9
    while t < ntaps:
        s0 = shifts[t]
        a0 = _simd.zeros(gf, VECTORS)
        for n in range(n_batch):
            at = n * total + start + j
            a0 = _simd.fma(_simd.load_run(gf, at, VECTORS), _simd.load_run(xf, at + s0, VECTORS), a0)
        _simd.store(pf, t * row + j, a0)
        t += 1


@helper
def batch_products(gf, xf, n_batch, total, start, shifts, products, lo, hi):
    """``products[t, j] = sum over n of gf[n*total + start + j] * xf[n*total + start + j + shifts[t]]``.

    For ``j`` in ``[lo, hi)``; gf, xf flat (N*total,), products (T, planes*A) C-contiguous. A run of V
    vectors of ``j`` at a time keeps the sums of nine taps in registers while the batch passes (one run of
    grad_y and nine of x loaded per nine multiply-adds, no partial sums in memory); the taps after the
    last nine one at a time. The last run ends at ``hi``, overlapping the one before (its shared sums
    come out the same); only a range shorter than one run goes element by element.
    """
    ntaps, row = products.shape
    pf = products.reshape(-1)
    width = VECTORS * _simd.lanes(gf)
    if hi - lo >= width:
        for j in range(lo, hi, width):
            products_run(gf, xf, n_batch, total, start, shifts, pf, row, ntaps, min(j, hi - width))
        return
    for j in range(lo, hi):
        for t in range(ntaps):
            acc = gf.dtype.type(0)
            for n in range(n_batch):
                at = n * total + start + j  # never negative: indexed without wraparound checks
                acc += gf[np.uint64(at)] * xf[np.uint64(at + shifts[t])]
            products[t, j] = acc


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
    x_all, gy_all = x.reshape(-1), gy.reshape(-1)
    for chunk in prange(nchunks):
        products = np.empty((ntaps, planes * area), x.dtype)
        lo_block, hi_block = chunk_bounds(chunk, nchunks, nblocks)
        for block in range(lo_block, hi_block):
            c0, count, start, length, lo, hi = block_span(block, planes, channels, area, total, lowest, highest)
            batch_products(gy_all, x_all, n_batch, total, start, shifts, products, lo, hi)
            for t in range(ntaps):
                fill(products[t, :lo], 0)
                fill(products[t, hi:length], 0)
            for n in range(n_batch):
                g = gy_flat[n, start : start + length]
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
