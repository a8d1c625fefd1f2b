import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numba_dsconv import geometry


@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 4),
    dilation=st.integers(1, 4),
)
def test_same_padding_gives_ceil_output_and_puts_odd_pixel_last(size, kernel, stride, dilation):
    before, after = geometry.same_padding(size, kernel, stride, dilation)
    assert 0 <= before <= after <= before + 1
    out = geometry.conv_output_size(size, kernel, stride, dilation, before, after)
    assert out == math.ceil(size / stride)


@pytest.mark.parametrize(
    "size, kernel, stride, dilation, expected",
    [
        (5, 3, 2, 1, (1, 1)),  # TensorFlow: out 3, total 2
        (6, 3, 2, 1, (0, 1)),  # out 3, total 1: the odd pixel goes after
        (7, 3, 1, 2, (2, 2)),  # dilation 2: effective kernel 5
        (4, 1, 3, 1, (0, 0)),  # 1x1 kernel never pads
        (2, 7, 1, 3, (9, 9)),  # kernel far larger than the input
    ],
)
def test_same_padding_known_values(size, kernel, stride, dilation, expected):
    assert geometry.same_padding(size, kernel, stride, dilation) == expected


@pytest.mark.parametrize(
    "padding, expected",
    [
        (0, (0, 0, 0, 0)),
        (2, (2, 2, 2, 2)),
        ((1, 3), (1, 1, 3, 3)),
        (((1, 2), (0, 3)), (1, 2, 0, 3)),
        ([[1, 2], [0, 3]], (1, 2, 0, 3)),
        ("valid", (0, 0, 0, 0)),
        ("VALID", (0, 0, 0, 0)),
        (np.int64(1), (1, 1, 1, 1)),
    ],
)
def test_padding_forms(padding, expected):
    g = geometry.conv2d_geometry((9, 9), (3, 3), 1, padding, 1)
    assert g.pad == expected
    top, bottom, left, right = expected
    assert g.out_hw == (9 + top + bottom - 2, 9 + left + right - 2)


def test_output_size_formula_with_everything_asymmetric():
    g = geometry.conv2d_geometry((17, 12), (3, 5), (2, 3), ((1, 2), (0, 4)), (3, 2))
    # Ho = floor((17 + 3 - 3*2 - 1) / 2) + 1 = 7; Wo = floor((12 + 4 - 2*4 - 1) / 3) + 1 = 3
    assert g.out_hw == (7, 3)
    assert g.stride == (2, 3) and g.dilation == (3, 2)


@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value", [0, -1, (1, 0), (2, -3)])
def test_stride_and_dilation_must_be_positive(name, value):
    kwargs = {"stride": 1, "dilation": 1, name: value}
    with pytest.raises(ValueError, match=name):
        geometry.conv2d_geometry((8, 8), (3, 3), kwargs["stride"], 0, kwargs["dilation"])


@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value", [1.5, "2", (1, 2, 3), True, None])
def test_stride_and_dilation_must_be_ints_or_pairs(name, value):
    kwargs = {"stride": 1, "dilation": 1, name: value}
    with pytest.raises((TypeError, ValueError), match=name):
        geometry.conv2d_geometry((8, 8), (3, 3), kwargs["stride"], 0, kwargs["dilation"])


@pytest.mark.parametrize("padding", [-1, (0, -2), ((0, 1), (-1, 0)), "full", (1, 2, 3), 1.0])
def test_bad_padding(padding):
    with pytest.raises((TypeError, ValueError), match="padding"):
        geometry.conv2d_geometry((8, 8), (3, 3), 1, padding, 1)


def test_kernel_larger_than_padded_input_names_sizes():
    with pytest.raises(ValueError, match=r"dilated kernel height 7 .* padded input height 6"):
        geometry.conv2d_geometry((4, 20), (4, 3), 1, 1, 2)
