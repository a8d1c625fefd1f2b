"""The decorators every CPU kernel and helper is compiled with.

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
