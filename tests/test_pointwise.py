"""Pointwise kernels and the bias gradient against the references."""

import os
import subprocess
import sys

import numba
import numba.core.codegen
import numpy as np
import pytest
from conftest import DTYPES, assert_close, assert_same_with_one_thread, numeric_gradient, random_array, relative_error

import numba_dsconv.cpu
from numba_dsconv import reference

SHAPES = [  # (N, Cin, Cout, H, W)
    (1, 1, 1, 1, 1),
    (2, 3, 5, 4, 7),
    (3, 8, 2, 5, 5),
    (1, 16, 24, 3, 2),
    (4, 5, 5, 1, 9),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("weight_rank", [4, 2])
def test_pointwise_ops_match_reference(backend, rng, shape, dtype, weight_rank):
    n, cin, cout, h, w = shape
    x = random_array(rng, (n, cin, h, w), dtype)
    weight_shape = (cout, cin, 1, 1) if weight_rank == 4 else (cout, cin)
    weight = random_array(rng, weight_shape, dtype)
    bias = random_array(rng, (cout,), dtype)
    w4 = weight.reshape(cout, cin, 1, 1)

    assert_close(backend.pointwise_conv2d(x, weight, bias), reference.pointwise_conv2d(x, w4, bias), dtype)
    assert_close(backend.pointwise_conv2d(x, weight), reference.pointwise_conv2d(x, w4), dtype)
    grad_y = random_array(rng, (n, cout, h, w), dtype)
    assert_close(
        backend.pointwise_conv2d_grad_input(grad_y, weight), reference.pointwise_conv2d_grad_input(grad_y, w4), dtype
    )
    dw = backend.pointwise_conv2d_grad_weight(grad_y, x, weight_shape)
    assert dw.shape == weight_shape
    assert_close(dw, reference.pointwise_conv2d_grad_weight(grad_y, x, weight_shape), dtype)
    assert backend.pointwise_conv2d_grad_weight(grad_y, x).shape == (cout, cin, 1, 1)
    assert_close(backend.conv2d_grad_bias(grad_y), reference.conv2d_grad_bias(grad_y), dtype)


def test_pointwise_gradients_by_central_differences(backend, rng):
    x = random_array(rng, (2, 3, 2, 3), np.float64)
    weight = random_array(rng, (4, 3, 1, 1), np.float64)
    bias = random_array(rng, (4,), np.float64)
    grad_y = random_array(rng, (2, 4, 2, 3), np.float64)

    def loss(x_, w_, b_):
        return float(np.sum(backend.pointwise_conv2d(x_, w_, b_) * grad_y))

    assert (
        relative_error(
            backend.pointwise_conv2d_grad_input(grad_y, weight), numeric_gradient(x, lambda v: loss(v, weight, bias))
        )
        < 1e-7
    )
    assert (
        relative_error(
            backend.pointwise_conv2d_grad_weight(grad_y, x), numeric_gradient(weight, lambda v: loss(x, v, bias))
        )
        < 1e-7
    )
    assert relative_error(backend.conv2d_grad_bias(grad_y), numeric_gradient(bias, lambda v: loss(x, weight, v))) < 1e-7


def test_float32_bias_gradient_of_terms_that_cancel(backend, rng):
    """Channel sums a thousand times smaller than their terms: every addition must be exact enough in
    float64 for the float32 result to keep its 1e-5 relative tolerance (float32 row sums did not)."""
    grad_y = random_array(rng, (3, 4, 9, 11), np.float32)
    grad_y -= (grad_y.astype(np.float64).mean(axis=(0, 2, 3), keepdims=True)).astype(np.float32)
    expected = reference.conv2d_grad_bias(grad_y)
    assert np.abs(expected).max() < 1e-3 * np.abs(grad_y).sum(axis=(0, 2, 3)).min()
    assert_close(backend.conv2d_grad_bias(grad_y), expected, np.float32)


def test_pointwise_adjoint_identities(backend, rng):
    x = random_array(rng, (3, 6, 5, 4), np.float64)
    weight = random_array(rng, (7, 6, 1, 1), np.float64)
    y = backend.pointwise_conv2d(x, weight)
    g = random_array(rng, y.shape, np.float64)
    lhs = np.vdot(y, g)
    scale = np.linalg.norm(y) * np.linalg.norm(g)
    assert abs(lhs - np.vdot(x, backend.pointwise_conv2d_grad_input(g, weight))) <= 1e-12 * scale
    assert abs(lhs - np.vdot(weight, backend.pointwise_conv2d_grad_weight(g, x))) <= 1e-12 * scale


@pytest.mark.parametrize("dtype", DTYPES)
def test_pointwise_nan_stays_in_its_pixel(backend, rng, dtype):
    x = random_array(rng, (2, 4, 3, 3), dtype)
    weight = np.abs(random_array(rng, (5, 4, 1, 1), dtype)) + 0.5
    x[1, 2, 0, 1] = np.nan
    y = backend.pointwise_conv2d(x, weight)
    expected = np.zeros(y.shape, bool)
    expected[1, :, 0, 1] = True
    np.testing.assert_array_equal(np.isnan(y), expected)
    grad_y = random_array(rng, y.shape, dtype)
    grad_y[0, 3, 2, 2] = np.inf
    dx = backend.pointwise_conv2d_grad_input(grad_y, weight)
    expected = np.zeros(dx.shape, bool)
    expected[0, :, 2, 2] = True
    np.testing.assert_array_equal(~np.isfinite(dx), expected)
    db = backend.conv2d_grad_bias(grad_y)
    np.testing.assert_array_equal(~np.isfinite(db), np.arange(5) == 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pointwise_non_contiguous_and_read_only(backend, rng, dtype):
    x = random_array(rng, (2, 4, 6, 5), dtype)
    weight = random_array(rng, (3, 4, 1, 1), dtype)
    bias = random_array(rng, (3,), dtype)
    grad_y = random_array(rng, (2, 3, 6, 5), dtype)
    expected = (
        backend.pointwise_conv2d(x, weight, bias),
        backend.pointwise_conv2d_grad_input(grad_y, weight),
        backend.pointwise_conv2d_grad_weight(grad_y, x),
        backend.conv2d_grad_bias(grad_y),
    )
    xs = np.transpose(np.transpose(x, (0, 2, 3, 1)).copy(), (0, 3, 1, 2))  # channels-last memory
    gs = np.asfortranarray(grad_y)
    for arr in (xs, gs, weight, bias):
        arr.setflags(write=False)
    got = (
        backend.pointwise_conv2d(xs, weight, bias),
        backend.pointwise_conv2d_grad_input(gs, weight),
        backend.pointwise_conv2d_grad_weight(gs, xs),
        backend.conv2d_grad_bias(gs),
    )
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12 if dtype == np.float64 else 1e-5, atol=0)


# (N, Cin vectors, Cout, H, W) whose weight gradient runs on the outer products (``cpu._outer``), with the
# register block it takes (Cin a multiple of four vectors, else of two or one, with Cout a multiple of 8; a
# vector holds 16 float32 or 8 float64 channels with AVX-512, half as many without): pixels not a multiple of
# a vector, a batch of one whose slices split its only image, slices across image boundaries, several
# segments per image.
OUTER_CASES = [
    ((3, 4, 8, 9, 13), np.float32, (4, 4)),
    ((1, 4, 4, 40, 40), np.float32, (4, 4)),
    ((5, 4, 12, 7, 7), np.float32, (4, 4)),
    ((3, 2, 16, 9, 13), np.float32, (8, 2)),
    ((2, 3, 8, 40, 40), np.float32, (8, 1)),
    ((3, 4, 8, 9, 13), np.float64, (4, 4)),
    ((1, 4, 4, 40, 40), np.float64, (4, 4)),
    ((5, 8, 12, 7, 7), np.float64, (4, 4)),
    ((2, 4, 4, 60, 70), np.float64, (4, 4)),
    ((3, 2, 8, 9, 13), np.float64, (8, 2)),
    ((2, 3, 16, 7, 7), np.float64, (8, 1)),
]


@pytest.mark.parametrize("shape, dtype, block", OUTER_CASES, ids=str)
def test_cpu_outer_products_match_the_reference(rng, monkeypatch, shape, dtype, block):
    """The weight gradient on the outer products against the reference, and a NaN in x and an Inf in
    grad_y reaching exactly the column and the row of the gradient they belong to."""
    n, vectors, cout, h, w = shape
    cin = vectors * numba_dsconv.cpu._simd.lanes_for(dtype)
    monkeypatch.setattr(numba_dsconv.cpu._blas, "REGISTER_BLOCKS", True)  # whatever this machine's BLAS
    assert numba_dsconv.cpu._outer.block_for(cout, cin, dtype) == block
    monkeypatch.setattr(numba_dsconv.cpu._outer, "SEGMENT_BYTES", 2048)  # several segments per image
    x = random_array(rng, (n, cin, h, w), dtype)
    grad_y = random_array(rng, (n, cout, h, w), dtype)
    expected = reference.pointwise_conv2d_grad_weight(grad_y, x, (cout, cin, 1, 1))
    assert_close(numba_dsconv.cpu.pointwise_conv2d_grad_weight(grad_y, x), expected, dtype)
    x[n - 1, 5, h - 1, w - 1] = np.nan
    grad_y[0, 2, h // 2, 3] = np.inf
    dw = numba_dsconv.cpu.pointwise_conv2d_grad_weight(grad_y, x)[:, :, 0, 0]
    expected = np.zeros(dw.shape, bool)
    expected[:, 5] = True
    expected[2, :] = True
    np.testing.assert_array_equal(~np.isfinite(dw), expected)


def test_cpu_outer_products_do_not_depend_on_the_thread_count(rng, monkeypatch):
    monkeypatch.setattr(numba_dsconv.cpu._blas, "REGISTER_BLOCKS", True)
    x = random_array(rng, (3, 32, 9, 13), np.float64)
    grad_y = random_array(rng, (3, 8, 9, 13), np.float64)
    assert numba_dsconv.cpu._outer.block_for(8, 32, np.float64) is not None
    assert_same_with_one_thread(lambda: (numba_dsconv.cpu.pointwise_conv2d_grad_weight(grad_y, x),))


# (N, Cin, Cout, H, W) whose forward and input gradient run on the broadcast products (``cpu._broadcast``),
# with the register block the forward takes: images a whole number of blocks wide, one block wide, and with
# an overlapped last block; a batch of one; tall blocks for pixels that wide ones would mostly overlap.
BROADCAST_CASES = [
    ((2, 12, 8, 8, 8), np.float32, (4, 4)),
    ((1, 8, 12, 9, 11), np.float32, (4, 4)),
    ((3, 16, 8, 5, 7), np.float32, (8, 2)),
    ((2, 24, 16, 14, 14), np.float32, (8, 2)),
    ((2, 12, 8, 4, 8), np.float64, (4, 4)),
    ((1, 20, 12, 7, 9), np.float64, (4, 4)),
    ((3, 8, 16, 3, 7), np.float64, (8, 2)),
]


@pytest.mark.parametrize("shape, dtype, block", BROADCAST_CASES, ids=str)
def test_cpu_broadcast_products_match_the_reference(rng, monkeypatch, shape, dtype, block):
    """Forward and input gradient on the broadcast products against the reference, and a NaN in x and an
    Inf in grad_y reaching exactly the pixel and image they belong to, through every row."""
    n, cin, cout, h, w = shape
    monkeypatch.setattr(numba_dsconv.cpu._blas, "REGISTER_BLOCKS", True)  # whatever this machine's BLAS
    broadcast = numba_dsconv.cpu._broadcast
    assert broadcast.block_for(cout, h * w, dtype) == block
    assert broadcast.block_for(cin, h * w, dtype) is not None
    x = random_array(rng, (n, cin, h, w), dtype)
    weight = random_array(rng, (cout, cin, 1, 1), dtype)
    grad_y = random_array(rng, (n, cout, h, w), dtype)
    assert_close(numba_dsconv.cpu.pointwise_conv2d(x, weight), reference.pointwise_conv2d(x, weight), dtype)
    assert_close(numba_dsconv.cpu.pointwise_conv2d_grad_input(grad_y, weight),
                 reference.pointwise_conv2d_grad_input(grad_y, weight), dtype)
    x[n - 1, cin - 1, h - 1, w - 1] = np.nan  # in the overlapped last block, if any
    grad_y[0, 1, 0, 2] = np.inf
    expected = np.zeros((n, 1, h, w), bool)
    expected[n - 1, 0, h - 1, w - 1] = True
    y = numba_dsconv.cpu.pointwise_conv2d(x, weight)
    np.testing.assert_array_equal(np.isnan(y), np.broadcast_to(expected, y.shape))
    expected[:] = False
    expected[0, 0, 0, 2] = True
    gx = numba_dsconv.cpu.pointwise_conv2d_grad_input(grad_y, weight)
    np.testing.assert_array_equal(~np.isfinite(gx), np.broadcast_to(expected, gx.shape))


def test_cpu_broadcast_products_do_not_depend_on_the_thread_count(rng, monkeypatch):
    monkeypatch.setattr(numba_dsconv.cpu._blas, "REGISTER_BLOCKS", True)
    x = random_array(rng, (3, 16, 9, 13), np.float64)
    weight = random_array(rng, (8, 16, 1, 1), np.float64)
    grad_y = random_array(rng, (3, 8, 9, 13), np.float64)
    assert numba_dsconv.cpu._broadcast.block_for(8, 9 * 13, np.float64) is not None

    def run():
        cpu = numba_dsconv.cpu
        return cpu.pointwise_conv2d(x, weight), cpu.pointwise_conv2d_grad_input(grad_y, weight)

    assert_same_with_one_thread(run)


@pytest.mark.parametrize("core, blocks", [("haswell", True), ("zen", True), ("skylakex", False), (None, True)])
def test_register_blocks_only_where_the_blas_has_no_avx512_kernels(monkeypatch, core, blocks):
    """On a CPU with AVX-512 the broadcast products and the outer products' narrow panels follow the BLAS's
    kernels (None: not an OpenBLAS that says); the outer products' widest blocks run whatever the BLAS.
    Only the choice is asked for here: no kernel compiles with the width set."""
    blas = numba_dsconv.cpu._blas
    monkeypatch.setattr(numba_dsconv.cpu._simd, "VECTOR_BYTES", 64)
    monkeypatch.setattr(blas, "core", lambda: core)
    assert blas.register_blocks() is blocks
    assert (numba_dsconv.cpu._broadcast.block_for(8, 64, np.float32) is not None) is blocks
    assert (numba_dsconv.cpu._outer.block_for(8, 32, np.float32) == (8, 2)) is blocks
    assert numba_dsconv.cpu._outer.block_for(8, 64, np.float32) == (4, 4)
    monkeypatch.setattr(blas, "REGISTER_BLOCKS", not blocks)
    assert blas.register_blocks() is (not blocks)


@pytest.mark.parametrize("core", ["haswell", "zen", None])
def test_no_register_blocks_without_avx512(monkeypatch, core):
    """With AVX2's 16 registers the blocks' 16 sums do not fit: every product runs on BLAS unless forced."""
    blas = numba_dsconv.cpu._blas
    monkeypatch.setattr(numba_dsconv.cpu._simd, "VECTOR_BYTES", 32)
    monkeypatch.setattr(blas, "core", lambda: core)
    assert blas.register_blocks() is False
    assert numba_dsconv.cpu._broadcast.block_for(8, 64, np.float32) is None
    assert numba_dsconv.cpu._outer.block_for(8, 64, np.float32) is None
    monkeypatch.setattr(blas, "REGISTER_BLOCKS", True)
    assert numba_dsconv.cpu._outer.block_for(8, 32, np.float32) == (4, 4)


def test_vector_width_follows_the_cpu_numba_compiles_for():
    simd = numba_dsconv.cpu._simd
    features = numba.config.CPU_FEATURES or numba.core.codegen.get_host_cpu_features()
    assert simd.VECTOR_BYTES == (64 if "+avx512f" in features.split(",") else 32)
    assert simd.lanes_for(np.float32) == simd.VECTOR_BYTES // 4


def test_blas_core_is_read_from_the_blas():
    core = numba_dsconv.cpu._blas.core()
    assert core is None or (isinstance(core, str) and core == core.lower() and core)


@pytest.mark.parametrize("per_image", [False, True], ids=["batched-matmul", "per-image-threads"])
def test_pointwise_results_do_not_depend_on_the_thread_count(rng, monkeypatch, per_image):
    monkeypatch.setattr(numba_dsconv.cpu.pointwise, "PER_IMAGE_PRODUCTS", per_image)
    x = random_array(rng, (11, 6, 5, 4), np.float32)
    weight = random_array(rng, (7, 6, 1, 1), np.float32)
    grad_y = random_array(rng, (11, 7, 5, 4), np.float32)

    def run():
        cpu = numba_dsconv.cpu
        return (
            cpu.pointwise_conv2d(x, weight),
            cpu.pointwise_conv2d_grad_input(grad_y, weight),
            cpu.pointwise_conv2d_grad_weight(grad_y, x),
        )

    assert_same_with_one_thread(run)


@pytest.mark.parametrize("blas_threads", ["1", "2"])
def test_pointwise_chooses_per_image_products_only_for_a_single_threaded_blas(blas_threads):
    """In a fresh process (OpenBLAS reads its thread count when it loads)."""
    code = (
        "from numba_dsconv.cpu import _blas, pointwise; "
        "print(_blas.threads(), pointwise._per_image())"
    )
    env = os.environ | {"OPENBLAS_NUM_THREADS": blas_threads}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    threads, per_image = out.split()
    if threads == "None":
        pytest.skip("SciPy's BLAS here is not an OpenBLAS whose thread count can be read: the batched way is used")
    assert (threads, per_image) == (blas_threads, str(blas_threads == "1"))
