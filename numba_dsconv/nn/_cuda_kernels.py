"""GPU twins of ``_kernels``: ReLU, batch normalisation and global average pooling on device arrays.

Shape legend: N = batch, C = channels, P = H*W pixels; arrays are C-contiguous (N, C, P) or flat.

Elementwise kernels run one thread per element (consecutive threads, consecutive pixels: coalesced).
Per-channel sums are deterministic two-stage reductions (``numba_dsconv.cuda._reduce``): float64 partial
sums per block of elements, then the blocks added in order.
"""

from numba import cuda, float64

from ..cuda._reduce import block_sums

# Modes of the per-channel reduction.
SUM_X = 0  # sum of x
SUM_SQUARED_DEVIATION = 1  # sum of (x - mean)^2
BACKWARD_SUMS = 2  # sum of g and of g * (x - mean), g = gy masked by y > 0 when relu


@cuda.jit(cache=True)
def relu_forward(x, y):
    """Y = max(x, 0) over flat arrays; NaN stays NaN."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        v = x[i]
        if v <= 0:
            y[i] = 0
        else:
            y[i] = v


@cuda.jit(cache=True)
def relu_backward(gy, y, gx):
    """Gx = gy where the forward output y > 0, else 0 (flat arrays)."""
    i = cuda.grid(1)
    if i < gy.shape[0]:
        if y[i] > 0:
            gx[i] = gy[i]
        else:
            gx[i] = 0


@cuda.jit(cache=True)
def scale_shift(x, scale, shift, relu, y):
    """y[n, c, p] = x[n, c, p] * scale[c] + shift[c], then max(., 0) when ``relu``."""
    i = cuda.grid(1)
    channels, pixels = x.shape[1], x.shape[2]
    if i < x.size:
        n, rest = i // (channels * pixels), i % (channels * pixels)
        c, p = rest // pixels, rest % pixels
        v = x[n, c, p] * scale[c] + shift[c]
        if relu and v <= 0:
            y[n, c, p] = 0
        else:
            y[n, c, p] = v


@cuda.jit(cache=True)
def batchnorm_backward_input(gy, x, y, relu, a, b, d, gx):
    """Gx = a[c] * g + b[c] * x + d[c], g = gy (where y > 0 when ``relu``)."""
    i = cuda.grid(1)
    channels, pixels = x.shape[1], x.shape[2]
    if i < x.size:
        n, rest = i // (channels * pixels), i % (channels * pixels)
        c, p = rest // pixels, rest % pixels
        v = b[c] * x[n, c, p] + d[c]
        if not relu or y[n, c, p] > 0:  # (a ReLU after the batch norm passes no gradient where it cut)
            v += a[c] * gy[n, c, p]
        gx[n, c, p] = v


@cuda.jit(cache=True)
def channel_partial_sums(x, gy, y, mean, relu, mode, chunk_elements, chunks, partial):
    """partial[chunk, c, 0:2] = the two per-channel sums of ``mode`` over the chunk's slice of (n, p) pairs.

    Block ``c * chunks + chunk``, 1-D, a power of two threads.
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
            if relu and not y[n, c, p] > 0:
                g = 0.0
            acc[0] += g
            acc[1] += g * (v - mu)
    block_sums(acc, 2, scratch, tid, nthreads)
    if tid == 0:
        partial[chunk, c, 0] = scratch[0]
        partial[chunk, c, 1] = scratch[nthreads]


@cuda.jit(cache=True)
def global_avg_pool(x, y):
    """y[n, c] = mean over p of x[n, c, p], summed in float64; one thread per (n, c)."""
    i = cuda.grid(1)
    channels, pixels = x.shape[1], x.shape[2]
    if i < x.shape[0] * channels:
        n, c = i // channels, i % channels
        acc = 0.0
        for p in range(pixels):
            acc += x[n, c, p]
        y[n, c] = acc / pixels


@cuda.jit(cache=True)
def global_avg_pool_backward(gy, gx):
    """gx[n, c, p] = gy[n, c] / P."""
    i = cuda.grid(1)
    channels, pixels = gx.shape[1], gx.shape[2]
    if i < gx.size:
        n, rest = i // (channels * pixels), i % (channels * pixels)
        c = rest // pixels
        gx[n, c, rest % pixels] = gy[n, c] / pixels
