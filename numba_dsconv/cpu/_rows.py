"""Row pairs: 3x3 stride-1 depthwise forwards that keep the size, two output rows per pass over a plane.

Shape legend: N = batch, C = input channels, H/W = plane size (the output has the input's size),
V = lanes of one vector (16 float32), dh/dw = dilation (the padding equals it on every side).

Output rows ``i`` and ``i + dh`` read input rows ``i - dh, i, i + dh`` and ``i, i + dh, i + 2*dh``: the two
middle rows are shared, so one pass loads four input rows for two rows of outputs. A vector of V output
columns starting at ``j0`` reads, from each input row, the vectors at ``j0 - dw``, ``j0`` and ``j0 + dw``:
twelve loads feed the eighteen multiply-adds of two output vectors (nine loads for nine in the flat
loops of ``_inplace`` and ``_masked``).

The vectors of a row start at ``0, V, 2V, ...`` and the last one at ``W - V`` (overlapping the one before
it where V does not divide W: those columns are computed twice, the same way, and stored twice). The
first and the last vector of a row, and every vector of a row pair that reaches into the vertical
padding, load through masks (``_simd.load_lanes``): a lane whose column or row lies in the padding
loads nothing and holds zero, so the padding is read as the definition's zeros (``0 * w``: NaN and Inf
reach exactly the outputs they touch) and nothing outside the plane is read. The middle vectors load
plainly. No copy of the plane, no rim computed apart.

While a plane is computed, the lines of the next plane of the task's chunk are asked for, two rows' worth
per row pair (``_simd.prefetch``): without that, the row pairs measured anywhere from 0.8x to 1.3x the
kernels below from one run to the next on a shared machine (the planes' pages come from L3 or DRAM, and
the hardware prefetcher starts over at every 4 KiB page); with it, steadily faster.

Against the flat loop over the interior plus the rim's copies (``_inplace``), one 56x56 plane in L1:
0.57 us against 0.44 for the interior alone and 0.89 with its rim. In whole float32 passes, A/B in one
process over two or three runs (forward / input gradient): 8x144x56x56 1.34-1.45x / 1.28-1.47x, 8x96x64x64
1.54x / 1.43x, 8x64x80x80 1.32x / 1.30x, 8x32x224x56 1.18x / 1.15x, and against the masked copies
8x192x28x28 with dilation 2 1.17-1.23x / 1.02-1.17x, 128x32x28x28 with dilation 2 1.18-1.50x /
1.08-1.22x; the fused separable forward at 8x144x56x56 -> 24 channels 1.18x. Wider rows keep the flat
loop, whose rim is thinner there (MAX_WIDTH): 8x48x96x96 measured 0.96x / 1.01x, 8x32x112x112 0.78-0.96x
without the prefetch. In float64 (eight lanes) it measured 0.71-1.04x without the prefetch, and with a
multiplier the other kernels run two filters per load: those keep the other kernels.

- forward: one task per (image, channel), multiplier 1.
- grad-input at stride 1 with multiplier 1 is a forward of the output gradient with the kernel turned by
  180 degrees under the same padding (``depthwise._mirrored_problem``): it runs here too.
"""

import numpy as np
from numba import prange

from . import _simd
from ._jit import helper, kernel
from ._planes import chunk_bounds, chunk_count

# The dtypes that run here, and the widest rows (both read at every call; the tests add float64 so that
# both vector widths are checked).
DTYPES = ("float32",)
MAX_WIDTH = 80


def applies(problem, dtype):
    """Tell whether a depthwise forward runs here.

    A 3x3 kernel at stride 1, multiplier 1, padding equal to the dilation on every side (the output keeps
    the input's size), rows at least one vector and at most MAX_WIDTH wide, and a horizontal dilation of at
    most half a vector.
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
        and lanes <= width <= MAX_WIDTH
        and 2 * dw <= lanes
    )


def forward_args(problem, dtype):
    """Return the kernel's plan arguments ``(dh, dw, starts, nchunks)``.

    ``starts`` holds the first column of each vector of a row: 0, then the middle vectors, then ``W - V``.
    A middle vector must read all three of its column vectors inside the row (``dw <= j0`` and
    ``j0 + V + dw <= W``); those past ``W - V - dw`` start there instead (with ``2*dw <= V`` that is at
    least ``dw``).
    """
    g = problem.geometry
    lanes = _simd.lanes_for(dtype)
    (dh, dw), width = g.dilation, g.in_hw[1]
    middle = [min(j0, width - lanes - dw) for j0 in range(lanes, width - lanes, lanes)]
    starts = np.array([0] + middle + [width - lanes], np.int64)
    return dh, dw, starts, chunk_count(problem.batch * problem.in_channels)


@helper
def _lane_range(j0, dx, width, lanes):
    """Lanes of the vector at column ``j0`` whose column ``j0 + lane + dx`` lies inside the row."""
    return max(0, -(j0 + dx)), min(lanes, width - j0 - dx)


@helper
def _row_taps(plane, index, dw, ranges):
    """Load one input row's three column vectors at ``index - dw``, ``index``, ``index + dw``, masked."""
    return (
        _simd.load_lanes(plane, index - dw, ranges[0], ranges[1]),
        _simd.load_lanes(plane, index, ranges[2], ranges[3]),
        _simd.load_lanes(plane, index + dw, ranges[4], ranges[5]),
    )


@helper
def _plain_taps(plane, index, dw):
    """Load one input row's three column vectors, all inside the row."""
    return _simd.load(plane, index - dw), _simd.load(plane, index), _simd.load(plane, index + dw)


@helper
def _kernel_row(k, first, row, zero):
    """``k[first] * row[0] + k[first + 1] * row[1] + k[first + 2] * row[2]``, one vector."""
    return _simd.fma(k[first], row[0], _simd.fma(k[first + 1], row[1], _simd.fma(k[first + 2], row[2], zero)))


@helper
def _store_pair(out, index, pitch, second, k, bias, zero, r0, r1, r2, r3):
    """Store one vector of two output rows: from input rows ``r0, r1, r2`` at ``index``.

    And from ``r1, r2, r3`` at ``index + pitch`` when ``second``. Each is the bias, then the kernel's rows
    in order.
    """
    top = _simd.add(_simd.add(bias, _kernel_row(k, 0, r0, zero)), _kernel_row(k, 3, r1, zero))
    _simd.store(out, index, _simd.add(top, _kernel_row(k, 6, r2, zero)))
    if second:
        bottom = _simd.add(_simd.add(bias, _kernel_row(k, 0, r1, zero)), _kernel_row(k, 3, r2, zero))
        _simd.store(out, index + pitch, _simd.add(bottom, _kernel_row(k, 6, r3, zero)))


@helper
def _masked_pair(plane, out, i, j0, dh, dw, height, width, k, bias, zero):
    """Compute rows ``i`` and ``i + dh`` (if inside the plane) at columns ``j0 .. j0 + V - 1``.

    Every load is masked: rows and columns in the padding read as zeros.
    """
    lanes = _simd.lanes(plane)
    ranges = (
        _lane_range(j0, -dw, width, lanes) + _lane_range(j0, 0, width, lanes) + _lane_range(j0, dw, width, lanes)
    )
    pitch = dh * width
    index = (i - dh) * width + j0
    r0 = _row_taps(plane, index, dw, ranges) if i >= dh else (zero, zero, zero)
    r1 = _row_taps(plane, index + pitch, dw, ranges)
    r2 = _row_taps(plane, index + 2 * pitch, dw, ranges) if i + dh < height else (zero, zero, zero)
    r3 = _row_taps(plane, index + 3 * pitch, dw, ranges) if i + 2 * dh < height else (zero, zero, zero)
    _store_pair(out, i * width + j0, pitch, i + dh < height, k, bias, zero, r0, r1, r2, r3)


@kernel
def rows_forward_kernel(x, w, b, dh, dw, starts, nchunks, y):
    """y[n, c] = b[c] + correlate(x[n, c], w[c]); x (N, C, H, W), w (C, 9), b (C,), y (N, C, H, W)."""
    n_batch, channels, height, width = x.shape
    area = height * width
    x_planes, y_planes = x.reshape(n_batch * channels, area), y.reshape(n_batch * channels, area)
    x_flat = x.reshape(n_batch * channels * area)
    line = 64 // x.itemsize
    nstarts = starts.shape[0]
    pitch = dh * width
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
            # Rows pair with the row dh below: blocks of 2*dh rows, the first dh of each paired.
            # The next plane's lines are asked for while this one is computed, two rows' worth per pair.
            ahead = (task + 1) * area
            ahead_end = (task + 2) * area if task + 1 < hi_task else ahead
            for block in range(0, height, 2 * dh):
                for i in range(block, min(block + dh, height)):
                    for q in range(ahead, min(ahead_end, ahead + 2 * width), line):
                        _simd.prefetch(x_flat, q)
                    ahead += 2 * width
                    if i < dh or i + 2 * dh >= height:  # the pair reaches into the vertical padding
                        for s in range(nstarts):
                            _masked_pair(plane, out, i, starts[s], dh, dw, height, width, k, bias, zero)
                        continue
                    _masked_pair(plane, out, i, 0, dh, dw, height, width, k, bias, zero)
                    for s in range(1, nstarts - 1):
                        index = (i - dh) * width + starts[s]
                        _store_pair(
                            out, i * width + starts[s], pitch, True, k, bias, zero,
                            _plain_taps(plane, index, dw), _plain_taps(plane, index + pitch, dw),
                            _plain_taps(plane, index + 2 * pitch, dw), _plain_taps(plane, index + 3 * pitch, dw),
                        )  # fmt: skip
                    _masked_pair(plane, out, i, starts[nstarts - 1], dh, dw, height, width, k, bias, zero)
