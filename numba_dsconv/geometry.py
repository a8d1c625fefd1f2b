"""Convolution geometry: the one place that normalises options and checks shapes.

Shape legend: N = batch, C = input channels, M = channel multiplier, H/W = input height/width,
KH/KW = kernel height/width, Ho/Wo = output height/width.

Every public function (CPU and GPU) turns its ``stride``, ``padding`` and ``dilation`` arguments into a
:class:`Conv2dGeometry` here, so that the rules and the error messages are written once.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Conv2dGeometry:
    """Resolved geometry of one 2-D convolution.

    Attributes
    ----------
    in_hw : (int, int)
        Input height and width ``(H, W)``.
    kernel : (int, int)
        Kernel height and width ``(KH, KW)``.
    stride, dilation : (int, int)
        Per-axis stride and dilation, each >= 1.
    pad : (int, int, int, int)
        Zero padding ``(top, bottom, left, right)``, each >= 0.
    out_hw : (int, int)
        Output height and width ``(Ho, Wo)``, each >= 1.
    """

    in_hw: tuple
    kernel: tuple
    stride: tuple
    dilation: tuple
    pad: tuple
    out_hw: tuple


def _positive_int(value, name):
    # operator.index accepts every integer type (NumPy's included) and refuses floats and bools' cousins.
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    return value


def normalize_pair(value, name, *, minimum=1):
    """Return ``value`` as a pair ``(h, w)`` of ints, each >= ``minimum``.

    Parameters
    ----------
    value : int or (int, int)
        One value for both axes, or one per axis.
    name : str
        Argument name used in error messages.
    minimum : int
        Smallest legal value.

    Raises
    ------
    TypeError
        If ``value`` is not an int or a pair of ints.
    ValueError
        If a value is below ``minimum`` or a sequence does not have two entries.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
        pair = tuple(_positive_int(v, name) for v in value)
    else:
        v = _positive_int(value, name)
        pair = (v, v)
    for v in pair:
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum} on each axis, got {value!r}")
    return pair


def same_padding(size, kernel, stride, dilation):
    """TensorFlow's ``"same"`` padding along one axis.

    The output has ``ceil(size / stride)`` entries; the total padding is whatever makes the last window
    fit, and the odd pixel (if any) goes after the input (bottom or right).

    Returns
    -------
    (int, int)
        Padding before and after the input.
    """
    out = -(-size // stride)
    effective = dilation * (kernel - 1) + 1
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def normalize_padding(padding, in_hw, kernel, stride, dilation):
    """Resolve every accepted padding form into ``(top, bottom, left, right)``.

    Parameters
    ----------
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same"
        ``int``: the same on all four sides; ``(h, w)``: symmetric per axis;
        ``((top, bottom), (left, right))``: fully explicit; ``"valid"``: none;
        ``"same"``: TensorFlow's rule for any stride and dilation.
    in_hw, kernel, stride, dilation : (int, int)
        Input size, kernel size, stride and dilation, needed by ``"same"``.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "same":
            top, bottom = same_padding(in_hw[0], kernel[0], stride[0], dilation[0])
            left, right = same_padding(in_hw[1], kernel[1], stride[1], dilation[1])
            return (top, bottom, left, right)
        raise ValueError(f"padding must be 'valid', 'same', an int or pairs of ints, got {padding!r}")
    if isinstance(padding, (tuple, list)):
        if len(padding) != 2:
            raise ValueError(f"padding must be an int, (h, w) or ((top, bottom), (left, right)), got {padding!r}")
        if all(isinstance(p, (tuple, list)) for p in padding):
            (top, bottom), (left, right) = (normalize_pair(p, "padding", minimum=0) for p in padding)
            return (top, bottom, left, right)
        ph, pw = normalize_pair(padding, "padding", minimum=0)
        return (ph, ph, pw, pw)
    p = normalize_pair(padding, "padding", minimum=0)[0]
    return (p, p, p, p)


def conv_output_size(size, kernel, stride, dilation, pad_before, pad_after):
    """Output length along one axis: ``floor((size + pads - dilation*(kernel-1) - 1) / stride) + 1``."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_geometry(in_hw, kernel, stride=1, padding=0, dilation=1):
    """Normalise the options of a 2-D convolution and compute its output size.

    Parameters
    ----------
    in_hw : (int, int)
        Input height and width.
    kernel : (int, int)
        Kernel height and width.
    stride, padding, dilation
        As accepted by the public functions (see :func:`normalize_pair`, :func:`normalize_padding`).

    Returns
    -------
    Conv2dGeometry

    Raises
    ------
    ValueError
        If the dilated kernel does not fit in the padded input (the output would be empty).
    """
    stride = normalize_pair(stride, "stride")
    dilation = normalize_pair(dilation, "dilation")
    pad = normalize_padding(padding, in_hw, kernel, stride, dilation)
    out = []
    for axis, name in enumerate(("height", "width")):
        before, after = pad[2 * axis], pad[2 * axis + 1]
        size = conv_output_size(in_hw[axis], kernel[axis], stride[axis], dilation[axis], before, after)
        if size < 1:
            effective = dilation[axis] * (kernel[axis] - 1) + 1
            padded = in_hw[axis] + before + after
            raise ValueError(
                f"weight: dilated kernel {name} {effective} (kernel {kernel[axis]}, dilation {dilation[axis]}) "
                f"is larger than the padded input {name} {padded} (input {in_hw[axis]}, padding {before}+{after}); "
                "the output would be empty"
            )
        out.append(size)
    return Conv2dGeometry(tuple(in_hw), tuple(kernel), stride, dilation, pad, tuple(out))


# ---------------------------------------------------------------------------------------------------------
# Array checks shared by the CPU and GPU front ends. They work on anything with .shape and .dtype.


def check_dtype(name, array):
    """Raise ``TypeError`` unless ``array`` is float32 or float64; return its dtype."""
    dtype = np.dtype(array.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {dtype}; numba_dsconv supports float32 and float64")
    return dtype


def check_same_dtype(reference_name, reference, **others):
    """Raise ``TypeError`` unless every array in ``others`` has the dtype of ``reference``."""
    dtype = check_dtype(reference_name, reference)
    for name, array in others.items():
        if array is None:
            continue
        other = check_dtype(name, array)
        if other != dtype:
            raise TypeError(
                f"{name} has dtype {other} but {reference_name} has dtype {dtype}; cast them to one dtype first"
            )
    return dtype


def check_shape(name, shape, expected, what):
    """Raise ``ValueError`` unless ``shape`` equals ``expected``; ``what`` describes the expected layout."""
    shape = tuple(int(s) for s in shape)
    if shape != tuple(expected):
        raise ValueError(f"{name} has shape {shape}; expected {tuple(expected)} {what}")


def check_rank(name, shape, rank, layout):
    """Raise ``ValueError`` unless ``shape`` has ``rank`` dimensions, all >= 1."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != rank:
        raise ValueError(f"{name} has shape {shape}; expected {rank} dimensions {layout}")
    if min(shape) < 1:
        raise ValueError(f"{name} has shape {shape}; every dimension of {layout} must be >= 1")
    return shape


def check_shape_argument(name, shape, rank, layout):
    """Validate a shape passed as an argument (``input_shape``, ``weight_shape``); return it as a tuple."""
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of {rank} ints {layout}, got {shape!r}") from None
    return check_rank(name, shape, rank, layout)


@dataclass(frozen=True)
class DepthwiseProblem:
    """Shapes of one depthwise convolution: ``x (N, C, H, W)``, ``weight (C*M, 1, KH, KW)``."""

    batch: int
    in_channels: int
    multiplier: int
    geometry: Conv2dGeometry

    @property
    def out_channels(self):
        """C*M."""
        return self.in_channels * self.multiplier

    @property
    def input_shape(self):
        """(N, C, H, W)."""
        return (self.batch, self.in_channels) + self.geometry.in_hw

    @property
    def weight_shape(self):
        """(C*M, 1, KH, KW)."""
        return (self.out_channels, 1) + self.geometry.kernel

    @property
    def output_shape(self):
        """(N, C*M, Ho, Wo)."""
        return (self.batch, self.out_channels) + self.geometry.out_hw

    @property
    def keeps_size(self):
        """Stride 1 and an output the input's size: every tap is one constant flat shift within a plane."""
        return self.geometry.stride == (1, 1) and self.geometry.out_hw == self.geometry.in_hw


def depthwise_problem(input_shape, weight_shape, stride, padding, dilation, *, input_name="x", weight_name="weight"):
    """Check the shapes of a depthwise convolution and resolve its geometry.

    Parameters
    ----------
    input_shape : (N, C, H, W)
    weight_shape : (C*M, 1, KH, KW)
    input_name, weight_name : str
        How the input and the weight are called in error messages.

    Returns
    -------
    DepthwiseProblem
    """
    n, c, h, w = check_rank(input_name, input_shape, 4, "(N, C, H, W)")
    cm, one, kh, kw = check_rank(weight_name, weight_shape, 4, "(C*M, 1, KH, KW)")
    if one != 1 or cm % c != 0:
        raise ValueError(
            f"{weight_name} has shape {tuple(weight_shape)}; expected (C*M, 1, KH, KW) with C = {c} input channels, "
            f"i.e. a first dimension that is a multiple of {c} and a second dimension of 1"
        )
    geometry = conv2d_geometry((h, w), (kh, kw), stride, padding, dilation)
    return DepthwiseProblem(n, c, cm // c, geometry)


def check_bias(bias, channels, name="bias"):
    """Raise ``ValueError`` unless ``bias`` is ``None`` or has shape ``(channels,)``."""
    if bias is not None:
        check_shape(name, bias.shape, (channels,), "(one value per output channel)")


def pointwise_weight_matrix_shape(weight_shape, name="weight"):
    """Accept ``(Cout, Cin, 1, 1)`` or ``(Cout, Cin)``; return ``(Cout, Cin)``."""
    shape = tuple(int(s) for s in weight_shape)
    if len(shape) == 4 and shape[2:] == (1, 1) or len(shape) == 2:
        check_rank(name, shape, len(shape), "(Cout, Cin, 1, 1) or (Cout, Cin)")
        return shape[:2]
    raise ValueError(f"{name} has shape {shape}; expected (Cout, Cin, 1, 1) or (Cout, Cin)")


def pointwise_weight_for_input(weight_shape, in_channels, name="weight", input_what="x's"):
    """Check a pointwise weight against an input with ``in_channels`` channels; return ``(Cout, Cin)``."""
    cout, cin = pointwise_weight_matrix_shape(weight_shape, name)
    if cin != in_channels:
        raise ValueError(
            f"{name} has shape {tuple(weight_shape)}; expected (Cout, {in_channels}, 1, 1) or (Cout, {in_channels}) "
            f"to match {input_what} {in_channels} channels"
        )
    return cout, cin


def pointwise_weight_for_grad(weight_shape, out_channels):
    """Check a pointwise weight against an output gradient with ``out_channels`` channels; return ``(Cout, Cin)``."""
    cout, cin = pointwise_weight_matrix_shape(weight_shape)
    if cout != out_channels:
        raise ValueError(
            f"weight has shape {tuple(weight_shape)}; expected ({out_channels}, Cin, 1, 1) or ({out_channels}, Cin) "
            f"to match grad_y's {out_channels} channels"
        )
    return cout, cin


def pointwise_grad_weight_shape(grad_y_shape, x_shape, weight_shape):
    """Check the operands of a pointwise weight gradient; return the result's shape.

    Parameters
    ----------
    grad_y_shape : (N, Cout, H, W)
    x_shape : (N, Cin, H, W)
    weight_shape : (Cout, Cin, 1, 1) or (Cout, Cin) or None
        ``None`` means (Cout, Cin, 1, 1).
    """
    n, cin, h, w = check_rank("x", x_shape, 4, "(N, C, H, W)")
    gy_shape = check_rank("grad_y", grad_y_shape, 4, "(N, C, H, W)")
    cout = gy_shape[1]
    check_shape("grad_y", gy_shape, (n, cout, h, w), "(N, Cout, H, W) with x's N, H and W")
    if weight_shape is None:
        return (cout, cin, 1, 1)
    weight_shape = tuple(weight_shape)
    if pointwise_weight_matrix_shape(weight_shape) != (cout, cin):
        raise ValueError(
            f"weight_shape is {weight_shape}; expected ({cout}, {cin}, 1, 1) or ({cout}, {cin}) for grad_y with "
            f"{cout} channels and x with {cin}"
        )
    return weight_shape


@dataclass(frozen=True)
class SeparableProblem:
    """Shapes of one separable convolution: a depthwise problem, then ``F`` pointwise output channels."""

    depthwise: DepthwiseProblem
    features: int

    @property
    def output_shape(self):
        """(N, F, Ho, Wo)."""
        return (self.depthwise.batch, self.features) + self.depthwise.geometry.out_hw


def separable_problem(x, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, stride, padding,
                      dilation):
    """Check the operands of a separable convolution (anything with ``.shape`` and ``.dtype``).

    Parameters
    ----------
    x : (N, C, H, W)
    depthwise_weight : (C*M, 1, KH, KW)
    pointwise_weight : (F, C*M, 1, 1) or (F, C*M)
    depthwise_bias : (C*M,) or None
    pointwise_bias : (F,) or None

    Returns
    -------
    SeparableProblem, dtype

    Raises
    ------
    TypeError, ValueError
        Naming the argument at fault, as the separate functions do.
    """
    dtype = check_same_dtype(
        "x", x, depthwise_weight=depthwise_weight, pointwise_weight=pointwise_weight,
        depthwise_bias=depthwise_bias, pointwise_bias=pointwise_bias,
    )  # fmt: skip
    problem = depthwise_problem(x.shape, depthwise_weight.shape, stride, padding, dilation,
                                weight_name="depthwise_weight")
    check_bias(depthwise_bias, problem.out_channels, "depthwise_bias")
    features, _ = pointwise_weight_for_input(
        pointwise_weight.shape, problem.out_channels, "pointwise_weight", "the depthwise output's"
    )
    check_bias(pointwise_bias, features, "pointwise_bias")
    return SeparableProblem(problem, features), dtype
