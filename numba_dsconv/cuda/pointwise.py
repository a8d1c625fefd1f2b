"""Pointwise (1x1) convolution on the GPU: a tiled shared-memory matrix product, and the bias gradient.

Shape legend: N = batch, Cin/Cout = input/output channels, P = H*W pixels, BX/BY = threads of a block.

All three products run through one kernel, ``out[z] = A[g] @ B[g] (+ bias)``, whose operands may be stored
transposed:

- forward      ``y[n] = W @ x[n]``              A = W (Cout, Cin),        B = x[n] (Cin, P)
- grad-input   ``dx[n] = W.T @ gy[n]``          A = W stored transposed,  B = gy[n] (Cout, P)
- grad-weight  ``dW = sum_n gy[n] @ x[n].T``    A = gy[n] (Cout, P),      B = x[n] stored transposed

A block computes a (4*BY) x (4*BX) tile of ``out``, each thread a 4x4 patch held in registers, from slices
of A and B staged in shared memory ``tile_k`` deep. Each slice is loaded with the operand's contiguous axis
fastest across threads (coalesced whatever the transposition), into rows padded by one element so that
neither the loads nor the column reads of a warp conflict on a bank. The grad-weight's long reduction
(N*P) is split into chunks, each written to its own float64 partial result and summed in a fixed order:
parallel, and deterministic.
"""

import numpy as np
from numba import cuda, uint64

from .. import geometry
from . import launch
from ._arrays import as_device_array, as_stream, empty, optional_device_array
from ._reduce import SUM_X, channel_sums, sum_partials
from .launch import blocks

_MICRO = 4  # outputs per thread along each axis of the tile (a 4x4 register patch)


@cuda.jit(device=True, inline=True)
def _load_slice(src, g, rows_fastest, first, limit, k0, k_end, depth, smem, base, ld):
    """smem[base + kk*ld + i] = S[first + i, k0 + kk] for a ``depth`` x ``ld - 1`` slice, zero outside.

    ``S[i, k]`` is ``src[g, i, k]``, or ``src[g, k, i]`` when ``rows_fastest`` (the i axis is the contiguous
    one); either way consecutive threads read consecutive addresses of ``src`` (coalesced).
    """
    size = ld - 1
    tx, ty, bx, by = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockDim.x, cuda.blockDim.y
    # Threads along x take the contiguous axis, rows of threads the other: no division per element.
    if rows_fastest:
        for kk in range(ty, depth, by):
            inside = k0 + kk < k_end
            for i in range(tx, size, bx):
                if inside and first + i < limit:
                    smem[base + kk * ld + i] = src[g, k0 + kk, first + i]
                else:
                    smem[base + kk * ld + i] = 0
    else:
        for i in range(ty, size, by):
            inside = first + i < limit
            for kk in range(tx, depth, bx):
                if inside and k0 + kk < k_end:
                    smem[base + kk * ld + i] = src[g, first + i, k0 + kk]
                else:
                    smem[base + kk * ld + i] = 0


@cuda.jit(cache=True)
def _gemm_kernel(a, b, bias, has_bias, a_transposed, b_transposed, tile_k, k_chunk, k_chunks, out):
    """out[z, i, j] = bias[i] + sum over k in chunk ``z % k_chunks`` of A[g][i, k] * B[g][k, j].

    ``bias`` is read only when ``has_bias`` (else any 1-D array of the dtype stands in: no fill launch).

    ``g = z // k_chunks``. A[g][i, k] is ``a[g, i, k]`` (``a[g, k, i]`` when ``a_transposed``); an ``a`` with a
    batch of one serves every g. B[g][k, j] is ``b[g, k, j]`` (``b[g, j, k]`` when ``b_transposed``).
    Grid (column tiles, row tiles, N * k_chunks); dynamic shared memory ``tile_k * (4*BY + 1 + 4*BX + 1)``.
    """
    smem = cuda.shared.array(0, a.dtype)
    acc = cuda.local.array((_MICRO, _MICRO), a.dtype)
    a_frag = cuda.local.array(_MICRO, a.dtype)
    b_frag = cuda.local.array(_MICRO, a.dtype)
    bx, by = cuda.blockDim.x, cuda.blockDim.y
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tm, tn = by * _MICRO, bx * _MICRO
    lda, ldb = tm + 1, tn + 1
    b_base = tile_k * lda  # B's slice follows A's in shared memory
    z = cuda.blockIdx.z
    g = z // k_chunks
    ga = g if a.shape[0] > 1 else 0
    m_size = a.shape[2] if a_transposed else a.shape[1]
    k_size = a.shape[1] if a_transposed else a.shape[2]
    n_size = b.shape[1] if b_transposed else b.shape[2]
    i0, j0 = cuda.blockIdx.y * tm, cuda.blockIdx.x * tn
    k_begin = (z % k_chunks) * k_chunk
    k_end = min(k_size, k_begin + k_chunk)
    a_step, b_step, a_next, b_next = uint64(by), uint64(bx), uint64(lda), uint64(ldb)
    for r in range(_MICRO):
        for s in range(_MICRO):
            acc[r, s] = 0
    for k0 in range(k_begin, k_end, tile_k):
        # A's slice holds A[i0:i0+tm, k0:k0+tile_k]; B's, read as B.T, holds B[k0:k0+tile_k, j0:j0+tn].
        _load_slice(a, ga, a_transposed, i0, m_size, k0, k_end, tile_k, smem, 0, lda)
        _load_slice(b, g, not b_transposed, j0, n_size, k0, k_end, tile_k, smem, b_base, ldb)
        cuda.syncthreads()
        # Unsigned offsets that advance by additions: no multiply and no wraparound code per load.
        a_at, b_at = uint64(ty), uint64(b_base + tx)
        for _kk in range(tile_k):
            for r in range(_MICRO):
                a_frag[r] = smem[a_at + uint64(r) * a_step]  # one address per row of threads: a broadcast
            for s in range(_MICRO):
                b_frag[s] = smem[b_at + uint64(s) * b_step]  # consecutive threads, consecutive banks
            for r in range(_MICRO):
                for s in range(_MICRO):
                    acc[r, s] += a_frag[r] * b_frag[s]
            a_at += a_next
            b_at += b_next
        cuda.syncthreads()
    for r in range(_MICRO):
        i = i0 + ty + r * by
        if i < m_size:
            for s in range(_MICRO):
                j = j0 + tx + s * bx  # consecutive threads, consecutive pixels: coalesced stores
                if j < n_size:
                    if has_bias:
                        out[z, i, j] = acc[r, s] + bias[i]
                    else:
                        out[z, i, j] = acc[r, s]


MAX_GRID_Z = 65535  # CUDA's limit on a grid's third dimension, which runs over images (and K chunks)


def _gemm(a, b, bias, a_transposed, b_transposed, out, k_chunk, k_chunks, stream):
    """Launch :func:`_gemm_kernel`, in several launches when the images times K chunks exceed the grid's z.

    ``bias`` is a 1-D array of the dtype, or None.
    """
    has_bias = bias is not None
    if not has_bias:
        bias = a.reshape(a.size)
    cfg = launch.CONFIG
    bx, by = cfg.gemm_threads
    m_size = a.shape[2] if a_transposed else a.shape[1]
    n_size = b.shape[1] if b_transposed else b.shape[2]
    shared = cfg.gemm_tile_k * (_MICRO * by + 1 + _MICRO * bx + 1) * a.dtype.itemsize
    images = b.shape[0]
    step = max(1, MAX_GRID_Z // k_chunks)
    for first in range(0, images, step):
        last = min(images, first + step)
        a_part = a if a.shape[0] == 1 else a[first:last]
        grid = (blocks(n_size, _MICRO * bx), blocks(m_size, _MICRO * by), (last - first) * k_chunks)
        _gemm_kernel[grid, (bx, by), stream, shared](
            a_part,
            b[first:last],
            bias,
            has_bias,
            a_transposed,
            b_transposed,
            cfg.gemm_tile_k,
            k_chunk,
            k_chunks,
            out[first * k_chunks : last * k_chunks],
        )


def _images(name, array):
    """Check an NCHW device array; return it as (N, C, H*W) and its shape."""
    shape = geometry.check_rank(name, array.shape, 4, "(N, C, H, W)")
    return array.reshape(shape[0], shape[1], shape[2] * shape[3]), shape


def pointwise_conv2d(x, weight, bias=None, *, stream=None):
    """Pointwise (1x1) convolution on the GPU; the contract of :func:`numba_dsconv.cpu.pointwise_conv2d`.

    Parameters
    ----------
    x : CUDA array, shape (N, Cin, H, W)
    weight : CUDA array, shape (Cout, Cin, 1, 1) or (Cout, Cin)
    bias : CUDA array, shape (Cout,), optional
    stream : numba.cuda stream, optional

    Returns
    -------
    y : numba.cuda.DeviceNDArray, shape (N, Cout, H, W)
        Products summed in the data's dtype.
    """
    stream = as_stream(stream)
    x = as_device_array("x", x, stream)
    weight = as_device_array("weight", weight, stream)
    bias = optional_device_array("bias", bias, stream)
    dtype = geometry.check_same_dtype("x", x, weight=weight, bias=bias)
    x3, (n, cin, h, w) = _images("x", x)
    cout, _ = geometry.pointwise_weight_for_input(weight.shape, cin)
    geometry.check_bias(bias, cout)
    y = empty((n, cout, h * w), dtype, stream)
    _gemm(weight.reshape(1, cout, cin), x3, bias, False, False, y, cin, 1, stream)
    return y.reshape(n, cout, h, w)


def pointwise_conv2d_grad_input(grad_y, weight, *, stream=None):
    """Gradient of :func:`pointwise_conv2d` with respect to its input, on the GPU.

    Parameters
    ----------
    grad_y : CUDA array, shape (N, Cout, H, W)
    weight : CUDA array, shape (Cout, Cin, 1, 1) or (Cout, Cin)
    stream : numba.cuda stream, optional

    Returns
    -------
    grad_x : numba.cuda.DeviceNDArray, shape (N, Cin, H, W)
    """
    stream = as_stream(stream)
    grad_y = as_device_array("grad_y", grad_y, stream)
    weight = as_device_array("weight", weight, stream)
    dtype = geometry.check_same_dtype("grad_y", grad_y, weight=weight)
    gy3, (n, cout, h, w) = _images("grad_y", grad_y)
    _, cin = geometry.pointwise_weight_for_grad(weight.shape, cout)
    grad_x = empty((n, cin, h * w), dtype, stream)
    _gemm(weight.reshape(1, cout, cin), gy3, None, True, False, grad_x, cout, 1, stream)
    return grad_x.reshape(n, cin, h, w)


def pointwise_conv2d_grad_weight(grad_y, x, weight_shape=None, *, stream=None):
    """Gradient of :func:`pointwise_conv2d` with respect to its weight, on the GPU.

    Parameters
    ----------
    grad_y : CUDA array, shape (N, Cout, H, W)
    x : CUDA array, shape (N, Cin, H, W)
    weight_shape : (Cout, Cin, 1, 1) or (Cout, Cin), optional
    stream : numba.cuda stream, optional

    Returns
    -------
    grad_weight : numba.cuda.DeviceNDArray, shape ``weight_shape``
        Each chunk of the N*H*W reduction summed in the data's dtype, the chunks in float64 in order.
    """
    stream = as_stream(stream)
    grad_y = as_device_array("grad_y", grad_y, stream)
    x = as_device_array("x", x, stream)
    dtype = geometry.check_same_dtype("x", x, grad_y=grad_y)
    weight_shape = geometry.pointwise_grad_weight_shape(grad_y.shape, x.shape, weight_shape)
    x3, (n, cin, h, w) = _images("x", x)
    gy3, (_, cout, _, _) = _images("grad_y", grad_y)
    cfg = launch.CONFIG
    bx, by = cfg.gemm_threads
    # Split each image's P pixels into chunks until the launch has about gemm_target_blocks blocks.
    pixels, tile_k = h * w, cfg.gemm_tile_k
    tiles = blocks(cout, _MICRO * by) * blocks(cin, _MICRO * bx)
    wanted = max(1, min(blocks(pixels, tile_k), cfg.gemm_target_blocks // (tiles * n), MAX_GRID_Z))
    k_chunk = blocks(blocks(pixels, wanted), tile_k) * tile_k
    k_chunks = blocks(pixels, k_chunk)
    partial = empty((n * k_chunks, cout, cin), np.float64, stream)
    _gemm(gy3, x3, None, False, True, partial, k_chunk, k_chunks, stream)
    grad_w = empty(weight_shape, dtype, stream)
    sum_partials(partial.reshape(n * k_chunks, cout * cin), grad_w.reshape(cout * cin), stream)
    return grad_w


def conv2d_grad_bias(grad_y, *, stream=None):
    """Gradient of a convolution's bias on the GPU: ``grad_y`` summed over batch, height and width.

    Parameters
    ----------
    grad_y : CUDA array, shape (N, C, H, W)
    stream : numba.cuda stream, optional

    Returns
    -------
    grad_bias : numba.cuda.DeviceNDArray, shape (C,)
        Summed in float64: per thread, a fixed tree per block, the blocks in order.
    """
    stream = as_stream(stream)
    grad_y = as_device_array("grad_y", grad_y, stream)
    dtype = geometry.check_dtype("grad_y", grad_y)
    gy3, _ = _images("grad_y", grad_y)
    return channel_sums(gy3, SUM_X, dtype, stream)[0]
