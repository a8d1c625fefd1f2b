"""Shared test helpers: backends under test, tolerances, random inputs."""

import numpy as np
import pytest

import numba_dsconv.cpu

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
