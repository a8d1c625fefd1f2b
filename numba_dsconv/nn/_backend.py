"""The operations a layer needs, on the CPU or on the GPU: one place that maps a device name to kernels.

A layer holds one of these objects (``backend_ops(device)``) and calls only its methods, so the same layer
code runs on either device. Parameters, their gradients and batch-norm statistics always live on the host
as NumPy arrays (the optimisers and checkpoints work on them unchanged; they are small); activations live on
the device: on the GPU a layer moves its weights to the device for each pass and copies their gradients
back, while images and activations stay there from the first layer to the logits.

Shape legend: N = batch, C = channels, H, W = height and width, F = features.
"""

import numpy as np

from ..cpu._arrays import is_cuda_array

DEVICES = ("cpu", "cuda")


def backend_ops(device):
    """Return the operations for ``device``.

    Parameters
    ----------
    device : {"cpu", "cuda"}

    Raises
    ------
    ValueError
        For an unknown device, or for ``"cuda"`` when numba-cuda is not installed or no GPU is available
        (nor the CUDA simulator).
    """
    if device == "cpu":
        return _CPU_OPS
    if device == "cuda":
        return CudaOps()
    raise ValueError(f"device must be one of {DEVICES}; got {device!r}")


def _planes(array):
    """View an (N, C, H, W) array as (N, C, H*W)."""
    n, c = array.shape[0], array.shape[1]
    return array.reshape(n, c, array.size // (n * c))


class CpuOps:
    """NumPy arrays, the parallel ``@njit`` kernels of ``numba_dsconv.cpu`` and ``nn._kernels``."""

    device = "cpu"

    def __init__(self):
        from .. import cpu
        from . import _kernels

        self.conv = cpu
        self._k = _kernels

    def to_device(self, array):
        """Return ``array`` where the kernels read it (here: unchanged)."""
        return array

    def to_host(self, array):
        """Return ``array`` as a NumPy array (here: unchanged)."""
        return array

    def relu(self, x):
        """max(x, 0)."""
        y = np.empty(x.shape, x.dtype)
        self._k.relu_forward(_planes(np.ascontiguousarray(x)), _planes(y))
        return y

    def relu_backward(self, grad_y, y):
        """grad_y where y > 0, else 0."""
        gx = np.empty(y.shape, y.dtype)
        self._k.relu_backward(_planes(np.ascontiguousarray(grad_y)), _planes(y), _planes(gx))
        return gx

    def channel_moments(self, x):
        """Per-channel mean and biased variance of (N, C, H, W), float64 NumPy arrays (C,)."""
        mean = np.empty(x.shape[1], np.float64)
        var = np.empty(x.shape[1], np.float64)
        self._k.channel_moments(_planes(np.ascontiguousarray(x)), mean, var)
        return mean, var

    def scale_shift(self, x, scale, shift, relu):
        """Return x * scale[c] + shift[c] (then max(., 0) when ``relu``); scale, shift NumPy (C,) in x's dtype."""
        y = np.empty(x.shape, x.dtype)
        self._k.scale_shift(_planes(np.ascontiguousarray(x)), scale, shift, relu, _planes(y))
        return y

    def batchnorm_backward_sums(self, grad_y, x, mean, scale, shift, relu):
        """Per channel, float64: sum of g and of g * (x - mean).

        g = grad_y, masked when ``relu`` where the forward's ``x * scale + shift`` (``scale``, ``shift`` as
        given to :meth:`scale_shift`) was not > 0.
        """
        sum_gy = np.empty(x.shape[1], np.float64)
        sum_gy_xc = np.empty(x.shape[1], np.float64)
        self._k.batchnorm_backward_sums(
            _planes(np.ascontiguousarray(grad_y)), _planes(x), mean, scale, shift, relu, sum_gy, sum_gy_xc
        )
        return sum_gy, sum_gy_xc

    def batchnorm_backward_input(self, grad_y, x, scale, shift, relu, a, b, d):
        """a[c] * g + b[c] * x + d[c], g as in :meth:`batchnorm_backward_sums`."""
        gx = np.empty(x.shape, x.dtype)
        self._k.batchnorm_backward_input(
            _planes(np.ascontiguousarray(grad_y)), _planes(x), scale, shift, relu, a, b, d, _planes(gx)
        )
        return gx

    def global_avg_pool(self, x):
        """(N, C, H, W) -> (N, C): the mean over the pixels, summed in float64."""
        y = np.empty(x.shape[:2], x.dtype)
        self._k.plane_means(_planes(np.ascontiguousarray(x)), y)
        return y

    def global_avg_pool_backward(self, grad_y, shape):
        """(N, C) -> (N, C, H, W): every pixel gets grad / (H*W)."""
        scale = grad_y.dtype.type(1.0 / (shape[2] * shape[3]))
        return np.ascontiguousarray(np.broadcast_to((grad_y * scale)[:, :, None, None], shape))

    def linear(self, x, weight, bias):
        """(N, Fin) @ weight.T (+ bias) -> (N, Fout)."""
        y = x @ weight.T
        if bias is not None:
            y += bias
        return y

    def linear_backward(self, grad_y, x, weight, need_input_grad):
        """Gradients of :meth:`linear`: weight (host), bias (host, float64 sums), input (or None)."""
        grad_bias = grad_y.sum(axis=0, dtype=np.float64).astype(grad_y.dtype)
        return grad_y.T @ x, grad_bias, grad_y @ weight if need_input_grad else None


class CudaOps:
    """CUDA arrays, the ``@cuda.jit`` kernels of ``numba_dsconv.cuda`` and ``nn._cuda_kernels``."""

    device = "cuda"
    _THREADS = 256

    def __init__(self):
        try:
            from numba import cuda

            from .. import cuda as gpu
            from ..cuda import _arrays, _reduce
            from ..cuda.launch import blocks
            from . import _cuda_kernels
        except ImportError as exc:
            raise ValueError(
                f"device='cuda' needs the GPU backend, which could not be loaded ({exc}); "
                "install it with: pip install 'numba_dsconv[cuda]'"
            ) from exc
        if not cuda.is_available():
            raise ValueError(
                "device='cuda' but Numba finds no usable GPU (numba.cuda.is_available() is False); "
                "use device='cpu', or NUMBA_ENABLE_CUDASIM=1 to run the GPU code in Numba's simulator (slow)"
            )
        self.conv = gpu
        self._cuda = cuda
        self._k = _cuda_kernels
        self._sums = _reduce
        self._device_array = _arrays.empty
        self._blocks = blocks

    def _grid(self, count):
        return self._blocks(count, self._THREADS), self._THREADS

    def to_device(self, array):
        """Return ``array`` on the GPU (copied there from the host when it is a NumPy array)."""
        if is_cuda_array(array):
            return array
        return self._cuda.to_device(np.ascontiguousarray(array))

    def to_host(self, array):
        """Return ``array`` as a NumPy array (copied from the GPU when it is there)."""
        return array.copy_to_host() if is_cuda_array(array) else array

    def _empty(self, shape, dtype):
        return self._device_array(shape, dtype, 0)

    def relu(self, x):
        """max(x, 0)."""
        y = self._empty(x.shape, x.dtype)
        self._k.relu_forward[self._grid(x.size)](x.reshape(x.size), y.reshape(y.size))
        return y

    def relu_backward(self, grad_y, y):
        """grad_y where y > 0, else 0."""
        grad_y = self.to_device(grad_y)
        gx = self._empty(y.shape, y.dtype)
        self._k.relu_backward[self._grid(y.size)](grad_y.reshape(y.size), y.reshape(y.size), gx.reshape(y.size))
        return gx

    def channel_moments(self, x):
        """Per-channel mean and biased variance of (N, C, H, W), float64 NumPy arrays (C,): two passes."""
        count = x.size // x.shape[1]
        x3 = _planes(x)
        mean = self._sums.channel_sums(x3, self._sums.SUM_X, np.float64, 0).copy_to_host()[0] / count
        mean_d = self.to_device(mean)
        var = self._sums.channel_sums(x3, self._sums.SUM_SQUARED_DEVIATION, np.float64, 0, mean=mean_d)
        return mean, var.copy_to_host()[0] / count

    def scale_shift(self, x, scale, shift, relu):
        """Return x * scale[c] + shift[c] (then max(., 0) when ``relu``); scale, shift NumPy (C,) in x's dtype."""
        y = self._empty(x.shape, x.dtype)
        self._k.scale_shift[self._grid(x.size)](
            _planes(x), self.to_device(scale), self.to_device(shift), relu, _planes(y)
        )
        return y

    def batchnorm_backward_sums(self, grad_y, x, mean, scale, shift, relu):
        """Per channel, float64: sum of g and of g * (x - mean).

        g = grad_y, masked when ``relu`` where the forward's ``x * scale + shift`` was not > 0.
        """
        sums = self._sums.channel_sums(
            _planes(x),
            self._sums.BACKWARD_SUMS,
            np.float64,
            0,
            gy=_planes(self.to_device(grad_y)),
            mean=self.to_device(mean),
            scale=self.to_device(scale),
            shift=self.to_device(shift),
            relu=relu,
        ).copy_to_host()
        return sums[0], sums[1]

    def batchnorm_backward_input(self, grad_y, x, scale, shift, relu, a, b, d):
        """a[c] * g + b[c] * x + d[c], g as in :meth:`batchnorm_backward_sums`."""
        gx = self._empty(x.shape, x.dtype)
        scale, shift, a, b, d = (self.to_device(v) for v in (scale, shift, a, b, d))
        self._k.batchnorm_backward_input[self._grid(x.size)](
            _planes(self.to_device(grad_y)), _planes(x), scale, shift, relu, a, b, d, _planes(gx)
        )
        return gx

    def global_avg_pool(self, x):
        """(N, C, H, W) -> (N, C): the mean over the pixels, summed in float64."""
        y = self._empty(x.shape[:2], x.dtype)
        self._k.global_avg_pool[self._grid(x.shape[0] * x.shape[1])](_planes(x), y)
        return y

    def global_avg_pool_backward(self, grad_y, shape):
        """(N, C) -> (N, C, H, W): every pixel gets grad / (H*W)."""
        grad_y = self.to_device(grad_y)
        gx = self._empty(shape, grad_y.dtype)
        self._k.global_avg_pool_backward[self._grid(gx.size)](grad_y, _planes(gx))
        return gx

    def linear(self, x, weight, bias):
        """(N, Fin) @ weight.T (+ bias) -> (N, Fout): a pointwise convolution of 1x1 images."""
        x = self.to_device(x)
        n, fin = x.shape
        bias = None if bias is None else self.to_device(bias)
        y = self.conv.pointwise_conv2d(x.reshape(n, fin, 1, 1), self.to_device(weight), bias)
        return y.reshape(n, weight.shape[0])

    def linear_backward(self, grad_y, x, weight, need_input_grad):
        """Gradients of :meth:`linear`: weight (host), bias (host), input (device, or None)."""
        gy4 = self.to_device(grad_y).reshape(grad_y.shape[0], grad_y.shape[1], 1, 1)
        x4 = x.reshape(x.shape[0], x.shape[1], 1, 1)
        grad_weight = self.conv.pointwise_conv2d_grad_weight(gy4, x4, weight.shape).copy_to_host()
        grad_bias = self.conv.conv2d_grad_bias(gy4).copy_to_host()
        if not need_input_grad:
            return grad_weight, grad_bias, None
        gx = self.conv.pointwise_conv2d_grad_input(gy4, self.to_device(weight))
        return grad_weight, grad_bias, gx.reshape(x.shape)


_CPU_OPS = CpuOps()
