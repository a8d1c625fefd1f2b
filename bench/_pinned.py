"""Pin OpenMP threads to cores for the benchmark scripts, unless the environment already says how.

Imported first by the scripts that time kernels against each other, before NumPy, Numba or PyTorch load
an OpenMP runtime (each reads ``OMP_PROC_BIND`` once, when it loads). The summaries pause between turns so
that one library's spinning threads do not slow the next; on a 2-core virtual machine, an unpinned worker
woken after such a pause was seen to start 4-9 ms late in a third of the calls, on both sides (a 0.5 ms
depthwise forward timed at 7.9 ms, a PyTorch one at 12.4 ms). Pinned, those wake-ups vanish; calls in a loop,
as in training, were not affected either way. The package itself never sets this: pinning also binds the
calling thread, and the threads it starts later, to one core (see README, "Threads and compilation").
"""

import os

os.environ.setdefault("OMP_PROC_BIND", "true")


def setting():
    """The ``OMP_PROC_BIND`` this process runs with, for the scripts' headers and records."""
    return os.environ.get("OMP_PROC_BIND", "unset")
