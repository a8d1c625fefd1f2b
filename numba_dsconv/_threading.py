"""Choose a Numba threading layer that survives parallel kernels launched from several Python threads.

Numba's fallback layer, ``workqueue``, aborts the process when two threads enter parallel code at once.
When the user has not chosen a layer, ask for a thread-safe one (TBB or OpenMP) if either can be loaded.
"""

import importlib
import os

import numba

_THREADSAFE_POOLS = ("numba.np.ufunc.tbbpool", "numba.np.ufunc.omppool")


def _threadsafe_layer_available():
    for module in _THREADSAFE_POOLS:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return True
    return False


def select_threading_layer():
    """Ask Numba for a thread-safe layer unless the user picked one (``NUMBA_THREADING_LAYER``)."""
    if "NUMBA_THREADING_LAYER" in os.environ or numba.config.THREADING_LAYER != "default":
        return
    if _threadsafe_layer_available():
        numba.config.THREADING_LAYER = "threadsafe"
