"""The CPU kernels at AVX2's vector width on a CPU with AVX-512.

The width is fixed when the package is imported (``cpu._simd.VECTOR_BYTES``: 64 bytes where Numba compiles
for AVX-512, else 32), so one test process sees one width. The kernels whose blocking follows the width (row
pairs and chains, packed planes, channel blocks, split columns, the pointwise register blocks) run at the
other width in a second process, compiled for this CPU with its AVX-512 features turned off, against the
references. A CPU without AVX-512 cannot run the 64-byte code; there the whole suite runs at 32 bytes.
"""

import os
import subprocess
import sys
import textwrap

import llvmlite.binding
import pytest

import numba_dsconv.cpu

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from conftest import assert_close
    import numba_dsconv
    from numba_dsconv import reference
    from numba_dsconv.cpu import _blas, _simd

    assert _simd.VECTOR_BYTES == 32, _simd.VECTOR_BYTES
    rng = np.random.default_rng(0)
    failures = []

    def check(name, got, expected, dtype):
        try:
            assert_close(got, expected, dtype)
        except AssertionError as error:
            failures.append(f"{name} {np.dtype(dtype).name}: {error}")

    # (N, C, H, W, kernel, stride, dilation): rows of 40 (row pairs), 20 and 7 (chains), stride 2 (split
    # columns), 7x7 kernels (channel blocks), 5x5 with dilation 2.
    CASES = [
        (2, 3, 9, 40, 3, 1, 1),
        (2, 5, 11, 20, 3, 1, 2),
        (3, 6, 7, 7, 3, 1, 1),
        (2, 4, 13, 30, 3, 2, 1),
        (2, 9, 12, 14, 7, 1, 1),
        (1, 10, 16, 16, 5, 1, 2),
    ]
    for dtype in (np.float32, np.float64):
        for n, c, h, w, k, s, d in CASES:
            x = rng.standard_normal((n, c, h, w)).astype(dtype)
            weight = rng.standard_normal((c, 1, k, k)).astype(dtype)
            o = dict(stride=s, padding=d * (k // 2), dilation=d)
            y = numba_dsconv.depthwise_conv2d(x, weight, **o)
            name = f"depthwise {(n, c, h, w, k, s, d)}"
            check(name + " forward", y, reference.depthwise_conv2d(x, weight, **o), dtype)
            gy = rng.standard_normal(y.shape).astype(dtype)
            check(name + " grad_input", numba_dsconv.depthwise_conv2d_grad_input(gy, weight, x.shape, **o),
                  reference.depthwise_conv2d_grad_input(gy, weight, x.shape, **o), dtype)
            check(name + " grad_weight", numba_dsconv.depthwise_conv2d_grad_weight(gy, x, weight.shape, **o),
                  reference.depthwise_conv2d_grad_weight(gy, x, weight.shape, **o), dtype)
        for blocks in (None, True):  # BLAS, as this width chooses; the register blocks, forced
            _blas.REGISTER_BLOCKS = blocks
            x = rng.standard_normal((2, 32, 5, 9)).astype(dtype)
            weight = rng.standard_normal((16, 32, 1, 1)).astype(dtype)
            gy = rng.standard_normal((2, 16, 5, 9)).astype(dtype)
            name = f"pointwise blocks={blocks}"
            check(name + " forward", numba_dsconv.pointwise_conv2d(x, weight),
                  reference.pointwise_conv2d(x, weight), dtype)
            check(name + " grad_input", numba_dsconv.pointwise_conv2d_grad_input(gy, weight),
                  reference.pointwise_conv2d_grad_input(gy, weight), dtype)
            check(name + " grad_weight", numba_dsconv.pointwise_conv2d_grad_weight(gy, x),
                  reference.pointwise_conv2d_grad_weight(gy, x, weight.shape), dtype)
    print("\\n".join(failures) if failures else "ok")
    """
)


def test_kernels_at_avx2_width_match_the_reference(tmp_path):
    if numba_dsconv.cpu._simd.VECTOR_BYTES == 32:
        pytest.skip("this CPU has no AVX-512: the whole suite ran at AVX2's 32-byte width")
    # AVX10 implies AVX-512: both off, everything else as this CPU has it.
    wide = ("avx512", "avx10")
    features = llvmlite.binding.get_host_cpu_features()
    flags = ",".join(("+" if on and not name.startswith(wide) else "-") + name for name, on in features.items())
    # The suite's own tolerances (``conftest.assert_close``), imported from this folder.
    tests = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    env = os.environ | {"NUMBA_CPU_FEATURES": flags, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": path}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok", result.stdout
