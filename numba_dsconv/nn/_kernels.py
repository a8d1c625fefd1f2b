"""CPU kernels for the layers that are not convolutions: ReLU, batch normalisation and global average pooling.

Batch normalisation can apply a ReLU in the same pass, which saves two passes over the activations.

Shape legend: N = batch, C = channels, P = H*W pixels. Every array is C-contiguous (N, C, P).

Each kernel runs one task per (image, channel) plane or per channel, writes only its own outputs and adds in a
fixed order, so results do not depend on the thread count. Per-channel sums run in float64.
"""

import numpy as np
from numba import prange

from ..cpu._jit import helper, kernel


@helper
def affine(v, scale, shift):
    """``v * scale + shift``: batch normalisation's output before its ReLU.

    One function for the forward pass and for the backward's ReLU mask, so that both round alike (a fused
    multiply-add in both) and the backward can tell where the ReLU passed from x alone, without reading y.
    """
    return v * scale + shift


@kernel
def relu_forward(x, y):
    """Y = max(x, 0); NaN stays NaN. x, y: (N, C, P)."""
    n_batch, channels, pixels = x.shape
    for task in prange(n_batch * channels):
        src = x[task // channels, task % channels]
        dst = y[task // channels, task % channels]
        for p in range(pixels):
            v = src[p]
            dst[p] = 0.0 if v <= 0.0 else v


@kernel
def relu_backward(gy, y, gx):
    """Gx = gy where the forward output y > 0, else 0. All (N, C, P)."""
    n_batch, channels, pixels = gy.shape
    for task in prange(n_batch * channels):
        g = gy[task // channels, task % channels]
        out = y[task // channels, task % channels]
        dst = gx[task // channels, task % channels]
        for p in range(pixels):
            dst[p] = g[p] if out[p] > 0.0 else 0.0


@kernel
def channel_moments(x, mean, var):
    """Per-channel mean and biased variance of x (N, C, P), in float64.

    Two passes per (image, channel) plane while it sits in L1 (its sum, then its squared deviations from its
    own mean), and the planes combined by Chan et al.'s rule: each activation is read from memory once, and
    the variance stays exact for large means, as two passes over the whole channel would be.
    """
    n_batch, channels, pixels = x.shape
    count = n_batch * pixels
    for c in prange(channels):
        plane_means = np.empty(n_batch, np.float64)
        within = 0.0
        for n in range(n_batch):
            row = x[n, c]
            total = 0.0
            for p in range(pixels):
                total += row[p]
            mu = total / pixels
            squares = 0.0
            for p in range(pixels):
                d = row[p] - mu
                squares += d * d
            plane_means[n] = mu
            within += squares
        mu = plane_means.sum() / n_batch
        between = 0.0
        for n in range(n_batch):
            between += (plane_means[n] - mu) ** 2
        mean[c] = mu
        var[c] = (within + pixels * between) / count


@kernel
def scale_shift(x, scale, shift, relu, y):
    """y[n, c, p] = x[n, c, p] * scale[c] + shift[c], then max(., 0) when ``relu``; scale, shift in x's dtype."""
    n_batch, channels, pixels = x.shape
    for task in prange(n_batch * channels):
        c = task % channels
        a = scale[c]
        b = shift[c]
        src = x[task // channels, c]
        dst = y[task // channels, c]
        if relu:
            for p in range(pixels):
                v = affine(src[p], a, b)
                dst[p] = 0.0 if v <= 0.0 else v
        else:
            for p in range(pixels):
                dst[p] = affine(src[p], a, b)


@kernel
def batchnorm_backward_sums(gy, x, mean, scale, shift, relu, sum_gy, sum_gy_xc):
    """Per channel, in float64: sum of g and of g * (x - mean).

    g = gy, where the forward's ``affine(x, scale, shift) > 0`` when ``relu`` (0 elsewhere).
    """
    n_batch, channels, pixels = x.shape
    for c in prange(channels):
        s = 0.0
        sx = 0.0
        mu, a, b = mean[c], scale[c], shift[c]
        for n in range(n_batch):
            g = gy[n, c]
            row = x[n, c]
            for p in range(pixels):
                gp = g[p] if not relu or affine(row[p], a, b) > 0.0 else 0.0
                s += gp
                sx += gp * (row[p] - mu)
        sum_gy[c] = s
        sum_gy_xc[c] = sx


@kernel
def batchnorm_backward_input(gy, x, scale, shift, relu, a, b, d, gx):
    """Gx = a[c] * g + b[c] * x + d[c]: the batch-norm input gradient.

    g = gy, where the forward's ``affine(x, scale, shift) > 0`` when ``relu`` (0 elsewhere).
    """
    n_batch, channels, pixels = x.shape
    for task in prange(n_batch * channels):
        c = task % channels
        ac = a[c]
        bc = b[c]
        dc = d[c]
        sc, sh = scale[c], shift[c]
        g = gy[task // channels, c]
        row = x[task // channels, c]
        dst = gx[task // channels, c]
        if relu:
            for p in range(pixels):
                gp = g[p] if affine(row[p], sc, sh) > 0.0 else 0.0
                dst[p] = ac * gp + bc * row[p] + dc
        else:
            for p in range(pixels):
                dst[p] = ac * g[p] + bc * row[p] + dc


@kernel
def plane_means(x, out):
    """out[n, c] = mean of x[n, c] over its P pixels, summed in float64. x (N, C, P), out (N, C)."""
    n_batch, channels, pixels = x.shape
    for task in prange(n_batch * channels):
        row = x[task // channels, task % channels]
        total = 0.0
        for p in range(pixels):
            total += row[p]
        out[task // channels, task % channels] = total / pixels
