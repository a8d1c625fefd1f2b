"""CPU backend: parallel ``@njit`` kernels over NumPy arrays."""

from .depthwise import depthwise_conv2d, depthwise_conv2d_grad_input, depthwise_conv2d_grad_weight
from .pointwise import (
    conv2d_grad_bias,
    pointwise_conv2d,
    pointwise_conv2d_grad_input,
    pointwise_conv2d_grad_weight,
)
from .separable import SeparableGrads, separable_conv2d, separable_conv2d_backward

__all__ = [
    "conv2d_grad_bias",
    "depthwise_conv2d",
    "depthwise_conv2d_grad_input",
    "depthwise_conv2d_grad_weight",
    "pointwise_conv2d",
    "pointwise_conv2d_grad_input",
    "pointwise_conv2d_grad_weight",
    "SeparableGrads",
    "separable_conv2d",
    "separable_conv2d_backward",
]
