"""Strided rows in place: 3x3 depthwise kernels at horizontal stride 2, forward and both gradients.

(Stride-2 forwards with multiplier 1 mostly run as *split columns*, at the end.)

Shape legend: N = batch, C = input channels, M = channel multiplier, H/W = input size, Ho/Wo = output
size, G = images per weight-gradient task.

The phase copies (``depthwise``) turn a stride into phases: each plane is first split into ``sh*sw``
zero-padded phase planes, then correlated at stride 1 and copied out. At stride 2 the split is an
interleaved copy of the whole input, and it cost more than the arithmetic: the 8x96x112x112 forward
(3x3, stride 2) took 2.1 of its 3.5 ms with only the copies switched on. Here each output row is computed
straight from the three input rows it reads, where they lie:

    y[r, q] = b + sum_{i, j} w[i, j] * x[r*sh + i*dh - pad_top, 2*q + j - pad_left]

one loop over the output columns whose three input columns lie inside the row, then the edge columns (one
or two under the usual padding) one by one. Output rows whose kernel rows reach into the vertical padding
(one or two per plane) go tap by tap. Every read of the padding is a read of a zero, as in the definition,
so NaN and Inf reach exactly the outputs they touch, and a non-finite weight meets the padding's zeros as it
does there.

- forward: one task per (image, input channel) plane, its M filters one after the other.
- grad-input: one task per input plane. Input column ``2u - pad_left`` takes the taps ``w[a, 0]`` and
  ``w[a, 2]`` of output columns ``u`` and ``u - 1``, column ``2u + 1 - pad_left`` the tap ``w[a, 1]`` of
  column ``u``: each input row is one loop over ``u`` with unit-stride reads and an interleaving store per
  output row its kernel rows reach (``i + pad_top - a*dh = r*sh``) and per filter, the first one assigning.
  Only real outputs enter the sums, as in the definition. (The phase copies pad the output gradient,
  gather it into input phases and interleave those back.)
- grad-weight: one task per (input channel, group of G images) sums, for each of its M filters, the
  products of the output gradient with the nine taps' input values. The interior columns go a vector of L
  output columns at a time (below) into nine vectors of sums that stay in registers across the rows of a
  plane (up to about 2048 products per lane) before their lanes go to float64; the edges in a second pass,
  their terms and the rows in float64. Partial sums per (group, filter); the caller adds the groups in a
  fixed order. Against dots row by row (their nine sums reduced at the end of every row of 56 outputs),
  A/B interleaved on a 2-core AMD EPYC (Zen 5): 8x96x112x112 1.36 ms against 2.42 in float32, 2.83
  against 5.71 in float64.

The forward's interior columns go the same way, a vector of L outputs at a time in a pass of its own
before the row loops: 8x96x112x112 1.22-1.28 ms against 1.52-1.57 in float32, 2.72 against 3.06-3.19 in
float64. A kernel row's three taps take every other input column from two pair loads, ``_simd.load_even_as``
at the first column and ``load_even_as`` and ``load_odd_as`` at the second (four loads, three shuffles), so that
no load reads past the last interior column; where the interior is not a whole number of vectors the last
vector overlaps the one before it (the forward writes the same outputs again, the weight gradient zeroes
the output-gradient lanes already summed, ``_simd.load_from_as``), and only the edge columns go one by one.
Against a third pair load per row and a scalar loop over the rest of the interior (A/B interleaved, Zen 5,
float32 / float64): forward 8x96x112x112 1.32x / 1.04x, 8x144x56x56 2.03x / 1.17x, 128x32x28x28 0.97x /
1.17-1.22x (13 interior columns: no whole float32 vector); weight gradient 1.15x / 1.04-1.06x, 1.51x /
0.91-0.98x, 0.99x / 1.29-1.32x. Rows with fewer interior columns than one register holds but at least half
as many go half a register at a time (``_simd.low_half``; the same helpers, typed by the width of the
vectors they are given): the trainer's 128x32x28x28 in float32, forward 1.70-1.71x, weight gradient 1.37x;
128x64x14x14 in float64 (6 columns, 4-lane vectors) 1.03x / 1.07x.

*Split columns* (``split_forward_kernel``): the forwards at stride 2 both ways, without dilation, with
multiplier 1 and at most one row and column of padding at the top and left (MobileNet's stride-2 blocks)
go column by column instead of row by row. For one vector of V output columns, each input row's 2V columns
load as two vectors (masked past the row's end) and split into the even and the odd columns
(``_simd.every_other``, one two-source shuffle each); the third tap is one of them shifted by a lane, its
incoming column broadcast. The vector column is then walked down the plane: output row ``i`` reads input
rows ``2i - pad_top + (0, 1, 2)``, and the last of them is the next row's first, so each input row is
loaded and split once and every output row costs two input rows, nine multiply-adds and one store. The
padding is zero vectors and masked lanes as in ``_rows``; no edge column or padded row goes apart (those
took a third of the strided rows' time at 112x112, their vector loop another half: 22 cycles a vector of
outputs in L2 against 4.5 for its multiply-adds). Against the strided rows (A/B interleaved, Zen 5,
float32 / float64): 8x96x112x112 1.36x / 1.91x, 8x144x56x56 1.91x / 1.43x, 128x32x28x28 3.08x / 2.11x,
128x64x14x14 4.15x / 3.21x. The 8x96x112x112 forward then reads and writes at about 86 GB/s, near this
machine's DRAM triad.

Every output is written by one task: results do not depend on the thread count. Measured against the phase
copies (A/B interleaved, threads pinned), float32 / float64, forward: 8x96x112x112 1.58-1.70x / 1.86-2.04x,
8x144x56x56 1.02-1.13x / 1.31x, 8x192x28x28 1.31-1.34x / 1.68-1.88x, 8x576x14x14 1.31-1.62x / 1.38-1.80x;
input gradient: 1.25x / 1.35x, 1.18x / 1.81x, 1.20x / 1.14x, 1.05x / 0.87x; weight gradient: 1.16x / 1.52x,
1.14x / 1.14x, 1.41x / 1.79x, 1.41x / 1.68x on the same shapes. The trainer's stride-2 blocks (float32,
128x32x28x28 and 128x64x14x14): forward 1.66x / 1.96x, input gradient 1.16x / 1.35x, weight gradient 1.34x /
1.34x.
"""

import numpy as np
from numba import prange

from . import _simd
from ._jit import helper, kernel
from ._planes import chunk_bounds, chunk_count, task_images, weight_gradient_groups
from ._rows import add_kernel_row

# Tests switch the path off to run the same problems on the phase copies.
ENABLED = True

# The dtypes whose forwards run as split columns (read at every call).
SPLIT_DTYPES = ("float32", "float64")


def applies(problem):
    """Tell whether a depthwise problem runs here: a 3x3 kernel at horizontal stride 2, no horizontal dilation.

    Other geometries measured slower or no faster written this way, their columns loaded through vector
    gathers (a 5x3 kernel at stride 2: 0.47x / 0.84x of the phase copies in float32 / float64; a 3x3
    kernel with dilation 2: 0.92x / 1.09x): they keep the phase copies.
    """
    g = problem.geometry
    return ENABLED and g.kernel == (3, 3) and g.stride[1] == 2 and g.dilation[1] == 1


def plan_args(problem):
    """Return the kernels' plan arguments ``(sh, dh, pad_top, pad_left, q_lo, q_hi)``.

    Output columns ``[q_lo, q_hi)`` read all three of their columns inside the input row; the others are
    edges (one at each end under the usual padding of one).
    """
    g = problem.geometry
    sh, dh = g.stride[0], g.dilation[0]
    pad_top, pad_left = g.pad[0], g.pad[2]
    width, out_w = g.in_hw[1], g.out_hw[1]
    q_lo = min(out_w, -(-pad_left // 2))
    q_hi = max(q_lo, min(out_w, (width - 3 + pad_left) // 2 + 1))
    return sh, dh, pad_top, pad_left, q_lo, q_hi


@helper
def _vector_plan(q_lo, q_hi, lanes):
    """Return the lanes of the vector passes' vectors and the end of the interior columns they take.

    A whole register's lanes where the interior ``[q_lo, q_hi)`` holds one, else half a register's (256
    bits on AVX-512) where it holds that; the passes then take every interior column, the last vector
    overlapping the one before it where they are not a whole number of vectors. An interior shorter than
    half a register is left to the row loops (end ``q_lo``).
    """
    vector_lanes = lanes if q_hi - q_lo >= lanes else lanes // 2
    return vector_lanes, (q_hi if q_hi - q_lo >= vector_lanes else q_lo)


@helper
def _vector_taps(yf, y_row, xf, x_row, pitch, kf, o, bias, pad_left, q_lo, q_end):
    """Output columns ``[q_lo, q_end)`` (whole vectors) of one row, straight from the nine weights.

    ``y[r, q:q+L] = b[o] + sum_t w[o, t] * x[top + (t//3)*dh, 2q - pad_left + t%3 :: 2]``: the output row
    starts at ``yf[y_row]``, input row ``top`` at ``xf[x_row]``, the next kernel rows ``pitch`` further.
    The last vector ends at ``q_end``, overlapping the one before it where need be.
    """
    k0, k1 = _simd.broadcast_as(kf, 9 * o, bias), _simd.broadcast_as(kf, 9 * o + 1, bias)
    k2, k3 = _simd.broadcast_as(kf, 9 * o + 2, bias), _simd.broadcast_as(kf, 9 * o + 3, bias)
    k4, k5 = _simd.broadcast_as(kf, 9 * o + 4, bias), _simd.broadcast_as(kf, 9 * o + 5, bias)
    k6, k7 = _simd.broadcast_as(kf, 9 * o + 6, bias), _simd.broadcast_as(kf, 9 * o + 7, bias)
    k8 = _simd.broadcast_as(kf, 9 * o + 8, bias)
    lanes = _simd.lanes_of(bias)
    for q_start in range(q_lo, q_end, lanes):
        q = min(q_start, q_end - lanes)
        a = x_row + 2 * q - pad_left
        value = _simd.fma(k0, _simd.load_even_as(xf, a, bias), bias)
        value = _simd.fma(k1, _simd.load_even_as(xf, a + 1, bias), value)
        value = _simd.fma(k2, _simd.load_odd_as(xf, a + 1, bias), value)
        value = _simd.fma(k3, _simd.load_even_as(xf, a + pitch, bias), value)
        value = _simd.fma(k4, _simd.load_even_as(xf, a + pitch + 1, bias), value)
        value = _simd.fma(k5, _simd.load_odd_as(xf, a + pitch + 1, bias), value)
        value = _simd.fma(k6, _simd.load_even_as(xf, a + 2 * pitch, bias), value)
        value = _simd.fma(k7, _simd.load_even_as(xf, a + 2 * pitch + 1, bias), value)
        value = _simd.fma(k8, _simd.load_odd_as(xf, a + 2 * pitch + 1, bias), value)
        _simd.store(yf, y_row + q, value)


@helper
def _tap_input(plane, top, dh, q, pad_left, t, zero):
    """Return the input value tap ``t`` of output column ``q`` reads (kernel rows from input row ``top``).

    That is ``x[top + (t//3)*dh, 2q - pad_left + t%3]``, or a zero where it lies in the padding.
    """
    i, j = top + (t // 3) * dh, 2 * q - pad_left + t % 3
    if 0 <= i < plane.shape[0] and 0 <= j < plane.shape[1]:
        return plane[i, j]
    return zero


@helper
def _columns(q, pad_left):
    """Return the three input columns of output column ``q``, unsigned (callers pass interior columns only)."""
    a = np.uint64(2 * q - pad_left)
    return a, a + np.uint64(1), a + np.uint64(2)


@helper
def _nine_taps(y_plane, r, plane, top, dh, k, bias, pad_left, q_lo, q_from, q_hi, zero):
    """Output row ``r`` of the 3x3 kernel ``k``, whose three input rows ``top + i*dh`` lie inside the plane.

    Interior columns ``[q_from, q_hi)`` (those :func:`_vector_taps` leaves), then the edges (before
    ``q_lo``, from ``q_hi``). One pass over the row for all nine taps. The arrays are indexed in two
    dimensions rather than through row views: every view costs Numba two reference-count updates, and per
    output row they made the 8x144x56x56 forward 1.3x slower than the phase copies instead of as fast.
    Indices are unsigned (Numba then drops its wraparound tests) and the stride a constant LLVM can see: the
    neighbouring columns load as whole vectors and shuffles rather than one gather per tap (1.7x faster at
    8x96x112x112).
    """
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8]
    i0, i1, i2, row = np.uint64(top), np.uint64(top + dh), np.uint64(top + 2 * dh), np.uint64(r)
    for q in range(q_from, q_hi):
        a, b, c = _columns(q, pad_left)
        y_plane[row, np.uint64(q)] = bias + (
            (w0 * plane[i0, a] + w1 * plane[i0, b] + w2 * plane[i0, c])
            + (w3 * plane[i1, a] + w4 * plane[i1, b] + w5 * plane[i1, c])
            + (w6 * plane[i2, a] + w7 * plane[i2, b] + w8 * plane[i2, c])
        )
    _tap_by_tap(y_plane, r, plane, top, dh, k, bias, pad_left, 0, q_lo, zero)
    _tap_by_tap(y_plane, r, plane, top, dh, k, bias, pad_left, q_hi, y_plane.shape[1], zero)


@helper
def _tap_by_tap(y_plane, r, plane, top, dh, k, bias, pad_left, q_start, q_stop, zero):
    """Output columns ``[q_start, q_stop)`` of row ``r``, every tap read through ``_tap_input``.

    For the edge columns, and for the rows whose kernel rows reach into the vertical padding (one or two per
    plane): a tap in the padding adds ``w * 0`` (NaN where the weight is not finite, as in the definition).
    """
    for q in range(q_start, q_stop):
        value = bias
        for t in range(9):
            value += k[t] * _tap_input(plane, top, dh, q, pad_left, t, zero)
        y_plane[r, q] = value


@kernel
def strided_forward_kernel(x, w, b, sh, dh, pad_top, pad_left, q_lo, q_hi, nchunks, y):
    """y[n, o] = b[o] + correlate(x[n, o // M], w[o]) at stride (sh, 2); x (N, C, H, W), w (C*M, 9)."""
    n_batch, channels, height, width = x.shape
    multiplier = w.shape[0] // channels
    out_h, out_w = y.shape[2], y.shape[3]
    ntasks = n_batch * channels
    zero = np.zeros(1, x.dtype)[0]
    lanes = _simd.lanes(x)
    vector_lanes, q_end = _vector_plan(q_lo, q_hi, lanes)
    xf, yf, kf = x.reshape(-1), y.reshape(-1), w.reshape(-1)
    for chunk in prange(nchunks):
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            n, c = task // channels, task % channels
            plane = x[n, c]
            for m in range(multiplier):
                o = c * multiplier + m
                k, bias, y_plane = w[o], b[o], y[n, o]
                if q_end > q_lo:
                    # The whole vectors in a pass of their own: their nine weights stay in registers
                    # without crowding the row loops below (in one pass, planes without a whole vector ran
                    # up to 2x slower).
                    bias_vector = _simd.broadcast(b, o)
                    for r in range(out_h):
                        top = r * sh - pad_top
                        if top >= 0 and top + 2 * dh < height:
                            x_row = ((n * channels + c) * height + top) * width
                            y_row = ((n * y.shape[1] + o) * out_h + r) * out_w
                            pitch = dh * width
                            if vector_lanes < lanes:
                                bias_half = _simd.low_half(bias_vector)
                                _vector_taps(yf, y_row, xf, x_row, pitch, kf, o, bias_half, pad_left, q_lo, q_end)
                            else:
                                _vector_taps(yf, y_row, xf, x_row, pitch, kf, o, bias_vector, pad_left, q_lo, q_end)
                for r in range(out_h):
                    top = r * sh - pad_top
                    if top >= 0 and top + 2 * dh < height:
                        _nine_taps(y_plane, r, plane, top, dh, k, bias, pad_left, q_lo, q_end, q_hi, zero)
                    else:
                        _tap_by_tap(y_plane, r, plane, top, dh, k, bias, pad_left, 0, y_plane.shape[1], zero)


def split_applies(problem, dtype):
    """Tell whether a forward runs as split columns.

    A 3x3 kernel at stride 2 both ways, no dilation, multiplier 1, at most one row and one column of padding
    at the top and at the left, float32 or float64 (SPLIT_DTYPES).
    """
    g = problem.geometry
    return (
        ENABLED
        and np.dtype(dtype).name in SPLIT_DTYPES
        and g.kernel == (3, 3)
        and g.stride == (2, 2)
        and g.dilation == (1, 1)
        and problem.multiplier == 1
        and g.pad[0] <= 1
        and g.pad[2] <= 1
    )


def split_forward_args(problem):
    """Return the split forward's arguments ``(pad_top, pad_left, nchunks)``."""
    g = problem.geometry
    return g.pad[0], g.pad[2], chunk_count(problem.batch * problem.in_channels)


@helper
def _split_row(plane, r, height, width, base, pad_left, zero):
    """Return the three column vectors input row ``r`` gives one output vector (zeros outside the plane).

    Columns ``base .. base + 2V`` load as two vectors (lanes past the row's end zero) and split into the
    even and the odd ones; the third tap is the odd (``pad_left`` 1) or even (0) columns shifted by one
    lane, the column that comes in (``base - 1`` or ``base + 2V``) broadcast, or zero in the padding.
    """
    lanes = _simd.lanes(plane)
    if r < 0 or r >= height:
        return zero, zero, zero
    row = r * width
    a = _simd.load_lanes(plane, row + base, width - base)
    b = _simd.load_lanes(plane, row + base + lanes, width - base - lanes)
    even, odd = _simd.every_other(a, b, 0), _simd.every_other(a, b, 1)
    if pad_left == 1:
        before = _simd.broadcast(plane, row + base - 1) if base > 0 else zero
        return _simd.window_before(before, odd, 1), even, odd
    after = _simd.broadcast(plane, row + base + 2 * lanes) if base + 2 * lanes < width else zero
    return even, odd, _simd.window_after(even, after, 1)


@kernel
def split_forward_kernel(x, w, b, pad_top, pad_left, nchunks, y):
    """y[n, c] = b[c] + correlate(x[n, c], w[c]) at stride 2; x (N, C, H, W), w (C, 9), y (N, C, Ho, Wo)."""
    n_batch, channels, height, width = x.shape
    out_h, out_w = y.shape[2], y.shape[3]
    area = height * width
    x_planes, y_planes = x.reshape(n_batch * channels, area), y.reshape(n_batch * channels, out_h * out_w)
    x_flat = x.reshape(n_batch * channels * area)
    line = 64 // x.itemsize
    lanes = _simd.lanes(x_flat)
    vectors = (out_w + lanes - 1) // lanes
    # Lines of the next plane asked for per output row of a vector column.
    per_step = line * ((area // line + vectors * out_h) // (vectors * out_h) + 1)
    ntasks = n_batch * channels
    for chunk in prange(nchunks):
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            c = task % channels
            plane, out, wc = x_planes[task], y_planes[task], w[c]
            zero = _simd.zeros(plane, 1)
            k = (
                _simd.broadcast(wc, 0), _simd.broadcast(wc, 1), _simd.broadcast(wc, 2),
                _simd.broadcast(wc, 3), _simd.broadcast(wc, 4), _simd.broadcast(wc, 5),
                _simd.broadcast(wc, 6), _simd.broadcast(wc, 7), _simd.broadcast(wc, 8),
            )  # fmt: skip
            bias = _simd.broadcast(b, c)
            ahead = (task + 1) * area
            ahead_end = (task + 2) * area if task + 1 < hi_task else ahead
            for v in range(vectors):
                base, j = 2 * v * lanes, v * lanes
                # Output row i reads input rows 2i - pad_top + (0, 1, 2); the last is the next row's first.
                acc = add_kernel_row(bias, k, 0, _split_row(plane, -pad_top, height, width, base, pad_left, zero))
                for i in range(out_h):
                    for p in range(ahead, min(ahead_end, ahead + per_step), line):
                        _simd.prefetch(x_flat, p)
                    ahead += per_step
                    r = 2 * i - pad_top
                    t1 = _split_row(plane, r + 1, height, width, base, pad_left, zero)
                    t2 = _split_row(plane, r + 2, height, width, base, pad_left, zero)
                    value = add_kernel_row(add_kernel_row(acc, k, 3, t1), k, 6, t2)
                    _simd.store_count(out, i * out_w + j, value, out_w - j)
                    acc = add_kernel_row(bias, k, 0, t2)


@helper
def _vector_dots(gf, g_row, xf, x_row, pitch, pad_left, q_lo, q_end, v):
    """Add to the nine vectors ``v`` the products of output columns ``[q_lo, q_end)`` (whole vectors).

    ``v[t] += gy[r, q:q+L] * x[top + (t//3)*dh, 2q - pad_left + t%3 :: 2]``: output row ``r`` starts at
    ``gf[g_row]``, input row ``top`` at ``xf[x_row]``, the next kernel rows ``pitch`` further.
    """
    v0, v1, v2, v3, v4, v5, v6, v7, v8 = v
    lanes = _simd.lanes_of(v0)
    for q_start in range(q_lo, q_end, lanes):
        q = min(q_start, q_end - lanes)
        # The last vector overlaps the one before it where the columns are not a whole number of vectors:
        # its lanes already summed take a zero output gradient.
        g = _simd.load_from_as(gf, g_row + q, q_start - q, v0)
        a = x_row + 2 * q - pad_left
        v0 = _simd.fma(g, _simd.load_even_as(xf, a, v0), v0)
        v1 = _simd.fma(g, _simd.load_even_as(xf, a + 1, v0), v1)
        v2 = _simd.fma(g, _simd.load_odd_as(xf, a + 1, v0), v2)
        v3 = _simd.fma(g, _simd.load_even_as(xf, a + pitch, v0), v3)
        v4 = _simd.fma(g, _simd.load_even_as(xf, a + pitch + 1, v0), v4)
        v5 = _simd.fma(g, _simd.load_odd_as(xf, a + pitch + 1, v0), v5)
        v6 = _simd.fma(g, _simd.load_even_as(xf, a + 2 * pitch, v0), v6)
        v7 = _simd.fma(g, _simd.load_even_as(xf, a + 2 * pitch + 1, v0), v7)
        v8 = _simd.fma(g, _simd.load_odd_as(xf, a + 2 * pitch + 1, v0), v8)
    return v0, v1, v2, v3, v4, v5, v6, v7, v8


@helper
def _nine_dots(g_plane, r, plane, top, dh, pad_left, q_lo, q_from, q_hi, zero, acc):
    """``acc[t] += sum over q of gy[r, q] * x[top + (t//3)*dh, 2q - pad_left + t%3]`` for the nine taps.

    In a row whose kernel rows lie inside the plane: the interior columns from ``q_from`` to ``q_hi`` (those
    of ``[q_lo, q_hi)`` that :func:`_vector_dots` leaves), their dots in the data's dtype, and the edge
    columns (before ``q_lo``, from ``q_hi``), their terms and the sums in float64. In other rows every
    column, reading the vertical padding's zeros as in the definition.
    """
    height = plane.shape[0]
    if top >= 0 and top + 2 * dh < height:
        i0, i1, i2, row = np.uint64(top), np.uint64(top + dh), np.uint64(top + 2 * dh), np.uint64(r)
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
        for q in range(q_from, q_hi):
            a, b, c = _columns(q, pad_left)
            g = g_plane[row, np.uint64(q)]
            s0 += g * plane[i0, a]
            s1 += g * plane[i0, b]
            s2 += g * plane[i0, c]
            s3 += g * plane[i1, a]
            s4 += g * plane[i1, b]
            s5 += g * plane[i1, c]
            s6 += g * plane[i2, a]
            s7 += g * plane[i2, b]
            s8 += g * plane[i2, c]
        acc[0] += s0
        acc[1] += s1
        acc[2] += s2
        acc[3] += s3
        acc[4] += s4
        acc[5] += s5
        acc[6] += s6
        acc[7] += s7
        acc[8] += s8
        edges = ((0, q_lo), (q_hi, g_plane.shape[1]))
    else:
        edges = ((0, g_plane.shape[1]), (0, 0))
    for lo, hi in edges:
        for q in range(lo, hi):
            g = g_plane[r, q]
            for t in range(9):
                acc[t] += g * _tap_input(plane, top, dh, q, pad_left, t, zero)


@helper
def _plane_vector_dots(gf, xf, gy, x, n, c, o, sh, dh, pad_top, pad_left, q_lo, q_end, flush_rows, z, scratch, acc):
    """``acc[t] +=`` the products of columns ``[q_lo, q_end)`` of plane ``gy[n, o]`` with ``x[n, c]`` at tap t.

    In vectors of ``z``'s width (``z`` a vector of zeros), summed over the rows whose kernel rows lie inside
    the plane; the nine vector sums go to float64 every ``flush_rows`` rows.
    """
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = gy.shape[2], gy.shape[3]
    v = (z, z, z, z, z, z, z, z, z)
    for r in range(out_h):
        top = r * sh - pad_top
        if top >= 0 and top + 2 * dh < height:
            x_row = ((n * channels + c) * height + top) * width
            g_row = ((n * gy.shape[1] + o) * out_h + r) * out_w
            v = _vector_dots(gf, g_row, xf, x_row, dh * width, pad_left, q_lo, q_end, v)
        if (r + 1) % flush_rows == 0 or r == out_h - 1:
            _simd.add_lanes(v, scratch, acc)
            v = (z, z, z, z, z, z, z, z, z)


@kernel
def strided_grad_weight_kernel(gy, x, sh, dh, pad_top, pad_left, q_lo, q_hi, images, nchunks, partial):
    """partial[group, o, t] = sum over the group's images and outputs of gy[n, o] * x[n, o // M] at tap t.

    gy (N, C*M, Ho, Wo), x (N, C, H, W), partial (groups, C*M, 9) float64; the caller sums the groups in
    a fixed order, so results do not depend on the thread count.
    """
    n_batch, channels = x.shape[0], x.shape[1]
    multiplier = partial.shape[1] // channels
    out_h = gy.shape[2]
    groups = (n_batch + images - 1) // images
    ntasks = channels * groups
    zero = np.zeros(1, x.dtype)[0]
    lanes = _simd.lanes(x)
    vector_lanes, q_end = _vector_plan(q_lo, q_hi, lanes)
    gf, xf = gy.reshape(-1), x.reshape(-1)
    # Rows whose vector sums go to float64 together: at most about 2048 products per lane in the data's dtype.
    flush_rows = max(1, 2048 // max(1, -(-(q_end - q_lo) // vector_lanes)))
    for chunk in prange(nchunks):
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        scratch = _simd.aligned_empty(lanes, x.dtype)
        for task in range(lo_task, hi_task):
            c, group, n0, count = task_images(task, groups, images, n_batch)
            for m in range(multiplier):
                o = c * multiplier + m
                acc = partial[group, o]
                for t in range(9):
                    acc[t] = 0.0
                for n in range(n0, n0 + count):
                    # The vectors first, in a pass of their own: their nine sums stay in registers across
                    # rows without crowding the row loops below.
                    z = _simd.zeros(xf, 1)
                    if q_end > q_lo and vector_lanes < lanes:
                        _plane_vector_dots(
                            gf, xf, gy, x, n, c, o, sh, dh, pad_top, pad_left, q_lo, q_end, flush_rows,
                            _simd.low_half(z), scratch, acc,
                        )  # fmt: skip
                    elif q_end > q_lo:
                        _plane_vector_dots(
                            gf, xf, gy, x, n, c, o, sh, dh, pad_top, pad_left, q_lo, q_end, flush_rows, z, scratch, acc
                        )  # fmt: skip
                    plane, g_plane = x[n, c], gy[n, o]
                    for r in range(out_h):
                        _nine_dots(g_plane, r, plane, r * sh - pad_top, dh, pad_left, q_lo, q_end, q_hi, zero, acc)


def grad_input_columns(problem):
    """Return the grad-input's interior ``[u_lo, u_hi)`` of output columns.

    Over it, input columns ``2u - pad_left`` and ``2u + 1 - pad_left`` lie inside the row and take all three
    taps: ``u - 1`` and ``u`` are both output columns.
    """
    g = problem.geometry
    pad_left, width, out_w = g.pad[2], g.in_hw[1], g.out_hw[1]
    u_lo = max(1, -(-pad_left // 2))
    u_hi = min(out_w, (width - 2 + pad_left) // 2 + 1)
    return u_lo, max(u_lo, u_hi)


@helper
def _gathered(gy, n, o, r, pad_left, j, w0, w1, w2, zero):
    """Return what output row ``r`` carries back to input column ``j``: the taps b with 2q + b = j + pad_left.

    An odd ``j + pad_left`` takes tap 1 of column ``q = (j + pad_left - 1) / 2``, an even one taps 0 and 2 of
    columns ``q`` and ``q - 1``, where those are output columns.
    """
    out_w = gy.shape[3]
    un, uo, ur = np.uint64(n), np.uint64(o), np.uint64(r)
    s = j + pad_left
    q = s // 2
    if s % 2 == 1:
        return w1 * gy[un, uo, ur, np.uint64(q)] if q < out_w else zero
    value = w0 * gy[un, uo, ur, np.uint64(q)] if q < out_w else zero
    if 1 <= q <= out_w:
        value += w2 * gy[un, uo, ur, np.uint64(q - 1)]
    return value


@helper
def _transposed_row(dx_plane, i, gy, n, o, r, w0, w1, w2, assign, pad_left, u_lo, u_hi, zero):
    """Input-gradient row ``i`` (= or +=) what one kernel row ``w0, w1, w2`` carries back from output row ``r``.

    Input column ``2u - pad_left`` takes ``w0 * gy[r, u] + w2 * gy[r, u - 1]``, column ``2u + 1 - pad_left``
    takes ``w1 * gy[r, u]``: one loop over ``u`` with unit-stride reads and an interleaving store, then the
    edge columns one by one. Only real outputs are multiplied: no padding enters an input gradient.
    """
    un, uo, ur, ui = np.uint64(n), np.uint64(o), np.uint64(r), np.uint64(i)
    for u in range(u_lo, u_hi):
        g1, g0 = gy[un, uo, ur, np.uint64(u)], gy[un, uo, ur, np.uint64(u - 1)]
        j = np.uint64(2 * u - pad_left)
        if assign:  # the same for the whole loop: LLVM hoists the test out of it
            dx_plane[ui, j] = w0 * g1 + w2 * g0
            dx_plane[ui, j + np.uint64(1)] = w1 * g1
        else:
            dx_plane[ui, j] += w0 * g1 + w2 * g0
            dx_plane[ui, j + np.uint64(1)] += w1 * g1
    interior = (2 * u_lo - pad_left, 2 * u_hi - pad_left) if u_hi > u_lo else (0, 0)
    for lo, hi in ((0, interior[0]), (interior[1], dx_plane.shape[1])):
        for j in range(lo, hi):
            value = _gathered(gy, n, o, r, pad_left, j, w0, w1, w2, zero)
            if assign:
                dx_plane[i, j] = value
            else:
                dx_plane[i, j] += value


@kernel
def strided_grad_input_kernel(gy, w, sh, dh, pad_top, pad_left, u_lo, u_hi, nchunks, dx):
    """dx[n, c] = sum over m of the transposed correlation of gy[n, c*M + m] with w[c*M + m] at stride (sh, 2).

    gy (N, C*M, Ho, Wo), w (C*M, 9), dx (N, C, H, W). One task per input plane; each input row gathers the
    output rows its kernel rows reach (``i + pad_top - a*dh = r*sh``), its filters in order.
    """
    n_batch, channels, height = dx.shape[0], dx.shape[1], dx.shape[2]
    multiplier = w.shape[0] // channels
    out_h = gy.shape[2]
    ntasks = n_batch * channels
    zero = np.zeros(1, dx.dtype)[0]
    for chunk in prange(nchunks):
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            n, c = task // channels, task % channels
            dx_plane = dx[n, c]
            for i in range(height):
                first = True
                for a in range(3):
                    t = i + pad_top - a * dh
                    if t < 0 or t % sh != 0 or t // sh >= out_h:
                        continue
                    for m in range(multiplier):
                        o = c * multiplier + m
                        _transposed_row(
                            dx_plane, i, gy, n, o, t // sh, w[o, 3 * a], w[o, 3 * a + 1], w[o, 3 * a + 2], first,
                            pad_left, u_lo, u_hi, zero,
                        )  # fmt: skip
                        first = False
                if first:  # no output reads this row
                    for j in range(dx_plane.shape[1]):
                        dx_plane[i, j] = zero


def grad_input_args(problem):
    """Return the grad-input kernel's arguments (sh, dh, pad_top, pad_left, u_lo, u_hi, nchunks)."""
    sh, dh, pad_top, pad_left, _, _ = plan_args(problem)
    return (sh, dh, pad_top, pad_left, *grad_input_columns(problem), chunk_count(problem.batch * problem.in_channels))


def grad_weight_args(problem):
    """Return the grad-weight kernel's arguments (plan, images, nchunks) and the number of image groups."""
    images, groups = weight_gradient_groups(problem.batch, problem.in_channels)
    return (*plan_args(problem), images, chunk_count(problem.in_channels * groups)), groups


def forward_args(problem):
    """Return the forward kernel's arguments (plan, nchunks)."""
    return (*plan_args(problem), chunk_count(problem.batch * problem.in_channels))
