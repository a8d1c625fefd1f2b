"""The benchmark shapes of DESIGN.md, used by every benchmark so that figures compare."""

from dataclasses import dataclass


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
