"""Depthwise 2-D convolution on the GPU: forward, gradient with respect to the input and to the weight.

Shape legend: N = batch, C = input channels, M = channel multiplier (output channel ``o`` reads input
channel ``o // M``), H/W = input size, KH/KW = kernel size, T = KH*KW taps, Ho/Wo = output size.

- forward: a block computes a tile of outputs of one (image, input channel) plane for all M filters. It first
  loads the input tile with its dilation-aware halo into shared memory (zeros where the padding is), and the
  plane's filters after it; global loads and the output stores are coalesced along W. Each thread computes
  ``rows_per_thread`` rows of one column, every tap read from shared memory at an index that advances by an
  addition.
- grad-input: the transposed convolution as a *gather*: a block owns a tile of one input plane, loads the
  output-gradient tile that can reach it (per output channel of the plane) and that channel's filter, and
  each input pixel sums the taps whose stride phase matches it (with stride 1, all of them: each filter
  value then feeds all of a thread's rows from registers; with a larger stride they recur at a fixed step,
  found once per thread and walked by additions). Every output is written by exactly one thread:
  no atomics.
- grad-weight: two stages. Block ``(o, chunk)`` sums ``grad_y * x`` over a chunk of the (image, output row)
  pairs for up to 16 taps at a time (one read of ``grad_y`` per pass, the 16 sums in registers), then reduces
  them over its threads in one fixed tree; a second kernel adds the chunks in order. Deterministic: no
  floating-point atomics.

Numba does index arithmetic in 64 bits and adds negative-index wraparound code to every load through a
signed index; the tap loops therefore carry unsigned indices advanced by additions, and the loaders step
a thread's (row, column) by additions instead of dividing per element.

The geometry (stride, dilation, padding) arrives as kernel arguments, so one compiled kernel serves every
geometry; it is specialised only by dtype.
"""

import numpy as np
from numba import cuda, float64, uint64

from .. import geometry
from . import launch
from ._arrays import as_device_array, as_stream, empty, optional_device_array
from ._reduce import MAX_SUMS, block_sums, scratch_bytes, sum_partials
from .launch import MAX_ROWS_PER_THREAD, blocks

_TAPS_PER_PASS = MAX_SUMS  # taps a grad-weight thread accumulates per pass over its elements


@cuda.jit(device=True, inline=True)
def _block_tile(channels, tiles, tiles_w, rows_per_thread):
    """Image, channel, first row and first column of the tile this block computes (grid: planes x tiles)."""
    plane = cuda.blockIdx.x // tiles
    t = cuda.blockIdx.x % tiles
    row0 = (t // tiles_w) * cuda.blockDim.y * rows_per_thread
    return plane // channels, plane % channels, row0, (t % tiles_w) * cuda.blockDim.x


@cuda.jit(device=True, inline=True)
def _load_window(src, n, c, row0, col0, rows, cols, tile):
    """tile[r*cols + q] = src[n, c, row0 + r, col0 + q], zero outside the plane; the whole block loads.

    Consecutive threads take consecutive elements of the window (consecutive columns of a row): coalesced
    global reads, consecutive banks, every lane busy. A thread's (row, column) advance by additions: one
    division per thread, not per element.
    """
    height, width = src.shape[2], src.shape[3]
    nthreads = cuda.blockDim.x * cuda.blockDim.y
    first = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    r, q = first // cols, first % cols
    row_step, col_step = nthreads // cols, nthreads % cols
    for idx in range(first, rows * cols, nthreads):
        h, col = row0 + r, col0 + q
        if 0 <= h < height and 0 <= col < width:  # unsigned once checked: no wraparound code
            tile[idx] = src[n, c, uint64(h), uint64(col)]
        else:
            tile[idx] = 0
        q += col_step
        r += row_step
        if q >= cols:
            q -= cols
            r += 1


@cuda.jit(device=True, inline=True)
def _gcd(a, b):
    """Greatest common divisor of two positive integers."""
    while b:
        a, b = b, a % b
    return a


@cuda.jit(device=True, inline=True)
def _load_filters(w, first, count, tile, base):
    """tile[base + f*T + t] = w[first + f, 0, t // KW, t % KW] for ``count`` filters; the whole block loads."""
    kw = w.shape[3]
    ntaps = w.shape[2] * kw
    nthreads = cuda.blockDim.x * cuda.blockDim.y
    for idx in range(cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x, count * ntaps, nthreads):
        f = idx // ntaps
        t = idx - f * ntaps
        tile[base + idx] = w[first + f, 0, t // kw, t - (t // kw) * kw]


@cuda.jit(cache=True)
def _forward_kernel(
    x, w, b, has_bias, zero, sh, sw, dh, dw, pad_top, pad_left, rows_per_thread, tiles_w, tiles, direct, y
):
    """y[n, o] = b[o] + correlate(x[n, o // M], w[o]); x (N, C, H, W), w (C*M, 1, KH, KW), y (N, C*M, Ho, Wo).

    Block ``(n*C + c) * tiles + tile`` of shape (BW, BH); its output tile is BW wide, BH*rows_per_thread high.
    ``b`` is read only when ``has_bias``; ``zero`` is a 0 of the arrays' dtype (the sums start from it).
    Shared memory holds the input window, then the plane's M filters: the tap loop reads shared memory only,
    its indices advance by additions (no multiply, no division per tap), and a filter value every thread of
    a warp reads at once is one broadcast.
    """
    tile = cuda.shared.array(0, x.dtype)
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    multiplier = w.shape[0] // channels
    kh, kw = w.shape[2], w.shape[3]
    ntaps = kh * kw
    out_h, out_w = y.shape[2], y.shape[3]
    bw, bh = cuda.blockDim.x, cuda.blockDim.y
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    n, c, ho0, wo0 = _block_tile(channels, tiles, tiles_w, rows_per_thread)
    h0, w0 = ho0 * sh - pad_top, wo0 * sw - pad_left  # the tile's top-left corner in the input
    in_cols = (bw - 1) * sw + (kw - 1) * dw + 1
    filters = 0
    if not direct:
        in_rows = (bh * rows_per_thread - 1) * sh + (kh - 1) * dh + 1
        filters = in_rows * in_cols
        _load_window(x, n, c, h0, w0, in_rows, in_cols, tile)
        _load_filters(w, c * multiplier, multiplier, tile, filters)
        cuda.syncthreads()
    wo = wo0 + tx
    if wo >= out_w:
        return  # no barrier follows
    one, col_step, row_step = uint64(1), uint64(dw), uint64(dh * in_cols)
    for m in range(multiplier):
        o = c * multiplier + m
        start = zero
        if has_bias:
            start = b[o]
        if direct:  # the window did not fit in shared memory: read the input and filter themselves
            for k in range(rows_per_thread):
                r = ty + k * bh
                if ho0 + r < out_h:
                    value = start
                    for i in range(kh):
                        for j in range(kw):
                            h, col = h0 + r * sh + i * dh, w0 + tx * sw + j * dw
                            if 0 <= h < height and 0 <= col < width:
                                value += w[o, 0, i, j] * x[n, c, h, col]
                    y[n, o, ho0 + r, wo] = value
        else:
            # One row at a time: holding all of a thread's rows in registers (each filter value read once
            # for them) ran slower on an H100 (D1 0.83 against 0.64 ms: 94 registers a thread, a quarter
            # of the warps resident, against 70 and three eighths).
            # Unsigned indices: Numba adds no negative-index wraparound code to the loads.
            for k in range(rows_per_thread):
                r = ty + k * bh
                if ho0 + r < out_h:
                    value = start
                    t = uint64(filters + m * ntaps)
                    row = uint64(r * sh * in_cols + tx * sw)
                    for _i in range(kh):
                        idx = row
                        for _j in range(kw):
                            value += tile[t] * tile[idx]
                            t += one
                            idx += col_step
                        row += row_step
                    y[n, o, ho0 + r, wo] = value


@cuda.jit(cache=True)
def _grad_input_kernel(gy, w, zero, sh, sw, dh, dw, pad_top, pad_left, rows_per_thread, tiles_w, tiles, direct, dx):
    """dx[n, c] = sum over m of the transposed correlation of gy[n, c*M + m] with w[c*M + m], as a gather.

    Block ``(n*C + c) * tiles + tile`` owns a BW x (BH*rows_per_thread) tile of input pixels. Shared memory
    holds one output channel's gradient window, then its filter. With stride 1 every tap reaches every pixel
    and the tap loop only adds to its indices; with a larger stride a thread walks only the taps that reach
    its pixels.
    """
    tile = cuda.shared.array(0, gy.dtype)
    acc = cuda.local.array(MAX_ROWS_PER_THREAD, gy.dtype)
    channels, height, width = dx.shape[1], dx.shape[2], dx.shape[3]
    multiplier = w.shape[0] // channels
    kh, kw = w.shape[2], w.shape[3]
    out_h, out_w = gy.shape[2], gy.shape[3]
    bw, bh = cuda.blockDim.x, cuda.blockDim.y
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    n, c, h0, w0 = _block_tile(channels, tiles, tiles_w, rows_per_thread)
    tile_h = bh * rows_per_thread
    # The output-gradient window that reaches this tile: from the first output whose lowest tap lands on
    # the tile's first row (ceiling division) over as many rows as the tile and the dilated kernel span.
    ho_lo = -(((kh - 1) * dh - h0 - pad_top) // sh)
    wo_lo = -(((kw - 1) * dw - w0 - pad_left) // sw)
    g_rows = (tile_h - 1 + (kh - 1) * dh) // sh + 1
    g_cols = (bw - 1 + (kw - 1) * dw) // sw + 1
    filters = g_rows * g_cols
    unit_stride = sh == 1 and sw == 1
    one, col_step, row_step = uint64(1), uint64(dw), uint64(dh * g_cols)
    row_block = uint64(bh * g_cols)  # from one of the thread's pixel rows to its next (stride 1), in the window
    # A fixed trip count (the array's size) lets the compiler unroll these loops and keep acc in registers.
    for k in range(MAX_ROWS_PER_THREAD):
        acc[k] = zero
    col = w0 + tx
    wp = col + pad_left
    # Stride > 1: tap (i, j) reaches pixel (hp, wp) when sh divides hp - i*dh and sw divides wp - j*dw. The
    # column taps that do are j_hit, j_hit + j_step, ... (the same for all of this thread's pixels), their
    # gradient columns step down by dw / gcd; the rows likewise. Found once, then walked by additions.
    i_step = sh // _gcd(sh, dh)
    j_step = sw // _gcd(sw, dw)
    j_hit = 0
    while j_hit < j_step and j_hit < kw and (wp - j_hit * dw) % sw != 0:
        j_hit += 1
    if j_hit >= j_step:
        j_hit = kw  # no column tap reaches this pixel
    col_hit = uint64(0)
    if j_hit < kw:
        col_hit = uint64((wp - j_hit * dw) // sw - wo_lo)
    j_step_u, wo_step = uint64(j_step), uint64(dw // _gcd(sw, dw))
    row_taps = uint64(i_step * kw)
    ho_step = uint64(dh // _gcd(sh, dh)) * uint64(g_cols)
    g_cols_u = uint64(g_cols)
    for m in range(multiplier):
        o = c * multiplier + m
        if not direct:
            cuda.syncthreads()  # every thread is done with the previous channel's tile
            _load_window(gy, n, o, ho_lo, wo_lo, g_rows, g_cols, tile)
            _load_filters(w, o, 1, tile, filters)
            cuda.syncthreads()
        if col < width and unit_stride and not direct:
            # As in the forward kernel: each filter value read once for all rows, unsigned indices that
            # advance by subtractions and stay >= 0 where read.
            t = uint64(filters)
            row = uint64((h0 + ty + pad_top - ho_lo) * g_cols + wp - wo_lo)
            for _i in range(kh):
                idx = row
                for _j in range(kw):
                    weight = tile[t]
                    for k in range(MAX_ROWS_PER_THREAD):
                        if k < rows_per_thread:
                            acc[k] += weight * tile[idx + uint64(k) * row_block]
                    t += one
                    idx -= col_step
                row -= row_step
        elif col < width:
            for k in range(MAX_ROWS_PER_THREAD):
                if k < rows_per_thread:
                    hp = h0 + ty + k * bh + pad_top
                    s = zero
                    if direct:
                        for i in range(kh):
                            num_h = hp - i * dh
                            if num_h % sh == 0:  # tap row i reaches this pixel from output row num_h // sh
                                ho = num_h // sh
                                for j in range(kw):
                                    num_w = wp - j * dw
                                    if num_w % sw == 0:
                                        wo = num_w // sw
                                        if 0 <= ho < out_h and 0 <= wo < out_w:
                                            s += w[o, 0, i, j] * gy[n, o, ho, wo]
                    else:
                        # The tap rows that reach this pixel: the first one, then every i_step-th.
                        i = 0
                        while i < i_step and i < kh and (hp - i * dh) % sh != 0:
                            i += 1
                        if i < i_step and i < kh:
                            at = uint64((hp - i * dh) // sh - ho_lo) * g_cols_u + col_hit
                            t_row = uint64(filters + i * kw + j_hit)
                            while i < kh:
                                t, idx, j = t_row, at, j_hit
                                while j < kw:
                                    s += tile[t] * tile[idx]
                                    t += j_step_u
                                    idx -= wo_step
                                    j += j_step
                                i += i_step
                                t_row += row_taps
                                at -= ho_step
                    for row_k in range(MAX_ROWS_PER_THREAD):  # constant indices only: acc stays in registers
                        if row_k == k:
                            acc[row_k] += s
    if col < width:
        for k in range(MAX_ROWS_PER_THREAD):
            h = h0 + ty + k * bh
            if k < rows_per_thread and h < height:
                dx[n, c, h, col] = acc[k]


@cuda.jit(cache=True)
def _grad_weight_partial_kernel(gy, x, kw, sh, sw, dh, dw, pad_top, pad_left, rows_per_chunk, chunks, partial):
    """partial[chunk, o, t] = sum over the chunk's (image, output row) pairs of gy[n, o] * x_padded at tap t.

    Block ``o * chunks + chunk``, 1-D. Padding positions contribute ``gy * 0``, as in the formula, so a NaN
    in ``grad_y`` reaches every tap of its filter.
    """
    scratch = cuda.shared.array(0, float64)
    acc = cuda.local.array(_TAPS_PER_PASS, float64)
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    multiplier = gy.shape[1] // channels
    out_h, out_w = gy.shape[2], gy.shape[3]
    ntaps = partial.shape[2]
    tid, nthreads = cuda.threadIdx.x, cuda.blockDim.x
    o = cuda.blockIdx.x // chunks
    chunk = cuda.blockIdx.x % chunks
    c = o // multiplier
    first_row = chunk * rows_per_chunk
    count = (min(gy.shape[0] * out_h, first_row + rows_per_chunk) - first_row) * out_w
    # Element e = (row - first_row) * out_w + wo of the chunk; a thread steps nthreads elements at a time,
    # which moves it row_step rows and col_step columns: its (image, row, column) advance by additions.
    row_step, col_step = nthreads // out_w, nthreads % out_w
    for t0 in range(0, ntaps, _TAPS_PER_PASS):
        taps = min(ntaps - t0, _TAPS_PER_PASS)
        # Loops over the array's fixed size (taps past the last skipped) unroll, and acc stays in registers.
        for t in range(_TAPS_PER_PASS):
            acc[t] = 0.0
        row = first_row + tid // out_w
        wo = tid % out_w
        n = row // out_h
        ho = row - n * out_h
        for _e in range(tid, count, nthreads):  # consecutive threads, consecutive columns: coalesced
            g = gy[n, o, ho, wo]
            hb, wb = ho * sh - pad_top, wo * sw - pad_left
            i, j = t0 // kw, t0 % kw
            for t in range(_TAPS_PER_PASS):
                if t < taps:
                    h, col = hb + i * dh, wb + j * dw
                    if 0 <= h < height and 0 <= col < width:  # unsigned once checked: no wraparound code
                        acc[t] += g * x[n, c, uint64(h), uint64(col)]
                    else:
                        acc[t] += g * 0.0
                    j += 1
                    if j == kw:
                        i, j = i + 1, 0
            wo += col_step
            ho += row_step
            if wo >= out_w:
                wo -= out_w
                ho += 1
            while ho >= out_h:
                ho -= out_h
                n += 1
        block_sums(acc, taps, scratch, tid, nthreads)
        if tid == 0:
            for t in range(taps):
                partial[chunk, o, t0 + t] = scratch[t * nthreads]
        cuda.syncthreads()


def _tile_plan(problem, itemsize, grad_input):
    """Block shape, rows per thread and shared bytes of a forward or grad-input launch.

    Shrinks the configured tile (rows per thread, then block height, then width) until its shared-memory
    window and the filters it needs (the plane's M filters forward, one filter for grad-input) fit
    ``CONFIG.shared_bytes``; a window that never fits makes the kernel read global memory (``direct``).
    """
    cfg = launch.CONFIG
    g = problem.geometry
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    filters = kh * kw * (1 if grad_input else problem.multiplier)

    def window(bw, bh, rows):
        if grad_input:
            return ((bh * rows - 1 + (kh - 1) * dh) // sh + 1) * ((bw - 1 + (kw - 1) * dw) // sw + 1) + filters
        return ((bh * rows - 1) * sh + (kh - 1) * dh + 1) * ((bw - 1) * sw + (kw - 1) * dw + 1) + filters

    (bw, bh), rows = cfg.tile_threads, cfg.rows_per_thread
    shape = [bw, bh, rows]
    while window(*shape) * itemsize > cfg.shared_bytes and shape != [1, 1, 1]:
        axis = 2 if shape[2] > 1 else (1 if shape[1] > 1 else 0)
        shape[axis] //= 2
    if window(*shape) * itemsize > cfg.shared_bytes:
        return (bw, bh), rows, 0, True
    bw, bh, rows = shape
    return (bw, bh), rows, window(bw, bh, rows) * itemsize, False


def _tiled_launch(kernel, problem, dtype, grad_input, stream, *args):
    """Launch the forward or grad-input kernel over every plane and tile of its output.

    ``args`` are the kernel's arguments before the geometry, then its output.
    """
    (bw, bh), rows, shared, direct = _tile_plan(problem, np.dtype(dtype).itemsize, grad_input)
    out_h, out_w = problem.geometry.in_hw if grad_input else problem.geometry.out_hw
    tiles_w = blocks(out_w, bw)
    tiles = tiles_w * blocks(out_h, bh * rows)
    grid = problem.batch * problem.in_channels * tiles
    g = problem.geometry
    geometry_args = g.stride + g.dilation + (g.pad[0], g.pad[2])
    kernel[grid, (bw, bh), stream, shared](*args[:-1], *geometry_args, rows, tiles_w, tiles, direct, args[-1])


def depthwise_conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, stream=None):
    """Depthwise 2-D cross-correlation on the GPU; the contract of :func:`numba_dsconv.cpu.depthwise_conv2d`.

    Parameters
    ----------
    x : CUDA array, shape (N, C, H, W)
        float32 or float64; anything with ``__cuda_array_interface__``.
    weight : CUDA array, shape (C*M, 1, KH, KW)
    bias : CUDA array, shape (C*M,), optional
    stride, padding, dilation
        As on the CPU (``"same"`` follows TensorFlow's rule).
    stream : numba.cuda stream, optional
        Stream the kernels run on (the default stream when omitted). The call returns without waiting.

    Returns
    -------
    y : numba.cuda.DeviceNDArray, shape (N, C*M, Ho, Wo)
    """
    stream = as_stream(stream)
    x = as_device_array("x", x, stream)
    weight = as_device_array("weight", weight, stream)
    bias = optional_device_array("bias", bias, stream)
    dtype = geometry.check_same_dtype("x", x, weight=weight, bias=bias)
    problem = geometry.depthwise_problem(x.shape, weight.shape, stride, padding, dilation)
    geometry.check_bias(bias, problem.out_channels)
    y = empty(problem.output_shape, dtype, stream)
    has_bias = bias is not None
    if not has_bias:  # any 1-D array of the dtype stands in: the kernel does not read it (no fill launch)
        bias = weight.reshape(weight.size)
    zero = np.dtype(dtype).type(0)
    _tiled_launch(_forward_kernel, problem, dtype, False, stream, x, weight, bias, has_bias, zero, y)
    return y


def depthwise_conv2d_grad_input(grad_y, weight, input_shape, *, stride=1, padding=0, dilation=1, stream=None):
    """Gradient of :func:`depthwise_conv2d` with respect to its input, on the GPU.

    Parameters
    ----------
    grad_y : CUDA array, shape (N, C*M, Ho, Wo)
    weight : CUDA array, shape (C*M, 1, KH, KW)
    input_shape : (N, C, H, W)
    stride, padding, dilation
        As in the forward pass.
    stream : numba.cuda stream, optional

    Returns
    -------
    grad_x : numba.cuda.DeviceNDArray, shape (N, C, H, W)
    """
    stream = as_stream(stream)
    grad_y = as_device_array("grad_y", grad_y, stream)
    weight = as_device_array("weight", weight, stream)
    dtype = geometry.check_same_dtype("grad_y", grad_y, weight=weight)
    input_shape = geometry.check_shape_argument("input_shape", input_shape, 4, "(N, C, H, W)")
    problem = geometry.depthwise_problem(input_shape, weight.shape, stride, padding, dilation, input_name="input_shape")
    geometry.check_shape("grad_y", grad_y.shape, problem.output_shape, "(N, C*M, Ho, Wo) for this geometry")
    grad_x = empty(problem.input_shape, dtype, stream)
    zero = np.dtype(dtype).type(0)
    _tiled_launch(_grad_input_kernel, problem, dtype, True, stream, grad_y, weight, zero, grad_x)
    return grad_x


def depthwise_conv2d_grad_weight(grad_y, x, weight_shape, *, stride=1, padding=0, dilation=1, stream=None):
    """Gradient of :func:`depthwise_conv2d` with respect to its weight, on the GPU.

    Parameters
    ----------
    grad_y : CUDA array, shape (N, C*M, Ho, Wo)
    x : CUDA array, shape (N, C, H, W)
    weight_shape : (C*M, 1, KH, KW)
    stride, padding, dilation
        As in the forward pass.
    stream : numba.cuda stream, optional

    Returns
    -------
    grad_weight : numba.cuda.DeviceNDArray, shape (C*M, 1, KH, KW)
        Products summed in float64 (per thread, then a fixed tree per block, then the blocks in order).
    """
    stream = as_stream(stream)
    grad_y = as_device_array("grad_y", grad_y, stream)
    x = as_device_array("x", x, stream)
    dtype = geometry.check_same_dtype("x", x, grad_y=grad_y)
    weight_shape = geometry.check_shape_argument("weight_shape", weight_shape, 4, "(C*M, 1, KH, KW)")
    problem = geometry.depthwise_problem(x.shape, weight_shape, stride, padding, dilation)
    geometry.check_shape("grad_y", grad_y.shape, problem.output_shape, "(N, C*M, Ho, Wo) for this geometry")
    cfg = launch.CONFIG
    g = problem.geometry
    out_h, out_w = g.out_hw
    rows_per_chunk = max(1, cfg.reduce_elements // out_w)
    chunks = blocks(problem.batch * out_h, rows_per_chunk)
    ntaps = g.kernel[0] * g.kernel[1]
    partial = empty((chunks, problem.out_channels, ntaps), np.float64, stream)
    shared = scratch_bytes(min(ntaps, _TAPS_PER_PASS), cfg.reduce_threads)
    _grad_weight_partial_kernel[problem.out_channels * chunks, cfg.reduce_threads, stream, shared](
        grad_y, x, g.kernel[1], *g.stride, *g.dilation, g.pad[0], g.pad[2], rows_per_chunk, chunks, partial
    )
    grad_w = empty(problem.weight_shape, dtype, stream)
    sum_partials(
        partial.reshape(chunks, problem.out_channels * ntaps), grad_w.reshape(problem.out_channels * ntaps), stream
    )
    return grad_w
