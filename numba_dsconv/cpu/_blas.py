"""The BLAS that ``np.dot`` calls inside ``@njit`` kernels: how many threads it runs, which kernels it uses.

Numba's matrix products call the BLAS behind ``scipy.linalg.cython_blas`` (in SciPy's wheels an OpenBLAS of
its own, not NumPy's). Calling it from several Numba threads at once is fast only when it runs one thread
itself: a multi-threaded OpenBLAS called concurrently serialises its callers (measured here: 8 ms for a
product that takes 1 ms). ``threads()`` tells which case holds, so that the pointwise kernels choose.

``register_blocks()`` tells whether the pointwise products should run on the register blocks of
``_broadcast`` and ``_outer`` (narrow panels) instead. They were measured 1.5-2.7x faster than an OpenBLAS
running its Haswell (AVX2) kernels (a Zen 5 CPU, which that OpenBLAS does not give its AVX-512 kernels); on
a Xeon whose OpenBLAS ran its AVX-512 (SkylakeX) kernels a first version of the forward blocks lost at
some shapes (0.7-0.8x at P3 and P4). So they run unless the BLAS is an OpenBLAS with AVX-512 kernels
(against those kernels forced on the Zen 5, ``OPENBLAS_CORETYPE=SkylakeX``, most blocks still won in one
noisy run: ``bench/results/cpu-notes-2026-12-03-zen5.md``; a cautious rule until Intel is measured again).
The blocks keep 16 vectors of sums, half of AVX-512's 32 registers; a CPU without AVX-512 has 16 in all,
and there the blocks lost to OpenBLAS at every pointwise shape (P3 forward 6.8 ms against 2.5, weight
gradient 4.6 against 2.9; Zen 3, ``bench/results/cpu-notes-2026-12-07-zen3.md``): BLAS runs them there.
"""

import ctypes
import functools

from . import _simd

# None: register blocks unless the BLAS is an OpenBLAS with AVX-512 kernels; True/False force the choice
# (the tests run both). Read at every call.
REGISTER_BLOCKS = None
# OpenBLAS's names of its cores whose kernels use AVX-512.
AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")

# Functions that report an OpenBLAS's thread count, under the names its builds export (SciPy's wheels add a
# prefix; 64-bit-integer builds a suffix).
_THREAD_COUNT_SYMBOLS = (
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads",
    "scipy_openblas_get_num_threads64_",
    "openblas_get_num_threads64_",
)


@functools.cache
def _library():
    """Return a ctypes handle through which the BLAS's own symbols resolve, or None."""
    try:
        import scipy.linalg.cython_blas as cython_blas

        # A handle on the wrapper module: symbol look-up through it also searches the BLAS it links to.
        return ctypes.CDLL(cython_blas.__file__)
    except (ImportError, OSError):
        return None


def _function(symbols, restype):
    """Return the first of ``symbols`` the BLAS exports, as a ctypes function without arguments, or None."""
    library = _library()
    for name in symbols if library is not None else ():
        function = getattr(library, name, None)
        if function is not None:
            function.restype, function.argtypes = restype, []
            return function
    return None


@functools.cache
def _thread_count_function():
    """Return the BLAS's thread-count function, or None when the BLAS is not a recognised OpenBLAS."""
    return _function(_THREAD_COUNT_SYMBOLS, ctypes.c_int)


@functools.cache
def core():
    """Return the name OpenBLAS gives the kernels it chose for this CPU (lower case), or None."""
    symbols = [prefix + "openblas_get_corename" + suffix for suffix in ("", "64_") for prefix in ("scipy_", "")]
    function = _function(symbols, ctypes.c_char_p)
    return None if function is None else function().decode("ascii", "replace").lower()


def register_blocks():
    """Tell whether the pointwise products run on register blocks rather than BLAS (see the module notes)."""
    if REGISTER_BLOCKS is not None:
        return bool(REGISTER_BLOCKS)
    return _simd.VECTOR_BYTES == 64 and core() not in AVX512_CORES


def threads():
    """Return the number of threads of the BLAS that Numba's ``np.dot`` calls, or None if it cannot be told.

    Asked at every call (about a microsecond): a program may change the count at run time.
    """
    function = _thread_count_function()
    return None if function is None else int(function())
