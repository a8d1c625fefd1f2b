"""The public surface: names, dispatch, and the guard against device arrays on the CPU backend."""

import threading

import numba
import numpy as np
import pytest
from conftest import OPS, random_array

import numba_dsconv
import numba_dsconv.cpu


def test_top_level_exports_every_op():
    for name in OPS:
        assert callable(getattr(numba_dsconv, name))
        assert callable(getattr(numba_dsconv.cpu, name))
    assert sorted(numba_dsconv.__all__) == sorted(OPS + ("SeparableGrads",))


class _FakeDeviceArray:
    """Looks like a GPU array to the dispatcher (it only checks for the interface)."""

    shape = (2, 3, 8, 8)
    dtype = np.dtype(np.float32)
    __cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0, False), "version": 3}


def test_cpu_backend_refuses_device_arrays_and_says_so():
    with pytest.raises(TypeError, match=r"x is a CUDA array"):
        numba_dsconv.cpu.depthwise_conv2d(_FakeDeviceArray(), np.ones((3, 1, 3, 3), np.float32))
    with pytest.raises(TypeError, match=r"weight is a CUDA array"):
        numba_dsconv.cpu.pointwise_conv2d(np.ones((2, 3, 8, 8), np.float32), _FakeDeviceArray())


def test_array_likes_are_accepted():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    y = numba_dsconv.depthwise_conv2d(x.tolist(), [[[[1.0]]]])
    np.testing.assert_array_equal(y, x)


def test_threading_layer_is_thread_safe():
    numba_dsconv.depthwise_conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1)))
    assert numba.threading_layer() in ("tbb", "omp")


@pytest.mark.parametrize("per_image", [False, True], ids=["batched-products", "per-image-products"])
def test_four_python_threads_at_once(rng, monkeypatch, per_image):
    """Parallel kernels entered from four Python threads concurrently give the single-threaded results (the
    separable convolution fused in groups with per-image products, or as its two halves)."""
    monkeypatch.setattr(numba_dsconv.cpu.pointwise, "PER_IMAGE_PRODUCTS", per_image)
    jobs = []
    for i in range(4):
        x = random_array(rng, (4, 8, 24 + i, 20), np.float32)
        w = random_array(rng, (16, 1, 3, 3), np.float32)
        pw = random_array(rng, (8, 16, 1, 1), np.float32)
        opts = dict(stride=1 + i % 2, padding="same", dilation=1 + i % 3)
        jobs.append((x, w, pw, opts))

    def run(job):
        x, w, pw, opts = job
        y = numba_dsconv.depthwise_conv2d(x, w, **opts)
        z = numba_dsconv.pointwise_conv2d(y, pw)
        gy = numba_dsconv.pointwise_conv2d_grad_input(z, pw)
        return (
            z,
            numba_dsconv.depthwise_conv2d_grad_input(gy, w, x.shape, **opts),
            numba_dsconv.depthwise_conv2d_grad_weight(gy, x, w.shape, **opts),
            numba_dsconv.pointwise_conv2d_grad_weight(z, y),
            numba_dsconv.conv2d_grad_bias(gy),
            numba_dsconv.separable_conv2d(x, w, pw, **opts),
        ) + tuple(numba_dsconv.separable_conv2d_backward(z, x, w, pw, **opts))

    expected = [run(job) for job in jobs]
    results = [None] * len(jobs)
    errors = []
    barrier = threading.Barrier(len(jobs))

    def worker(i):
        try:
            barrier.wait()
            for _ in range(5):
                results[i] = run(jobs[i])
        except Exception as exc:  # noqa: BLE001 - reported below with its thread
            errors.append((i, exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
