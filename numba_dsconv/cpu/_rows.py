"""Row pairs, chains, packed planes: 3x3 stride-1 depthwise forwards and weight gradients that keep the size.

Shape legend: N = batch, C = input channels, H/W = plane size (the output has the input's size),
V = lanes of one vector (16 float32), dh/dw = dilation (the padding equals it on every side).

*Row pairs* (rows of more than CHAIN_VECTORS vectors). Output rows ``i`` and ``i + dh`` read input rows
``i - dh, i, i + dh`` and ``i, i + dh, i + 2*dh``: the two middle rows are shared, so one pass walks four
input rows for two rows of outputs (eighteen multiply-adds per pair of output vectors).

Along a row the pass keeps a window of three consecutive vectors of each input row (columns
``qV - V .. qV + 2V``) and loads one new vector per row per step; the columns ``dw`` before and after
vector ``q`` come from lane shifts of the window (``_simd.window_before`` / ``window_after``, ``valignd``
on AVX-512) instead of loads that straddle cache lines. Four loads and eight shifts per step where loads
at ``j - dw``, ``j`` and ``j + dw`` took twelve: at 56x56, in L2, 0.61 us a plane against 0.87 for the
forward, 0.56 against 0.84 for the weight gradient.

*Chains* (rows of one or two vectors, 12 to 32 float32 or 6 to 16 float64 columns). Such a row is held
whole in registers, so the plane is walked down instead: the rows ``s, s + dh, s + 2*dh, ...`` (one chain
per ``s < dh``) form a problem of vertical dilation 1, and each input row of a chain is loaded once,
shifted into its three column vectors once and multiplied into the three output rows that read it, whose
sums stay in registers until their last input row has come (a ring of three; the weight gradient keeps a
ring of three output-gradient rows instead). Per input row: one load and two shifts per vector, nine
multiply-adds per vector, no loop around the row and no per-pair bookkeeping, where the pairs spend more
on the loop around two vectors than on the arithmetic. Against the row pairs at 28x28 (dilation 2) and
32x32: forwards 1.4-1.6x, weight gradients 1.1-1.4x; against the channel runs at 14x14 (dilation 2)
1.7x / 1.2x in float32. In L2 a 28x28 plane takes about 370 cycles against 250 for its multiply-adds
(the pairs: 700).

*Packed planes* (float32 rows of 7 at dilation 1, ``packs``): a row and its padding fill half a vector,
so two channels' planes run as one chain, each in one half of every vector (``_simd.load_halves``,
``store_halves``, ``broadcast_halves`` for the weights); the lane shifts bring the zero lanes past one
half's row into the other's padding. Against the channel runs at 8x960x7x7: forward 1.47x, input gradient
1.27x, weight gradient 1.21x.

The padding costs nothing apart: the window starts with a vector of zeros (the left padding), the vector
past a row's end is zeros and a row's last, partial vector loads through a mask
(``_simd.load_lanes``: lanes past the row read nothing and hold zero), and the rows of a pair that lie in the
vertical padding are zeros (a chain's first output row starts from the bias alone, its last takes no third
row). So the padding is read as the definition's zeros (``0 * w``: NaN and Inf reach exactly the outputs
they touch) and nothing outside the plane is read. A partial last output vector is stored through a mask
(``_simd.store_lanes``). No copy of the plane, no rim computed apart.

While a plane is computed, the lines of the next plane of the task (the next image's, for the weight
gradient both its planes) are asked for (``_simd.prefetch``), two rows' worth per row pair, all of them
before the chains of a narrow plane (a few KiB): without that, an earlier version measured anywhere from
0.8x to 1.3x the other kernels from one run to the next on a shared machine (the planes' pages come from
L3 or DRAM, and the hardware prefetcher starts over at every 4 KiB page); with it, steadily faster.

Pairs, chains and packed planes are separate kernels (``forward_kernel``, ``grad_weight_kernel`` pick
one): each compiles on its first call, so a network compiles only those its planes use. (One kernel with
pairs and chains took 12.2 s to compile for the forward and 13.9 s for the weight gradient; apart, the
pairs take 7.1 s and 9.9 s, the chains 3.0 s and 4.0 s.)

- forward: one task per (image, channel), multiplier 1 (packed: per image and pair of channels).
- grad-input at stride 1 with multiplier 1 is a forward of the output gradient with the kernel turned by
  180 degrees under the same padding (``depthwise._mirrored_problem``): it runs here too.
- grad-weight: one task per (channel, image group); nine vector sums in registers, two output-gradient
  rows per pass (a chain's pass: one input row against three), to float64 every FLUSH_PRODUCTS products a
  lane. A task whose sums come out NaN or Inf sums its planes again term by term (a zero lane past a row's
  end may have met a NaN or Inf that the definition never multiplies).
"""

import numpy as np
from numba import prange

from . import _simd
from ._inplace import exact_dots
from ._jit import helper, kernel
from ._planes import all_finite, chunk_bounds, chunk_count, fill, same_size_offsets, task_images, weight_gradient_groups

# The dtypes that run here, and the longest rows in bytes (160 float32 or 80 float64 values): both read at
# every call. 8x16x224x224 in float32 and 8x32x112x112 in float64 measured 0.90-0.99x the other kernels.
DTYPES = ("float32", "float64")
MAX_ROW_BYTES = 640

# Planes whose rows fit at most this many vectors are walked down in chains instead of row pairs (the chain
# helpers are written for one and two vectors).
CHAIN_VECTORS = 2

# The lane shifts are compiled for horizontal dilations 1 to MAX_DILATION.
MAX_DILATION = 4

# Products each lane of a weight gradient's vector sums takes in the data's dtype before they go to float64
# (read at every call), as in the strided rows.
FLUSH_PRODUCTS = 2048


def applies(problem, dtype):
    """Tell whether a depthwise forward or weight gradient runs here.

    A 3x3 kernel at stride 1, multiplier 1, padding equal to the dilation on every side (the output keeps
    the input's size), rows at least three quarters of a vector and at most MAX_ROW_BYTES long (or rows that
    pack two planes to a vector, ``packs``), and a horizontal dilation of at most MAX_DILATION and half a
    vector. (Narrower rows leave more than a quarter of each vector empty: at 9 float32 columns the channel
    runs' weight gradient measured 1.27x the chains', at 12 0.93x.)
    """
    g = problem.geometry
    lanes = _simd.lanes_for(dtype)
    (dh, dw), width = g.dilation, g.in_hw[1]
    return (
        np.dtype(dtype).name in DTYPES
        and g.kernel == (3, 3)
        and g.stride == (1, 1)
        and problem.multiplier == 1
        and g.pad == (dh, dh, dw, dw)
        and (3 * lanes <= 4 * width <= 4 * MAX_ROW_BYTES // np.dtype(dtype).itemsize or packs(problem, dtype))
        and 2 * dw <= lanes
        and dw <= MAX_DILATION
    )


def packs(problem, dtype):
    """Tell whether a row of the problem fits half a vector with its padding, filling 7/8 of it or more.

    Such problems (float32 rows of 7 at dilation 1) run two planes to a vector: the zero lanes of one half's
    row keep the other's columns apart. Narrower rows measured slower than the channel runs in the weight
    gradient (0.88x at 6 float32 columns, 0.81x at 3 float64 columns).
    """
    width, dw, half = problem.geometry.in_hw[1], problem.geometry.dilation[1], _simd.lanes_for(dtype) // 2
    return width + dw <= half and 8 * width >= 7 * half


def _walk(problem, dtype):
    """``"packed"``, ``"chains"`` or ``"pairs"``: how a problem that runs here walks its planes."""
    if packs(problem, dtype):
        return "packed"
    return "chains" if problem.geometry.in_hw[1] <= CHAIN_VECTORS * _simd.lanes_for(dtype) else "pairs"


def forward_kernel(problem, dtype):
    """Return the forward kernel for a problem that runs here (each compiles on its first call)."""
    kernels = {"packed": packed_forward_kernel, "chains": chain_forward_kernel, "pairs": rows_forward_kernel}
    return kernels[_walk(problem, dtype)]


def grad_weight_kernel(problem, dtype):
    """Return the weight-gradient kernel for a problem that runs here."""
    kernels = {
        "packed": packed_grad_weight_kernel,
        "chains": chain_grad_weight_kernel,
        "pairs": rows_grad_weight_kernel,
    }
    return kernels[_walk(problem, dtype)]


def forward_args(problem, dtype):
    """Return the forward kernel's plan arguments ``(dh, dw, nchunks)``."""
    dh, dw = problem.geometry.dilation
    planes = (problem.in_channels + 1) // 2 if packs(problem, dtype) else problem.in_channels
    return dh, dw, chunk_count(problem.batch * planes)


def grad_weight_args(problem, dtype):
    """Return the weight gradient's arguments and the number of image groups (the partial sums' first axis).

    The arguments are ``(dh, dw, flush_passes, offsets, images, nchunks)``: the passes (row pairs, or rows
    of a chain) whose products a lane takes in the data's dtype (about FLUSH_PRODUCTS) and the taps' offsets
    for the exact path.
    """
    dh, dw = problem.geometry.dilation
    lanes = _simd.lanes_for(dtype)
    vectors = -(-problem.geometry.in_hw[1] // lanes)
    # A lane takes a product per vector of a row and per output-gradient row of the pass (two in a pair).
    per_pass = 2 * vectors if _walk(problem, dtype) == "pairs" else vectors
    flush_passes = max(1, FLUSH_PRODUCTS // per_pass)
    offsets = np.array(same_size_offsets(problem), np.int64)
    images, groups = weight_gradient_groups(problem.batch, problem.in_channels)
    planes = (problem.in_channels + 1) // 2 if packs(problem, dtype) else problem.in_channels
    return (dh, dw, flush_passes, offsets, images, chunk_count(planes * groups)), groups


@helper
def _taps(prev, cur, nxt, dw):
    """Return one input row's column vectors ``dw`` before, at and ``dw`` after the window's middle ``cur``."""
    if dw == 1:
        return _simd.window_before(prev, cur, 1), cur, _simd.window_after(cur, nxt, 1)
    if dw == 2:
        return _simd.window_before(prev, cur, 2), cur, _simd.window_after(cur, nxt, 2)
    if dw == 3:
        return _simd.window_before(prev, cur, 3), cur, _simd.window_after(cur, nxt, 3)
    return _simd.window_before(prev, cur, 4), cur, _simd.window_after(cur, nxt, 4)


@helper
def _vector(plane, row, q, height, width, zero):
    """Vector ``q`` of row ``row``: zeros for a row outside the plane and for columns past the row's end."""
    lanes = _simd.lanes(plane)
    if row < 0 or row >= height:
        return zero
    return _simd.load_lanes(plane, row * width + q * lanes, width - q * lanes)


@helper
def _inside_vectors(plane, rows, q, width, zero):
    """Vector ``q`` of each of four rows inside the plane: whole, the row's partial last one, or zeros past it."""
    lanes = _simd.lanes(plane)
    j, tail = q * lanes, width - q * lanes
    if tail >= lanes:
        return (
            _simd.load(plane, rows[0] * width + j), _simd.load(plane, rows[1] * width + j),
            _simd.load(plane, rows[2] * width + j), _simd.load(plane, rows[3] * width + j),
        )  # fmt: skip
    if tail > 0:
        return (
            _simd.load_lanes(plane, rows[0] * width + j, tail),
            _simd.load_lanes(plane, rows[1] * width + j, tail),
            _simd.load_lanes(plane, rows[2] * width + j, tail),
            _simd.load_lanes(plane, rows[3] * width + j, tail),
        )  # fmt: skip
    return zero, zero, zero, zero


@helper
def _any_vectors(plane, rows, q, height, width, zero):
    """Vector ``q`` of each of four rows, zeros for those outside the plane."""
    return (
        _vector(plane, rows[0], q, height, width, zero), _vector(plane, rows[1], q, height, width, zero),
        _vector(plane, rows[2], q, height, width, zero), _vector(plane, rows[3], q, height, width, zero),
    )  # fmt: skip


@helper
def _pair_taps(prev, cur, nxt, dw):
    """Return the three column vectors of each of the four rows, from their windows."""
    return (
        _taps(prev[0], cur[0], nxt[0], dw), _taps(prev[1], cur[1], nxt[1], dw),
        _taps(prev[2], cur[2], nxt[2], dw), _taps(prev[3], cur[3], nxt[3], dw),
    )  # fmt: skip


@helper
def _kernel_row(k, first, row, zero):
    """``k[first] * row[0] + k[first + 1] * row[1] + k[first + 2] * row[2]``, one vector."""
    return _simd.fma(k[first], row[0], _simd.fma(k[first + 1], row[1], _simd.fma(k[first + 2], row[2], zero)))


@helper
def _store_pair(out, index, pitch, second, count, k, bias, zero, r):
    """Store ``count`` lanes of two output rows' vectors at ``index`` and ``index + pitch``.

    ``r`` holds the column vectors of four input rows: the first output from rows 0-2, the second (if
    ``second``) from rows 1-3. Each is the bias, then the kernel's rows in order.
    """
    top = _simd.add(_simd.add(_simd.add(bias, _kernel_row(k, 0, r[0], zero)), _kernel_row(k, 3, r[1], zero)),
                    _kernel_row(k, 6, r[2], zero))  # fmt: skip
    _simd.store_count(out, index, top, count)
    if second:
        bottom = _simd.add(_simd.add(_simd.add(bias, _kernel_row(k, 0, r[1], zero)), _kernel_row(k, 3, r[2], zero)),
                           _kernel_row(k, 6, r[3], zero))  # fmt: skip
        _simd.store_count(out, index + pitch, bottom, count)


@helper
def _forward_pair(plane, out, i, dh, dw, height, width, k, bias, zero):
    """Compute output rows ``i`` and ``i + dh`` (if inside the plane), vector by vector along the row.

    Two loops: the pairs whose four input rows lie inside the plane (all but the first and last few) load
    without testing rows.
    """
    lanes = _simd.lanes(plane)
    rows = (i - dh, i, i + dh, i + 2 * dh)
    pitch, prev = dh * width, (zero, zero, zero, zero)
    if rows[0] >= 0 and rows[3] < height:
        cur = _inside_vectors(plane, rows, 0, width, zero)
        for q in range((width + lanes - 1) // lanes):
            nxt = _inside_vectors(plane, rows, q + 1, width, zero)
            r = _pair_taps(prev, cur, nxt, dw)
            _store_pair(out, i * width + q * lanes, pitch, True, width - q * lanes, k, bias, zero, r)
            prev, cur = cur, nxt
        return
    cur = _any_vectors(plane, rows, 0, height, width, zero)
    for q in range((width + lanes - 1) // lanes):
        nxt = _any_vectors(plane, rows, q + 1, height, width, zero)
        r = _pair_taps(prev, cur, nxt, dw)
        _store_pair(out, i * width + q * lanes, pitch, rows[2] < height, width - q * lanes, k, bias, zero, r)
        prev, cur = cur, nxt


@helper
def add_kernel_row(acc, k, first, taps):
    """``acc + k[first] * taps[0] + k[first + 1] * taps[1] + k[first + 2] * taps[2]``, one vector."""
    return _simd.fma(k[first + 2], taps[2], _simd.fma(k[first + 1], taps[1], _simd.fma(k[first], taps[0], acc)))


@helper
def _chain_one(plane, out, s, count, dh, dw, width, k, bias, zero):
    """Output rows ``s, s + dh, ...`` (``count`` of them) of a plane whose rows fit one vector."""
    # upper: the output row above the input row (it still needs its third kernel row), middle: the output
    # row of the input row; both start from the bias.
    t = _taps(zero, _simd.load_lanes(plane, s * width, width), zero, dw)
    upper, middle = add_kernel_row(bias, k, 3, t), add_kernel_row(bias, k, 0, t)
    r = s
    for _ in range(1, count):
        r += dh
        t = _taps(zero, _simd.load_lanes(plane, r * width, width), zero, dw)
        _simd.store_lanes(out, (r - dh) * width, add_kernel_row(upper, k, 6, t), width)
        upper, middle = add_kernel_row(middle, k, 3, t), add_kernel_row(bias, k, 0, t)
    _simd.store_lanes(out, r * width, upper, width)


@helper
def _chain_two(plane, out, s, count, dh, dw, width, k, bias, zero):
    """Output rows ``s, s + dh, ...`` (``count`` of them) of a plane whose rows fit two vectors."""
    lanes = _simd.lanes(plane)
    tail = width - lanes
    v0, v1 = _simd.load(plane, s * width), _simd.load_lanes(plane, s * width + lanes, tail)
    t0, t1 = _taps(zero, v0, v1, dw), _taps(v0, v1, zero, dw)
    upper0, middle0 = add_kernel_row(bias, k, 3, t0), add_kernel_row(bias, k, 0, t0)
    upper1, middle1 = add_kernel_row(bias, k, 3, t1), add_kernel_row(bias, k, 0, t1)
    r = s
    for _ in range(1, count):
        r += dh
        v0, v1 = _simd.load(plane, r * width), _simd.load_lanes(plane, r * width + lanes, tail)
        t0, t1 = _taps(zero, v0, v1, dw), _taps(v0, v1, zero, dw)
        _simd.store(out, (r - dh) * width, add_kernel_row(upper0, k, 6, t0))
        _simd.store_lanes(out, (r - dh) * width + lanes, add_kernel_row(upper1, k, 6, t1), tail)
        upper0, middle0 = add_kernel_row(middle0, k, 3, t0), add_kernel_row(bias, k, 0, t0)
        upper1, middle1 = add_kernel_row(middle1, k, 3, t1), add_kernel_row(bias, k, 0, t1)
    _simd.store(out, r * width, upper0)
    _simd.store_lanes(out, r * width + lanes, upper1, tail)


@helper
def _nine_weights(wc):
    """Return the nine weights of one channel, each broadcast to a vector."""
    return (
        _simd.broadcast(wc, 0), _simd.broadcast(wc, 1), _simd.broadcast(wc, 2),
        _simd.broadcast(wc, 3), _simd.broadcast(wc, 4), _simd.broadcast(wc, 5),
        _simd.broadcast(wc, 6), _simd.broadcast(wc, 7), _simd.broadcast(wc, 8),
    )  # fmt: skip


@helper
def _exact_if_not_finite(acc, g_planes, x_planes, n0, count, channels, c, offsets, height, width, exact):
    """Sum channel ``c``'s images ``n0 .. n0 + count - 1`` again term by term where ``acc`` is not finite.

    A zero lane past a row's end (or a packed half's) may have met a NaN or Inf that the definition never
    multiplies.
    """
    if all_finite(acc):
        return
    fill(acc, 0.0)
    for n in range(n0, n0 + count):
        p = n * channels + c
        exact_dots(g_planes[p], x_planes[p], offsets, height, width, exact)
        for t in range(9):
            acc[t] += exact[t]


@kernel
def rows_forward_kernel(x, w, b, dh, dw, nchunks, y):
    """y[n, c] = b[c] + correlate(x[n, c], w[c]); x (N, C, H, W), w (C, 9), b (C,), y (N, C, H, W)."""
    n_batch, channels, height, width = x.shape
    area = height * width
    x_planes, y_planes = x.reshape(n_batch * channels, area), y.reshape(n_batch * channels, area)
    x_flat = x.reshape(n_batch * channels * area)
    line = 64 // x.itemsize
    ntasks = n_batch * channels
    for chunk in prange(nchunks):
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            c = task % channels
            plane, out = x_planes[task], y_planes[task]
            zero = _simd.zeros(plane, 1)
            k, bias = _nine_weights(w[c]), _simd.broadcast(b, c)
            # Rows pair with the row dh below: blocks of 2*dh rows, the first dh of each paired.
            # The next plane's lines are asked for while this one is computed, two rows' worth per pair.
            ahead = (task + 1) * area
            ahead_end = (task + 2) * area if task + 1 < hi_task else ahead
            for block in range(0, height, 2 * dh):
                for i in range(block, min(block + dh, height)):
                    for q in range(ahead, min(ahead_end, ahead + 2 * width), line):
                        _simd.prefetch(x_flat, q)
                    ahead += 2 * width
                    _forward_pair(plane, out, i, dh, dw, height, width, k, bias, zero)


@kernel
def chain_forward_kernel(x, w, b, dh, dw, nchunks, y):
    """As :func:`rows_forward_kernel`, on planes whose rows fit one or two vectors: chains down the plane."""
    n_batch, channels, height, width = x.shape
    area = height * width
    x_planes, y_planes = x.reshape(n_batch * channels, area), y.reshape(n_batch * channels, area)
    x_flat = x.reshape(n_batch * channels * area)
    line = 64 // x.itemsize
    lanes = _simd.lanes(x_flat)
    ntasks = n_batch * channels
    # Rows per chain: the first ``longer`` chains have one more.
    per_chain, longer = height // dh, height % dh
    for chunk in prange(nchunks):
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            c = task % channels
            plane, out = x_planes[task], y_planes[task]
            zero = _simd.zeros(plane, 1)
            k, bias = _nine_weights(w[c]), _simd.broadcast(b, c)
            # The next plane's lines (a few KiB) are asked for first.
            if task + 1 < hi_task:
                for q in range((task + 1) * area, (task + 2) * area, line):
                    _simd.prefetch(x_flat, q)
            for s in range(min(dh, height)):
                count = per_chain + (1 if s < longer else 0)
                if width <= lanes:
                    _chain_one(plane, out, s, count, dh, dw, width, k, bias, zero)
                else:
                    _chain_two(plane, out, s, count, dh, dw, width, k, bias, zero)


@helper
def _pair_dots(v, g0, g1, r):
    """``v[3a + b] + g0 * r[a][b] + g1 * r[a + 1][b]``: two output-gradient rows against four input rows."""
    f = _simd.fma
    r0, r1, r2, r3 = r
    return (
        f(g1, r1[0], f(g0, r0[0], v[0])), f(g1, r1[1], f(g0, r0[1], v[1])), f(g1, r1[2], f(g0, r0[2], v[2])),
        f(g1, r2[0], f(g0, r1[0], v[3])), f(g1, r2[1], f(g0, r1[1], v[4])), f(g1, r2[2], f(g0, r1[2], v[5])),
        f(g1, r3[0], f(g0, r2[0], v[6])), f(g1, r3[1], f(g0, r2[1], v[7])), f(g1, r3[2], f(g0, r2[2], v[8])),
    )  # fmt: skip


@helper
def _grad_weight_pair(v, grad, plane, i, dh, dw, height, width, zero):
    """Add output-gradient rows ``i`` and ``i + dh`` (if inside the plane) against the input rows they read.

    Two loops, as in :func:`_forward_pair`.
    """
    lanes = _simd.lanes(plane)
    rows = (i - dh, i, i + dh, i + 2 * dh)
    grad_rows = (i, i + dh, i, i + dh)  # two rows of the output gradient, in the helpers' four
    prev = (zero, zero, zero, zero)
    if rows[0] >= 0 and rows[3] < height:
        cur = _inside_vectors(plane, rows, 0, width, zero)
        for q in range((width + lanes - 1) // lanes):
            nxt = _inside_vectors(plane, rows, q + 1, width, zero)
            g = _inside_vectors(grad, grad_rows, q, width, zero)
            v = _pair_dots(v, g[0], g[1], _pair_taps(prev, cur, nxt, dw))
            prev, cur = cur, nxt
        return v
    cur = _any_vectors(plane, rows, 0, height, width, zero)
    for q in range((width + lanes - 1) // lanes):
        nxt = _any_vectors(plane, rows, q + 1, height, width, zero)
        g0, g1 = _vector(grad, i, q, height, width, zero), _vector(grad, i + dh, q, height, width, zero)
        v = _pair_dots(v, g0, g1, _pair_taps(prev, cur, nxt, dw))
        prev, cur = cur, nxt
    return v


@helper
def _chain_dots(v, g, t):
    """``v[3a + b] + g[a] * t[b]``: one input row's column vectors against the three gradient rows that read it."""
    f = _simd.fma
    return (
        f(g[0], t[0], v[0]), f(g[0], t[1], v[1]), f(g[0], t[2], v[2]),
        f(g[1], t[0], v[3]), f(g[1], t[1], v[4]), f(g[1], t[2], v[5]),
        f(g[2], t[0], v[6]), f(g[2], t[1], v[7]), f(g[2], t[2], v[8]),
    )  # fmt: skip


@helper
def _grad_weight_chain_one(v, grad, plane, s, first, stop, count, dh, dw, width, zero):
    """Add rows ``first .. stop - 1`` of the chain ``s, s + dh, ...`` (``count`` rows) of a one-vector-wide plane.

    Input row ``r`` meets the output-gradient rows ``r + dh``, ``r`` and ``r - dh`` (kernel rows 0, 1, 2),
    loaded once each as the chain passes them.
    """
    r = s + first * dh
    before = _simd.load_lanes(grad, (r - dh) * width, width) if first > 0 else zero
    at = _simd.load_lanes(grad, r * width, width)
    for m in range(first, stop):
        after = _simd.load_lanes(grad, (r + dh) * width, width) if m + 1 < count else zero
        t = _taps(zero, _simd.load_lanes(plane, r * width, width), zero, dw)
        v = _chain_dots(v, (after, at, before), t)
        before, at = at, after
        r += dh
    return v


@helper
def _grad_weight_chain_two(v, grad, plane, s, first, stop, count, dh, dw, width, zero):
    """As :func:`_grad_weight_chain_one`, on a plane whose rows fit two vectors (both add to the same sums)."""
    lanes = _simd.lanes(plane)
    tail = width - lanes
    r = s + first * dh
    before0, before1 = zero, zero
    if first > 0:
        before0 = _simd.load(grad, (r - dh) * width)
        before1 = _simd.load_lanes(grad, (r - dh) * width + lanes, tail)
    at0, at1 = _simd.load(grad, r * width), _simd.load_lanes(grad, r * width + lanes, tail)
    for m in range(first, stop):
        after0, after1 = zero, zero
        if m + 1 < count:
            after0 = _simd.load(grad, (r + dh) * width)
            after1 = _simd.load_lanes(grad, (r + dh) * width + lanes, tail)
        v0, v1 = _simd.load(plane, r * width), _simd.load_lanes(plane, r * width + lanes, tail)
        v = _chain_dots(v, (after0, at0, before0), _taps(zero, v0, v1, dw))
        v = _chain_dots(v, (after1, at1, before1), _taps(v0, v1, zero, dw))
        before0, before1, at0, at1 = at0, at1, after0, after1
        r += dh
    return v


@kernel
def rows_grad_weight_kernel(gy, x, dh, dw, flush_passes, offsets, images, nchunks, partial):
    """partial[group, c, t] = sum over the group's images and pixels of gy[n, c] * x[n, c] at tap t, float64.

    gy (N, C, H, W), x (N, C, H, W), partial (groups, C, 9) float64; the caller sums the groups in a fixed
    order, so results do not depend on the thread count.
    """
    n_batch, channels, height, width = x.shape
    area = height * width
    x_planes, g_planes = x.reshape(n_batch * channels, area), gy.reshape(n_batch * channels, area)
    x_flat, g_flat = x.reshape(n_batch * channels * area), gy.reshape(n_batch * channels * area)
    line = 64 // x.itemsize
    lanes = _simd.lanes(x_flat)
    groups = (n_batch + images - 1) // images
    ntasks = channels * groups
    for chunk in prange(nchunks):
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        scratch = _simd.aligned_empty(lanes, x.dtype)
        exact = np.empty(9, np.float64)
        for task in range(lo_task, hi_task):
            c, group, n0, count = task_images(task, groups, images, n_batch)
            acc = partial[group, c]
            fill(acc, 0.0)
            zero = _simd.zeros(x_flat, 1)
            v = (zero, zero, zero, zero, zero, zero, zero, zero, zero)
            pending = 0
            for n in range(n0, n0 + count):
                p = n * channels + c
                plane, grad = x_planes[p], g_planes[p]
                # The next image's two planes are asked for while this one is summed.
                ahead = (p + channels) * area
                ahead_end = ahead + area if n + 1 < n0 + count else ahead
                for block in range(0, height, 2 * dh):
                    for i in range(block, min(block + dh, height)):
                        for q in range(ahead, min(ahead_end, ahead + 2 * width), line):
                            _simd.prefetch(x_flat, q)
                            _simd.prefetch(g_flat, q)
                        ahead += 2 * width
                        v = _grad_weight_pair(v, grad, plane, i, dh, dw, height, width, zero)
                        pending += 1
                        if pending == flush_passes:
                            _simd.add_lanes(v, scratch, acc)
                            v = (zero, zero, zero, zero, zero, zero, zero, zero, zero)
                            pending = 0
            _simd.add_lanes(v, scratch, acc)
            _exact_if_not_finite(acc, g_planes, x_planes, n0, count, channels, c, offsets, height, width, exact)


@kernel
def chain_grad_weight_kernel(gy, x, dh, dw, flush_passes, offsets, images, nchunks, partial):
    """As :func:`rows_grad_weight_kernel`, on planes whose rows fit one or two vectors: chains down the plane."""
    n_batch, channels, height, width = x.shape
    area = height * width
    x_planes, g_planes = x.reshape(n_batch * channels, area), gy.reshape(n_batch * channels, area)
    x_flat, g_flat = x.reshape(n_batch * channels * area), gy.reshape(n_batch * channels * area)
    line = 64 // x.itemsize
    lanes = _simd.lanes(x_flat)
    groups = (n_batch + images - 1) // images
    ntasks = channels * groups
    per_chain, longer = height // dh, height % dh
    for chunk in prange(nchunks):
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        scratch = _simd.aligned_empty(lanes, x.dtype)
        exact = np.empty(9, np.float64)
        for task in range(lo_task, hi_task):
            c, group, n0, count = task_images(task, groups, images, n_batch)
            acc = partial[group, c]
            fill(acc, 0.0)
            zero = _simd.zeros(x_flat, 1)
            v = (zero, zero, zero, zero, zero, zero, zero, zero, zero)
            pending = 0
            for n in range(n0, n0 + count):
                p = n * channels + c
                plane, grad = x_planes[p], g_planes[p]
                # The next image's two planes (a few KiB) are asked for first.
                if n + 1 < n0 + count:
                    for q in range((p + channels) * area, (p + channels + 1) * area, line):
                        _simd.prefetch(x_flat, q)
                        _simd.prefetch(g_flat, q)
                for s in range(min(dh, height)):
                    rows = per_chain + (1 if s < longer else 0)
                    # The chain in pieces that end where the sums are due for a flush.
                    first = 0
                    while first < rows:
                        stop = min(rows, first + flush_passes - pending)
                        if width <= lanes:
                            v = _grad_weight_chain_one(v, grad, plane, s, first, stop, rows, dh, dw, width, zero)
                        else:
                            v = _grad_weight_chain_two(v, grad, plane, s, first, stop, rows, dh, dw, width, zero)
                        pending += stop - first
                        first = stop
                        if pending == flush_passes:
                            _simd.add_lanes(v, scratch, acc)
                            v = (zero, zero, zero, zero, zero, zero, zero, zero, zero)
                            pending = 0
            _simd.add_lanes(v, scratch, acc)
            _exact_if_not_finite(acc, g_planes, x_planes, n0, count, channels, c, offsets, height, width, exact)


@helper
def _chain_packed(x, y, ia, ib, s, count, dh, dw, width, count_b, k, bias, zero):
    """Output rows ``s, s + dh, ...`` (``count``) of the planes at ``ia`` and ``ib``, one in each vector half.

    The second plane's rows are stored ``count_b`` lanes wide (0: no second plane).
    """
    r = s
    t = _taps(zero, _simd.load_halves(x, ia + r * width, ib + r * width, width), zero, dw)
    upper, middle = add_kernel_row(bias, k, 3, t), add_kernel_row(bias, k, 0, t)
    for _ in range(1, count):
        r += dh
        t = _taps(zero, _simd.load_halves(x, ia + r * width, ib + r * width, width), zero, dw)
        done = add_kernel_row(upper, k, 6, t)
        _simd.store_halves(y, ia + (r - dh) * width, ib + (r - dh) * width, done, width, count_b)
        upper, middle = add_kernel_row(middle, k, 3, t), add_kernel_row(bias, k, 0, t)
    _simd.store_halves(y, ia + r * width, ib + r * width, upper, width, count_b)


@kernel
def packed_forward_kernel(x, w, b, dh, dw, nchunks, y):
    """As :func:`rows_forward_kernel`, two channels' planes in the two halves of each vector."""
    n_batch, channels, height, width = x.shape
    area = height * width
    x_flat, y_flat, w_flat = x.reshape(-1), y.reshape(-1), w.reshape(-1)
    line = 64 // x.itemsize
    pairs = (channels + 1) // 2
    ntasks = n_batch * pairs
    per_chain, longer = height // dh, height % dh
    for chunk in prange(nchunks):
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        for task in range(lo_task, hi_task):
            n, c = task // pairs, 2 * (task % pairs)
            # An odd last channel fills both halves; only the first is stored.
            other = c + 1 if c + 1 < channels else c
            ia, ib = (n * channels + c) * area, (n * channels + other) * area
            zero = _simd.zeros(x_flat, 1)
            k = (
                _simd.broadcast_halves(w_flat, 9 * c, 9 * other),
                _simd.broadcast_halves(w_flat, 9 * c + 1, 9 * other + 1),
                _simd.broadcast_halves(w_flat, 9 * c + 2, 9 * other + 2),
                _simd.broadcast_halves(w_flat, 9 * c + 3, 9 * other + 3),
                _simd.broadcast_halves(w_flat, 9 * c + 4, 9 * other + 4),
                _simd.broadcast_halves(w_flat, 9 * c + 5, 9 * other + 5),
                _simd.broadcast_halves(w_flat, 9 * c + 6, 9 * other + 6),
                _simd.broadcast_halves(w_flat, 9 * c + 7, 9 * other + 7),
                _simd.broadcast_halves(w_flat, 9 * c + 8, 9 * other + 8),
            )
            bias = _simd.broadcast_halves(b, c, other)
            if task + 1 < hi_task:
                for q in range(ib + area, ib + 3 * area, line):
                    _simd.prefetch(x_flat, q)
            for s in range(min(dh, height)):
                count = per_chain + (1 if s < longer else 0)
                _chain_packed(x_flat, y_flat, ia, ib, s, count, dh, dw, width, width if other > c else 0, k, bias, zero)


@helper
def _grad_weight_chain_packed(v, gy, x, ia, ib, s, first, stop, count, dh, dw, width, zero):
    """As :func:`_grad_weight_chain_one`, the planes at ``ia`` and ``ib`` in the two halves of each vector."""
    r = s + first * dh
    before = _simd.load_halves(gy, ia + (r - dh) * width, ib + (r - dh) * width, width) if first > 0 else zero
    at = _simd.load_halves(gy, ia + r * width, ib + r * width, width)
    for m in range(first, stop):
        after = zero
        if m + 1 < count:
            after = _simd.load_halves(gy, ia + (r + dh) * width, ib + (r + dh) * width, width)
        t = _taps(zero, _simd.load_halves(x, ia + r * width, ib + r * width, width), zero, dw)
        v = _chain_dots(v, (after, at, before), t)
        before, at = at, after
        r += dh
    return v


@kernel
def packed_grad_weight_kernel(gy, x, dh, dw, flush_passes, offsets, images, nchunks, partial):
    """As :func:`rows_grad_weight_kernel`, two channels' planes in the two halves of each vector."""
    n_batch, channels, height, width = x.shape
    area = height * width
    x_planes, g_planes = x.reshape(n_batch * channels, area), gy.reshape(n_batch * channels, area)
    x_flat, g_flat = x.reshape(-1), gy.reshape(-1)
    line = 64 // x.itemsize
    lanes = _simd.lanes(x_flat)
    groups = (n_batch + images - 1) // images
    pairs = (channels + 1) // 2
    ntasks = pairs * groups
    per_chain, longer = height // dh, height % dh
    for chunk in prange(nchunks):
        lo_task, hi_task = chunk_bounds(chunk, nchunks, ntasks)
        scratch = _simd.aligned_empty(lanes, x.dtype)
        exact = np.empty(9, np.float64)
        spare = np.empty(9, np.float64)
        for task in range(lo_task, hi_task):
            pair, group, n0, count = task_images(task, groups, images, n_batch)
            c = 2 * pair
            other = c + 1 if c + 1 < channels else c
            acc_a = partial[group, c]
            acc_b = partial[group, other] if other > c else spare
            fill(acc_a, 0.0)
            fill(acc_b, 0.0)
            zero = _simd.zeros(x_flat, 1)
            v = (zero, zero, zero, zero, zero, zero, zero, zero, zero)
            pending = 0
            for n in range(n0, n0 + count):
                ia, ib = (n * channels + c) * area, (n * channels + other) * area
                if n + 1 < n0 + count:
                    for q in range(ia + channels * area, ib + (channels + 1) * area, line):
                        _simd.prefetch(x_flat, q)
                        _simd.prefetch(g_flat, q)
                for s in range(min(dh, height)):
                    rows = per_chain + (1 if s < longer else 0)
                    first = 0
                    while first < rows:
                        stop = min(rows, first + flush_passes - pending)
                        v = _grad_weight_chain_packed(
                            v, g_flat, x_flat, ia, ib, s, first, stop, rows, dh, dw, width, zero
                        )
                        pending += stop - first
                        first = stop
                        if pending == flush_passes:
                            _simd.add_halves(v, scratch, acc_a, acc_b)
                            v = (zero, zero, zero, zero, zero, zero, zero, zero, zero)
                            pending = 0
            _simd.add_halves(v, scratch, acc_a, acc_b)
            _exact_if_not_finite(acc_a, g_planes, x_planes, n0, count, channels, c, offsets, height, width, exact)
            if other > c:
                _exact_if_not_finite(
                    acc_b, g_planes, x_planes, n0, count, channels, other, offsets, height, width, exact
                )
