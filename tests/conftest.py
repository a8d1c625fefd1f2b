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
    "separable_conv2d",
    "separable_conv2d_backward",
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


BACKENDS = ["cpu", "cpu-stacked", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """The module whose functions are under test: every suite that takes it runs on each backend.

    See :func:`prepare_backend`; the depthwise tests add a backend of their own ("cpu-masked").
    """
    return prepare_backend(request, monkeypatch)


def prepare_backend(request, monkeypatch):
    """Set up the backend named by ``request.param`` and return its module.

    "cpu" runs every size-keeping stride-1 problem whose planes have an interior in place (``cpu._inplace``,
    which by default takes only planes with at most 10% of their outputs on the rim, 56x56 and larger for a
    3x3 kernel), the others on masked copies (``cpu._masked``) where the kernel is at most three wide.
    "cpu-masked" sends those problems to the masked copies instead, the way smaller planes go, and the
    3x3 problems at horizontal stride 2, which "cpu" computes from the input rows in place
    (``cpu._strided``), to the phase copies. "cpu" runs the forward of every problem with horizontal stride
    1 and a kernel of 25 taps or more on channel blocks (``cpu._blocked``), whatever its output width (by
    default from 8 columns); "cpu-masked" and "cpu-stacked" send those problems where they went before.
    "cpu" runs the 3x3 stride-1 forwards and gradients whose padding equals the dilation, on rows of three
    quarters of a vector to 640 bytes (and float32 rows of 7), as row pairs or chains (``cpu._rows``, the
    default); the other two send them where they went before.

    "cpu-stacked" forces the depthwise kernels to stack two images per task and to cut the tasks into two
    chunks, so that every test also runs stacks with a partial last group (odd batches) next to full ones
    in the same reused buffers (a chunk may start on either), on top of the one-task chunks that small
    test inputs get by default. The size-keeping stride-1 problems with multiplier 1, whose small planes
    go to the channel runs (``cpu._runs``), run there under "cpu-stacked", in blocks of two planes over two
    chunks; "cpu" and "cpu-masked" send them where larger planes go. Masked copies also run over two
    chunks under "cpu-stacked".

    "cpu" runs the pointwise products batched through NumPy's ``matmul``,
    "cpu-stacked" one image per Numba thread (``PER_IMAGE_PRODUCTS``), the weight gradient's batch in two slices.
    The separable convolution follows the products: "cpu" runs its two halves one after the other over the
    whole batch (as with a multi-threaded BLAS), "cpu-stacked" fused, in groups of two images.

    "cuda" runs the GPU kernels (on a GPU, or in Numba's simulator when the environment sets
    ``NUMBA_ENABLE_CUDASIM=1``) through :mod:`cuda_host`, which moves the test's NumPy arrays to the device
    and the results back, with blocks shrunk so that small inputs span several blocks and partial ones.
    """
    if request.param.startswith("cpu"):
        # The two ways of the pointwise products, whatever the BLAS configuration of the machine.
        monkeypatch.setattr(numba_dsconv.cpu.pointwise, "PER_IMAGE_PRODUCTS", request.param == "cpu-stacked")
    if request.param in ("cpu", "cpu-masked"):
        monkeypatch.setattr(numba_dsconv.cpu._runs, "RUN_MAX_AREA", 0)
    if request.param == "cpu":
        monkeypatch.setattr(numba_dsconv.cpu._inplace, "MAX_RIM_SHARE", 1)
        monkeypatch.setattr(numba_dsconv.cpu._blocked, "MIN_OUTPUT_WIDTH", 1)
    else:
        monkeypatch.setattr(numba_dsconv.cpu._blocked, "ENABLED", False)
        monkeypatch.setattr(numba_dsconv.cpu._rows, "DTYPES", ())
    if request.param == "cpu-masked":
        monkeypatch.setattr(numba_dsconv.cpu._inplace, "MAX_RIM_SHARE", -1)
        monkeypatch.setattr(numba_dsconv.cpu._strided, "ENABLED", False)
    if request.param == "cpu-stacked":
        monkeypatch.setattr(numba_dsconv.cpu.depthwise, "IMAGES_PER_TASK", 2)
        monkeypatch.setattr(numba_dsconv.cpu.depthwise, "chunk_count", lambda ntasks: min(ntasks, 2))
        monkeypatch.setattr(numba_dsconv.cpu._runs, "PLANES_PER_BLOCK", 2)
        monkeypatch.setattr(numba_dsconv.cpu._runs, "chunk_count", lambda ntasks: min(ntasks, 2))
        monkeypatch.setattr(numba_dsconv.cpu._masked, "chunk_count", lambda ntasks: min(ntasks, 2))
        monkeypatch.setattr(numba_dsconv.cpu.pointwise, "GRAD_WEIGHT_SLICES", 2)
        monkeypatch.setattr(numba_dsconv.cpu.separable, "IMAGES_PER_GROUP", 2)
    if request.param == "cuda":
        import cuda_host

        return cuda_host.prepare(request, monkeypatch)
    return numba_dsconv.cpu


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_array(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def strided_copy(a):
    """The same values in a view whose every stride differs from the contiguous layout's."""
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def read_only_copy(a):
    """A copy that cannot be written to."""
    a = a.copy()
    a.setflags(write=False)
    return a


def assert_same_with_one_thread(run):
    """``run()`` (a tuple of arrays) gives bit-identical results with one Numba thread and with all of them."""
    import numba

    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = run()
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(single, run(), strict=True):
        np.testing.assert_array_equal(a, b)


def numeric_gradient(array, evaluate, eps=1e-6):
    """Central differences of the scalar ``evaluate(array)`` with respect to every entry of ``array`` (float64)."""
    grad = np.empty_like(array)
    for idx in np.ndindex(array.shape):
        plus, minus = array.copy(), array.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (evaluate(plus) - evaluate(minus)) / (2 * eps)
    return grad


def synthetic_digits(train, test, seed, classes=10, size=28):
    """A small learnable stand-in for MNIST: each class a fixed pattern of blobs, shifted and noisy, uint8.

    Returns a :class:`numba_dsconv.data.Dataset` so it goes wherever a loaded data set goes.
    """
    from numba_dsconv.data import Dataset

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    templates = np.zeros((classes, size, size))
    for k in range(classes):
        for cy, cx in rng.uniform(7, size - 7, size=(4, 2)):
            templates[k] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)
    templates = 255 * templates / templates.max(axis=(1, 2), keepdims=True)

    def draw(n):
        labels = rng.integers(0, classes, n)
        shifts = rng.integers(-2, 3, size=(n, 2))
        images = np.stack([np.roll(templates[k], tuple(s), axis=(0, 1)) for k, s in zip(labels, shifts, strict=True)])
        images += rng.normal(0, 20, images.shape)
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)

    train_images, train_labels = draw(train)
    test_images, test_labels = draw(test)
    return Dataset("synthetic", train_images, train_labels, test_images, test_labels, source="synthetic")
