"""Depthwise kernels against the scipy.signal references, gradients by finite differences and adjointness."""

import itertools

import numpy as np
import pytest
from conftest import (
    BACKENDS,
    DTYPES,
    assert_close,
    assert_same_with_one_thread,
    numeric_gradient,
    prepare_backend,
    random_array,
    read_only_copy,
    relative_error,
    strided_copy,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numba_dsconv.cpu
from numba_dsconv import geometry, reference


@pytest.fixture(params=["cpu-masked", *BACKENDS])
def backend(request, monkeypatch):
    """The conftest's backends, and "cpu-masked": the masked or phase copies for the problems that "cpu"
    runs in place."""
    return prepare_backend(request, monkeypatch)


PADDINGS = [0, 1, (2, 0), ((1, 2), (0, 3)), "same", "valid", ((0, 0), (2, 1))]
KERNELS = [(1, 1), (3, 3), (5, 5), (7, 7), (2, 3), (3, 1), (1, 4)]


def _grid():
    """Stride 1-3 x dilation 1-3 x every kernel; padding, multiplier, batch and image size rotate."""
    cases = []
    for i, (stride, dilation, kernel) in enumerate(itertools.product((1, 2, 3), (1, 2, 3), KERNELS)):
        padding = PADDINGS[i % len(PADDINGS)]
        multiplier = 1 + i % 4
        batch = 1 + i % 3
        channels = 1 + i % 3
        # Odd sizes that always leave room for the dilated kernel.
        height = dilation * (kernel[0] - 1) + 1 + 2 * (i % 5) + 1
        width = dilation * (kernel[1] - 1) + 1 + (i % 7)
        cases.append((batch, channels, multiplier, height, width, kernel, stride, dilation, padding))
    # Per-axis stride and dilation, 1x1 images where legal, large multiplier.
    cases += [
        (2, 3, 2, 13, 11, (3, 3), (1, 2), (2, 1), ((1, 0), (2, 2))),
        (1, 2, 1, 10, 15, (3, 5), (3, 1), (1, 3), "same"),
        (1, 4, 3, 1, 1, (1, 1), 1, 1, 0),
        (3, 2, 2, 1, 1, (3, 3), 2, 3, "same"),
        (1, 1, 4, 1, 1, (3, 3), 1, 1, 1),
        (2, 1, 16, 6, 6, (3, 3), 1, 1, 1),
    ]
    return cases


GRID = _grid()


def _case_id(case):
    n, c, m, h, w, k, s, d, p = case
    return f"n{n}c{c}m{m}-{h}x{w}-k{k[0]}x{k[1]}-s{s}-d{d}-p{p}".replace(" ", "")


def _make(rng, case, dtype):
    n, c, m, h, w, k, s, d, p = case
    x = random_array(rng, (n, c, h, w), dtype)
    weight = random_array(rng, (c * m, 1) + k, dtype)
    bias = random_array(rng, (c * m,), dtype)
    return x, weight, bias, dict(stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GRID, ids=_case_id)
def test_all_three_ops_match_reference(backend, rng, case, dtype):
    x, weight, bias, opts = _make(rng, case, dtype)
    y = backend.depthwise_conv2d(x, weight, bias, **opts)
    assert_close(y, reference.depthwise_conv2d(x, weight, bias, **opts), dtype)

    grad_y = random_array(rng, y.shape, dtype)
    dx = backend.depthwise_conv2d_grad_input(grad_y, weight, x.shape, **opts)
    assert_close(dx, reference.depthwise_conv2d_grad_input(grad_y, weight, x.shape, **opts), dtype)

    dw = backend.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, **opts)
    assert_close(dw, reference.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, **opts), dtype)


def test_without_bias_equals_zero_bias(backend, rng):
    x, weight, bias, opts = _make(rng, GRID[10], np.float64)
    np.testing.assert_array_equal(
        backend.depthwise_conv2d(x, weight, **opts), backend.depthwise_conv2d(x, weight, np.zeros_like(bias), **opts)
    )


@st.composite
def geometries(draw):
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pad = draw(
        st.one_of(
            st.sampled_from(["same", "valid"]),
            st.integers(0, 3),
            st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.tuples(st.integers(0, 3), st.integers(0, 3))),
        )
    )
    h, w = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    try:
        geometry.conv2d_geometry((h, w), (kh, kw), (sh, sw), pad, (dh, dw))
    except ValueError:
        h = h + dh * (kh - 1) + 6  # make the kernel fit whatever the padding
        w = w + dw * (kw - 1) + 6
    n, c, m = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(DTYPES))
    return (n, c, m, h, w, (kh, kw), (sh, sw), (dh, dw), pad), dtype


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=geometries())
def test_random_geometries_match_reference(backend, drawn):
    case, dtype = drawn
    _assert_three_ops_match_reference(backend, np.random.default_rng(7), case, dtype)


def _assert_three_ops_match_reference(backend, rng, case, dtype):
    x, weight, bias, opts = _make(rng, case, dtype)
    y = backend.depthwise_conv2d(x, weight, bias, **opts)
    assert_close(y, reference.depthwise_conv2d(x, weight, bias, **opts), dtype)
    grad_y = random_array(rng, y.shape, dtype)
    assert_close(
        backend.depthwise_conv2d_grad_input(grad_y, weight, x.shape, **opts),
        reference.depthwise_conv2d_grad_input(grad_y, weight, x.shape, **opts),
        dtype,
    )
    assert_close(
        backend.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, **opts),
        reference.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, **opts),
        dtype,
    )


# Few entries each (every entry costs two forward passes, and the GPU suite runs these in the simulator),
# yet each one a different geometry: "same" with an even kernel, 5x5 stride 2 with asymmetric padding,
# dilation 3 with stride 2 over a batch of two, stride = dilation = 3, per-axis stride and dilation.
FD_CASES = [
    (1, 2, 1, 7, 6, (2, 3), 1, 1, "same"),
    (1, 1, 3, 9, 7, (5, 5), 2, 1, (2, 0)),
    (2, 1, 1, 8, 6, (3, 1), 2, 3, "valid"),
    (1, 1, 2, 12, 8, (3, 3), 3, 3, 1),
    (1, 2, 2, 7, 8, (3, 2), (2, 1), (1, 2), "same"),
]


@pytest.mark.parametrize("case", FD_CASES, ids=_case_id)
def test_gradients_by_central_differences(backend, rng, case):
    """L = <depthwise_conv2d(x, w, b), g>; every partial derivative of L, in float64."""
    x, weight, bias, opts = _make(rng, case, np.float64)
    grad_y = random_array(rng, backend.depthwise_conv2d(x, weight, bias, **opts).shape, np.float64)

    def loss(x_, w_):
        return float(np.sum(backend.depthwise_conv2d(x_, w_, bias, **opts) * grad_y))

    dx = backend.depthwise_conv2d_grad_input(grad_y, weight, x.shape, **opts)
    dw = backend.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, **opts)
    assert relative_error(dx, numeric_gradient(x, lambda v: loss(v, weight))) < 1e-7
    assert relative_error(dw, numeric_gradient(weight, lambda v: loss(x, v))) < 1e-7


@pytest.mark.parametrize("case", GRID[::5], ids=_case_id)
def test_adjoint_identities(backend, rng, case):
    """<conv(x, w), g> == <x, grad_input(g, w)> == <w, grad_weight(g, x)> for the bias-free convolution."""
    x, weight, _, opts = _make(rng, case, np.float64)
    y = backend.depthwise_conv2d(x, weight, **opts)
    g = random_array(rng, y.shape, np.float64)
    lhs = np.vdot(y, g)
    via_input = np.vdot(x, backend.depthwise_conv2d_grad_input(g, weight, x.shape, **opts))
    via_weight = np.vdot(weight, backend.depthwise_conv2d_grad_weight(g, x, weight.shape, **opts))
    scale = np.linalg.norm(y) * np.linalg.norm(g)
    assert abs(lhs - via_input) <= 1e-12 * scale
    assert abs(lhs - via_weight) <= 1e-12 * scale


def opts_out_hw(case):
    n, c, m, h, w, k, s, d, p = case
    return geometry.conv2d_geometry((h, w), k, s, p, d).out_hw


def _touched(case, op, marked):
    """Which outputs of ``op`` read the marked entry, by the reference with all-ones operands."""
    n, c, m, h, w, k, s, d, p = case
    opts = dict(stride=s, padding=p, dilation=d)
    ones_w = np.ones((c * m, 1) + k)
    if op == "forward":
        return reference.depthwise_conv2d(marked, ones_w, **opts) > 0
    if op == "grad_input":
        return reference.depthwise_conv2d_grad_input(marked, ones_w, (n, c, h, w), **opts) > 0
    if op == "grad_weight_from_x":
        ones_gy = np.ones(reference.depthwise_conv2d(marked, ones_w, **opts).shape)
        return reference.depthwise_conv2d_grad_weight(ones_gy, marked, ones_w.shape, **opts) > 0
    if op == "grad_weight_from_grad_y":
        # dw[o, t] sums grad_y[o] times the *zero-padded* input: a marked grad_y entry reaches every tap of
        # its filter, padding or not (NaN * 0 is NaN), as in the formula and in every framework.
        touched = np.zeros((c * m, 1) + k, bool)
        touched[marked.sum(axis=(0, 2, 3)) > 0] = True
        return touched
    raise AssertionError(op)


@pytest.mark.parametrize("image", [0, -1])
@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case",
    [
        GRID[14],
        GRID[33],
        (3, 2, 2, 9, 10, (3, 3), 2, 2, "same"),
        (3, 1, 1, 5, 6, (3, 3), 1, 1, 1),
        (3, 3, 1, 5, 6, (3, 3), 1, 2, "same"),
        (2, 2, 3, 6, 5, (3, 3), 1, (1, 2), "same"),
        (3, 1, 1, 9, 10, (5, 5), 1, 1, 1),  # the CPU's grad-input as a mirrored forward correlation
        (2, 2, 2, 11, 12, (5, 3), 1, (1, 2), ((3, 1), (3, 1))),  # size kept, a rim of one to three rows and columns
        (3, 2, 2, 9, 10, (3, 3), 2, 1, 1),  # the CPU's strided rows read in place
        (3, 2, 1, 17, 17, (3, 3), 1, 1, 1),  # float32's row pairs, masked loads at both row ends
        (2, 2, 1, 13, 20, (3, 3), 1, 2, "same"),  # row pairs with dilation 2
    ],
    ids=_case_id,
)
def test_nan_and_inf_reach_exactly_the_outputs_they_touch(backend, rng, case, dtype, value, image):
    """A poisoned first or last image, in its last channel: neither stacked images nor the neighbouring
    planes of a channel run (which its out-of-plane taps read, with weight zero) may leak into each other."""
    x, weight, bias, opts = _make(rng, case, dtype)
    weight = np.abs(weight) + 0.5  # positive weights: an Inf input stays Inf, never meets -Inf
    # Poison an input pixel that some output reads (with stride > 1 not every pixel is read).
    n, c, m, h, w, k, s, d, p = case
    ones_w = np.ones((c * m, 1) + k)
    reads = reference.depthwise_conv2d_grad_input(np.ones((n, c * m) + opts_out_hw(case)), ones_w, x.shape, **opts)
    rows, cols = np.nonzero(reads[image, 0])
    centre = (image % n, c - 1, rows[0], cols[0])  # the first pixel read: next to the top edge
    x[centre] = value
    x_marked = np.zeros(x.shape)
    x_marked[centre] = 1
    y = backend.depthwise_conv2d(x, weight, bias, **opts)
    touched = _touched(case, "forward", x_marked)
    assert touched.any()
    np.testing.assert_array_equal(~np.isfinite(y), touched)
    if np.isnan(value):
        assert np.isnan(y[touched]).all()

    grad_y = random_array(rng, y.shape, dtype)
    grad_y[image, -1, 0, 0] = value
    gy_marked = np.zeros(y.shape)
    gy_marked[image, -1, 0, 0] = 1
    dx = backend.depthwise_conv2d_grad_input(grad_y, weight, x.shape, **opts)
    np.testing.assert_array_equal(~np.isfinite(dx), _touched(case, "grad_input", gy_marked))
    dw = backend.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, **opts)
    expected = _touched(case, "grad_weight_from_x", x_marked) | _touched(case, "grad_weight_from_grad_y", gy_marked)
    np.testing.assert_array_equal(~np.isfinite(dw), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_and_read_only_inputs(backend, rng, dtype):
    case = (2, 3, 2, 9, 8, (3, 3), 2, 2, "same")
    x, weight, bias, opts = _make(rng, case, dtype)
    expected_y = backend.depthwise_conv2d(x, weight, bias, **opts)
    grad_y = random_array(rng, expected_y.shape, dtype)
    expected_dx = backend.depthwise_conv2d_grad_input(grad_y, weight, x.shape, **opts)
    expected_dw = backend.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, **opts)

    for make in (strided_copy, np.asfortranarray, read_only_copy):
        xv, wv, bv, gv = make(x), make(weight), make(bias), make(grad_y)
        np.testing.assert_array_equal(backend.depthwise_conv2d(xv, wv, bv, **opts), expected_y)
        np.testing.assert_array_equal(backend.depthwise_conv2d_grad_input(gv, wv, x.shape, **opts), expected_dx)
        np.testing.assert_array_equal(backend.depthwise_conv2d_grad_weight(gv, xv, weight.shape, **opts), expected_dw)
        for before, after in ((x, xv), (weight, wv), (bias, bv), (grad_y, gv)):
            np.testing.assert_array_equal(before, after)  # inputs untouched


def test_results_are_identical_run_to_run(backend, rng):
    case = (3, 5, 2, 15, 14, (3, 3), 1, 2, "same")
    x, weight, bias, opts = _make(rng, case, np.float32)
    y = backend.depthwise_conv2d(x, weight, bias, **opts)
    grad_y = random_array(rng, y.shape, np.float32)
    first = (
        y,
        backend.depthwise_conv2d_grad_input(grad_y, weight, x.shape, **opts),
        backend.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, **opts),
    )
    for _ in range(2):
        again = (
            backend.depthwise_conv2d(x, weight, bias, **opts),
            backend.depthwise_conv2d_grad_input(grad_y, weight, x.shape, **opts),
            backend.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, **opts),
        )
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_channel_runs_at_a_real_size_match_the_reference(rng, dtype):
    """128 channels of 7x7, dilation 2 (the trainer's last block): the CPU's default blocking, several planes
    per block and many blocks, which the small inputs of the other tests never reach."""
    _assert_three_ops_match_reference(numba_dsconv.cpu, rng, (6, 128, 1, 7, 7, (3, 3), 1, 2, "same"), dtype)


@pytest.mark.parametrize("multiplier", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_masked_copies_at_a_real_size_match_the_reference(rng, monkeypatch, dtype, multiplier):
    """48x47 planes (more than one 2048-element band per plane), dilation 2, with the CPU's default choice
    of algorithm and grouping: masked copies, which the small planes of the other tests reach only when a
    backend sends them there (float32's row pairs switched off for multiplier 1)."""
    monkeypatch.setattr(numba_dsconv.cpu._rows, "DTYPES", ())
    problem = geometry.depthwise_problem((3, 2, 48, 47), (2 * multiplier, 1, 3, 3), 1, "same", 2)
    assert numba_dsconv.cpu._masked.applies(problem) and not numba_dsconv.cpu._inplace.applies(problem)
    _assert_three_ops_match_reference(numba_dsconv.cpu, rng, (3, 2, multiplier, 48, 47, (3, 3), 1, 2, "same"), dtype)


@pytest.mark.parametrize(
    "case",
    [
        (2, 3, 1, 60, 57, (3, 3), 1, 1, "same"),
        (2, 2, 3, 56, 61, (3, 3), 1, 2, "same"),
        (2, 2, 1, 58, 56, (7, 5), 1, (1, 2), ((2, 4), (5, 3))),
    ],
    ids=["3x3", "dilated-multiplier-3", "7x5-asymmetric"],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_planes_in_place_at_a_real_size_match_the_reference(rng, monkeypatch, dtype, case):
    """Planes of 56x56 and more in place (``cpu._inplace``), whose interior loops run over several
    2048-element bands there, with rims of one to five rows and columns: the first case by the CPU's
    default choice, the others (a rim's share above the default's) sent there."""
    n, c, m, h, w, k, s, d, p = case
    problem = geometry.depthwise_problem((n, c, h, w), (c * m, 1) + k, s, p, d)
    monkeypatch.setattr(numba_dsconv.cpu._rows, "DTYPES", ())  # float32's 3x3 forwards would run as row pairs
    if case[3:5] == (60, 57):
        assert numba_dsconv.cpu._inplace.applies(problem)
    monkeypatch.setattr(numba_dsconv.cpu._inplace, "MAX_RIM_SHARE", 1)
    assert numba_dsconv.cpu._inplace.applies(problem)
    _assert_three_ops_match_reference(numba_dsconv.cpu, rng, case, dtype)


@pytest.mark.parametrize(
    "case",
    [
        (2, 3, 1, 56, 56, (3, 3), 1, 1, 1),
        (2, 2, 1, 7, 28, (3, 3), 1, 2, "same"),
        (1, 2, 1, 5, 16, (3, 3), 1, 1, 1),
        (2, 2, 1, 9, 33, (3, 3), 1, 3, 3),
        (1, 3, 1, 1, 20, (3, 3), 1, 1, 1),
        (2, 1, 1, 6, 50, (3, 3), 1, (2, 1), "same"),
        (1, 2, 1, 10, 40, (3, 3), 1, (1, 4), "same"),
        (1, 2, 1, 3, 80, (3, 3), 1, 2, 2),
        (3, 33, 1, 9, 18, (3, 3), 1, 1, 1),
        (2, 2, 1, 9, 12, (3, 3), 1, 1, 1),
        (1, 2, 1, 11, 14, (3, 3), 1, 2, "same"),
        (2, 1, 1, 10, 32, (3, 3), 1, (3, 1), "same"),
        (1, 2, 1, 7, 24, (3, 3), 1, (1, 4), "same"),
        (1, 1, 1, 2, 13, (3, 3), 1, 3, 3),
        (2, 1, 1, 70, 16, (3, 3), 1, 1, 1),
        (3, 17, 1, 6, 7, (3, 3), 1, 1, 1),
        (2, 3, 1, 9, 7, (3, 3), 1, (2, 1), "same"),
        (2, 2, 1, 30, 7, (3, 3), 1, 1, 1),
    ],
    ids=[
        "56x56", "dilation-2-partial-vector", "one-float32-vector", "dilation-3-odd-rows-partial-vector",
        "one-row", "dilation-2x1", "dilation-1x4", "widest-float64-rows-dilation-2-rows-unpaired",
        "several-images-per-weight-sum", "chain-partial-vector", "chains-of-unequal-length",
        "chains-dilation-3x1-whole-vectors", "chains-dilation-1x4", "chains-shorter-than-the-dilation",
        "tall-chains-flushed-mid-chain", "7-wide-packed-in-float32-several-images",
        "7-wide-packed-odd-channels-dilation-2x1", "7-wide-packed-flushed-mid-chain",
    ],  # fmt: skip
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_row_pairs_match_the_reference(rng, monkeypatch, dtype, case):
    """3x3 stride-1 forwards, input gradients and weight gradients as row pairs or chains (``cpu._rows``),
    small planes sent there too: a real-sized plane, rows of exactly one vector, rows whose last vector is
    partial (its lanes past the row's end masked), rows of a whole number of vectors, dilations 1 to 4 (each
    its own lane shifts), per-axis dilation, a single row whose neighbours are both padding, an odd number
    of rows (the last row of a pair without its partner), and several images summed in one task. Rows of
    up to two vectors (32 float32, 16 float64 columns) run as chains: one and two vectors, whole and
    partial, chains of unequal length (rows not a multiple of the dilation), chains of one row; float32 rows
    of 7 two planes to a vector, with an odd channel count (the last vector's second half unused). The weight
    gradient's vector sums go to float64 every few row pairs or chain rows, so that every case also flushes
    them mid-plane (and the 70-row planes mid-chain)."""
    n, c, m, h, w, k, s, d, p = case
    monkeypatch.setattr(numba_dsconv.cpu._rows, "FLUSH_PRODUCTS", 24)
    monkeypatch.setattr(numba_dsconv.cpu._runs, "RUN_MAX_AREA", 0)  # planes up to 16x16 go there first
    problem = geometry.depthwise_problem((n, c, h, w), (c * m, 1) + k, s, p, d)
    rows = numba_dsconv.cpu._rows
    lanes = numba_dsconv.cpu._simd.lanes_for(dtype)
    # Lane shifts of at most half a vector: AVX2's float64 vectors (4 lanes) leave dilations 3 and 4 to
    # the other kernels, which the reference checks below then cover.
    assert rows.applies(problem, dtype) == (2 * problem.geometry.dilation[1] <= lanes)
    assert not numba_dsconv.cpu._runs.applies(problem)
    # Float32 rows of 7 (under half a 16-lane vector, with the kernel's reach) go two planes to a vector.
    assert rows.packs(problem, dtype) == (case[4] == 7 and np.dtype(dtype) == np.float32 and lanes == 16)
    if case[1] == 33:
        assert rows.grad_weight_args(problem, dtype)[0][4] == n  # images per task
    assert numba_dsconv.cpu.depthwise._mirrored_problem(problem) == problem  # the input gradient's route
    _assert_three_ops_match_reference(numba_dsconv.cpu, rng, case, dtype)


@pytest.mark.parametrize(("dtype", "widest"), [("float32", 160), ("float64", 80)])
def test_cpu_row_pairs_take_rows_up_to_their_byte_limit(dtype, widest):
    """Rows of three quarters of a vector to MAX_ROW_BYTES (640 bytes) go to the row pairs or chains; shorter
    and longer ones and wider dilations do not."""
    rows = numba_dsconv.cpu._rows

    def problem(width, dilation=1):
        return geometry.depthwise_problem((1, 1, 20, width), (1, 1, 3, 3), 1, dilation, dilation)

    assert rows.applies(problem(widest), dtype) and not rows.applies(problem(widest + 1), dtype)
    # Three quarters of a vector: 12 float32, 6 float64 columns with AVX-512; 6 and 3 with AVX2.
    narrowest = 3 * numba_dsconv.cpu._simd.lanes_for(dtype) // 4
    assert rows.applies(problem(narrowest), dtype) and not rows.applies(problem(narrowest - 1), dtype)
    widest_dilation = min(rows.MAX_DILATION, numba_dsconv.cpu._simd.lanes_for(dtype) // 2)
    assert rows.applies(problem(widest, widest_dilation), dtype)
    assert not rows.applies(problem(widest, widest_dilation + 1), dtype)


@pytest.mark.parametrize(
    "case",
    [
        (2, 3, 1, 112, 112, (3, 3), 2, 1, 1),
        (2, 2, 2, 57, 61, (3, 3), (3, 2), (2, 1), ((2, 0), (1, 2))),
        (3, 2, 1, 20, 9, (3, 3), (1, 2), (1, 1), "same"),
        (2, 1, 2, 11, 10, (3, 3), 2, (2, 1), "valid"),
        (1, 2, 3, 10, 7, (3, 3), 2, 1, ((4, 3), (5, 4))),
        (1, 2, 1, 9, 8, (3, 3), 2, 1, ((3, 4), (4, 5))),
        (1, 2, 1, 5, 35, (3, 3), 2, 1, 1),
        (2, 1, 2, 6, 47, (3, 3), (1, 2), 1, 1),
        (1, 3, 1, 7, 40, (3, 3), 2, (2, 1), "valid"),
        (2, 2, 2, 9, 28, (3, 3), 2, 1, 1),
        (1, 2, 1, 8, 14, (3, 3), 2, 1, 1),
    ],
    ids=[
        "3x3-stride-2", "stride-3x2-dilation-2x1", "stride-1x2-odd-width", "valid-odd-rows-unread",
        "padding-past-the-kernel-odd", "padding-past-the-kernel-even", "one-float32-vector-of-columns",
        "overlapping-last-vector", "valid-vectors-from-column-0", "half-vectors-float32",
        "half-vectors-float64",
    ],  # fmt: skip
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_strided_rows_match_the_reference(rng, monkeypatch, dtype, case):
    """3x3 kernels at horizontal stride 2 read and write the planes in place (``cpu._strided``: forward,
    input gradient, weight gradient): a real-sized plane, per-axis stride and dilation with a multiplier, an
    odd width whose last column only one tap reads, no padding, and paddings of odd and even widths so wide
    that whole output rows and columns read only zeros and input rows go without any output. (The forwards
    that split columns would take go to the strided rows here.)"""
    n, c, m, h, w, k, s, d, p = case
    monkeypatch.setattr(numba_dsconv.cpu._strided, "SPLIT_DTYPES", ())
    problem = geometry.depthwise_problem((n, c, h, w), (c * m, 1) + k, s, p, d)
    assert numba_dsconv.cpu._strided.applies(problem)
    _assert_three_ops_match_reference(numba_dsconv.cpu, rng, case, dtype)


@pytest.mark.parametrize(
    "case",
    [
        (2, 3, 1, 112, 112, (3, 3), 2, 1, 1),
        (1, 2, 1, 10, 10, (3, 3), 2, 1, ((0, 1), (0, 1))),
        (1, 2, 1, 7, 40, (3, 3), 2, 1, ((1, 0), (0, 0))),
        (2, 2, 1, 33, 65, (3, 3), 2, 1, 1),
        (1, 1, 1, 5, 31, (3, 3), 2, 1, ((0, 2), (1, 2))),
        (1, 3, 1, 1, 3, (3, 3), 2, 1, 1),
        (1, 2, 1, 3, 17, (3, 3), 2, 1, 0),
    ],
    ids=[
        "112x112", "padding-after-only", "no-padding-left-or-below", "odd-sizes-partial-vector",
        "padding-past-the-kernel", "one-row", "valid",
    ],  # fmt: skip
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_split_columns_match_the_reference(rng, dtype, case):
    """3x3 stride-2 forwards with split columns (``cpu._strided.split_forward_kernel``): a real-sized
    plane, a padding of zero or one at the top and left and of zero to two at the bottom and right, widths
    whose last output vector is partial and whose last input column is read by one tap or none, a single
    row (both of its neighbours padding). The gradients run on the strided rows."""
    n, c, m, h, w, k, s, d, p = case
    problem = geometry.depthwise_problem((n, c, h, w), (c * m, 1) + k, s, p, d)
    assert numba_dsconv.cpu._strided.split_applies(problem, dtype)
    _assert_three_ops_match_reference(numba_dsconv.cpu, rng, case, dtype)


@pytest.mark.parametrize(
    "case",
    [
        (2, 64, 1, 56, 56, (7, 7), 1, 1, "same"),
        (2, 19, 2, 13, 30, (5, 5), (2, 1), (1, 2), ((1, 2), (0, 3))),
        (1, 20, 3, 17, 7, (3, 3), 1, 2, "same"),
        (2, 5, 1, 11, 9, (1, 1), (3, 1), 1, "valid"),
        (1, 3, 4, 5, 4, (3, 3), 1, 1, ((4, 3), (5, 6))),
        (3, 17, 1, 9, 12, (7, 5), 1, (1, 2), "valid"),
    ],
    ids=[
        "7x7-real-size", "stride-2x1-dilation-1x2-multiplier-2", "multiplier-3-narrow-rows", "1x1-valid-rows-unread",
        "padding-past-the-kernel", "valid-partial-block",
    ],  # fmt: skip
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_channel_blocks_match_the_reference(rng, monkeypatch, dtype, case):
    """Forward passes on channel blocks (``cpu._blocked``), lowered thresholds sending every horizontal
    stride-1 problem there: a real-sized 7x7 problem (whose input gradient runs there too, mirrored), a
    vertical stride with dilation and a multiplier, output rows shorter than a run (pixel by pixel), rows a
    stride skips, paddings so wide that whole output rows and columns read only zeros, and channel counts
    that leave a partial last block (19, 20 and 17 channels: 3, 4 and 1 lanes in float32's last block of 16;
    3, 4 and 1 in float64's of 8)."""
    n, c, m, h, w, k, s, d, p = case
    problem = geometry.depthwise_problem((n, c, h, w), (c * m, 1) + k, s, p, d)
    monkeypatch.setattr(numba_dsconv.cpu._blocked, "MIN_TAPS", 1)
    monkeypatch.setattr(numba_dsconv.cpu._blocked, "MIN_OUTPUT_WIDTH", 1)
    assert numba_dsconv.cpu._blocked.applies(problem)
    _assert_three_ops_match_reference(numba_dsconv.cpu, rng, case, dtype)


@pytest.mark.parametrize(
    "case, mirrored",
    [
        ((2, 3, 1, 30, 29, (7, 7), 1, 1, 3), True),
        ((2, 2, 1, 17, 12, (5, 3), 1, (2, 1), ((1, 4), (2, 0))), True),
        ((2, 2, 1, 9, 10, (3, 3), 1, 1, ((4, 0), (0, 3))), False),
        ((2, 2, 2, 20, 19, (7, 7), 1, 1, 3), False),
    ],
    ids=["7x7", "5x3-dilated-asymmetric", "padding-past-the-kernel", "multiplier-2"],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_stride_one_grad_input_routes_match_the_reference(rng, dtype, case, mirrored):
    """At stride 1 with multiplier 1 the CPU computes the input gradient as a forward correlation of the
    output gradient (mirrored padding, kernel turned by 180 degrees); a padding wider than the kernel's reach,
    or a multiplier, keeps the gather kernel. Both routes against the reference, and the route asserted, so
    that neither goes untested."""
    n, c, m, h, w, k, s, d, p = case
    problem = geometry.depthwise_problem((n, c, h, w), (c * m, 1) + k, s, p, d)
    assert (numba_dsconv.cpu.depthwise._mirrored_problem(problem) is not None) == mirrored
    _assert_three_ops_match_reference(numba_dsconv.cpu, rng, case, dtype)


def test_float32_grad_weight_stays_accurate_on_large_planes(backend, rng):
    """Sums over a 112x112 plane and 8 images: float32 data, float64 accumulation."""
    if getattr(backend, "simulated", False):
        pytest.skip("8x2x112x112 is too large for the CUDA simulator; runs on a GPU")
    x = random_array(rng, (8, 2, 112, 112), np.float32)
    weight = random_array(rng, (2, 1, 3, 3), np.float32)
    grad_y = random_array(rng, (8, 2, 112, 112), np.float32)
    dw = backend.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, padding=2, dilation=2)
    expected = reference.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, padding=2, dilation=2)
    assert_close(dw, expected, np.float32)


@pytest.mark.parametrize(
    "case",
    [
        (5, 6, 2, 15, 13, (3, 3), 2, 2, "same"),
        (5, 6, 2, 15, 13, (3, 3), 1, 2, "same"),
        (5, 40, 1, 7, 7, (3, 3), 1, 2, "same"),
    ],
    ids=["phase-copies", "masked-copies", "channel-runs"],
)
def test_results_do_not_depend_on_the_thread_count(backend, rng, case):
    """The CPU cuts its work by the thread count (channel runs: planes per block too; masked copies: image groups
    of the grad-weight); results must not change."""
    if hasattr(backend, "simulated"):
        pytest.skip("the GPU backend does not use Numba's CPU threads")
    x, weight, bias, opts = _make(rng, case, np.float32)
    grad_y = random_array(rng, backend.depthwise_conv2d(x, weight, bias, **opts).shape, np.float32)

    def run():
        return (
            backend.depthwise_conv2d(x, weight, bias, **opts),
            backend.depthwise_conv2d_grad_input(grad_y, weight, x.shape, **opts),
            backend.depthwise_conv2d_grad_weight(grad_y, x, weight.shape, **opts),
            backend.conv2d_grad_bias(grad_y),
        )

    assert_same_with_one_thread(run)


def _phase_copy_definition(plane, off_h, off_w, sh, sw, hq, wq):
    """``gather_phases`` by its docstring, one element at a time."""
    height, width = plane.shape
    out = np.zeros(sh * sw * hq * wq, plane.dtype)
    for p, q, i, j in itertools.product(range(sh), range(sw), range(hq), range(wq)):
        r, col = i * sh + p - off_h, j * sw + q - off_w
        if 0 <= r < height and 0 <= col < width:
            out[((p * sw + q) * hq + i) * wq + j] = plane[r, col]
    return out


@settings(max_examples=300, deadline=None)
@given(
    size=st.tuples(st.integers(1, 13), st.integers(1, 13)),
    offsets=st.tuples(st.integers(-3, 4), st.integers(-3, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    phase_size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
)
def test_cpu_phase_copies_match_their_definition(size, offsets, stride, phase_size):
    """The padded phase copies every phase-copy kernel reads, including the two-column-phase loop of stride 2
    (``gather_column_pair``) at every edge: planes narrower than the phases, negative offsets, crops."""
    from numba_dsconv.cpu._planes import gather_phases

    plane = np.random.default_rng(0).uniform(1.0, 2.0, size)  # never 0, which would read as padding
    out = np.full(stride[0] * stride[1] * phase_size[0] * phase_size[1], np.nan)
    expected = _phase_copy_definition(plane, *offsets, *stride, *phase_size)
    gather_phases(plane, *offsets, *stride, *phase_size, out)
    written = ~np.isnan(out)
    np.testing.assert_array_equal(out[written], expected[written])
    # Only the plane's own entries are written: the padding is the zeros a kernel's buffer starts with.
    np.testing.assert_array_equal(written, expected != 0)
