"""Every bad input is a TypeError or ValueError that names the argument (and the shape it needed)."""

import numpy as np
import pytest

f32, f64 = np.float32, np.float64


def _x(shape=(2, 3, 8, 8), dtype=f32):
    return np.ones(shape, dtype)


DEPTHWISE_FORWARD_CASES = [
    # (description, args, kwargs, exception, message pattern)
    ("int input", (_x(dtype=np.int64), _x((3, 1, 3, 3))), {}, TypeError, r"x has dtype int64"),
    ("float16 weight", (_x(), _x((3, 1, 3, 3), np.float16)), {}, TypeError, r"weight has dtype float16"),
    ("complex input", (_x(dtype=np.complex128), _x((3, 1, 3, 3))), {}, TypeError, r"x has dtype complex128"),
    (
        "mixed dtypes",
        (_x(dtype=f32), _x((3, 1, 3, 3), f64)),
        {},
        TypeError,
        r"weight has dtype float64 but x has dtype float32",
    ),
    ("mixed bias", (_x(), _x((3, 1, 3, 3)), np.zeros(3, f64)), {}, TypeError, r"bias has dtype float64"),
    (
        "rank 3 input",
        (_x((3, 8, 8)), _x((3, 1, 3, 3))),
        {},
        ValueError,
        r"x has shape \(3, 8, 8\); expected 4 dimensions \(N, C, H, W\)",
    ),
    ("rank 3 weight", (_x(), _x((3, 3, 3))), {}, ValueError, r"weight has shape \(3, 3, 3\); expected 4 dimensions"),
    (
        "weight not 1 in dim 1",
        (_x(), _x((3, 2, 3, 3))),
        {},
        ValueError,
        r"weight has shape \(3, 2, 3, 3\); expected \(C\*M, 1, KH, KW\) with C = 3",
    ),
    ("channels mismatch", (_x(), _x((4, 1, 3, 3))), {}, ValueError, r"multiple of 3"),
    (
        "bias mismatch",
        (_x(), _x((6, 1, 3, 3)), np.zeros(3, f32)),
        {},
        ValueError,
        r"bias has shape \(3,\); expected \(6,\)",
    ),
    ("zero stride", (_x(), _x((3, 1, 3, 3))), {"stride": 0}, ValueError, r"stride must be >= 1"),
    ("negative stride", (_x(), _x((3, 1, 3, 3))), {"stride": (1, -2)}, ValueError, r"stride must be >= 1"),
    ("zero dilation", (_x(), _x((3, 1, 3, 3))), {"dilation": 0}, ValueError, r"dilation must be >= 1"),
    ("negative padding", (_x(), _x((3, 1, 3, 3))), {"padding": -1}, ValueError, r"padding must be >= 0"),
    ("bad padding word", (_x(), _x((3, 1, 3, 3))), {"padding": "full"}, ValueError, r"padding must be 'valid', 'same'"),
    (
        "kernel too large",
        (_x(), _x((3, 1, 5, 5))),
        {"dilation": 2},
        ValueError,
        r"dilated kernel height 9 .* padded input height 8",
    ),
    (
        "empty batch",
        (_x((0, 3, 8, 8)), _x((3, 1, 3, 3))),
        {},
        ValueError,
        r"x has shape \(0, 3, 8, 8\); every dimension",
    ),
    ("empty kernel", (_x(), _x((3, 1, 0, 3))), {}, ValueError, r"weight has shape \(3, 1, 0, 3\); every dimension"),
    ("object input", (np.array([[["a"]]], dtype=object), _x((3, 1, 3, 3))), {}, TypeError, r"x has dtype object"),
]


@pytest.mark.parametrize(
    "args, kwargs, exc, pattern", [c[1:] for c in DEPTHWISE_FORWARD_CASES], ids=[c[0] for c in DEPTHWISE_FORWARD_CASES]
)
def test_depthwise_forward_rejects(backend, args, kwargs, exc, pattern):
    snapshot = [a.copy() for a in args]
    with pytest.raises(exc, match=pattern):
        backend.depthwise_conv2d(*args, **kwargs)
    for before, after in zip(snapshot, args, strict=True):
        np.testing.assert_array_equal(before, after)


def test_depthwise_grad_input_rejects(backend):
    w = _x((6, 1, 3, 3))
    gy = _x((2, 6, 6, 6))
    with pytest.raises(ValueError, match=r"grad_y has shape \(2, 6, 6, 6\); expected \(2, 6, 8, 8\)"):
        backend.depthwise_conv2d_grad_input(gy, w, (2, 3, 8, 8), padding=1)
    with pytest.raises(ValueError, match=r"input_shape has shape \(2, 3, 8\); expected 4 dimensions"):
        backend.depthwise_conv2d_grad_input(gy, w, (2, 3, 8))
    with pytest.raises(TypeError, match=r"input_shape must be a tuple of 4 ints"):
        backend.depthwise_conv2d_grad_input(gy, w, (2, 3, 8.0, 8))
    with pytest.raises(ValueError, match=r"multiple of 4"):
        backend.depthwise_conv2d_grad_input(gy, w, (2, 4, 8, 8))
    with pytest.raises(TypeError, match=r"weight has dtype float64 but grad_y has dtype float32"):
        backend.depthwise_conv2d_grad_input(gy, w.astype(f64), (2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"dilation must be >= 1"):
        backend.depthwise_conv2d_grad_input(gy, w, (2, 3, 8, 8), dilation=(1, 0))


def test_depthwise_grad_weight_rejects(backend):
    x = _x()
    gy = _x((2, 6, 8, 8))
    with pytest.raises(ValueError, match=r"grad_y has shape \(2, 6, 8, 8\); expected \(2, 6, 6, 6\)"):
        backend.depthwise_conv2d_grad_weight(gy, x, (6, 1, 3, 3))
    with pytest.raises(ValueError, match=r"weight_shape has shape \(6, 3, 3\); expected 4 dimensions"):
        backend.depthwise_conv2d_grad_weight(gy, x, (6, 3, 3))
    with pytest.raises(TypeError, match=r"grad_y has dtype float64 but x has dtype float32"):
        backend.depthwise_conv2d_grad_weight(gy.astype(f64), x, (6, 1, 3, 3), padding=1)
    with pytest.raises(TypeError, match=r"x has dtype int32"):
        backend.depthwise_conv2d_grad_weight(gy, x.astype(np.int32), (6, 1, 3, 3), padding=1)


def test_pointwise_rejects(backend):
    x = _x((2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"weight has shape \(3, 5, 1, 1\); expected \(Cout, 4, 1, 1\)"):
        backend.pointwise_conv2d(x, _x((3, 5, 1, 1)))
    with pytest.raises(
        ValueError, match=r"weight has shape \(3, 4, 3, 3\); expected \(Cout, Cin, 1, 1\) or \(Cout, Cin\)"
    ):
        backend.pointwise_conv2d(x, _x((3, 4, 3, 3)))
    with pytest.raises(ValueError, match=r"bias has shape \(4,\); expected \(3,\)"):
        backend.pointwise_conv2d(x, _x((3, 4)), np.zeros(4, f32))
    with pytest.raises(ValueError, match=r"x has shape \(4, 5, 5\)"):
        backend.pointwise_conv2d(x[0], _x((3, 4)))
    with pytest.raises(TypeError, match=r"weight has dtype float64 but x has dtype float32"):
        backend.pointwise_conv2d(x, _x((3, 4), f64))
    with pytest.raises(ValueError, match=r"weight has shape \(3, 4\); expected \(2, Cin, 1, 1\) or \(2, Cin\)"):
        backend.pointwise_conv2d_grad_input(_x((2, 2, 5, 5)), _x((3, 4)))
    with pytest.raises(ValueError, match=r"grad_y has shape \(3, 2, 5, 5\); expected \(2, 2, 5, 5\)"):
        backend.pointwise_conv2d_grad_weight(_x((3, 2, 5, 5)), x)
    with pytest.raises(ValueError, match=r"weight_shape is \(2, 5\); expected \(2, 4, 1, 1\) or \(2, 4\)"):
        backend.pointwise_conv2d_grad_weight(_x((2, 2, 5, 5)), x, (2, 5))
    with pytest.raises(ValueError, match=r"grad_y has shape \(2, 5, 5\)"):
        backend.conv2d_grad_bias(_x((2, 5, 5)))
    with pytest.raises(TypeError, match=r"grad_y has dtype int64"):
        backend.conv2d_grad_bias(np.ones((1, 2, 3, 3), np.int64))
