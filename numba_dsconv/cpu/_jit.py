"""The one decorator factory for CPU kernels, and the row primitives every kernel is built from.

Every kernel is compiled lazily on its first call for the dtypes it meets and cached on disk
(``cache=True``), so a second process pays only the cache load.

Floating-point flags: only ``reassoc`` (lets LLVM vectorise reductions) and ``contract`` (fused
multiply-add) are enabled. ``nnan``/``ninf`` are deliberately left off: NaN and Inf in the input must
propagate to every output they touch. The flags are fixed at compile time, so results are identical run
to run.
"""

from numba import njit

FASTMATH = {"reassoc", "contract"}


def kernel(func):
    """Compile ``func`` as a parallel, disk-cached CPU kernel."""
    return njit(parallel=True, cache=True, fastmath=FASTMATH, nogil=True)(func)


def helper(func):
    """Compile ``func`` as a serial, disk-cached helper called from kernels."""
    return njit(cache=True, fastmath=FASTMATH, nogil=True, inline="always")(func)


# Row primitives. Each loops from zero over views whose start the caller has already sliced off: an
# index that starts at a run-time offset keeps Numba's negative-index wraparound check and stays scalar,
# a loop from zero vectorises.


@helper
def axpy(y, a, x):
    """``y += a * x`` over two equally long 1-D views."""
    for j in range(y.shape[0]):
        y[j] += a * x[j]


@helper
def dot(x, y):
    """``sum(x * y)`` over two equally long 1-D views, accumulated in their dtype."""
    acc = x.dtype.type(0)
    for j in range(x.shape[0]):
        acc += x[j] * y[j]
    return acc


@helper
def valid_range(offset, stride, in_size, out_size):
    """Output indices ``o`` in ``[lo, hi)`` whose input index ``o * stride + offset`` lies in ``[0, in_size)``."""
    lo = max(0, -(offset // stride))
    hi = min(out_size, (in_size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)
