"""Shared test helpers: backends under test, tolerances, random inputs."""

import hashlib
import os
import pathlib
import tempfile


def _source_keyed_cache_dir():
    """A Numba cache folder named after the package's sources.

    Numba invalidates a cached kernel only when *its own* file changes, not when a helper it inlines from
    another module does; a test run could then pass on stale machine code. Keying the folder on every
    source file makes any edit start from a clean cache, and an unchanged tree reuse its compiled kernels.
    """
    package = pathlib.Path(__file__).resolve().parent.parent / "numba_dsconv"
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.read_bytes())
    return os.path.join(tempfile.gettempdir(), f"numba_dsconv-test-cache-{digest.hexdigest()[:16]}")


# Must happen before Numba is imported; a cache folder chosen by the user wins.
os.environ.setdefault("NUMBA_CACHE_DIR", _source_keyed_cache_dir())

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import numba_dsconv.cpu  # noqa: E402

# Norm-wise relative error allowed against the float64 reference (DESIGN.md, correctness rules).
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}
DTYPES = (np.float32, np.float64)
OPS = (
    "depthwise_conv2d",
    "depthwise_conv2d_grad_input",
    "depthwise_conv2d_grad_weight",
    "pointwise_conv2d",
    "pointwise_conv2d_grad_input",
    "pointwise_conv2d_grad_weight",
    "conv2d_grad_bias",
)


def relative_error(actual, expected):
    """Norm-wise relative error; exact zero when both are zero."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.linalg.norm(expected)
    diff = np.linalg.norm(actual - expected)
    return diff if scale == 0 else diff / scale


def assert_close(actual, expected, dtype):
    assert np.asarray(actual).dtype == np.dtype(dtype)
    err = relative_error(actual, expected)
    assert err <= TOLERANCE[dtype], f"relative error {err:.3e} > {TOLERANCE[dtype]:.0e}"


@pytest.fixture(params=["cpu", "cpu-stacked"])
def backend(request, monkeypatch):
    """The module whose functions are under test; the GPU backend joins this list with the same suite.

    "cpu-stacked" forces the depthwise kernels to stack two images per task and to cut the tasks into two
    chunks, so that every test also runs stacks with a partial last group (odd batches) next to full ones
    in the same reused buffers (a chunk may start on either), on top of the one-task chunks that small
    test inputs get by default.
    """
    if request.param == "cpu-stacked":
        monkeypatch.setattr(numba_dsconv.cpu.depthwise, "IMAGES_PER_TASK", 2)
        monkeypatch.setattr(numba_dsconv.cpu.depthwise, "chunk_count", lambda ntasks: min(ntasks, 2))
    return numba_dsconv.cpu


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_array(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def numeric_gradient(array, evaluate, eps=1e-6):
    """Central differences of the scalar ``evaluate(array)`` with respect to every entry of ``array`` (float64)."""
    grad = np.empty_like(array)
    for idx in np.ndindex(array.shape):
        plus, minus = array.copy(), array.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (evaluate(plus) - evaluate(minus)) / (2 * eps)
    return grad
