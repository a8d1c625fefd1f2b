"""Benchmark summary: every op at the DESIGN.md shapes against this machine's limits and against PyTorch.

Usage::

    python -m bench                      # float32 and float64, every shape and op
    python -m bench --dtype float32 --shapes D1,D7,P4 --repeats 9 --json bench/results/cpu.json

Each op is timed interleaved with its PyTorch peers in the same loop (numba_dsconv, PyTorch contiguous,
PyTorch channels_last, then again; each turn after a pause and an untimed call, so that one library's
spinning thread pool does not slow the next), every call allocating its output, and the medians are reported.
Both sides' OpenMP threads are pinned to cores (``OMP_PROC_BIND=true``, unless the environment sets it; see
``_pinned``): unpinned, workers woken after the pauses started late often enough to move medians by 5x.
GB/s counts each input read once and each output written once; "%lim" is the fraction of the measured
DRAM triad bandwidth (depthwise) or of the GEMM rate measured at the same matrix shapes (pointwise).
"""

import argparse
import json
import os
import platform
import sys
import time

from . import _pinned  # before NumPy, Numba or PyTorch load an OpenMP runtime

# isort: split
import numpy as np

import numba_dsconv as nd

from . import machine, peers
from .shapes import DEPTHWISE, POINTWISE, depthwise_arrays, depthwise_ops, pointwise_arrays, pointwise_ops

OPS = ("forward", "grad_input", "grad_weight")


def interleaved_medians(funcs, repeats, settle=0.1, calls=3):
    """Median seconds of each callable, timed round-robin so that drifts in machine speed hit all alike.

    Each turn first sleeps ``settle`` seconds and makes one untimed call: thread pools (Numba's OpenMP,
    PyTorch's OpenMP, OpenBLAS) spin for a while after their work, and without the pause one library's
    spinning threads steal the cores from the next one's (seen here: a pointwise product 3.9 ms alone,
    14.8 ms right after a PyTorch call). Then ``calls`` calls are timed.
    """
    for f in funcs.values():
        f()
    times = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, f in funcs.items():
            time.sleep(settle)
            f()
            for _ in range(calls):
                start = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def _row(shape_name, op, dtype, seconds, n_bytes, flops, limit_fraction):
    row = {
        "shape": shape_name,
        "op": op,
        "dtype": np.dtype(dtype).name,
        "ms": seconds["numba_dsconv"] * 1e3,
        "gb_s": n_bytes / seconds["numba_dsconv"] / 1e9,
        "gflop_s": flops / seconds["numba_dsconv"] / 1e9,
        "limit_fraction": limit_fraction,
    }
    for layout in peers.LAYOUTS:
        if layout in seconds:
            row[f"torch_{layout}_ms"] = seconds[layout] * 1e3
    torch_times = [seconds[k] for k in peers.LAYOUTS if k in seconds]
    if torch_times:
        row["speedup_vs_contiguous"] = seconds["contiguous"] / seconds["numba_dsconv"]
        row["speedup_vs_best"] = min(torch_times) / seconds["numba_dsconv"]
    return row


def run_depthwise(shape, dtype, repeats, limits, rng):
    x, w, gy = depthwise_arrays(shape, dtype, rng)
    ours = depthwise_ops(shape, x, w, gy)
    theirs = {
        layout: peers.depthwise_ops(x, w, gy, layout=layout, **shape.opts())
        for layout in (peers.LAYOUTS if peers.available() else ())
    }
    flops = 2.0 * shape.k * shape.k * gy.size
    moved = {
        "forward": x.nbytes + w.nbytes + gy.nbytes,
        "grad_input": gy.nbytes + w.nbytes + x.nbytes,
        "grad_weight": gy.nbytes + x.nbytes + w.nbytes,
    }
    rows = []
    for op in OPS:
        funcs = {"numba_dsconv": ours[op]} | {layout: ops[op] for layout, ops in theirs.items()}
        seconds = interleaved_medians(funcs, repeats)
        fraction = moved[op] / seconds["numba_dsconv"] / 1e9 / limits["triad_dram_gbs"]
        rows.append(_row(shape.name, op, dtype, seconds, moved[op], flops, fraction))
    return rows


def run_pointwise(shape, dtype, repeats, limits, rng):
    hw = shape.h * shape.w
    x, w, gy = pointwise_arrays(shape, dtype, rng)
    ours = pointwise_ops(x, w, gy)
    theirs = {
        layout: peers.pointwise_ops(x, w, gy, layout=layout) for layout in (peers.LAYOUTS if peers.available() else ())
    }
    flops = 2.0 * shape.n * shape.cout * shape.cin * hw
    # The BLAS rate at each op's own matrix shape, batched over the images as the op runs it.
    blas = {
        "forward": machine.gemm_rate(shape.cout, shape.cin, hw, dtype, batch=shape.n),
        "grad_input": machine.gemm_rate(shape.cin, shape.cout, hw, dtype, batch=shape.n),
        "grad_weight": machine.gemm_rate(shape.cout, hw, shape.cin, dtype, batch=shape.n, paired=True),
    }
    moved = x.nbytes + w.nbytes + gy.nbytes
    rows = []
    for op in OPS:
        funcs = {"numba_dsconv": ours[op]} | {layout: ops[op] for layout, ops in theirs.items()}
        seconds = interleaved_medians(funcs, repeats)
        fraction = flops / seconds["numba_dsconv"] / 1e9 / blas[op]
        row = _row(shape.name, op, dtype, seconds, moved, flops, fraction)
        row["blas_gflop_s"] = blas[op]
        rows.append(row)
    return rows


def _fmt(row):
    torch_part = ""
    if "speedup_vs_best" in row:
        torch_part = (
            f"{row['torch_contiguous_ms']:9.2f} {row['torch_channels_last_ms']:9.2f} "
            f"{row['speedup_vs_contiguous']:7.2f}x {row['speedup_vs_best']:7.2f}x"
        )
    return (
        f"{row['shape']:<4} {row['op']:<12} {row['dtype']:<8} {row['ms']:9.3f} {row['gb_s']:7.1f} "
        f"{row['gflop_s']:8.1f} {100 * row['limit_fraction']:5.0f}%  {torch_part}"
    )


def _geomean(values):
    values = [v for v in values if v > 0]
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def summary_arguments(prog, description, default_dtype, shape_names, argv):
    """Parse the options every summary script takes; set both sides' threads.

    Returns
    -------
    args, threads, dtypes, wanted
        ``wanted`` is the set of shape names asked for, or None for all of them.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default=default_dtype)
    parser.add_argument("--shapes", default="all", help=f"comma-separated names ({shape_names}) or 'all'")
    parser.add_argument("--repeats", type=int, default=7, help="rounds per op (3 timed calls each; median)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both sides (default: all cores)")
    parser.add_argument("--json", help="also write the rows (and the limits measured) to this file")
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count()
    import numba

    numba.set_num_threads(threads)
    peers.set_threads(threads)
    dtypes = [np.float32, np.float64] if args.dtype == "both" else [np.dtype(args.dtype).type]
    wanted = None if args.shapes == "all" else set(args.shapes.split(","))
    return args, threads, dtypes, wanted


def _pointwise_way():
    """Say how the pointwise products ran: it depends on the thread count of SciPy's BLAS, which Numba calls.

    With ``OMP_PROC_BIND=true`` the OpenMP runtime that the package starts on import pins the main thread to
    one core, so an OpenBLAS loaded afterwards (SciPy's) sees one core and runs one thread, while NumPy's,
    loaded before, keeps its threads (the "%lim" reference times NumPy's ``matmul``).
    """
    from numba_dsconv.cpu import _blas, pointwise

    way = "one image per Numba thread" if pointwise._per_image() else "batched in NumPy's matmul"
    return f"{way} (SciPy's BLAS threads: {_blas.threads()})"


def main(argv=None):
    args, threads, dtypes, wanted = summary_arguments(
        "python -m bench", __doc__.splitlines()[0], "both", "D1..D9, P1..P4", argv
    )
    import numba

    rng = np.random.default_rng(0)

    limits = machine.measure(dtypes)
    print(
        f"# numba_dsconv {nd.__version__}, numba {numba.__version__}, numpy {np.__version__}, {threads} threads, "
        f"{platform.processor() or platform.machine()}, OMP_PROC_BIND={_pinned.setting()}"
    )
    print(f"# peer: {peers.describe()}")
    print(f"# pointwise: {_pointwise_way()}")
    print("# limits: " + ", ".join(f"{k} {v:.1f}" for k, v in limits.items()))
    print(
        f"{'':4} {'op':<12} {'dtype':<8} {'ms':>9} {'GB/s':>7} {'GFLOP/s':>8} {'%lim':>6}  "
        f"{'torch ms':>9} {'torch CL':>9} {'vs torch':>8} {'vs best':>8}"
    )
    rows = []
    for dtype in dtypes:
        for shape in DEPTHWISE:
            if wanted is None or shape.name in wanted:
                for row in run_depthwise(shape, dtype, args.repeats, limits, rng):
                    print(_fmt(row), flush=True)
                    rows.append(row)
        for shape in POINTWISE:
            if wanted is None or shape.name in wanted:
                for row in run_pointwise(shape, dtype, args.repeats, limits, rng):
                    print(_fmt(row), flush=True)
                    rows.append(row)
        depthwise_rows = [r for r in rows if r["dtype"] == np.dtype(dtype).name and r["shape"].startswith("D")]
        if depthwise_rows and "speedup_vs_best" in depthwise_rows[0]:
            print(
                f"# {np.dtype(dtype).name} depthwise geometric-mean speedup: "
                f"{_geomean([r['speedup_vs_contiguous'] for r in depthwise_rows]):.2f}x vs contiguous, "
                f"{_geomean([r['speedup_vs_best'] for r in depthwise_rows]):.2f}x vs best layout; slowest "
                f"{min(r['speedup_vs_contiguous'] for r in depthwise_rows):.2f}x vs contiguous"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "limits": limits,
                    "threads": threads,
                    "omp_proc_bind": _pinned.setting(),
                    "pointwise": _pointwise_way(),
                    "peer": peers.describe(),
                    "rows": rows,
                    "date": time.strftime("%Y-%m-%d"),
                    "python": sys.version.split()[0],
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
