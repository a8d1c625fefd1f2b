"""Depthwise 2-D convolution on the GPU: forward, gradient with respect to the input and to the weight.

Shape legend: N = batch, C = input channels, M = channel multiplier (output channel ``o`` reads input
channel ``o // M``), H/W = input size, KH/KW = kernel size, T = KH*KW taps, Ho/Wo = output size.

- forward: a block computes a tile of outputs of one (image, input channel) plane for all M filters. It first
  loads the input tile with its dilation-aware halo into shared memory (zeros where the padding is), one
  row segment per warp, so global loads and the output stores are coalesced along W; every tap then reads
  shared memory. Each thread computes ``rows_per_thread`` rows of one column.
- grad-input: the transposed convolution as a *gather*: a block owns a tile of one input plane, loads the
  output-gradient tile that can reach it (per output channel of the plane), and each input pixel sums the
  taps whose stride phase matches it. Every output is written by exactly one thread: no atomics.
- grad-weight: two stages. Block ``(o, chunk)`` sums ``grad_y * x`` over a chunk of the (image, output row)
  pairs for up to 16 taps at a time (one read of ``grad_y`` per pass), then reduces the 16 sums over its threads
  in one fixed tree; a second kernel adds the chunks in order. Deterministic: no floating-point atomics.

The geometry (stride, dilation, padding) arrives as kernel arguments, so one compiled kernel serves every
geometry; it is specialised only by dtype.
"""

import numpy as np
from numba import cuda, float64

from .. import geometry
from . import launch
from ._arrays import as_device_array, as_stream, empty, optional_device_array, zeros
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

    Consecutive threads take consecutive columns of a row: coalesced global reads, consecutive banks.
    """
    height, width = src.shape[2], src.shape[3]
    nthreads = cuda.blockDim.x * cuda.blockDim.y
    for idx in range(cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x, rows * cols, nthreads):
        r = idx // cols
        h, col = row0 + r, col0 + idx - r * cols
        if 0 <= h < height and 0 <= col < width:
            tile[idx] = src[n, c, h, col]
        else:
            tile[idx] = 0


@cuda.jit(cache=True)
def _forward_kernel(x, w, b, sh, sw, dh, dw, pad_top, pad_left, rows_per_thread, tiles_w, tiles, direct, y):
    """y[n, o] = b[o] + correlate(x[n, o // M], w[o]); x (N, C, H, W), w (C*M, 1, KH, KW), y (N, C*M, Ho, Wo).

    Block ``(n*C + c) * tiles + tile`` of shape (BW, BH); its output tile is BW wide, BH*rows_per_thread high.
    """
    tile = cuda.shared.array(0, x.dtype)
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    multiplier = w.shape[0] // channels
    kh, kw = w.shape[2], w.shape[3]
    out_h, out_w = y.shape[2], y.shape[3]
    bw, bh = cuda.blockDim.x, cuda.blockDim.y
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    n, c, ho0, wo0 = _block_tile(channels, tiles, tiles_w, rows_per_thread)
    h0, w0 = ho0 * sh - pad_top, wo0 * sw - pad_left  # the tile's top-left corner in the input
    in_cols = (bw - 1) * sw + (kw - 1) * dw + 1
    if not direct:
        in_rows = (bh * rows_per_thread - 1) * sh + (kh - 1) * dh + 1
        _load_window(x, n, c, h0, w0, in_rows, in_cols, tile)
        cuda.syncthreads()
    wo = wo0 + tx
    if wo >= out_w:
        return  # no barrier follows
    for m in range(multiplier):
        o = c * multiplier + m
        for k in range(rows_per_thread):
            r = ty + k * bh
            if ho0 + r < out_h:
                acc = b[o]
                for i in range(kh):
                    for j in range(kw):
                        if direct:  # the tile did not fit in shared memory: read the input itself
                            h, col = h0 + r * sh + i * dh, w0 + tx * sw + j * dw
                            if 0 <= h < height and 0 <= col < width:
                                acc += w[o, 0, i, j] * x[n, c, h, col]
                        else:
                            acc += w[o, 0, i, j] * tile[(r * sh + i * dh) * in_cols + tx * sw + j * dw]
                y[n, o, ho0 + r, wo] = acc


@cuda.jit(cache=True)
def _grad_input_kernel(gy, w, sh, sw, dh, dw, pad_top, pad_left, rows_per_thread, tiles_w, tiles, direct, dx):
    """dx[n, c] = sum over m of the transposed correlation of gy[n, c*M + m] with w[c*M + m], as a gather.

    Block ``(n*C + c) * tiles + tile`` owns a BW x (BH*rows_per_thread) tile of input pixels.
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
    for k in range(rows_per_thread):
        acc[k] = 0
    col = w0 + tx
    wp = col + pad_left
    for m in range(multiplier):
        o = c * multiplier + m
        if not direct:
            cuda.syncthreads()  # every thread is done with the previous channel's tile
            _load_window(gy, n, o, ho_lo, wo_lo, g_rows, g_cols, tile)
            cuda.syncthreads()
        if col < width:
            for k in range(rows_per_thread):
                hp = h0 + ty + k * bh + pad_top
                for i in range(kh):
                    num_h = hp - i * dh
                    if num_h % sh == 0:  # tap row i reaches this pixel from output row num_h // sh
                        ho = num_h // sh
                        for j in range(kw):
                            num_w = wp - j * dw
                            if num_w % sw == 0:
                                wo = num_w // sw
                                if not direct:
                                    acc[k] += w[o, 0, i, j] * tile[(ho - ho_lo) * g_cols + wo - wo_lo]
                                elif 0 <= ho < out_h and 0 <= wo < out_w:
                                    acc[k] += w[o, 0, i, j] * gy[n, o, ho, wo]
    if col < width:
        for k in range(rows_per_thread):
            h = h0 + ty + k * bh
            if h < height:
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
    for t0 in range(0, ntaps, _TAPS_PER_PASS):
        taps = min(ntaps - t0, _TAPS_PER_PASS)
        for t in range(taps):
            acc[t] = 0.0
        for e in range(tid, count, nthreads):  # consecutive threads, consecutive columns: coalesced
            row = first_row + e // out_w
            wo = e % out_w
            n = row // out_h
            ho = row - n * out_h
            g = gy[n, o, ho, wo]
            hb, wb = ho * sh - pad_top, wo * sw - pad_left
            i, j = t0 // kw, t0 % kw
            for t in range(taps):
                h, col = hb + i * dh, wb + j * dw
                if 0 <= h < height and 0 <= col < width:
                    acc[t] += g * x[n, c, h, col]
                else:
                    acc[t] += g * 0.0
                j += 1
                if j == kw:
                    i, j = i + 1, 0
        block_sums(acc, taps, scratch, tid, nthreads)
        if tid == 0:
            for t in range(taps):
                partial[chunk, o, t0 + t] = scratch[t * nthreads]
        cuda.syncthreads()


def _tile_plan(problem, itemsize, grad_input):
    """Block shape, rows per thread and shared bytes of a forward or grad-input launch.

    Shrinks the configured tile (rows per thread, then block height, then width) until its shared-memory
    window fits ``CONFIG.shared_bytes``; a window that never fits makes the kernel read global memory
    (``direct``).
    """
    cfg = launch.CONFIG
    g = problem.geometry
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation

    def window(bw, bh, rows):
        if grad_input:
            return ((bh * rows - 1 + (kh - 1) * dh) // sh + 1) * ((bw - 1 + (kw - 1) * dw) // sw + 1)
        return ((bh * rows - 1) * sh + (kh - 1) * dh + 1) * ((bw - 1) * sw + (kw - 1) * dw + 1)

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
    """Launch the forward or grad-input kernel over every plane and tile of its output."""
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
    if bias is None:
        bias = zeros(problem.out_channels, dtype, stream)
    y = empty(problem.output_shape, dtype, stream)
    _tiled_launch(_forward_kernel, problem, dtype, False, stream, x, weight, bias, y)
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
    _tiled_launch(_grad_input_kernel, problem, dtype, True, stream, grad_y, weight, grad_x)
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
