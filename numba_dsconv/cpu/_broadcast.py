"""Broadcast products: the pointwise forward and input gradient ``out[n] = a @ b[n]`` without BLAS.

Shape legend: N = batch, R = rows of ``a`` (output channels), K = depth (input channels), P = pixels per
image (H*W), L = lanes of one vector (16 float32, 8 float64 with AVX-512).

Each task takes one block of an image's pixels, ``V`` vectors (``V*L`` pixels) wide, and for every group
of ``G`` rows keeps the ``G x V`` vectors of the output block in registers while the depth passes:

    out[n, i + g, p : p + V*L] += a[i + g, k] * b[n, k, p : p + V*L]        g < G, k < K

one run of ``V`` vectors loaded and ``G`` values of ``a`` broadcast per ``G*V`` vector multiply-adds; the
K rows of the block of ``b`` (K*V*64 bytes) stay in L1/L2 while the row groups pass over them, and each
output vector is written once, with no partial sums in memory. Pixel blocks are independent tasks (no
write shared between threads), each output the sum over k in order: results do not depend on the thread
count. The last block of an image starts ``V*L`` pixels before its end, overlapping the one before it (the
overlapped outputs are computed twice, to the same values) so no pixel goes one lane at a time.

Two shapes of register block, 16 accumulators each (of the 32 AVX-512 registers; without AVX-512 the
products run on BLAS, ``_blas.register_blocks``):

- *wide*, 4 rows x 4 vectors: one 256-byte run of each row of ``b`` per load, the fewest loads;
- *tall*, 8 rows x 2 vectors: half the pixels per block, for images whose pixels would leave a wide last
  block mostly overlapped (P3's 14x14 = 196 float32 pixels: 256 computed in wide blocks, 224 in tall).

Measured on a 2-core AMD EPYC (Zen 5, AVX-512), A/B interleaved against the per-image BLAS products, float32
(float64): P1 forward 0.97 ms against 2.22 (4.87 against 6.18), P2 forward 0.39 against 1.19 (1.15 against
1.98), P3 forward 0.65 tall / 0.92 wide against 1.31 (1.28 tall / 1.80 wide against 2.50), P4 input
gradient 1.03 against 2.71 (2.45 against 5.48). OpenBLAS ran its Haswell (AVX2) kernels on that machine, and
they are built for large square products; here one side is the batch's pixels and the other two are small
channel counts.
"""

from numba import prange

from . import _blas, _simd
from ._jit import kernel

# Tests switch the path off to run the same products on BLAS; where it runs at all: ``_blas.register_blocks``.
ENABLED = True
# Output rows (G) and vectors of pixels (V) of the two register blocks.
WIDE = (4, 4)
TALL = (8, 2)


def block_for(rows, pixels, dtype):
    """Return the (G, V) register block for ``out[n] = a @ b[n]`` with R = ``rows``, or None (BLAS)."""
    if not (ENABLED and _blas.register_blocks()):
        return None
    lanes = _simd.lanes_for(dtype)
    wide_pixels = WIDE[1] * lanes
    if rows % TALL[0] == 0 and pixels >= TALL[1] * lanes:
        # More than an eighth of the pixels computed twice in wide blocks: tall ones overlap less.
        overlap = -pixels % wide_pixels if pixels >= wide_pixels else wide_pixels
        if overlap * 8 > pixels:
            return TALL
    if rows % WIDE[0] == 0 and pixels >= wide_pixels:
        return WIDE
    return None


def _products_kernel(group, run):
    """Compile the kernel ``(a, b, out)`` with a register block of ``group`` rows x ``run`` vectors."""
    assert group in (4, 8) and run in (1, 2, 4)

    @kernel
    def broadcast_products_kernel(a, b, out):
        """out[n] = a @ b[n]: a (R, K), b (N, K, P), out (N, R, P), all C-contiguous; R % G == 0, P >= V*L."""
        n_batch, depth, pixels = b.shape
        rows = a.shape[0]
        width = run * _simd.lanes(b)
        blocks = (pixels + width - 1) // width
        af, bf, of = a.reshape(-1), b.reshape(-1), out.reshape(-1)
        for task in prange(n_batch * blocks):
            n = task // blocks
            first = min((task - n * blocks) * width, pixels - width)
            source = n * depth * pixels + first
            target = n * rows * pixels + first
            for i in range(0, rows, group):
                # Rows 4-7 exist in tall blocks only; in wide ones LLVM drops them as unused.
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = _simd.zeros(bf, run)
                w = i * depth
                for k in range(depth):
                    v = _simd.load_run(bf, source + k * pixels, run)
                    s0 = _simd.fma(_simd.tile(_simd.broadcast(af, w + k), run), v, s0)
                    s1 = _simd.fma(_simd.tile(_simd.broadcast(af, w + depth + k), run), v, s1)
                    s2 = _simd.fma(_simd.tile(_simd.broadcast(af, w + 2 * depth + k), run), v, s2)
                    s3 = _simd.fma(_simd.tile(_simd.broadcast(af, w + 3 * depth + k), run), v, s3)
                    if group == 8:
                        s4 = _simd.fma(_simd.tile(_simd.broadcast(af, w + 4 * depth + k), run), v, s4)
                        s5 = _simd.fma(_simd.tile(_simd.broadcast(af, w + 5 * depth + k), run), v, s5)
                        s6 = _simd.fma(_simd.tile(_simd.broadcast(af, w + 6 * depth + k), run), v, s6)
                        s7 = _simd.fma(_simd.tile(_simd.broadcast(af, w + 7 * depth + k), run), v, s7)
                row = target + i * pixels
                _simd.store(of, row, s0)
                _simd.store(of, row + pixels, s1)
                _simd.store(of, row + 2 * pixels, s2)
                _simd.store(of, row + 3 * pixels, s3)
                if group == 8:
                    _simd.store(of, row + 4 * pixels, s4)
                    _simd.store(of, row + 5 * pixels, s5)
                    _simd.store(of, row + 6 * pixels, s6)
                    _simd.store(of, row + 7 * pixels, s7)

    return broadcast_products_kernel


KERNELS = {block: _products_kernel(*block) for block in (WIDE, TALL)}


def products_into(block, a, b, out):
    """``out[n] = a @ b[n]`` with the register block ``block`` (from :func:`block_for`)."""
    KERNELS[block](a, b, out)
