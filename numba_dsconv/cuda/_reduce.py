"""Deterministic reductions shared by the GPU gradients.

A block-wide sum, per-channel partial sums, and the second stage that adds partial results in a fixed order.

No floating-point atomics anywhere: the order of every addition is fixed by the launch shape, so a result is
identical run to run on one configuration.
"""

from numba import cuda, float64

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
    for t in range(count):
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


@cuda.jit(cache=True)
def channel_partial_sums_kernel(gy, chunk_elements, chunks, partial):
    """partial[chunk, c] = sum of gy[n, c, p] over the chunk's slice of the (n, p) pairs; gy (N, C, P).

    Block ``c * chunks + chunk``; its threads stride over the slice (consecutive threads, consecutive
    pixels: coalesced), then sum their float64 totals with :func:`block_sums`.
    """
    scratch = cuda.shared.array(0, float64)
    acc = cuda.local.array(1, float64)
    tid, nthreads = cuda.threadIdx.x, cuda.blockDim.x
    c = cuda.blockIdx.x // chunks
    chunk = cuda.blockIdx.x % chunks
    pixels = gy.shape[2]
    first = chunk * chunk_elements
    last = min(gy.shape[0] * pixels, first + chunk_elements)
    acc[0] = 0.0
    for e in range(first + tid, last, nthreads):
        n = e // pixels
        acc[0] += gy[n, c, e - n * pixels]
    block_sums(acc, 1, scratch, tid, nthreads)
    if tid == 0:
        partial[chunk, c] = scratch[0]
