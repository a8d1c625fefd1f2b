"""What only the GPU backend has: device arrays in and out, dispatch, streams, strided views, launch shapes.

The numerical suites (references, gradients, NaN/Inf, bad input) run on the GPU through the ``backend``
fixture; these tests cover the rest. Marked ``cuda``: run with a GPU or ``NUMBA_ENABLE_CUDASIM=1``.
"""

import sys

import cuda_host
import numpy as np
import pytest
from conftest import assert_close, random_array

import numba_dsconv
from numba_dsconv import reference

pytestmark = pytest.mark.cuda


@pytest.fixture
def cuda(request, monkeypatch):
    """``numba.cuda`` with the shrunk launch configuration of the suite (skips without a GPU or simulator)."""
    cuda_host.prepare(request, monkeypatch)
    from numba import cuda

    return cuda


def _problem(rng, dtype=np.float32):
    x = random_array(rng, (2, 3, 9, 10), dtype)
    w = random_array(rng, (6, 1, 3, 3), dtype)
    b = random_array(rng, (6,), dtype)
    return x, w, b, dict(stride=(1, 2), padding="same", dilation=(2, 1))


def test_top_level_functions_dispatch_device_arrays_to_the_gpu(cuda, rng):
    x, w, b, opts = _problem(rng)
    y = numba_dsconv.depthwise_conv2d(cuda.to_device(x), cuda.to_device(w), cuda.to_device(b), **opts)
    assert cuda_host.is_device_array(y)
    assert_close(y.copy_to_host(), reference.depthwise_conv2d(x, w, b, **opts), np.float32)
    pw = random_array(rng, (4, 6), np.float32)
    z = numba_dsconv.pointwise_conv2d(y, cuda.to_device(pw))
    assert cuda_host.is_device_array(z)
    expected = reference.pointwise_conv2d(y.copy_to_host(), pw.reshape(4, 6, 1, 1))
    assert_close(z.copy_to_host(), expected, np.float32)
    gb = numba_dsconv.conv2d_grad_bias(z)
    assert_close(gb.copy_to_host(), reference.conv2d_grad_bias(z.copy_to_host()), np.float32)
    s = numba_dsconv.separable_conv2d(cuda.to_device(x), cuda.to_device(w), cuda.to_device(pw), cuda.to_device(b),
                                      **opts)
    assert cuda_host.is_device_array(s)
    assert_close(s.copy_to_host(), expected, np.float32)
    grads = numba_dsconv.separable_conv2d_backward(s, cuda.to_device(x), cuda.to_device(w), cuda.to_device(pw),
                                                   depthwise_output=y, **opts)
    assert all(cuda_host.is_device_array(g) for g in grads)


def test_mixing_host_and_device_arrays_is_refused(cuda, rng):
    x, w, b, opts = _problem(rng)
    with pytest.raises(TypeError, match=r"x is a CUDA array but weight is a host array"):
        numba_dsconv.depthwise_conv2d(cuda.to_device(x), w)
    with pytest.raises(TypeError, match=r"weight is a CUDA array but x is a host array"):
        numba_dsconv.depthwise_conv2d(x, cuda.to_device(w))
    with pytest.raises(TypeError, match=r"bias is a CUDA array but x is a host array"):
        numba_dsconv.pointwise_conv2d(x, np.ones((3, 3), np.float32), cuda.to_device(b[:3]))
    with pytest.raises(TypeError, match=r"x is a CUDA array but grad_y is a host array"):
        numba_dsconv.depthwise_conv2d_grad_weight(np.ones((2, 6, 9, 5), np.float32), cuda.to_device(x), w.shape)
    pw = np.ones((4, 6), np.float32)
    with pytest.raises(TypeError, match=r"x is a CUDA array but pointwise_weight is a host array"):
        numba_dsconv.separable_conv2d(cuda.to_device(x), cuda.to_device(w), pw)
    gz = np.ones((2, 4, 9, 5), np.float32)
    with pytest.raises(TypeError, match=r"grad_y is a CUDA array but depthwise_output is a host array"):
        numba_dsconv.separable_conv2d_backward(cuda.to_device(gz), cuda.to_device(x), cuda.to_device(w),
                                               cuda.to_device(pw), depthwise_output=np.ones((2, 6, 9, 5), np.float32),
                                               **opts)
    import numba_dsconv.cuda as gpu

    with pytest.raises(TypeError, match=r"weight is a host array \(ndarray\); numba_dsconv.cuda takes CUDA arrays"):
        gpu.depthwise_conv2d(cuda.to_device(x), w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_device_views_are_read_correctly(cuda, rng, dtype):
    """Non-contiguous device arrays (every axis strided) give the contiguous arrays' results."""
    import numba_dsconv.cuda as gpu

    x, w, b, opts = _problem(rng, dtype)
    gy = random_array(rng, reference.depthwise_conv2d(x, w, **opts).shape, dtype)
    pw = random_array(rng, (4, 3, 1, 1), dtype)

    def strided(a):
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        big[tuple(slice(None, None, 2) for _ in a.shape)] = a
        view = cuda.to_device(big)[tuple(slice(None, None, 2) for _ in a.shape)]
        assert not view.is_c_contiguous()
        return view

    xs, ws, bs, gys, pws = (strided(a) for a in (x, w, b, gy, pw))
    assert_close(
        gpu.depthwise_conv2d(xs, ws, bs, **opts).copy_to_host(), reference.depthwise_conv2d(x, w, b, **opts), dtype
    )
    assert_close(
        gpu.depthwise_conv2d_grad_input(gys, ws, x.shape, **opts).copy_to_host(),
        reference.depthwise_conv2d_grad_input(gy, w, x.shape, **opts),
        dtype,
    )
    assert_close(
        gpu.depthwise_conv2d_grad_weight(gys, xs, w.shape, **opts).copy_to_host(),
        reference.depthwise_conv2d_grad_weight(gy, x, w.shape, **opts),
        dtype,
    )
    assert_close(gpu.pointwise_conv2d(xs, pws).copy_to_host(), reference.pointwise_conv2d(x, pw), dtype)
    assert_close(gpu.conv2d_grad_bias(gys).copy_to_host(), reference.conv2d_grad_bias(gy), dtype)


def test_kernels_run_on_the_stream_given(cuda, rng):
    import numba_dsconv.cuda as gpu

    x, w, b, opts = _problem(rng)
    stream = cuda.stream()
    dx, dw = cuda.to_device(x, stream=stream), cuda.to_device(w, stream=stream)
    y = gpu.depthwise_conv2d(dx, dw, stream=stream, **opts)
    gx = gpu.depthwise_conv2d_grad_input(y, dw, x.shape, stream=stream, **opts)
    gw = gpu.depthwise_conv2d_grad_weight(y, dx, w.shape, stream=stream, **opts)
    pw = cuda.to_device(random_array(rng, (2, 3), np.float32), stream=stream)
    results = [y, gx, gw, gpu.pointwise_conv2d(dx, pw, stream=stream), gpu.conv2d_grad_bias(y, stream=stream)]
    results.append(gpu.pointwise_conv2d_grad_input(results[3], pw, stream=stream))
    results.append(gpu.pointwise_conv2d_grad_weight(results[3], dx, stream=stream))
    host = [r.copy_to_host(stream=stream) for r in results]
    stream.synchronize()
    y_ref = reference.depthwise_conv2d(x, w, **opts)
    assert_close(host[0], y_ref, np.float32)
    assert_close(host[1], reference.depthwise_conv2d_grad_input(y_ref, w, x.shape, **opts), np.float32)
    assert_close(host[2], reference.depthwise_conv2d_grad_weight(y_ref, x, w.shape, **opts), np.float32)
    assert host[3].shape == (2, 2, 9, 10) and host[5].shape == x.shape and host[6].shape == (2, 3, 1, 1)


@pytest.mark.skipif(cuda_host.simulated(), reason="the simulator's arrays have no __cuda_array_interface__")
def test_foreign_arrays_with_the_cuda_array_interface(cuda, rng):
    """Any object exposing __cuda_array_interface__ (CuPy, PyTorch) is read without a copy."""
    import numba_dsconv.cuda as gpu

    class Foreign:
        def __init__(self, array):
            self._array = array
            self.__cuda_array_interface__ = array.__cuda_array_interface__

    x, w, b, opts = _problem(rng)
    y = gpu.depthwise_conv2d(Foreign(cuda.to_device(x)), Foreign(cuda.to_device(w)), **opts)
    assert_close(y.copy_to_host(), reference.depthwise_conv2d(x, w, **opts), np.float32)


@pytest.mark.parametrize("shared_bytes", [8, 400])
def test_tiles_shrink_or_fall_back_to_global_memory_when_shared_memory_is_short(cuda, rng, shared_bytes):
    """400 bytes: the tile shrinks until its window fits; 8 bytes: no window fits, the kernels read global memory."""
    from numba_dsconv.cuda import launch

    x, w, b, opts = _problem(rng, np.float64)
    x, w = x[:, :, :7, :8], random_array(rng, (6, 1, 5, 3), np.float64)
    y_ref = reference.depthwise_conv2d(x, w, b, **opts)
    gy = random_array(rng, y_ref.shape, np.float64)
    with launch.configured(shared_bytes=shared_bytes, tile_threads=(8, 4)):
        backend = cuda_host.host_backend()
        assert_close(backend.depthwise_conv2d(x, w, b, **opts), y_ref, np.float64)
        assert_close(
            backend.depthwise_conv2d_grad_input(gy, w, x.shape, **opts),
            reference.depthwise_conv2d_grad_input(gy, w, x.shape, **opts),
            np.float64,
        )


def test_launch_configuration_is_checked_and_restored(cuda):
    from numba_dsconv.cuda import launch

    before = launch.CONFIG
    with pytest.raises(ValueError, match=r"reduce_threads must be a power of two <= 256"):
        launch.LaunchConfig(reduce_threads=96)
    with pytest.raises(ValueError, match=r"tile_threads must be two sizes >= 1 with a product <= 1024"):
        launch.LaunchConfig(tile_threads=(64, 32))
    with pytest.raises(ValueError, match=r"rows_per_thread must be <= 8"):
        launch.LaunchConfig(rows_per_thread=9)
    with launch.configured(reduce_threads=32) as config:
        assert launch.CONFIG is config and config.reduce_threads == 32
    assert launch.CONFIG is before


def test_results_do_not_depend_on_the_launch_shape_beyond_rounding(cuda, rng):
    from numba_dsconv.cuda import launch

    x, w, b, opts = _problem(rng, np.float64)
    gy = random_array(rng, reference.depthwise_conv2d(x, w, **opts).shape, np.float64)
    backend = cuda_host.host_backend()
    first = backend.depthwise_conv2d_grad_weight(gy, x, w.shape, **opts)
    with launch.configured(reduce_threads=4, reduce_elements=5, tile_threads=(3, 3), rows_per_thread=3):
        second = backend.depthwise_conv2d_grad_weight(gy, x, w.shape, **opts)
        assert_close(backend.depthwise_conv2d(x, w, b, **opts), reference.depthwise_conv2d(x, w, b, **opts), np.float64)
    assert_close(second, first, np.float64)


def test_a_missing_gpu_backend_says_how_to_install_it(monkeypatch):
    """Dispatch of a CUDA array without numba-cuda: an ImportError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "numba_dsconv.cuda", None)
    monkeypatch.delattr(numba_dsconv, "cuda", raising=False)

    class DeviceLike:
        shape, dtype = (1, 1, 3, 3), np.dtype(np.float32)
        __cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(ImportError, match=r"pip install 'numba_dsconv\[cuda\]'"):
        numba_dsconv.depthwise_conv2d(DeviceLike(), DeviceLike())


def test_the_gpu_benchmark_script_runs(cuda, tmp_path):
    """``python -m bench.gpu_bench --smoke``: the script that measures the card, on two tiny shapes."""
    import json

    from bench import gpu_bench

    out = tmp_path / "gpu.json"
    assert gpu_bench.main(["--smoke", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["shape"], r["op"]) for r in result["rows"]] == [
        (shape, op) for shape in ("S1", "S2") for op in ("forward", "grad_input", "grad_weight")
    ]
    assert all(r["ms"] > 0 and r["gb_s"] > 0 for r in result["rows"])
    assert result["header"]["device"]


def _tiny_model(device, seed=3):
    """Every kind of layer, small enough for the simulator: (N, 1, 7, 6) -> (N, 3) logits, float64."""
    from numba_dsconv import nn

    rng = np.random.default_rng(seed)
    common = {"rng": rng, "dtype": np.float64, "device": device}
    layers = [
        ("stem", nn.DepthwiseConv2d(1, 4, 3, padding="same", bias=False, **common)),
        ("stem_bn", nn.BatchNorm2d(4, relu=True, dtype=np.float64, device=device)),
        ("block", nn.SeparableConv2d(4, 5, 3, stride=2, padding=2, dilation=2, **common)),
        ("block_bn", nn.BatchNorm2d(5, dtype=np.float64, device=device)),
        ("relu", nn.ReLU(device=device)),
        ("pool", nn.GlobalAvgPool2d(device=device)),
        ("head", nn.Linear(5, 3, **common)),
    ]
    return nn.Model(layers, {"device": device})


def test_a_training_step_on_the_gpu_matches_the_cpu(cuda, rng):
    """One Adam step of a model with every layer kind: same loss, logits, gradients and parameters as the CPU."""
    from numba_dsconv import nn

    images = rng.integers(0, 256, size=(3, 7, 6), dtype=np.uint8)
    labels = np.array([0, 2, 1])
    results = {}
    for device in ("cpu", "cuda"):
        model = _tiny_model(device)
        optimizer = nn.Adam(model.parameters(), lr=1e-2)
        loss, logits = nn.train_step(model, optimizer, nn.SoftmaxCrossEntropy(), images, labels, mean=100.0, std=70.0)
        assert isinstance(logits, np.ndarray)
        grads = {name: p.grad.copy() for name, p in model.parameters().items()}
        values = {name: p.value.copy() for name, p in model.parameters().items()}
        buffers = {name: b.copy() for name, b in model.buffers().items()}
        evaluated = model.predict(images[:, None].astype(np.float64) / 255.0)
        results[device] = (loss, logits, grads, values, buffers, evaluated)
    cpu, gpu = results["cpu"], results["cuda"]
    assert gpu[0] == pytest.approx(cpu[0], rel=1e-12)
    np.testing.assert_allclose(gpu[1], cpu[1], rtol=1e-10, atol=1e-12)
    for name in cpu[2]:
        np.testing.assert_allclose(gpu[2][name], cpu[2][name], rtol=1e-9, atol=1e-12, err_msg=name)
        # atol: Adam turns the rounding noise of a gradient that is zero in exact arithmetic (a bias before a
        # batch norm) into steps of lr * noise / eps, about 1e-11.
        np.testing.assert_allclose(gpu[3][name], cpu[3][name], rtol=1e-9, atol=1e-9, err_msg=name)
    for name in cpu[4]:
        np.testing.assert_allclose(gpu[4][name], cpu[4][name], rtol=1e-10, err_msg=name)
    np.testing.assert_allclose(gpu[5], cpu[5], rtol=1e-9, atol=1e-12)


def test_dscnn_builds_on_the_gpu_and_a_checkpoint_moves_between_devices(cuda, tmp_path):
    from numba_dsconv import nn

    model = nn.dscnn(seed=1, device="cuda")
    assert model.config["device"] == "cuda"
    nn.save_checkpoint(tmp_path / "m.npz", model)
    for device in ("cuda", "cpu"):
        back = nn.load_model(tmp_path / "m.npz", device=device)
        assert back.config["device"] == device
        for (name, p), (_, q) in zip(model.parameters().items(), back.parameters().items(), strict=True):
            np.testing.assert_array_equal(p.value, q.value, err_msg=name)


def test_pointwise_batches_beyond_the_grid_limit_run_in_several_launches(cuda, rng, monkeypatch):
    """A grid's z dimension (images x K chunks) is capped at 65,535: larger batches are split, not refused."""
    from numba_dsconv.cuda import pointwise

    monkeypatch.setattr(pointwise, "MAX_GRID_Z", 2)
    x = random_array(rng, (5, 3, 2, 5), np.float64)
    w = random_array(rng, (4, 3), np.float64)
    gy = random_array(rng, (5, 4, 2, 5), np.float64)
    backend = cuda_host.host_backend()
    assert_close(backend.pointwise_conv2d(x, w), reference.pointwise_conv2d(x, w.reshape(4, 3, 1, 1)), np.float64)
    assert_close(
        backend.pointwise_conv2d_grad_input(gy, w),
        reference.pointwise_conv2d_grad_input(gy, w.reshape(4, 3, 1, 1)),
        np.float64,
    )
    assert_close(
        backend.pointwise_conv2d_grad_weight(gy, x, (4, 3)),
        reference.pointwise_conv2d_grad_weight(gy, x, (4, 3)),
        np.float64,
    )
