"""GPU backend: ``@cuda.jit`` kernels over CUDA arrays, with the CPU backend's names, options and errors.

Inputs are anything with ``__cuda_array_interface__`` (Numba device arrays, CuPy arrays, PyTorch CUDA
tensors); outputs are Numba device arrays. Every function takes an optional ``stream=`` and returns
without waiting for the GPU. Needs the ``numba-cuda`` package (``pip install numba_dsconv[cuda]``); without a
GPU, ``NUMBA_ENABLE_CUDASIM=1`` runs the kernels in Numba's CUDA simulator (slow, for tests).
"""

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
