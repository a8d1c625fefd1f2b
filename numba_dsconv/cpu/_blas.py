"""The BLAS that ``np.dot`` calls inside ``@njit`` kernels, and how many threads it runs.

Numba's matrix products call the BLAS behind ``scipy.linalg.cython_blas`` (in SciPy's wheels an OpenBLAS of
its own, not NumPy's). Calling it from several Numba threads at once is fast only when it runs one thread
itself: a multi-threaded OpenBLAS called concurrently serialises its callers (measured here: 8 ms for a
product that takes 1 ms). ``threads()`` tells which case holds, so that the pointwise kernels choose.
"""

import ctypes
import functools

# Functions that report an OpenBLAS's thread count, under the names its builds export (SciPy's wheels add a
# prefix; 64-bit-integer builds a suffix).
_THREAD_COUNT_SYMBOLS = (
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads",
    "scipy_openblas_get_num_threads64_",
    "openblas_get_num_threads64_",
)


@functools.cache
def _thread_count_function():
    """Return the BLAS's thread-count function, or None when the BLAS is not a recognised OpenBLAS."""
    try:
        import scipy.linalg.cython_blas as cython_blas

        # A handle on the wrapper module: symbol look-up through it also searches the BLAS it links to.
        library = ctypes.CDLL(cython_blas.__file__)
    except (ImportError, OSError):
        return None
    for name in _THREAD_COUNT_SYMBOLS:
        function = getattr(library, name, None)
        if function is not None:
            function.restype, function.argtypes = ctypes.c_int, []
            return function
    return None


def threads():
    """Return the number of threads of the BLAS that Numba's ``np.dot`` calls, or None if it cannot be told.

    Asked at every call (about a microsecond): a program may change the count at run time.
    """
    function = _thread_count_function()
    return None if function is None else int(function())
