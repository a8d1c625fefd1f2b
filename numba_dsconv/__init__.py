"""numba_dsconv: Numba kernels for depthwise separable convolution.

Depthwise 2-D convolution (channel multiplier, stride, padding, dilation) and pointwise (1x1)
convolution, forward and backward, and the two in one (``separable_conv2d``, fused on the CPU), in NCHW
layout with PyTorch's weight shapes. The functions here run on the CPU for NumPy arrays
(``numba_dsconv.cpu``) and on the GPU for CUDA arrays (``numba_dsconv.cuda``).
"""

from ._threading import select_threading_layer

select_threading_layer()

from ._dispatch import (  # noqa: E402  (the threading layer must be chosen before any kernel runs)
    conv2d_grad_bias,
    depthwise_conv2d,
    depthwise_conv2d_grad_input,
    depthwise_conv2d_grad_weight,
    pointwise_conv2d,
    pointwise_conv2d_grad_input,
    pointwise_conv2d_grad_weight,
    separable_conv2d,
    separable_conv2d_backward,
)
from .cpu.separable import SeparableGrads  # noqa: E402

__version__ = "0.1.0"

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
