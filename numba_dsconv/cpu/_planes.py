"""Plane primitives shared by the depthwise kernels: padded phase copies and flat tap loops.

Every depthwise operation is reduced to *stride-1 correlations over flat buffers*:

1. ``gather_phases`` copies one (H, W) plane into ``sh * sw`` zero-padded phase planes of shape
   (Hq, Wq), ``phase[p, q][i, j] = plane[i*sh + p - off_h, j*sw + q - off_w]`` (zero outside the plane).
   A strided convolution over the padded plane is then a stride-1 convolution over the phases.
2. In a phase plane stored row after row with pitch ``Wq``, the tap ``(a, b)`` of a stride-1 correlation
   is one constant *flat shift* ``a * Wq + b``. The output is computed on the same pitch, so a whole
   plane is ``out[q] += w_t * src[q + shift_t]`` over one long run of ``q``: no bounds tests, no short
   rows, a loop LLVM vectorises. The ``Wq - Wo`` extra columns per row are computed and discarded.
3. Loops run band by band (``BAND`` elements), so the output band and the input rows it reads stay in
   L1 while every tap passes over them.
"""

import numba
import numpy as np

from ._jit import helper

# Output elements per band: 2048 float32 (8 KiB) or float64 (16 KiB) plus the input rows they read fit L1.
BAND = 2048


@helper
def valid_range(offset, stride, in_size, out_size):
    """Output indices ``o`` in ``[lo, hi)`` whose input index ``o * stride + offset`` lies in ``[0, in_size)``."""
    lo = max(0, -(offset // stride))
    hi = min(out_size, (in_size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@helper
def windows3(src, shifts, t, start, stop):
    """Return the views ``src[start + shifts[t + i] : stop + shifts[t + i]]`` for taps ``t`` to ``t + 2``.

    Loops run from zero over such views: an index that starts at a run-time offset keeps Numba's
    negative-index wraparound test and stays scalar, a loop from zero over a slice vectorises.
    """
    return (
        src[start + shifts[t] : stop + shifts[t]],
        src[start + shifts[t + 1] : stop + shifts[t + 1]],
        src[start + shifts[t + 2] : stop + shifts[t + 2]],
    )


@helper
def taps9(src, shifts, t, start, stop):
    """Return the nine views ``src[start + shifts[t + i] : stop + shifts[t + i]]`` of taps ``t`` to ``t + 8``."""
    x0, x1, x2 = windows3(src, shifts, t, start, stop)
    x3, x4, x5 = windows3(src, shifts, t + 3, start, stop)
    x6, x7, x8 = windows3(src, shifts, t + 6, start, stop)
    return x0, x1, x2, x3, x4, x5, x6, x7, x8


@helper
def gather_phases(plane, off_h, off_w, sh, sw, hq, wq, out):
    """Zero-padded, phase-split copy of a plane.

    Parameters
    ----------
    plane : array (H, W)
    off_h, off_w : int
        Padding before the plane (may be negative: rows/columns are then dropped).
    sh, sw : int
        Stride: the number of phases along each axis.
    hq, wq : int
        Size of one phase plane.
    out : array (sh * sw * hq * wq,)
        ``out[((p*sw + q)*hq + i)*wq + j] = plane[i*sh + p - off_h, j*sw + q - off_w]``. Only the entries
        inside the plane are written: the rest (the padding) depends only on the shapes, so a kernel zeroes
        its buffer once and reuses it for every plane of the same geometry.

    Notes
    -----
    Indices are cast to unsigned: Numba then drops its negative-index wraparound test, and the copy runs
    about three times faster on small planes than one built from row slices.
    """
    height, width = plane.shape
    for p in range(sh):
        if sw == 2:
            gather_column_pair(plane, p, off_h, off_w, sh, hq, wq, out)
            continue
        for q in range(sw):
            phase_base = (p * sw + q) * hq * wq
            col_offset = q - off_w
            lo, hi = valid_range(col_offset, sw, width, wq)
            for i in range(max(0, -((p - off_h) // sh)), hq):
                r = i * sh + p - off_h
                if r >= height:
                    break
                row = phase_base + i * wq
                for j in range(lo, hi):
                    out[np.uint64(row + j)] = plane[np.uint64(r), np.uint64(j * sw + col_offset)]


@helper
def gather_column_pair(plane, p, off_h, off_w, sh, hq, wq, out):
    """Row phase ``p`` of ``gather_phases`` when ``sw == 2``: both column phases in one loop per row.

    Reading columns ``2j - off_w`` and ``2j + 1 - off_w`` in the same loop lets LLVM load the row as
    interleaved pairs, vectorised; one strided loop per column phase ran scalar (the copies took 3.1 ms of
    a 3.7 ms stride-2 forward at 8x96x112x112). Columns that only one phase has (at the padding's edges)
    are copied one by one.
    """
    height, width = plane.shape
    even_base = 2 * p * hq * wq
    odd_base = even_base + hq * wq
    lo_even, hi_even = valid_range(-off_w, 2, width, wq)
    lo_odd, hi_odd = valid_range(1 - off_w, 2, width, wq)
    # Column j of the odd phase reads one plane column to the right of the even phase's: the odd phase's
    # valid columns start no later and end no later than the even phase's. Pairs run over their overlap.
    lo, hi = lo_even, max(lo_even, hi_odd)
    for i in range(max(0, -((p - off_h) // sh)), hq):
        r = i * sh + p - off_h
        if r >= height:
            break
        row = plane[r]
        even = out[even_base + i * wq : even_base + (i + 1) * wq]
        odd = out[odd_base + i * wq : odd_base + (i + 1) * wq]
        pairs = row[2 * lo - off_w : 2 * hi - off_w]
        even_part, odd_part = even[lo:hi], odd[lo:hi]
        for k in range(hi - lo):
            even_part[k] = pairs[2 * k]
            odd_part[k] = pairs[2 * k + 1]
        for j in range(lo_odd, min(lo, hi_odd)):
            odd[np.uint64(j)] = row[np.uint64(2 * j + 1 - off_w)]
        for j in range(hi, hi_even):
            even[np.uint64(j)] = row[np.uint64(2 * j - off_w)]


@helper
def gather_stack(planes, channel, n0, count, off_h, off_w, sh, sw, hq, wq, out):
    """``gather_phases`` for one channel of ``count`` images from ``n0``, stacked one image stride apart.

    ``planes`` is (N, C, H, W); image ``g`` lands at ``out[g*S : (g+1)*S]`` with ``S = sh*sw*hq*wq``.
    """
    stride = sh * sw * hq * wq
    for g in range(count):
        gather_phases(planes[n0 + g, channel], off_h, off_w, sh, sw, hq, wq, out[g * stride : (g + 1) * stride])


@helper
def store(dst, j, value, assign, bias):
    """``dst[j] = bias + value`` when ``assign``, else ``dst[j] += value``.

    ``assign`` is the same for a whole loop: LLVM hoists the test out of it (loop unswitching), so each
    loop is one vectorised body without a branch.
    """
    if assign:
        dst[j] = bias + value
    else:
        dst[j] += value


@helper
def correlate_flat(src, weights, shifts, ntaps, out, length, assign, bias):
    """``out[q] (+)= sum_t weights[t] * src[q + shifts[t]]`` for ``q < length``, band by band.

    ``src`` and ``out`` are flat 1-D buffers; every ``q + shifts[t]`` must lie inside ``src``. With
    ``assign`` the first pass writes ``bias + sum`` (``out`` need not be initialised; no separate fill
    pass, which cost about 15% of a 3x3 convolution), otherwise every pass adds to ``out``. Taps go nine
    at a time (a whole 3x3 kernel), then three, then one: each pass over the output band loads and stores it
    once for up to nine multiply-adds, which measured 20-25% faster than three at a time.
    """
    for start in range(0, length, BAND):
        stop = min(start + BAND, length)
        dst = out[start:stop]
        first = assign
        t = 0
        while t + 9 <= ntaps:
            w0, w1, w2 = weights[t], weights[t + 1], weights[t + 2]
            w3, w4, w5 = weights[t + 3], weights[t + 4], weights[t + 5]
            w6, w7, w8 = weights[t + 6], weights[t + 7], weights[t + 8]
            x0, x1, x2, x3, x4, x5, x6, x7, x8 = taps9(src, shifts, t, start, stop)
            for j in range(dst.shape[0]):
                value = (
                    (w0 * x0[j] + w1 * x1[j] + w2 * x2[j])
                    + (w3 * x3[j] + w4 * x4[j] + w5 * x5[j])
                    + (w6 * x6[j] + w7 * x7[j] + w8 * x8[j])
                )
                store(dst, j, value, first, bias)
            first = False
            t += 9
        while t + 3 <= ntaps:
            w0, w1, w2 = weights[t], weights[t + 1], weights[t + 2]
            x0, x1, x2 = windows3(src, shifts, t, start, stop)
            for j in range(dst.shape[0]):
                store(dst, j, w0 * x0[j] + w1 * x1[j] + w2 * x2[j], first, bias)
            first = False
            t += 3
        while t < ntaps:
            w0 = weights[t]
            x0 = src[start + shifts[t] : stop + shifts[t]]
            for j in range(dst.shape[0]):
                store(dst, j, w0 * x0[j], first, bias)
            first = False
            t += 1
        if first:  # no taps at all
            fill(dst, bias)


@helper
def weighted_sum9(k, v):
    """``sum_t k[t] * v[t]`` over nine taps, grouped by threes as ``correlate_flat`` groups them."""
    return (k[0] * v[0] + k[1] * v[1] + k[2] * v[2]) + (k[3] * v[3] + k[4] * v[4] + k[5] * v[5]) + (
        k[6] * v[6] + k[7] * v[7] + k[8] * v[8]
    )


@helper
def correlate_pair9(src, shifts, wa, wb, bias_a, bias_b, out_a, out_b, length):
    """``out_a[q] = bias_a + sum_t wa[t] * src[q + shifts[t]]`` and the same for ``b``, 3x3 kernels (T = 9).

    Both filters read the same shifted values: one load feeds two multiply-adds. Each output is the
    same expression, in the same order, as ``correlate_flat`` computes it.
    """
    ka = (wa[0], wa[1], wa[2], wa[3], wa[4], wa[5], wa[6], wa[7], wa[8])
    kb = (wb[0], wb[1], wb[2], wb[3], wb[4], wb[5], wb[6], wb[7], wb[8])
    for start in range(0, length, BAND):
        stop = min(start + BAND, length)
        da, db = out_a[start:stop], out_b[start:stop]
        x0, x1, x2, x3, x4, x5, x6, x7, x8 = taps9(src, shifts, 0, start, stop)
        for j in range(da.shape[0]):
            v = (x0[j], x1[j], x2[j], x3[j], x4[j], x5[j], x6[j], x7[j], x8[j])
            da[j] = bias_a + weighted_sum9(ka, v)
            db[j] = bias_b + weighted_sum9(kb, v)


@helper
def tap_dots(grad, src, shifts, ntaps, rows, cols, pitch, image_rows, real_rows, rowwise, acc):
    """``acc[t] += sum over (r, c < cols) of grad[r*pitch + c] * src[r*pitch + c + shifts[t]]`` in float64.

    ``grad`` holds ``rows`` rows on pitch ``pitch``: images of ``image_rows`` rows stacked one after the
    other, each with ``real_rows`` rows of ``cols`` real values; it is zero everywhere else. With
    ``rowwise=False`` the dots run over whole bands, zeros included (they add ``0 * src``, which is 0
    unless ``src`` holds NaN or Inf there); with ``rowwise=True`` they run over the real values only, row
    by row, so a non-finite value reaches exactly the taps that read it. Each segment's dot runs in the
    data's dtype (vectorised), segments add up in float64. Taps go nine, then three, then one at a time,
    as in ``correlate_flat``.
    """
    if rowwise:
        for r in range(rows):
            if r % image_rows >= real_rows:
                continue
            g = grad[r * pitch : r * pitch + cols]
            for t in range(ntaps):
                x = src[r * pitch + shifts[t] : r * pitch + shifts[t] + cols]
                s = g.dtype.type(0)
                for j in range(cols):
                    s += g[j] * x[j]
                acc[t] += s
        return
    length = (rows - 1) * pitch + cols
    for start in range(0, length, BAND):
        stop = min(start + BAND, length)
        g = grad[start:stop]
        t = 0
        while t + 9 <= ntaps:  # nine taps per pass: one load of ``g`` feeds nine multiply-adds
            x0, x1, x2, x3, x4, x5, x6, x7, x8 = taps9(src, shifts, t, start, stop)
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = g.dtype.type(0)
            for j in range(g.shape[0]):
                gj = g[j]
                s0 += gj * x0[j]
                s1 += gj * x1[j]
                s2 += gj * x2[j]
                s3 += gj * x3[j]
                s4 += gj * x4[j]
                s5 += gj * x5[j]
                s6 += gj * x6[j]
                s7 += gj * x7[j]
                s8 += gj * x8[j]
            acc[t] += s0
            acc[t + 1] += s1
            acc[t + 2] += s2
            acc[t + 3] += s3
            acc[t + 4] += s4
            acc[t + 5] += s5
            acc[t + 6] += s6
            acc[t + 7] += s7
            acc[t + 8] += s8
            t += 9
        while t + 3 <= ntaps:
            x0, x1, x2 = windows3(src, shifts, t, start, stop)
            s0 = s1 = s2 = g.dtype.type(0)
            for j in range(g.shape[0]):
                s0 += g[j] * x0[j]
                s1 += g[j] * x1[j]
                s2 += g[j] * x2[j]
            acc[t] += s0
            acc[t + 1] += s1
            acc[t + 2] += s2
            t += 3
        while t < ntaps:
            x0 = src[start + shifts[t] : stop + shifts[t]]
            s0 = g.dtype.type(0)
            for j in range(g.shape[0]):
                s0 += g[j] * x0[j]
            acc[t] += s0
            t += 1


@helper
def all_finite(values):
    """Tell whether every entry of a 1-D array is finite (no NaN, no Inf).

    A sum of ``v * 0`` (NaN for NaN and Inf, else 0) without an early exit: LLVM vectorises it, and the
    common case, all finite, reads everything anyway.
    """
    acc = values.dtype.type(0)
    for j in range(values.shape[0]):
        acc += values[j] * 0
    return np.isfinite(acc)


@helper
def fill(dst, value):
    """``dst[:] = value`` for a 1-D view.

    A plain loop: Numba's slice assignment goes through a generic broadcasting path that ran several times
    slower here.
    """
    for j in range(dst.shape[0]):
        dst[j] = value


@helper
def chunk_bounds(chunk, nchunks, ntasks):
    """Task range ``[lo, hi)`` of one chunk; the partition depends only on the counts."""
    return chunk * ntasks // nchunks, (chunk + 1) * ntasks // nchunks


@helper
def task_images(task, groups, images, n_batch):
    """Channel, group index, first image and image count of a task (tasks run channel by channel)."""
    group = task % groups
    n0 = group * images
    return task // groups, group, n0, min(images, n_batch - n0)


def same_size_offsets(problem, transpose=False):
    """Offset ``(dy, dx)`` of each tap ``t = a*KW + b`` from its output pixel, for a stride-1 problem.

    Output pixel (i, j) reads input pixel (i + dy, j + dx). ``transpose=True`` negates every offset: the
    correlation that computes the gradient with respect to the input.
    """
    g = problem.geometry
    (kh, kw), (dh, dw) = g.kernel, g.dilation
    top, _, left, _ = g.pad
    sign = -1 if transpose else 1
    return [(sign * (a * dh - top), sign * (b * dw - left)) for a in range(kh) for b in range(kw)]


# Tasks a size-keeping weight gradient splits its batch into at least (image groups times channels). A
# function of the shapes only: the groups fix the order of the float64 sums.
GRAD_WEIGHT_TASKS = 32


def weight_gradient_groups(n_batch, channels):
    """Images per group and the number of groups for a size-keeping weight gradient's tasks."""
    groups = min(n_batch, -(-GRAD_WEIGHT_TASKS // channels))
    images = -(-n_batch // groups)
    return images, -(-n_batch // images)


def chunk_count(ntasks):
    """How many chunks to cut ``ntasks`` equal tasks into (called from Python at each call).

    A few chunks per thread: scratch buffers are allocated once per chunk rather than once per task, and
    a thread that falls behind leaves work to the others. Each task's arithmetic is independent of the
    chunking, so the results do not depend on the thread count.
    """
    return max(1, min(ntasks, 8 * numba.get_num_threads()))
