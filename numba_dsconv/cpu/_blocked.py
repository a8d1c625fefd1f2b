"""Channel blocks: depthwise forward passes with wide kernels, L channels to a vector.

Shape legend: N = batch, C = input channels, M = channel multiplier, H/W = input size, Ho/Wo = output
size, KH/KW = kernel size, T = KH*KW taps, L = lanes of one 64-byte vector (16 float32, 8 float64),
Hp/Wp = the padded input rows and columns the outputs read.

The other forward kernels put consecutive pixels of one plane in a vector. A tap then reads that vector
shifted by its column offset: one unaligned load per multiply-add (half of them, or all of them with 64-byte
vectors, split across two cache lines), and the loads bound the loop. With a 7x7 kernel this left the
8x64x56x56 forward below PyTorch's contiguous layout (0.73-0.85x).

Here a task takes *L channels of one image* and lays them out interleaved, pixel after pixel (the blocked
layout of oneDNN's ``nChw16c``): a zero-padded buffer of Hp x Wp pixels, each one vector of L channels.
The filters of those channels differ, so a tap's weight is a vector too, and a shift by a column is a shift
by whole vectors: every load is aligned. A run of R = 8 output pixels of one row keeps its R accumulators in
registers across all T taps:

    acc[r] += w[a, b] * buf[i*sh + a*dh, j + r + b*dw]        r < R, for every tap (a, b)

one weight load and one run load (R vectors through one address) per R multiply-adds: the loop runs at
about 80% of the machine's fused multiply-add peak on one core (5.4 of 6.6 G vector multiply-adds per
second). The output block (Ho*Wo pixels of L channels) is transposed back into the L output planes.

Moving the data in and out costs two transposes (64 shuffles per L x L block of float32), which kernels of
nine taps do not earn back (3x3 kernels: 0.58-0.94x of their own kernels); from 5x5 kernels on they pay:
``applies``. Horizontal stride 1 only (a run is consecutive pixels); any vertical stride, dilation,
padding and multiplier. A row narrower than a run goes pixel by pixel; the last run of a row overlaps the
one before it where Wo is not a multiple of R (those outputs are computed twice, identically).

The padding is zeros in the buffer, read like the data: NaN and Inf reach exactly the outputs they touch,
and a non-finite weight meets the padding's zeros as in the definition. The lanes of a last, partial block of
channels (C not a multiple of L) compute on stale values and are never written out. One task per (image,
block of channels), its M filters one after the other: every output is written by one task, so results do
not depend on the thread count.
"""

import numpy as np
from numba import prange

from . import _simd
from ._jit import helper, kernel
from ._planes import chunk_bounds, chunk_count

# Tests lower the thresholds to run every horizontal-stride-1 problem here, or switch the path off.
ENABLED = True
MIN_TAPS = 25
RUN = 8
MIN_OUTPUT_WIDTH = RUN


def applies(problem):
    """Tell whether a depthwise forward problem runs here: horizontal stride 1, at least 25 taps, Wo >= 8.

    Measured against the kernels these problems ran on before (A/B interleaved, threads pinned, float32):
    8x64x56x56 7x7 1.29-1.36x, 128x32x28x28 7x7 1.38-1.60x, 8x64x56x56 5x5 1.08-1.16x, 8x192x28x28 5x5
    1.15-1.19x, 8x576x14x14 5x5 1.21-1.82x; 3x3 kernels 0.52-0.94x (they keep their kernels).
    """
    g = problem.geometry
    kh, kw = g.kernel
    return ENABLED and g.stride[1] == 1 and kh * kw >= MIN_TAPS and g.out_hw[1] >= MIN_OUTPUT_WIDTH


def forward_args(problem, dtype):
    """Return the forward kernel's plan arguments ``(kh, kw, sh, dh, dw, pad_top, pad_left, ho, wo, nchunks)``."""
    g = problem.geometry
    lanes = _simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    blocks = problem.batch * -(-problem.in_channels // lanes)
    return (*g.kernel, g.stride[0], *g.dilation, g.pad[0], g.pad[2], *g.out_hw, chunk_count(blocks))


@helper
def pack_block(x, n, c0, nch, pad_top, pad_left, hp, wp, buf, block):
    """Copy channels ``[c0, c0 + nch)`` of image n into the interior of buf, interleaved.

    ``buf[((y + pad_top)*wp + x + pad_left)*L + l] = x[n, c0 + l, y, x]`` for every input pixel the
    outputs read; the rest of buf (the padding) is left as it is (zero). Full blocks of channels go L pixels
    at a time through a transpose in ``block`` (L x L), scattering its rows to their pixels.
    """
    _, channels, height, width = x.shape
    lanes = _simd.lanes(x)
    plane = height * width
    base = (n * channels + c0) * plane
    flat = x.reshape(-1)
    y_lo, y_hi = max(0, -pad_top), min(height, hp - pad_top)
    x_lo, x_hi = max(0, -pad_left), min(width, wp - pad_left)
    done = y_lo * width
    if nch == lanes and x_lo == 0 and x_hi == width:
        # Whole rows: the pixels run flat through the plane; (row, col) of pixel `done` steps along with it.
        end = y_hi * width
        row, col = y_lo, 0
        while done + lanes <= end:
            _simd.transpose(flat, base + done, plane, block, 0, lanes)
            for k in range(lanes):
                _simd.store(buf, ((row + pad_top) * wp + col + pad_left) * lanes, _simd.load(block, k * lanes))
                col += 1
                if col == width:
                    col = 0
                    row += 1
            done += lanes
    for row in range(done // width, y_hi):
        for col in range(x_lo, x_hi):
            if row * width + col >= done:
                target = ((row + pad_top) * wp + col + pad_left) * lanes
                for k in range(nch):
                    buf[target + k] = flat[base + k * plane + row * width + col]


@helper
def correlate_block(buf, wv, bias, kh, kw, sh, dh, dw, wp, ho, wo, out):
    """Correlate a block: ``out[(i*wo + j)*L + l] = bias[l] + sum_{a,b} wv[(a*kw + b)*L + l] * v``.

    ``v = buf[((i*sh + a*dh)*wp + j + b*dw)*L + l]``; every output pixel of the block, all L lanes at once.
    """
    lanes = _simd.lanes(buf)
    run_bias = _simd.tile(bias, RUN)
    for i in range(ho):
        j = 0
        while j < wo and wo >= RUN:
            j = min(j, wo - RUN)
            acc = run_bias
            for a in range(kh):
                row = (i * sh + a * dh) * wp + j
                for b in range(kw):
                    w = _simd.tile(_simd.load(wv, (a * kw + b) * lanes), RUN)
                    acc = _simd.fma(w, _simd.load_run(buf, (row + b * dw) * lanes, RUN), acc)
            _simd.store(out, (i * wo + j) * lanes, acc)
            j += RUN
        while j < wo:
            one = bias
            for a in range(kh):
                row = (i * sh + a * dh) * wp + j
                for b in range(kw):
                    one = _simd.fma(_simd.load(wv, (a * kw + b) * lanes), _simd.load(buf, (row + b * dw) * lanes), one)
            _simd.store(out, (i * wo + j) * lanes, one)
            j += 1


@helper
def unpack_block(out, plane, y, n, first, step, nch):
    """``y[n, first + l*step].flat[p] = out[p*L + l]`` for ``l < nch``: the block back into its output planes."""
    lanes = _simd.lanes(out)
    flat = y.reshape(-1)
    base = (n * y.shape[1] + first) * plane
    p = 0
    if nch == lanes:
        while p + lanes <= plane:
            _simd.transpose(out, p * lanes, lanes, flat, base + p, step * plane)
            p += lanes
    for q in range(p, plane):
        for k in range(nch):
            flat[base + k * step * plane + q] = out[q * lanes + k]


@kernel
def blocked_forward_kernel(x, w, b, kh, kw, sh, dh, dw, pad_top, pad_left, ho, wo, nchunks, y):
    """Write into y (N, C*M, Ho, Wo) the depthwise correlation of x (N, C, H, W) with w (C*M, T), plus b."""
    n_batch, channels = x.shape[0], x.shape[1]
    multiplier = w.shape[0] // channels
    ntaps = kh * kw
    lanes = _simd.lanes(x)
    blocks = -(-channels // lanes)
    hp = (ho - 1) * sh + (kh - 1) * dh + 1
    wp = wo + (kw - 1) * dw
    ntasks = n_batch * blocks
    for chunk in prange(nchunks):
        lo, hi = chunk_bounds(chunk, nchunks, ntasks)
        buf = _simd.aligned_empty(hp * wp * lanes, x.dtype)
        buf[:] = 0
        block = _simd.aligned_empty(lanes * lanes, x.dtype)
        wv = _simd.aligned_empty(ntaps * lanes, x.dtype)
        wv[:] = 0
        bias = _simd.aligned_empty(lanes, x.dtype)
        bias[:] = 0
        out = _simd.aligned_empty(ho * wo * lanes, x.dtype)
        for task in range(lo, hi):
            n, c0 = task // blocks, (task % blocks) * lanes
            nch = min(lanes, channels - c0)
            pack_block(x, n, c0, nch, pad_top, pad_left, hp, wp, buf, block)
            for f in range(multiplier):
                for k in range(nch):
                    o = (c0 + k) * multiplier + f
                    bias[k] = b[o]
                    for t in range(ntaps):
                        wv[t * lanes + k] = w[o, t]
                correlate_block(buf, wv, _simd.load(bias, 0), kh, kw, sh, dh, dw, wp, ho, wo, out)
                unpack_block(out, ho * wo, y, n, c0 * multiplier + f, multiplier, nch)
