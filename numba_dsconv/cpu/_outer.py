"""Outer products: the pointwise weight gradient ``sum_n grad_y[n] @ x[n].T`` without BLAS.

Shape legend: N = batch, Cout/Cin = output/input channels, P = pixels per image (H*W), L = lanes of one
64-byte vector (16 float32, 8 float64), S = pixels per segment.

The weight gradient is a product whose inner dimension is every pixel of the batch and whose result is
small (Cout x Cin, 64 x 32 at the DESIGN.md shapes P1 and P4): a "skinny" product that OpenBLAS runs far
below its peak (the batched ``matmul`` took 7.6-8.3 ms at P1 in float64, 50 GFLOP/s, where PyTorch's MKL
took 5.2-5.6). Here the pixels of a slice of the batch go segment by segment (S pixels of one image): the
segment of x is transposed into pixel-major panels of W = V*L channels each, ``xt[k, c] = x[n, c, p0 + k]``
(aligned, in cache), then every block of G output rows and one panel keeps its G x V vectors of sums in
registers while the segment's pixels pass:

    acc[r, c:c+W] += grad_y[n, i + r, p0 + k] * xt[k, c:c+W]        r < G, k < S

one run of V vectors loaded and G values broadcast per G*V vector multiply-adds, no horizontal sums. The
sums of a block stay in the slice's partial result between segments. The block is the widest panel that
Cin allows (``BLOCKS``): 4 rows x 4 vectors (Cin a multiple of 64 float32 or 32 float64 channels), else 8 x
2, else 8 x 1 (Cout a multiple of 8; these two only where ``_blas.register_blocks``, as the forward's
blocks); other channel counts keep BLAS.

Measured against the BLAS path (A/B interleaved, threads pinned), on a 2-core Xeon (AVX-512), float64:
P1 (8x32->64x112x112) 3.99-4.04 ms against 7.48-7.85 (PyTorch 4.97-5.09), P4 (128x32->64x28x28) 4.10-4.19
against 8.85-8.90 (PyTorch 6.17-6.23), P3 (8x576->160x14x14) 2.56 against 3.14 (PyTorch 2.12); float32 P3
1.37 against 1.52 ms (PyTorch 1.44). The panels hold 4L channels each, their pixels contiguous (1.10x at P3
against one pixel-major panel of all channels). On a 2-core AMD EPYC (Zen 5), float32: P1 1.01 ms (8x2)
against 2.64, P2 (8x144->24x56x56) 0.76 (8x1) against 1.44, P4 1.42-1.45 against 3.09; float64 P2 1.30 (8x2)
against 1.96.

Slices are fixed ranges of the batch's pixels (``SLICES``), each one task writing its own partial result;
the partial results are summed in slice order, rows in parallel (``sum_slices_kernel``; with NumPy's sum
instead, P3 took 2.67 ms against 2.56): results do not depend on the thread count.
"""

import numpy as np
from numba import prange

from . import _blas, _simd
from ._jit import helper, kernel

# Tests switch the path off to run the same products on BLAS.
ENABLED = True
SLICES = 8
# Pixels per segment: rows of 8 KiB (longer runs of each channel per read), the panels at most 512 KiB.
SEGMENT_BYTES = 8192
PANEL_BYTES = 1 << 19
# Register blocks (G output rows, V vectors of input channels to a panel), the widest panels first: each
# keeps G*V vectors of sums (4x4, 8x2: 16; 8x1: 8, enough to hide the latency of the multiply-adds).
BLOCKS = ((4, 4), (8, 2), (8, 1))


def block_for(out_channels, in_channels, dtype):
    """Return the (G, V) block for these channel counts (Cout % G == 0, Cin % V*L == 0), or None (BLAS)."""
    if not ENABLED:
        return None
    lanes = _simd.lanes_for(dtype)
    # The narrow panels were measured against an OpenBLAS without AVX-512 kernels only; without AVX-512
    # registers none of the blocks fits (``_blas``).
    if _blas.register_blocks():
        blocks = BLOCKS
    elif _simd.VECTOR_BYTES == 64:
        blocks = BLOCKS[:1]
    else:
        return None
    for group, run in blocks:
        if out_channels % group == 0 and in_channels % (run * lanes) == 0:
            return group, run
    return None


def segment_pixels(in_channels, dtype):
    """S: pixels per segment, a whole number of vectors."""
    itemsize, lanes = np.dtype(dtype).itemsize, _simd.lanes_for(dtype)
    pixels = min(SEGMENT_BYTES // itemsize, PANEL_BYTES // (in_channels * itemsize))
    return max(lanes, pixels // lanes * lanes)


@helper
def pack_panels(xf, first, pixels, in_channels, length, segment, width, xt):
    """Transpose a segment of x into panels: ``xt[(c // W)*S*W + k*W + c % W] = xf[first + c*P + k]``.

    W = ``width`` channels (a multiple of L) to a panel, ``k < length``: each panel's rows are contiguous.
    L x L blocks through a transpose, the last pixels (fewer than L) one by one.
    """
    lanes = _simd.lanes(xt)
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


def _outer_kernel(group, run):
    """Compile the kernel ``(gy, x, segment, partial)`` with blocks of ``group`` rows x ``run`` vectors."""
    assert group in (4, 8) and run in (1, 2, 4)

    @kernel
    def outer_weight_products_kernel(gy, x, segment, partial):
        """Write into partial[s] (Cout, Cin) the sum over slice s's pixels of gy[n, :, p] x[n, :, p]^T.

        gy (N, Cout, P) and x (N, Cin, P) C-contiguous; ``segment`` pixels (a multiple of L) per panel.
        """
        n_batch, out_channels, pixels = gy.shape
        in_channels = x.shape[1]
        nslices = partial.shape[0]
        total = n_batch * pixels
        g, xf = gy.reshape(-1), x.reshape(-1)
        width = run * _simd.lanes(gy)
        for s in prange(nslices):
            acc = partial[s].reshape(-1)
            acc[:] = 0
            xt = _simd.aligned_empty(segment * in_channels, gy.dtype)
            q, end = s * total // nslices, (s + 1) * total // nslices
            while q < end:
                n = q // pixels
                p0 = q - n * pixels
                length = min(pixels - p0, segment, end - q)
                pack_panels(xf, (n * in_channels) * pixels + p0, pixels, in_channels, length, segment, width, xt)
                rows = (n * out_channels) * pixels + p0
                for c in range(0, in_channels, width):
                    for i in range(0, out_channels, group):
                        # Rows 4-7 exist in blocks of 8 only; in blocks of 4 LLVM drops them as unused.
                        r = i * in_channels + c
                        s0 = _simd.load_run(acc, r, run)
                        s1 = _simd.load_run(acc, r + in_channels, run)
                        s2 = _simd.load_run(acc, r + 2 * in_channels, run)
                        s3 = _simd.load_run(acc, r + 3 * in_channels, run)
                        s4 = s5 = s6 = s7 = s0
                        if group == 8:
                            s4 = _simd.load_run(acc, r + 4 * in_channels, run)
                            s5 = _simd.load_run(acc, r + 5 * in_channels, run)
                            s6 = _simd.load_run(acc, r + 6 * in_channels, run)
                            s7 = _simd.load_run(acc, r + 7 * in_channels, run)
                        gi = rows + i * pixels
                        for k in range(length):
                            v = _simd.load_run(xt, c * segment + k * width, run)
                            s0 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + k), run), v, s0)
                            s1 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + pixels + k), run), v, s1)
                            s2 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + 2 * pixels + k), run), v, s2)
                            s3 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + 3 * pixels + k), run), v, s3)
                            if group == 8:
                                s4 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + 4 * pixels + k), run), v, s4)
                                s5 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + 5 * pixels + k), run), v, s5)
                                s6 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + 6 * pixels + k), run), v, s6)
                                s7 = _simd.fma(_simd.tile(_simd.broadcast(g, gi + 7 * pixels + k), run), v, s7)
                        _simd.store(acc, r, s0)
                        _simd.store(acc, r + in_channels, s1)
                        _simd.store(acc, r + 2 * in_channels, s2)
                        _simd.store(acc, r + 3 * in_channels, s3)
                        if group == 8:
                            _simd.store(acc, r + 4 * in_channels, s4)
                            _simd.store(acc, r + 5 * in_channels, s5)
                            _simd.store(acc, r + 6 * in_channels, s6)
                            _simd.store(acc, r + 7 * in_channels, s7)
                q += length

    return outer_weight_products_kernel


KERNELS = {block: _outer_kernel(*block) for block in BLOCKS}


def weight_products_into(block, gy, x, partial):
    """Write into partial (SLICES, Cout, Cin) the sums of each slice, with the block from :func:`block_for`."""
    KERNELS[block](gy, x, segment_pixels(x.shape[1], x.dtype), partial)


@kernel
def sum_slices_kernel(partial, out):
    """Write into out (Cout, Cin) partial[0] + partial[1] + ..., summed in that order, rows in parallel."""
    nslices, out_channels = partial.shape[0], partial.shape[1]
    for i in prange(out_channels):
        row = out[i]
        row[:] = partial[0, i]
        for s in range(1, nslices):
            row += partial[s, i]
