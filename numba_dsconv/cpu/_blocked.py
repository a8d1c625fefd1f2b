"""Channel blocks: depthwise forward passes with wide kernels, L channels to a vector.

Shape legend: N = batch, C = input channels, M = channel multiplier, H/W = input size, Ho/Wo = output
size, KH/KW = kernel size, T = KH*KW taps, L = lanes of one vector (float32: 16 with AVX-512, 8 with AVX2),
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
second, Xeon). Where the vertical stride equals the vertical dilation (stride 1 without dilation, the
common case) output rows go in pairs: row i + 1's tap row a - 1 reads the input row of row i's tap row a,
so each run is loaded once for 2R accumulators (``correlate_row_pair``), and the loads no longer bound
the loop (on a Zen 5 core two 64-byte loads per cycle feed at most two multiply-adds). Against single
rows, float32 forward kernel, A/B interleaved on a 2-core AMD EPYC (Zen 5): 8x64x56x56 7x7 0.70 ms
against 1.17, 8x192x28x28 5x5 1.12x, 8x576x14x14 5x5 1.20x, 128x32x28x28 7x7 1.36x.
The output block (Ho*Wo pixels of L channels) is transposed back into the L output planes.
A task goes row by row: before an output row, the input rows it reads come into the buffer; after it, the
outputs it completes go out (whole blocks of L pixels), so that the traffic with memory overlaps the
arithmetic (against a whole plane in, then all rows, then the plane out: 1.07-1.25x on 5x5 and 7x7 kernels
at 28x28, 1.15x at 56x56 in float64, no change at 56x56 in float32).

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

from numba import prange

from . import _simd
from ._jit import helper, kernel
from ._planes import chunk_bounds, chunk_count

# Tests lower the thresholds to run every horizontal-stride-1 problem here, or switch the path off.
ENABLED = True
MIN_TAPS = 25
# Pixels to a run: a row pair keeps 2R vectors of sums, half the vector registers (32 with AVX-512, 16 with
# AVX2 only). With AVX2 and runs of 8 every register held a sum and the loop spilled: 8x64x56x56 with a 7x7
# kernel took 3.8-4.1 ms with runs of 8 and 2.4-2.9 with runs of 4, 128x32x28x28 8.5-9.4 against 4.9-5.0
# (2-core AMD EPYC, Zen 3; forward and input gradient alike).
RUN = 8 if _simd.VECTOR_BYTES == 64 else 4
MIN_OUTPUT_WIDTH = RUN


def applies(problem):
    """Tell whether a depthwise forward problem runs here: horizontal stride 1, at least 25 taps, Wo >= 8.

    Forward passes against the kernels these problems ran on before (A/B interleaved, threads pinned),
    float32 / float64: 8x64x56x56 7x7 1.42x / 1.42x, 128x32x28x28 7x7 1.50x / 1.72x, 8x64x56x56 5x5 1.46x /
    1.33x, 8x192x28x28 5x5 1.27x / 1.57x, 8x576x14x14 5x5 1.36x / 1.81x; their input gradients (mirrored)
    1.37-1.65x / 1.34-1.73x. 7x7 planes (Wo < R) measured no faster (1.08x / 1.04x); 3x3 kernels
    0.52-0.94x of their own kernels (a first version): both keep their kernels.
    """
    g = problem.geometry
    kh, kw = g.kernel
    return ENABLED and g.stride[1] == 1 and kh * kw >= MIN_TAPS and g.out_hw[1] >= MIN_OUTPUT_WIDTH


def forward_args(problem, dtype):
    """Return the forward kernel's plan arguments ``(kh, kw, sh, dh, dw, pad_top, pad_left, ho, wo, nchunks)``."""
    g = problem.geometry
    blocks = problem.batch * -(-problem.in_channels // _simd.lanes_for(dtype))
    return (*g.kernel, g.stride[0], *g.dilation, g.pad[0], g.pad[2], *g.out_hw, chunk_count(blocks))


@helper
def pack_pixels(x, n, c0, nch, pad_top, pad_left, hp, wp, buf, block, done, need):
    """Copy input pixels of channels ``[c0, c0 + nch)`` of image n into buf, interleaved; return how far.

    Pixels go in flat order (``q = row*W + col``) from ``done`` on, until at least ``need`` (or all of them):
    ``buf[((row + pad_top)*wp + col + pad_left)*L + l] = x[n, c0 + l, row, col]`` for the pixels the outputs
    read; the rest of buf (the padding) is left as it is (zero). Full blocks of channels over whole rows go
    L pixels at a time through a transpose: rows of at least L pixels straight into buf, row by row (the
    last transpose of a row overlapping the one before it); narrower rows through ``block`` (L x L), whose
    rows are scattered to their pixels. The last few pixels of narrow rows, once ``need`` reaches them, and
    every pixel of other blocks go one by one.

    Straight into buf rather than through ``block``, float32 forward kernels, A/B on a 2-core AMD EPYC (Zen
    5): 8x64x56x56 7x7 0.52 ms against 0.60, 128x32x28x28 7x7 1.17 against 1.39, 8x192x28x28 5x5 0.30
    against 0.37 (float64 1.05-1.10x); 14x14 planes keep ``block``.
    """
    _, channels, height, width = x.shape
    lanes = _simd.lanes(x)
    plane = height * width
    base = (n * channels + c0) * plane
    flat = x.reshape(-1)
    cols = min(width, wp - pad_left)
    end = min(height, hp - pad_top) * width
    whole = nch == lanes and cols == width
    need = min(need, end) if whole else end
    if whole and width >= lanes:
        # Row by row (``need`` and ``done`` are whole rows here), each block of L pixels transposed straight to
        # its pixels; the last block of a row overlaps the one before it (those pixels are written twice).
        while done < need:
            target = ((done // width + pad_top) * wp + pad_left) * lanes
            for col in range(0, width, lanes):
                col = min(col, width - lanes)
                _simd.transpose(flat, base + done + col, plane, buf, target + col * lanes, lanes)
            done += width
    elif whole:
        row = done // width
        col = done - row * width
        while done < need and done + lanes <= end:
            _simd.transpose(flat, base + done, plane, block, 0, lanes)
            for k in range(lanes):
                _simd.store(buf, ((row + pad_top) * wp + col + pad_left) * lanes, _simd.load(block, k * lanes))
                col += 1
                if col == width:
                    col = 0
                    row += 1
            done += lanes
    if done < need:
        # What is needed lies in the last, partial block of pixels (or the block is not whole): the rest.
        for row in range(done // width, end // width):
            for col in range(cols):
                if row * width + col >= done:
                    target = ((row + pad_top) * wp + col + pad_left) * lanes
                    for k in range(nch):
                        buf[target + k] = flat[base + k * plane + row * width + col]
        done = end
    return done


@helper
def correlate_row(buf, wv, bias, i, kh, kw, sh, dh, dw, wp, wo, out):
    """Correlate output row i: ``out[(i*wo + j)*L + l] = bias[l] + sum_{a,b} wv[(a*kw + b)*L + l] * v``.

    ``v = buf[((i*sh + a*dh)*wp + j + b*dw)*L + l]``; all L lanes at once, R pixels to a run.
    """
    lanes = _simd.lanes(buf)
    j = 0
    while j < wo and wo >= RUN:
        j = min(j, wo - RUN)
        acc = _simd.tile(bias, RUN)
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
def correlate_row_pair(buf, wv, bias, i, kh, kw, dh, dw, wp, wo, out):
    """Correlate output rows i and i + 1 as :func:`correlate_row`, where the vertical stride equals ``dh``.

    Row i + 1's tap row a - 1 then reads the input row of row i's tap row a: each run of the input is
    loaded once for both rows' accumulators (2R vectors in registers), one run load per 2R multiply-adds.
    """
    lanes = _simd.lanes(buf)
    j = 0
    while j < wo:
        j = min(j, wo - RUN)
        upper = lower = _simd.tile(bias, RUN)
        for b in range(kw):  # input row i*dh: row i's tap row 0 only
            v = _simd.load_run(buf, ((i * dh) * wp + j + b * dw) * lanes, RUN)
            upper = _simd.fma(_simd.tile(_simd.load(wv, b * lanes), RUN), v, upper)
        for a in range(1, kh):  # input row (i + a)*dh: row i's tap row a, row i + 1's tap row a - 1
            row = ((i + a) * dh) * wp + j
            for b in range(kw):
                v = _simd.load_run(buf, (row + b * dw) * lanes, RUN)
                upper = _simd.fma(_simd.tile(_simd.load(wv, (a * kw + b) * lanes), RUN), v, upper)
                lower = _simd.fma(_simd.tile(_simd.load(wv, ((a - 1) * kw + b) * lanes), RUN), v, lower)
        for b in range(kw):  # input row (i + kh)*dh: row i + 1's last tap row only
            v = _simd.load_run(buf, (((i + kh) * dh) * wp + j + b * dw) * lanes, RUN)
            lower = _simd.fma(_simd.tile(_simd.load(wv, ((kh - 1) * kw + b) * lanes), RUN), v, lower)
        _simd.store(out, (i * wo + j) * lanes, upper)
        _simd.store(out, ((i + 1) * wo + j) * lanes, lower)
        j += RUN


@helper
def unpack_pixels(out, plane, y, n, first, step, nch, done, upto):
    """Move output pixels ``[done, upto)`` to their planes: ``y[n, first + l*step].flat[p] = out[p*L + l]``.

    Whole blocks of L pixels of a full block of channels go through a transpose; the rest one by one once
    ``upto`` reaches the end of the plane. Return how far it went.
    """
    lanes = _simd.lanes(out)
    flat = y.reshape(-1)
    base = (n * y.shape[1] + first) * plane
    if nch == lanes:
        while done + lanes <= upto:
            _simd.transpose(out, done * lanes, lanes, flat, base + done, step * plane)
            done += lanes
    if upto == plane:
        for q in range(done, plane):
            for k in range(nch):
                flat[base + k * step * plane + q] = out[q * lanes + k]
        done = plane
    return done


@kernel
def blocked_forward_kernel(x, w, b, kh, kw, sh, dh, dw, pad_top, pad_left, ho, wo, nchunks, y):
    """Write into y (N, C*M, Ho, Wo) the depthwise correlation of x (N, C, H, W) with w (C*M, T), plus b."""
    n_batch, channels, width = x.shape[0], x.shape[1], x.shape[3]
    multiplier = w.shape[0] // channels
    ntaps = kh * kw
    lanes = _simd.lanes(x)
    blocks = -(-channels // lanes)
    hp = (ho - 1) * sh + (kh - 1) * dh + 1
    wp = wo + (kw - 1) * dw
    ntasks = n_batch * blocks
    for chunk in prange(nchunks):
        lo, hi = chunk_bounds(chunk, nchunks, ntasks)
        buf = _simd.aligned_zeros(hp * wp * lanes, x.dtype)
        block = _simd.aligned_empty(lanes * lanes, x.dtype)
        wv = _simd.aligned_zeros(ntaps * lanes, x.dtype)
        bias = _simd.aligned_zeros(lanes, x.dtype)
        out = _simd.aligned_empty(ho * wo * lanes, x.dtype)
        for task in range(lo, hi):
            n, c0 = task // blocks, (task % blocks) * lanes
            nch = min(lanes, channels - c0)
            packed = 0
            for f in range(multiplier):
                for k in range(nch):
                    o = (c0 + k) * multiplier + f
                    bias[k] = b[o]
                    for t in range(ntaps):
                        wv[t * lanes + k] = w[o, t]
                unpacked = 0
                # Row by row: the input rows a row reads come in, and the outputs it completes go out, next to
                # its arithmetic, so that the loads and stores of memory overlap the multiply-adds.
                i = 0
                while i < ho:
                    rows = 2 if sh == dh and i + 1 < ho and wo >= RUN else 1
                    if f == 0:
                        need = ((i + rows - 1) * sh + (kh - 1) * dh + 1 - pad_top) * width
                        packed = pack_pixels(x, n, c0, nch, pad_top, pad_left, hp, wp, buf, block, packed, need)
                    if rows == 2:
                        correlate_row_pair(buf, wv, _simd.load(bias, 0), i, kh, kw, dh, dw, wp, wo, out)
                    else:
                        correlate_row(buf, wv, _simd.load(bias, 0), i, kh, kw, sh, dh, dw, wp, wo, out)
                    i += rows
                    first = c0 * multiplier + f
                    unpacked = unpack_pixels(out, ho * wo, y, n, first, multiplier, nch, unpacked, i * wo)
