"""Where a GPU op's time goes: host work per call against the time its kernels run on the card.

Usage (on a machine with a GPU, PyTorch with CUDA and numba-cuda)::

    python -m bench.gpu_profile [--shapes D1 D7 P1] [--dtype float32] [--calls 50] [--hotspots D7]

Per shape and op it prints the wall time per call (synchronised), the host time per call (launches queued
without waiting; the card rarely limits that), and the card's kernel time per call read by PyTorch's
profiler (CUPTI sees every kernel of the process, Numba's included), with the kernels by name. When the
wall time is near the host time and far above the kernel time, the op is bound by Python, not by the card.
``--hotspots`` adds a cProfile table of the host work of one shape's forward; ``--host`` times the pieces a
call is made of (wrapping a foreign array, allocating, a launch on the default stream and on a stream object).
``--plain`` only runs each op of the shapes a few times, for a kernel profiler wrapped around the script::

    ncu -k regex:_forward_kernel --launch-skip 2 --launch-count 1 python -m bench.gpu_profile --plain --shapes D1
"""

import argparse
import cProfile
import io
import pstats
import re
import statistics
import sys
import time

import numpy as np

from . import gpu_bench
from .shapes import DEPTHWISE, POINTWISE


def _kernel_name(name):
    """A readable kernel name from Numba's mangled one (``_ZN...16_forward_kernel...`` -> ``_forward_kernel``)."""
    found = re.findall(r"\d+(_?[a-z][a-z0-9_]*kernel)", name)
    return found[-1] if found else name[:60]


def kernel_times(torch, func, calls):
    """Card time per call of each kernel ``func`` launches, in ms, from PyTorch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    gpu_bench._sync(torch)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            func()
        gpu_bench._sync(torch)
    totals = {}
    for event in prof.events():
        if getattr(event, "device_type", None) is not None and "CUDA" in str(event.device_type):
            duration = getattr(event, "device_time", None) or getattr(event, "cuda_time", 0)
            name = _kernel_name(event.name)
            totals[name] = totals.get(name, 0.0) + duration / 1e3 / calls
    return totals


def wall_and_host(torch, func, calls, rounds=5):
    """(wall ms per call with a final synchronisation, host ms per call of queueing the launches)."""
    walls, hosts = [], []
    for _ in range(rounds):
        gpu_bench._sync(torch)
        start = time.perf_counter()
        for _ in range(calls):
            func()
        queued = time.perf_counter()
        gpu_bench._sync(torch)
        end = time.perf_counter()
        walls.append((end - start) / calls * 1e3)
        hosts.append((queued - start) / calls * 1e3)
    return statistics.median(walls), statistics.median(hosts)


def hotspots(func, calls, top=25):
    """cProfile's tables of ``calls`` calls of ``func``, by own time and by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        func()
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def host_costs(torch, repeats=2000):
    """Microseconds of host time of each piece of a GPU call, each repeated ``repeats`` times."""
    from numba import cuda
    from numba.cuda.cudadrv import driver

    from numba_dsconv.cuda import _arrays

    tensor = torch.ones((64, 32, 28, 28), device="cuda")
    src, dst = cuda.device_array(256, np.float32), cuda.device_array(256, np.float32)
    stream = cuda.stream()
    core_default = driver._to_core_stream(0)
    pieces = {
        "as_cuda_array(torch tensor)": lambda: cuda.as_cuda_array(tensor),
        "device_array 6.4 MB (alloc + free)": lambda: cuda.device_array((64, 32, 28, 28), np.float32),
        "device_array 1 kB (alloc + free)": lambda: cuda.device_array(256, np.float32),
        "reshape of a device array": lambda: src.reshape(16, 16),
        "core stream from 0": lambda: driver._to_core_stream(0),
        "launch, 2 arrays, stream 0": lambda: _arrays._copy_1d_kernel[1, 256, 0](src, dst),
        "launch, 2 arrays, cuda.stream()": lambda: _arrays._copy_1d_kernel[1, 256, stream](src, dst),
        "launch, 2 arrays, cached core stream": lambda: _arrays._copy_1d_kernel[1, 256, core_default](src, dst),
    }
    out = {}
    for name, piece in pieces.items():
        piece()
        cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            piece()
        out[name] = (time.perf_counter() - start) / repeats * 1e6
        cuda.synchronize()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["D1", "D3", "D7", "D9", "P1", "P4"])
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--hotspots", nargs="*", default=["D7"], help="shapes whose forward host work is profiled")
    parser.add_argument("--host", action="store_true", help="time the host pieces of a call first")
    parser.add_argument("--plain", action="store_true", help="run each op 3 times, no timing (for ncu)")
    args = parser.parse_args(argv)

    torch = gpu_bench._torch()
    if torch is None:
        print("gpu_profile needs PyTorch with CUDA (its profiler reads the kernel times)", file=sys.stderr)
        return 1
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    if args.host:
        for piece, us in host_costs(torch).items():
            print(f"host {piece:40s} {us:8.1f} us", flush=True)
    shapes = {s.name: gpu_bench._with_batch(s, args.batch) for s in DEPTHWISE + POINTWISE}
    rng = np.random.default_rng(0)
    for name in args.shapes:
        shape = shapes[name]
        x, w, gy = gpu_bench._inputs(shape, args.dtype, torch, rng)
        ours = gpu_bench._ours(shape, x, w, gy)
        if args.plain:
            for op in gpu_bench.OPS:
                for _ in range(3):
                    ours[op]()
            gpu_bench._sync(torch)
            continue
        theirs = gpu_bench._theirs(torch, shape, x, w, gy)
        for op in gpu_bench.OPS:
            for who, func in (("ours", ours[op]), ("torch", theirs[op])):
                func()
                wall, host = wall_and_host(torch, func, args.calls)
                kernels = kernel_times(torch, func, args.calls)
                card = sum(kernels.values())
                listed = ", ".join(f"{k} {v:.4f}" for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:4])
                print(
                    f"{name:3s} {op:11s} {who:5s} wall {wall:8.4f} ms  host {host:8.4f} ms  card {card:8.4f} ms"
                    f"  [{listed}]",
                    flush=True,
                )
        if name in args.hotspots:
            print(hotspots(ours["forward"], 200), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
