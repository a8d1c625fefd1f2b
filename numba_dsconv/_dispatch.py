"""The top-level functions: host arrays run on the CPU backend, CUDA arrays on the GPU backend.

Each function looks at its array arguments only; every other argument goes to the backend unchanged, so the
options, checks and errors are the backend's. A call that mixes host and device arrays is refused: the
library never copies between devices behind the user's back.
"""

from .cpu._arrays import is_cuda_array


def _gpu_backend():
    try:
        from . import cuda
    except ImportError as exc:
        raise ImportError(
            f"CUDA arrays need numba_dsconv's GPU backend, which could not be loaded ({exc}); "
            "install it with: pip install 'numba_dsconv[cuda]'"
        ) from exc
    return cuda


def backend_for(**arrays):
    """Return the backend module for these arrays (``None`` values are ignored).

    Raises
    ------
    TypeError
        If some arrays are CUDA arrays and others are not.
    """
    on_device = {name: is_cuda_array(value) for name, value in arrays.items() if value is not None}
    if not any(on_device.values()):
        from . import cpu

        return cpu
    if all(on_device.values()):
        return _gpu_backend()
    device = next(name for name, flag in on_device.items() if flag)
    host = next(name for name, flag in on_device.items() if not flag)
    raise TypeError(
        f"{device} is a CUDA array but {host} is a host array; pass every array on the same device "
        "(numba.cuda.to_device copies to the GPU, .copy_to_host() back)"
    )


def depthwise_conv2d(x, weight, bias=None, **options):
    """Depthwise 2-D convolution; see :func:`numba_dsconv.cpu.depthwise_conv2d` (and the ``cuda`` twin)."""
    return backend_for(x=x, weight=weight, bias=bias).depthwise_conv2d(x, weight, bias, **options)


def depthwise_conv2d_grad_input(grad_y, weight, input_shape, **options):
    """Input gradient of the depthwise convolution; see :func:`numba_dsconv.cpu.depthwise_conv2d_grad_input`."""
    backend = backend_for(grad_y=grad_y, weight=weight)
    return backend.depthwise_conv2d_grad_input(grad_y, weight, input_shape, **options)


def depthwise_conv2d_grad_weight(grad_y, x, weight_shape, **options):
    """Weight gradient of the depthwise convolution; see :func:`numba_dsconv.cpu.depthwise_conv2d_grad_weight`."""
    return backend_for(grad_y=grad_y, x=x).depthwise_conv2d_grad_weight(grad_y, x, weight_shape, **options)


def pointwise_conv2d(x, weight, bias=None, **options):
    """Pointwise (1x1) convolution; see :func:`numba_dsconv.cpu.pointwise_conv2d`."""
    return backend_for(x=x, weight=weight, bias=bias).pointwise_conv2d(x, weight, bias, **options)


def pointwise_conv2d_grad_input(grad_y, weight, **options):
    """Input gradient of the pointwise convolution; see :func:`numba_dsconv.cpu.pointwise_conv2d_grad_input`."""
    return backend_for(grad_y=grad_y, weight=weight).pointwise_conv2d_grad_input(grad_y, weight, **options)


def pointwise_conv2d_grad_weight(grad_y, x, weight_shape=None, **options):
    """Weight gradient of the pointwise convolution; see :func:`numba_dsconv.cpu.pointwise_conv2d_grad_weight`."""
    return backend_for(grad_y=grad_y, x=x).pointwise_conv2d_grad_weight(grad_y, x, weight_shape, **options)


def conv2d_grad_bias(grad_y, **options):
    """Bias gradient of a convolution; see :func:`numba_dsconv.cpu.conv2d_grad_bias`."""
    return backend_for(grad_y=grad_y).conv2d_grad_bias(grad_y, **options)


def separable_conv2d(x, depthwise_weight, pointwise_weight, depthwise_bias=None, pointwise_bias=None, **options):
    """Depthwise then pointwise convolution, fused on the CPU; see :func:`numba_dsconv.cpu.separable_conv2d`."""
    backend = backend_for(x=x, depthwise_weight=depthwise_weight, pointwise_weight=pointwise_weight,
                          depthwise_bias=depthwise_bias, pointwise_bias=pointwise_bias)
    return backend.separable_conv2d(x, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, **options)


def separable_conv2d_backward(grad_y, x, depthwise_weight, pointwise_weight, depthwise_bias=None, **options):
    """Gradients of :func:`separable_conv2d`; see :func:`numba_dsconv.cpu.separable_conv2d_backward`."""
    backend = backend_for(grad_y=grad_y, x=x, depthwise_weight=depthwise_weight, pointwise_weight=pointwise_weight,
                          depthwise_bias=depthwise_bias, depthwise_output=options.get("depthwise_output"))
    return backend.separable_conv2d_backward(grad_y, x, depthwise_weight, pointwise_weight, depthwise_bias,
                                             **options)
