"""Outer products: the pointwise weight gradient ``sum_n grad_y[n] @ x[n].T`` without BLAS.

Shape legend: N = batch, Cout/Cin = output/input channels, P = pixels per image (H*W), L = lanes of one
64-byte vector (16 float32, 8 float64), S = pixels per segment.

The weight gradient is a product whose inner dimension is every pixel of the batch and whose result is
small (Cout x Cin, 64 x 32 at the DESIGN.md shapes P1 and P4): a "skinny" product that OpenBLAS runs far
below its peak (the batched ``matmul`` took 7.6-8.3 ms at P1 in float64, 50 GFLOP/s, where PyTorch's MKL
took 5.2-5.6). Here the pixels of a slice of the batch go segment by segment (S pixels of one image): the
segment of x is transposed into pixel-major panels of 4L channels each, ``xt[k, c] = x[n, c, p0 + k]``
(aligned, in cache), then every block of 4 output rows and one panel keeps its 4 x 4 vectors of sums in
registers while the segment's pixels pass:

    acc[r, c:c+4L] += grad_y[n, i + r, p0 + k] * xt[k, c:c+4L]        r < 4, k < S

one run of 4 vectors loaded and 4 values broadcast per 16 vector multiply-adds, no horizontal sums. The sums
of a block stay in the slice's partial result between segments.

Measured against the BLAS path (A/B interleaved, threads pinned, through the public function), float64:
P1 (8x32->64x112x112) 3.99-4.04 ms against 7.48-7.85 (PyTorch 4.97-5.09), P4 (128x32->64x28x28) 4.10-4.19
against 8.85-8.90 (PyTorch 6.17-6.23), P3 (8x576->160x14x14) 2.56 against 3.14 (PyTorch 2.12); float32 P3
1.37 against 1.52 ms (PyTorch 1.44). The panels hold 4L channels each, their pixels contiguous (1.10x at P3
against one pixel-major panel of all channels). Where Cin is not a multiple of 4L (P2's 144 channels, and
every float32 shape but P3) the last channels would go one vector at a time, which ran slower than BLAS (P2
float64 2.94 against 2.53 ms): those keep BLAS (``applies``), as do output channel counts that are not a
multiple of 4.

Slices are fixed ranges of the batch's pixels (``SLICES``), each one task writing its own partial result;
the partial results are summed in slice order, rows in parallel (``sum_slices_kernel``; with NumPy's sum
instead, P3 took 2.67 ms against 2.56): results do not depend on the thread count.
"""

import numpy as np
from numba import prange

from . import _simd
from ._jit import helper, kernel

# Tests switch the path off to run the same products on BLAS.
ENABLED = True
SLICES = 8
# Pixels per segment: rows of 8 KiB (longer runs of each channel per read), the panels at most 512 KiB.
SEGMENT_BYTES = 8192
PANEL_BYTES = 1 << 19
ROWS = 4
PANEL_VECTORS = 4


def applies(out_channels, in_channels, dtype):
    """Tell whether the weight gradient of these channel counts runs here (Cout % 4 == 0, Cin % 4L == 0)."""
    return ENABLED and out_channels % ROWS == 0 and in_channels % (PANEL_VECTORS * _simd.lanes_for(dtype)) == 0


def segment_pixels(in_channels, dtype):
    """S: pixels per segment, a whole number of vectors."""
    itemsize, lanes = np.dtype(dtype).itemsize, _simd.lanes_for(dtype)
    pixels = min(SEGMENT_BYTES // itemsize, PANEL_BYTES // (in_channels * itemsize))
    return max(lanes, pixels // lanes * lanes)


@helper
def pack_panels(xf, first, pixels, in_channels, length, segment, xt):
    """Transpose a segment of x into panels: ``xt[(c // W)*S*W + k*W + c % W] = xf[first + c*P + k]``.

    W = 4L channels to a panel, ``k < length``: each panel's rows are contiguous. L x L blocks through a
    transpose, the last pixels (fewer than L) one by one.
    """
    lanes = _simd.lanes(xt)
    width = PANEL_VECTORS * lanes
    k = 0
    while k + lanes <= length:
        for c in range(0, in_channels, lanes):
            panel = c // width
            target = panel * segment * width + k * width + (c - panel * width)
            _simd.transpose(xf, first + c * pixels + k, pixels, xt, target, width)
        k += lanes
    for rest in range(k, length):
        for c in range(in_channels):
            panel = c // width
            xt[panel * segment * width + rest * width + (c - panel * width)] = xf[first + c * pixels + rest]


@kernel
def outer_weight_products_kernel(gy, x, segment, partial):
    """Write into partial[s] (Cout, Cin) the sum over slice s's pixels of gy[n, :, p] x[n, :, p]^T.

    gy (N, Cout, P) and x (N, Cin, P) C-contiguous; ``segment`` pixels (a multiple of L) per panel.
    """
    n_batch, out_channels, pixels = gy.shape
    in_channels = x.shape[1]
    nslices = partial.shape[0]
    lanes = _simd.lanes(gy)
    total = n_batch * pixels
    g = gy.reshape(-1)
    xf = x.reshape(-1)
    width = PANEL_VECTORS * lanes
    for s in prange(nslices):
        acc = partial[s].reshape(-1)
        acc[:] = 0
        xt = _simd.aligned_empty(segment * in_channels, gy.dtype)
        q, end = s * total // nslices, (s + 1) * total // nslices
        while q < end:
            n = q // pixels
            p0 = q - n * pixels
            length = min(pixels - p0, segment, end - q)
            pack_panels(xf, (n * in_channels) * pixels + p0, pixels, in_channels, length, segment, xt)
            rows = (n * out_channels) * pixels + p0
            for c in range(0, in_channels, width):
                for i in range(0, out_channels, ROWS):
                    a0 = _simd.load_run(acc, i * in_channels + c, PANEL_VECTORS)
                    a1 = _simd.load_run(acc, (i + 1) * in_channels + c, PANEL_VECTORS)
                    a2 = _simd.load_run(acc, (i + 2) * in_channels + c, PANEL_VECTORS)
                    a3 = _simd.load_run(acc, (i + 3) * in_channels + c, PANEL_VECTORS)
                    gi = rows + i * pixels
                    for k in range(length):
                        v = _simd.load_run(xt, c * segment + k * width, PANEL_VECTORS)
                        a0 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + k), PANEL_VECTORS), v, a0)
                        a1 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + pixels + k), PANEL_VECTORS), v, a1)
                        a2 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + 2 * pixels + k), PANEL_VECTORS), v, a2)
                        a3 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + 3 * pixels + k), PANEL_VECTORS), v, a3)
                    _simd.store(acc, i * in_channels + c, a0)
                    _simd.store(acc, (i + 1) * in_channels + c, a1)
                    _simd.store(acc, (i + 2) * in_channels + c, a2)
                    _simd.store(acc, (i + 3) * in_channels + c, a3)
            q += length


@kernel
def sum_slices_kernel(partial, out):
    """Write into out (Cout, Cin) partial[0] + partial[1] + ..., summed in that order, rows in parallel."""
    nslices, out_channels = partial.shape[0], partial.shape[1]
    for i in prange(out_channels):
        row = out[i]
        row[:] = partial[0, i]
        for s in range(1, nslices):
            row += partial[s, i]
