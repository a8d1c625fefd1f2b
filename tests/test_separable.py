"""The separable convolution (depthwise then pointwise) against the references and the separate kernels."""

import numpy as np
import pytest
from conftest import (
    DTYPES,
    assert_close,
    assert_same_with_one_thread,
    numeric_gradient,
    random_array,
    read_only_copy,
    relative_error,
    strided_copy,
)
from hypothesis import HealthCheck, given, settings
from test_depthwise import GRID, _case_id, geometries

import numba_dsconv.cpu
from numba_dsconv import reference
from numba_dsconv.cpu import pointwise, separable

# Every third depthwise grid case (all strides, dilations and kernel shapes still appear), plus shapes that
# make several bands of several rows, and multiplier 16 (the stem's).
CASES = GRID[::3] + [
    (2, 5, 1, 23, 17, (3, 3), 1, 1, 1),
    (3, 4, 2, 19, 21, (5, 3), 2, 2, "same"),
    (1, 2, 16, 9, 9, (3, 3), 1, 1, 1),
]


def _make(rng, case, dtype, features=None):
    """x, depthwise weight, pointwise weight (F, C*M, 1, 1), both biases and the geometry of a case."""
    n, c, m, h, w, k, s, d, p = case
    features = features or 1 + (c * m + h) % 5
    x = random_array(rng, (n, c, h, w), dtype)
    dw = random_array(rng, (c * m, 1) + k, dtype)
    pw = random_array(rng, (features, c * m, 1, 1), dtype)
    db = random_array(rng, (c * m,), dtype)
    pb = random_array(rng, (features,), dtype)
    return x, dw, pw, db, pb, dict(stride=s, padding=p, dilation=d)


def _reference(x, dw, pw, db, pb, grad_y, opts):
    """Output and the five gradients from the scipy references, composed."""
    h = reference.depthwise_conv2d(x, dw, db, **opts)
    y = reference.pointwise_conv2d(h, pw, pb)
    if grad_y is None:
        return y, None
    dh = reference.pointwise_conv2d_grad_input(grad_y, pw)
    grads = (
        reference.depthwise_conv2d_grad_input(dh, dw, x.shape, **opts),
        reference.depthwise_conv2d_grad_weight(dh, x, dw.shape, **opts),
        reference.conv2d_grad_bias(dh),
        reference.pointwise_conv2d_grad_weight(grad_y, h, pw.shape),
        reference.conv2d_grad_bias(grad_y),
    )
    return y, grads


def _composed(backend, x, dw, pw, db, pb, grad_y, opts):
    """Output and the five gradients from the backend's separate kernels."""
    h = backend.depthwise_conv2d(x, dw, db, **opts)
    dh = backend.pointwise_conv2d_grad_input(grad_y, pw)
    return backend.pointwise_conv2d(h, pw, pb), (
        backend.depthwise_conv2d_grad_input(dh, dw, x.shape, **opts),
        backend.depthwise_conv2d_grad_weight(dh, x, dw.shape, **opts),
        backend.conv2d_grad_bias(dh),
        backend.pointwise_conv2d_grad_weight(grad_y, h, pw.shape),
        backend.conv2d_grad_bias(grad_y),
    )


def _assert_matches_reference(backend, rng, case, dtype, features=None):
    x, dw, pw, db, pb, opts = _make(rng, case, dtype, features)
    y = backend.separable_conv2d(x, dw, pw, db, pb, **opts)
    grad_y = random_array(rng, y.shape, dtype)
    y_ref, grads_ref = _reference(x, dw, pw, db, pb, grad_y, opts)
    assert_close(y, y_ref, dtype)
    grads = backend.separable_conv2d_backward(grad_y, x, dw, pw, db, **opts)
    assert isinstance(grads, numba_dsconv.SeparableGrads)
    for name, actual, expected in zip(grads._fields, grads, grads_ref, strict=True):
        assert actual.shape == expected.shape, name
        assert_close(actual, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_separable_matches_reference(backend, rng, case, dtype):
    _assert_matches_reference(backend, rng, case, dtype)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=geometries())
def test_separable_random_geometries_match_reference(backend, drawn):
    case, dtype = drawn
    _assert_matches_reference(backend, np.random.default_rng(11), case, dtype)


def test_separable_depthwise_bias_gradient_of_cancelling_terms(backend):
    """A draw that hypothesis found: the depthwise bias gradient comes to 7.5e-3 from terms near 5 of both
    signs. Summing the float32 intermediate gradient left a relative error of 2.9e-5 on the GPU; it is
    ``pointwise_weight.T @ grad_pointwise_bias`` in float64 on every backend."""
    case = (1, 3, 4, 8, 10, (1, 3), (2, 2), (1, 3), "valid")
    _assert_matches_reference(backend, np.random.default_rng(11), case, np.float32)


@pytest.mark.parametrize("case", [CASES[4], CASES[-2]], ids=_case_id)
def test_separable_equals_the_separate_kernels(backend, rng, case):
    """Against the backend's own kernels, composed: float64 agreement to rounding, every output."""
    x, dw, pw, db, pb, opts = _make(rng, case, np.float64)
    y = backend.separable_conv2d(x, dw, pw, db, pb, **opts)
    grad_y = random_array(rng, y.shape, np.float64)
    y_sep, grads_sep = _composed(backend, x, dw, pw, db, pb, grad_y, opts)
    assert relative_error(y, y_sep) < 1e-14
    h = backend.depthwise_conv2d(x, dw, db, **opts)
    for kept in (None, h):  # recomputed, or kept from the forward pass
        grads = backend.separable_conv2d_backward(grad_y, x, dw, pw, db, depthwise_output=kept, **opts)
        for actual, expected in zip(grads, grads_sep, strict=True):
            assert relative_error(actual, expected) < 1e-14


def test_separable_without_biases_and_with_2d_pointwise_weight(backend, rng):
    x, dw, pw, db, pb, opts = _make(rng, CASES[7], np.float64)
    zero_db, zero_pb = np.zeros_like(db), np.zeros_like(pb)
    np.testing.assert_array_equal(
        backend.separable_conv2d(x, dw, pw, **opts), backend.separable_conv2d(x, dw, pw, zero_db, zero_pb, **opts)
    )
    pw2 = pw.reshape(pw.shape[:2])
    y = backend.separable_conv2d(x, dw, pw2, db, pb, **opts)
    np.testing.assert_array_equal(y, backend.separable_conv2d(x, dw, pw, db, pb, **opts))
    grads = backend.separable_conv2d_backward(np.ones_like(y), x, dw, pw2, db, **opts)
    assert grads.grad_pointwise_weight.shape == pw2.shape
    without = backend.separable_conv2d_backward(np.ones_like(y), x, dw, pw2, db, need_input_grad=False, **opts)
    assert without.grad_input is None
    for a, b in zip(grads[1:], without[1:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_separable_gradients_by_central_differences(backend, rng):
    case = (2, 2, 2, 7, 6, (3, 2), (2, 1), (1, 2), "same")
    x, dw, pw, db, pb, opts = _make(rng, case, np.float64, features=3)
    y = backend.separable_conv2d(x, dw, pw, db, pb, **opts)
    grad_y = random_array(rng, y.shape, np.float64)
    grads = backend.separable_conv2d_backward(grad_y, x, dw, pw, db, **opts)
    args = [x, dw, db, pw, pb]  # in the order of the gradients

    def loss_of(position):
        def loss(value):
            values = list(args)
            values[position] = value
            x_, dw_, db_, pw_, pb_ = values
            return float(np.sum(backend.separable_conv2d(x_, dw_, pw_, db_, pb_, **opts) * grad_y))

        return loss

    for position, grad in enumerate(grads):
        assert relative_error(grad, numeric_gradient(args[position], loss_of(position))) < 1e-7, grads._fields[position]


def test_separable_adjoint_identity(backend, rng):
    """<separable(x), g> == <x, grad_input(g)> without biases: the input gradient is the exact transpose."""
    x, dw, pw, _, _, opts = _make(rng, (2, 3, 2, 11, 9, (3, 3), 2, 2, ((1, 2), (0, 3))), np.float64)
    y = backend.separable_conv2d(x, dw, pw, **opts)
    g = random_array(rng, y.shape, np.float64)
    lhs = np.vdot(y, g)
    rhs = np.vdot(x, backend.separable_conv2d_backward(g, x, dw, pw, **opts).grad_input)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case",
    [(2, 3, 1, 9, 10, (3, 3), 1, 1, 1), (2, 2, 2, 9, 11, (3, 3), 2, 2, "same"), (1, 2, 1, 8, 7, (5, 5), 1, 1, 2)],
    ids=_case_id,
)
@pytest.mark.parametrize("where", ["first column", "last column"])
def test_separable_nan_and_inf_reach_what_the_separate_kernels_reach(backend, rng, case, dtype, value, where):
    """A non-finite input pixel or output-gradient pixel at a row's end (where the fused bands' flat loops
    compute past the row) reaches exactly the outputs and gradients that it reaches through the separate
    kernels, themselves tested against the definition."""
    x, dw, pw, db, pb, opts = _make(rng, case, dtype, features=3)
    dw, pw = np.abs(dw) + 0.5, np.abs(pw) + 0.5  # positive weights: an Inf never meets -Inf
    y = backend.separable_conv2d(x, dw, pw, db, pb, **opts)
    # Poison the first or last column that some output reads (with stride > 1 not every pixel is read).
    h_shape = (1, dw.shape[0]) + y.shape[2:]
    one_image = (1,) + x.shape[1:]
    reads = reference.depthwise_conv2d_grad_input(np.ones(h_shape), np.ones(dw.shape), one_image, **opts)[0, -1]
    rows, cols = np.nonzero(reads)
    pick = np.argmin(cols) if where == "first column" else np.argmax(cols)
    x[-1, -1, rows[pick], cols[pick]] = value
    y = backend.separable_conv2d(x, dw, pw, db, pb, **opts)
    grad_y = np.abs(random_array(rng, y.shape, dtype))
    grad_y[0, 1, y.shape[2] // 2, 0 if where == "first column" else -1] = value
    y_sep, grads_sep = _composed(backend, x, dw, pw, db, pb, grad_y, opts)
    assert not np.isfinite(y_sep).all()
    np.testing.assert_array_equal(~np.isfinite(y), ~np.isfinite(y_sep))
    for name, actual, expected in zip(numba_dsconv.SeparableGrads._fields,
                                      backend.separable_conv2d_backward(grad_y, x, dw, pw, db, **opts), grads_sep,
                                      strict=True):
        np.testing.assert_array_equal(~np.isfinite(actual), ~np.isfinite(expected), err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_separable_non_contiguous_and_read_only_inputs(backend, rng, dtype):
    x, dw, pw, db, pb, opts = _make(rng, (2, 3, 2, 9, 8, (3, 3), 2, 1, "same"), dtype)
    expected_y = backend.separable_conv2d(x, dw, pw, db, pb, **opts)
    grad_y = random_array(rng, expected_y.shape, dtype)
    expected = backend.separable_conv2d_backward(grad_y, x, dw, pw, db, **opts)

    for make in (strided_copy, np.asfortranarray, read_only_copy):
        xv, dwv, pwv, dbv, pbv, gv = (make(a) for a in (x, dw, pw, db, pb, grad_y))
        np.testing.assert_array_equal(backend.separable_conv2d(xv, dwv, pwv, dbv, pbv, **opts), expected_y)
        for a, b in zip(backend.separable_conv2d_backward(gv, xv, dwv, pwv, dbv, **opts), expected, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(xv, x)  # inputs untouched
        np.testing.assert_array_equal(gv, grad_y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_fused_separable_at_a_real_size(rng, monkeypatch, dtype):
    """D3-like planes (57x56, 48 channels) with the default groups: several groups, a partial last one (the
    forward too: the last-level cache taken as unknown)."""
    monkeypatch.setattr(pointwise, "PER_IMAGE_PRODUCTS", True)
    monkeypatch.setattr(separable, "LAST_LEVEL_CACHE_BYTES", 0)
    case = (10, 48, 1, 57, 56, (3, 3), 1, 1, 1)
    problem = numba_dsconv.geometry.depthwise_problem((10, 48, 57, 56), (48, 1, 3, 3), 1, 1, 1)
    images = separable._images_per_group(problem, np.dtype(dtype).itemsize)
    assert 1 < images < 10 and 10 % images != 0
    _assert_matches_reference(numba_dsconv.cpu, rng, case, dtype, features=24)


def test_cpu_separable_forward_takes_the_whole_batch_where_the_cache_holds_it(monkeypatch):
    monkeypatch.setattr(pointwise, "PER_IMAGE_PRODUCTS", True)
    problem = numba_dsconv.geometry.depthwise_problem((10, 48, 57, 56), (48, 1, 3, 3), 1, 1, 1)
    whole = 10 * 48 * 57 * 56 * 4
    monkeypatch.setattr(separable, "LAST_LEVEL_CACHE_BYTES", 2 * whole)
    assert separable._images_per_group(problem, 4, whole_when_cached=True) == 10
    assert separable._images_per_group(problem, 4) < 10  # the backward keeps its groups
    monkeypatch.setattr(separable, "LAST_LEVEL_CACHE_BYTES", 2 * whole - 2)
    assert separable._images_per_group(problem, 4, whole_when_cached=True) < 10


def test_last_level_cache_size_from_sysfs(tmp_path):
    for index, (level, size) in enumerate([(1, "48K"), (2, "1024K"), (3, "32768K"), (1, "32K")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "level").write_text(f"{level}\n")
        (tmp_path / f"index{index}" / "size").write_text(f"{size}\n")
    assert separable.last_level_cache_bytes(str(tmp_path)) == 32 << 20
    (tmp_path / "index4").mkdir()
    (tmp_path / "index4" / "level").write_text("4\n")
    (tmp_path / "index4" / "size").write_text("1G\n")
    assert separable.last_level_cache_bytes(str(tmp_path)) == 1 << 30
    assert separable.last_level_cache_bytes(str(tmp_path / "missing")) == 0


@pytest.mark.parametrize("per_image", [False, True])
def test_separable_results_do_not_depend_on_the_thread_count(rng, monkeypatch, per_image):
    monkeypatch.setattr(pointwise, "PER_IMAGE_PRODUCTS", per_image)
    x, dw, pw, db, pb, opts = _make(rng, (5, 6, 2, 17, 15, (3, 3), 1, 2, "same"), np.float32, features=7)
    grad_y = random_array(rng, (5, 7, 17, 15), np.float32)
    assert_same_with_one_thread(
        lambda: (numba_dsconv.cpu.separable_conv2d(x, dw, pw, db, pb, **opts),)
        + tuple(numba_dsconv.cpu.separable_conv2d_backward(grad_y, x, dw, pw, db, **opts))
    )


f32, f64 = np.float32, np.float64
_X, _DW, _PW = np.ones((2, 3, 8, 8), f32), np.ones((6, 1, 3, 3), f32), np.ones((4, 6, 1, 1), f32)
REJECTED = [
    # (description, args, kwargs, exception, message pattern)
    ("int input", (_X.astype(np.int32), _DW, _PW), {}, TypeError, r"x has dtype int32"),
    ("mixed pointwise dtype", (_X, _DW, _PW.astype(f64)), {}, TypeError,
     r"pointwise_weight has dtype float64 but x has dtype float32"),
    ("mixed bias dtype", (_X, _DW, _PW, None, np.zeros(4, f64)), {}, TypeError, r"pointwise_bias has dtype float64"),
    ("depthwise channels", (_X, np.ones((4, 1, 3, 3), f32), _PW), {}, ValueError,
     r"depthwise_weight has shape \(4, 1, 3, 3\).*multiple of 3"),
    ("pointwise channels", (_X, _DW, np.ones((4, 3, 1, 1), f32)), {}, ValueError,
     r"pointwise_weight has shape \(4, 3, 1, 1\); expected \(Cout, 6, 1, 1\).*depthwise output's 6 channels"),
    ("pointwise not 1x1", (_X, _DW, np.ones((4, 6, 3, 3), f32)), {}, ValueError, r"pointwise_weight has shape"),
    ("depthwise bias", (_X, _DW, _PW, np.zeros(3, f32)), {}, ValueError,
     r"depthwise_bias has shape \(3,\); expected \(6,\)"),
    ("pointwise bias", (_X, _DW, _PW, None, np.zeros(6, f32)), {}, ValueError,
     r"pointwise_bias has shape \(6,\); expected \(4,\)"),
    ("rank 3 input", (_X[0], _DW, _PW), {}, ValueError, r"x has shape \(3, 8, 8\); expected 4 dimensions"),
    ("zero stride", (_X, _DW, _PW), {"stride": 0}, ValueError, r"stride must be >= 1"),
    ("kernel too large", (_X, _DW, _PW), {"dilation": 5}, ValueError, r"dilated kernel height 11"),
]


@pytest.mark.parametrize("args, kwargs, exc, pattern", [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_separable_rejects(backend, args, kwargs, exc, pattern):
    snapshot = [None if a is None else a.copy() for a in args]
    with pytest.raises(exc, match=pattern):
        backend.separable_conv2d(*args, **kwargs)
    if len(args) <= 4:  # the backward pass takes no pointwise bias
        with pytest.raises(exc, match=pattern):
            backend.separable_conv2d_backward(np.ones((2, 4, 8, 8), f32), *args, **kwargs)
    for before, after in zip(snapshot, args, strict=True):
        if before is not None:
            np.testing.assert_array_equal(before, after)


def test_separable_backward_rejects_a_bad_kept_depthwise_output(backend):
    grad_y = np.ones((2, 4, 8, 8), f32)
    with pytest.raises(ValueError, match=r"depthwise_output has shape \(2, 6, 8, 7\); expected \(2, 6, 8, 8\)"):
        backend.separable_conv2d_backward(grad_y, _X, _DW, _PW, padding=1, depthwise_output=np.ones((2, 6, 8, 7), f32))
    with pytest.raises(TypeError, match=r"depthwise_output has dtype float64 but x has dtype float32"):
        backend.separable_conv2d_backward(grad_y, _X, _DW, _PW, padding=1, depthwise_output=np.ones((2, 6, 8, 8)))


def test_separable_backward_rejects_a_bad_output_gradient(backend):
    with pytest.raises(ValueError, match=r"grad_y has shape \(2, 4, 8, 7\); expected \(2, 4, 8, 8\)"):
        backend.separable_conv2d_backward(np.ones((2, 4, 8, 7), f32), _X, _DW, _PW, padding=1)
    with pytest.raises(TypeError, match=r"grad_y has dtype float64 but x has dtype float32"):
        backend.separable_conv2d_backward(np.ones((2, 4, 8, 8), f64), _X, _DW, _PW, padding=1)
