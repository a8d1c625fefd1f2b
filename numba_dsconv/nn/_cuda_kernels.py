"""GPU twins of ``_kernels``: ReLU, batch normalisation and global average pooling on device arrays.

Shape legend: N = batch, C = channels, P = H*W pixels; arrays are C-contiguous (N, C, P) or flat.

Elementwise kernels run one thread per element (consecutive threads, consecutive pixels: coalesced). The
per-channel sums of batch normalisation are ``numba_dsconv.cuda._reduce.channel_sums`` (deterministic).
"""

from numba import cuda


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
def batchnorm_backward_input(gy, x, scale, shift, relu, a, b, d, gx):
    """Gx = a[c] * g + b[c] * x + d[c], g = gy (where the forward's x * scale + shift > 0 when ``relu``)."""
    i = cuda.grid(1)
    channels, pixels = x.shape[1], x.shape[2]
    if i < x.size:
        n, rest = i // (channels * pixels), i % (channels * pixels)
        c, p = rest // pixels, rest % pixels
        v = b[c] * x[n, c, p] + d[c]
        # A ReLU after the batch norm passes no gradient where it cut. The same expression as
        # scale_shift's, so the same rounding: reading x again is cheaper than reading y.
        if not relu or x[n, c, p] * scale[c] + shift[c] > 0:
            v += a[c] * gy[n, c, p]
        gx[n, c, p] = v


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
