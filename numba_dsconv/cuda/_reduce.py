"""Deterministic reductions shared by the GPU gradients.

A block-wide sum, per-channel partial sums, and the second stage that adds partial results in a fixed order.

No floating-point atomics anywhere: the order of every addition is fixed by the launch shape, so a result is
identical run to run on one configuration.
"""

import numpy as np
from numba import cuda, float64

from . import launch
from .launch import blocks

MAX_REDUCE_THREADS = 256  # threads of a reduction block
MAX_SUMS = 16  # values a block reduces at once
_SUM_THREADS = 256


@cuda.jit(device=True, inline=True)
def block_sums(values, count, scratch, tid, nthreads):
    """Sum each of ``values[:count]`` over the ``nthreads`` threads of a 1-D block (a power of two).

    A tree in shared memory: at each step the lower half of the threads adds the upper half, for all
    ``count`` values at once (one barrier per step, not per value). The order of the additions depends only
    on ``nthreads``. Afterwards ``scratch[t * nthreads]`` holds the sum of value ``t``; the caller reads it
    and calls ``cuda.syncthreads()`` before the scratch is used again. ``scratch`` is float64 shared memory
    of ``count * nthreads`` entries or more: the kernel's dynamic shared memory, sized by
    :func:`scratch_bytes` at launch. (Dynamic rather than static: the CUDA simulator creates a static shared
    array on its first use in a block without a lock, and two threads may each get their own.)
    """
    for t in range(MAX_SUMS):  # a fixed trip count: unrolled, so ``values`` can live in registers
        if t < count:
            scratch[t * nthreads + tid] = values[t]
    cuda.syncthreads()
    step = nthreads // 2
    while step > 0:
        if tid < step:
            for t in range(count):
                scratch[t * nthreads + tid] += scratch[t * nthreads + tid + step]
        cuda.syncthreads()
        step //= 2


@cuda.jit(cache=True)
def _sum_partials_kernel(partial, out):
    """out[k] = sum over z of partial[z, k], z in index order; partial (Z, L) float64, out (L,)."""
    k = cuda.grid(1)
    if k < out.shape[0]:
        acc = partial[0, k]
        for z in range(1, partial.shape[0]):
            acc += partial[z, k]
        out[k] = acc


def scratch_bytes(count, nthreads):
    """Dynamic shared memory of a block that reduces ``count`` values over ``nthreads`` threads."""
    return 8 * count * nthreads


def sum_partials(partial, out, stream):
    """Second stage of a reduction: ``out = partial.sum(axis=0)`` in a fixed order (``partial`` 2-D float64)."""
    _sum_partials_kernel[blocks(out.shape[0], _SUM_THREADS), _SUM_THREADS, stream](partial, out)


# What :func:`channel_sums` adds up per channel c (the second sum only for BACKWARD_SUMS).
SUM_X = 0  # x
SUM_SQUARED_DEVIATION = 1  # (x - mean[c])^2
# g and g * (x - mean[c]), g = gy where x * scale[c] + shift[c] > 0 if relu (batch normalisation's backward,
# the mask of the ReLU after it recomputed from x as its forward computed it)
BACKWARD_SUMS = 2


@cuda.jit(cache=True)
def _channel_partial_sums_kernel(x, gy, mean, scale, shift, relu, mode, chunk_elements, chunks, partial):
    """partial[chunk, s, c] = sum ``s`` of ``mode`` over the chunk's slice of the (n, p) pairs; x, gy (N, C, P).

    Block ``c * chunks + chunk``, 1-D; its threads stride over the slice (consecutive threads, consecutive
    pixels: coalesced) adding in float64, then :func:`block_sums` adds the threads' totals.
    """
    scratch = cuda.shared.array(0, float64)
    acc = cuda.local.array(2, float64)
    tid, nthreads = cuda.threadIdx.x, cuda.blockDim.x
    c = cuda.blockIdx.x // chunks
    chunk = cuda.blockIdx.x % chunks
    pixels = x.shape[2]
    first = chunk * chunk_elements
    last = min(x.shape[0] * pixels, first + chunk_elements)
    acc[0] = 0.0
    acc[1] = 0.0
    mu = mean[c]
    for e in range(first + tid, last, nthreads):
        n = e // pixels
        p = e - n * pixels
        v = float64(x[n, c, p])
        if mode == SUM_X:
            acc[0] += v
        elif mode == SUM_SQUARED_DEVIATION:
            acc[0] += (v - mu) * (v - mu)
        else:
            g = float64(gy[n, c, p])
            if relu and not x[n, c, p] * scale[c] + shift[c] > 0:
                g = 0.0
            acc[0] += g
            acc[1] += g * (v - mu)
    block_sums(acc, 2, scratch, tid, nthreads)
    if tid == 0:
        partial[chunk, 0, c] = scratch[0]
        partial[chunk, 1, c] = scratch[nthreads]


def channel_sums(x, mode, dtype, stream, *, gy=None, mean=None, scale=None, shift=None, relu=False):
    """Per-channel sums of device arrays (N, C, P), deterministic; returns a (2, C) device array of ``dtype``.

    Row 0 is the sum ``mode`` names (row 1 the second sum of BACKWARD_SUMS). ``mean`` is a (C,) float64
    device array (modes SUM_SQUARED_DEVIATION and BACKWARD_SUMS); ``gy`` (N, C, P) and ``scale``, ``shift``
    (C,) in x's dtype as BACKWARD_SUMS needs.
    """
    cfg = launch.CONFIG
    n, c, pixels = x.shape
    chunks = blocks(n * pixels, cfg.reduce_elements)
    partial = cuda.device_array((chunks, 2, c), np.float64, stream=stream)
    if mean is None:
        mean = cuda.device_array(c, np.float64, stream=stream)  # read, never used, by SUM_X
    gy = x if gy is None else gy
    if scale is None or shift is None:  # read, never used, by the other modes
        scale = shift = cuda.device_array(c, x.dtype, stream=stream)
    _channel_partial_sums_kernel[c * chunks, cfg.reduce_threads, stream, scratch_bytes(2, cfg.reduce_threads)](
        x, gy, mean, scale, shift, relu, mode, cfg.reduce_elements, chunks, partial
    )
    out = cuda.device_array((2, c), dtype, stream=stream)
    sum_partials(partial.reshape(chunks, 2 * c), out.reshape(2 * c), stream)
    return out
