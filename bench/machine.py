"""This machine's limits, measured on the spot: memory bandwidth (parallel triad) and the BLAS GEMM rate."""

import time

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _triad(a, b, c, scalar):
    for i in prange(a.shape[0]):
        a[i] = b[i] + scalar * c[i]


def median_seconds(func, repeats, settle=0.2):
    """Median wall time of ``func()`` over ``repeats`` calls, after a pause and one warm-up call.

    The pause lets thread pools left spinning by earlier work (OpenMP, OpenBLAS) go idle, so that a limit
    is not measured low because other threads still hold the cores.
    """
    time.sleep(settle)
    func()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def triad_bandwidth(n_bytes_per_array, repeats=15):
    """GB/s of ``a = b + s*c`` over float64 arrays of the given size (3 arrays moved per pass)."""
    n = n_bytes_per_array // 8
    a, b, c = np.zeros(n), np.ones(n), np.ones(n)
    seconds = median_seconds(lambda: _triad(a, b, c, 3.0), repeats)
    return 3 * n * 8 / seconds / 1e9


def gemm_rate(m, k, n, dtype, batch=1, repeats=9, paired=False):
    """GFLOP/s of ``np.matmul`` shaped like the pointwise products.

    By default one shared (m, k) matrix times each of ``batch`` (k, n) matrices, as the forward and the input
    gradient multiply by their weight. ``paired=True``: both factors per image, the second read transposed,
    (batch, m, k) @ (batch, n, k)^T, as the weight gradient multiplies ``grad_y[n]`` by ``x[n].T``; its left
    factors do not stay in cache across the batch as the shared one does, so the default is no bound for it.
    """
    rng = np.random.default_rng(0)
    if paired:
        a = rng.standard_normal((batch, m, k)).astype(dtype)
        b = rng.standard_normal((batch, n, k)).astype(dtype).transpose(0, 2, 1)
    else:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((batch, k, n)).astype(dtype)
    seconds = median_seconds(lambda: np.matmul(a, b), repeats)
    return 2.0 * m * k * n * batch / seconds / 1e9


def measure(dtypes=(np.float32,)):
    """Triad bandwidth from DRAM and from L3, and the large square GEMM rate per dtype."""
    limits = {
        "triad_dram_gbs": triad_bandwidth(256 << 20),  # 3 x 256 MiB: far beyond any cache
        "triad_l3_gbs": triad_bandwidth(4 << 20),  # 3 x 4 MiB: inside a 32 MiB L3
    }
    for dtype in dtypes:
        limits[f"gemm_{np.dtype(dtype).name}_gflops"] = gemm_rate(2048, 2048, 2048, dtype)
    return limits
