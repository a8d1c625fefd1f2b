"""The benchmark shapes of DESIGN.md, their inputs and numba_dsconv's calls, shared by every benchmark."""

from dataclasses import dataclass

import numba_dsconv as nd


@dataclass(frozen=True)
class DepthwiseShape:
    """x (N, C, H, W), weight (C*M, 1, K, K), padding = dilation*(K-1)//2."""

    name: str
    n: int
    c: int
    h: int
    w: int
    k: int
    stride: int
    dilation: int
    multiplier: int = 1

    @property
    def padding(self):
        return self.dilation * (self.k - 1) // 2

    @property
    def out_channels(self):
        return self.c * self.multiplier

    @property
    def out_hw(self):
        ho = (self.h + 2 * self.padding - self.dilation * (self.k - 1) - 1) // self.stride + 1
        wo = (self.w + 2 * self.padding - self.dilation * (self.k - 1) - 1) // self.stride + 1
        return ho, wo

    def opts(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)


@dataclass(frozen=True)
class PointwiseShape:
    """x (N, Cin, H, W), weight (Cout, Cin, 1, 1)."""

    name: str
    n: int
    cin: int
    cout: int
    h: int
    w: int


DEPTHWISE = [
    DepthwiseShape("D1", 8, 32, 112, 112, 3, 1, 1),
    DepthwiseShape("D2", 8, 96, 112, 112, 3, 2, 1),
    DepthwiseShape("D3", 8, 144, 56, 56, 3, 1, 1),
    DepthwiseShape("D4", 8, 192, 28, 28, 3, 1, 2),
    DepthwiseShape("D5", 8, 576, 14, 14, 3, 1, 2),
    DepthwiseShape("D6", 8, 960, 7, 7, 3, 1, 1),
    DepthwiseShape("D7", 128, 32, 28, 28, 3, 1, 2),
    DepthwiseShape("D8", 128, 1, 28, 28, 3, 1, 1, multiplier=16),
    DepthwiseShape("D9", 8, 64, 56, 56, 7, 1, 1),
]

POINTWISE = [
    PointwiseShape("P1", 8, 32, 64, 112, 112),
    PointwiseShape("P2", 8, 144, 24, 56, 56),
    PointwiseShape("P3", 8, 576, 160, 14, 14),
    PointwiseShape("P4", 128, 32, 64, 28, 28),
]


@dataclass(frozen=True)
class SeparableShape:
    """A depthwise shape (multiplier 1) followed by a pointwise convolution to ``features`` channels."""

    name: str
    depthwise: DepthwiseShape
    features: int

    def describe(self):
        d = self.depthwise
        return (f"{self.name} ({d.n},{d.c},{d.h},{d.w}) {d.k}x{d.k} s{d.stride} d{d.dilation} -> "
                f"{d.c}->{self.features}")


def _depthwise(name):
    return next(s for s in DEPTHWISE if s.name == name)


# The depthwise shapes whose pointwise partner DESIGN.md lists (D3 + P2, D1 + P1, D5 + P3), and the trainer's
# last block at batch 128.
SEPARABLE = [
    SeparableShape("S1", _depthwise("D3"), 24),
    SeparableShape("S2", _depthwise("D1"), 64),
    SeparableShape("S3", _depthwise("D5"), 160),
    SeparableShape("S4", DepthwiseShape("T5", 128, 128, 7, 7, 3, 1, 2), 128),
]


def separable_arrays(shape, dtype, rng):
    """Random x, depthwise weight, pointwise weight (F, C, 1, 1) and grad_y (N, F, Ho, Wo)."""
    x, dw, _ = depthwise_arrays(shape.depthwise, dtype, rng)
    pw = rng.standard_normal((shape.features, shape.depthwise.c, 1, 1)).astype(dtype)
    gy = rng.standard_normal((shape.depthwise.n, shape.features) + shape.depthwise.out_hw).astype(dtype)
    return x, dw, pw, gy


def separable_ops(shape, x, dw, pw, gy):
    """numba_dsconv's separable convolution, fused and as its two halves, forward and backward.

    The separate backward is what a caller of the two halves runs: it keeps the depthwise output from its
    forward pass (computed here once, outside the timing), the fused backward recomputes it band by band.
    """
    o = shape.depthwise.opts()
    h = nd.depthwise_conv2d(x, dw, **o)

    def separate_backward():
        dh = nd.pointwise_conv2d_grad_input(gy, pw)
        return (
            nd.depthwise_conv2d_grad_input(dh, dw, x.shape, **o),
            nd.depthwise_conv2d_grad_weight(dh, x, dw.shape, **o),
            nd.conv2d_grad_bias(dh),
            nd.pointwise_conv2d_grad_weight(gy, h),
            nd.conv2d_grad_bias(gy),
        )

    return {
        "forward": {
            "fused": lambda: nd.separable_conv2d(x, dw, pw, **o),
            "separate": lambda: nd.pointwise_conv2d(nd.depthwise_conv2d(x, dw, **o), pw),
        },
        "backward": {
            "fused": lambda: nd.separable_conv2d_backward(gy, x, dw, pw, **o),
            "separate": separate_backward,
        },
    }


def depthwise_arrays(shape, dtype, rng):
    """Random x (N, C, H, W), weight (C*M, 1, K, K) and grad_y (N, C*M, Ho, Wo) for a depthwise shape."""
    x = rng.standard_normal((shape.n, shape.c, shape.h, shape.w)).astype(dtype)
    w = rng.standard_normal((shape.out_channels, 1, shape.k, shape.k)).astype(dtype)
    gy = rng.standard_normal((shape.n, shape.out_channels) + shape.out_hw).astype(dtype)
    return x, w, gy


def pointwise_arrays(shape, dtype, rng):
    """Random x (N, Cin, H, W), weight (Cout, Cin, 1, 1) and grad_y (N, Cout, H, W) for a pointwise shape."""
    x = rng.standard_normal((shape.n, shape.cin, shape.h, shape.w)).astype(dtype)
    w = rng.standard_normal((shape.cout, shape.cin, 1, 1)).astype(dtype)
    gy = rng.standard_normal((shape.n, shape.cout, shape.h, shape.w)).astype(dtype)
    return x, w, gy


def depthwise_ops(shape, x, w, gy):
    """numba_dsconv's forward, grad-input and grad-weight callables for a depthwise shape."""
    o = shape.opts()
    return {
        "forward": lambda: nd.depthwise_conv2d(x, w, **o),
        "grad_input": lambda: nd.depthwise_conv2d_grad_input(gy, w, x.shape, **o),
        "grad_weight": lambda: nd.depthwise_conv2d_grad_weight(gy, x, w.shape, **o),
    }


def pointwise_ops(x, w, gy):
    """numba_dsconv's forward, grad-input and grad-weight callables for a pointwise shape."""
    return {
        "forward": lambda: nd.pointwise_conv2d(x, w),
        "grad_input": lambda: nd.pointwise_conv2d_grad_input(gy, w),
        "grad_weight": lambda: nd.pointwise_conv2d_grad_weight(gy, x),
    }
