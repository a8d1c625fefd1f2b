"""Layers with a forward and a backward pass, built on the library's kernels.

Shape legend: N = batch, C = channels, M = channel multiplier, H, W = height and width, F = features.

Every layer follows one protocol:

- ``forward(x, training=False)`` returns the output; with ``training=True`` it keeps what its backward pass
  needs (and batch normalisation uses and updates its batch statistics).
- ``backward(grad_y, need_input_grad=True)`` *adds* the gradients of its parameters into their ``grad``
  buffers (zeroed by the optimiser's ``zero_grad``) and returns the gradient with respect to its input, or
  ``None`` when ``need_input_grad`` is false (the first layer of a model has no one to pass it to).
- ``parameters()`` maps names to :class:`Parameter` (trained), ``buffers()`` maps names to arrays that are
  state but not trained (batch-norm running statistics); both are what a checkpoint saves.

``device="cuda"`` runs a layer's arithmetic on the GPU: its inputs and outputs are then CUDA arrays (a NumPy
input is moved to the device), while parameters, gradients and statistics stay NumPy arrays on the host
(see ``_backend``).
"""

import numpy as np

from .. import geometry
from ._backend import backend_ops


class Parameter:
    """A trained array and the buffer its gradient accumulates into (same shape and dtype)."""

    __slots__ = ("value", "grad")

    def __init__(self, value):
        self.value = value
        self.grad = np.zeros_like(value)

    def __repr__(self):
        return f"Parameter(shape={self.value.shape}, dtype={self.value.dtype})"


def he_normal(rng, shape, fan_in, dtype):
    """He (Kaiming) initialisation for layers followed by ReLU: normal with std sqrt(2 / fan_in)."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


class Layer:
    """Base class: no parameters, no buffers."""

    def parameters(self):
        """Trained parameters by name."""
        return {}

    def buffers(self):
        """Untrained state (arrays updated in place) by name."""
        return {}

    def forward(self, x, training=False):
        """Compute the output; keep what backward needs when ``training``."""
        raise NotImplementedError

    def backward(self, grad_y, need_input_grad=True):
        """Accumulate parameter gradients; return the input gradient (or None)."""
        raise NotImplementedError

    def _saved(self, value, what):
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward(x, training=True) ({what})")
        return value


class _WeightAndBias(Layer):
    """Base for layers with a weight and an optional bias (one per output channel or feature)."""

    def __init__(self, weight, bias, dtype, device):
        self.weight = Parameter(weight)
        self.bias = Parameter(np.zeros(weight.shape[0], dtype)) if bias else None
        self._x = None
        self._ops = backend_ops(device)

    def parameters(self):
        """``weight`` and, when the layer has one, ``bias``."""
        return {"weight": self.weight} | ({"bias": self.bias} if self.bias is not None else {})

    def _weight_value(self):
        return self._ops.to_device(self.weight.value)

    def _bias_value(self):
        return None if self.bias is None else self._ops.to_device(self.bias.value)

    def _accumulate_bias_grad(self, grad_y):
        if self.bias is not None:
            self.bias.grad += self._ops.to_host(self._ops.conv.conv2d_grad_bias(grad_y))


class DepthwiseConv2d(_WeightAndBias):
    """Depthwise 2-D convolution with channel multiplier: (N, C, H, W) -> (N, C*M, Ho, Wo).

    Weight (C*M, 1, KH, KW), He-initialised with fan-in KH*KW; bias (C*M,).

    Parameters
    ----------
    in_channels : int
    multiplier : int
        Filters per input channel; output channel ``o`` reads input channel ``o // multiplier``.
    kernel_size : int or (int, int)
    stride, padding, dilation
        As in :func:`numba_dsconv.depthwise_conv2d` (padding may be ``"same"``).
    bias : bool
    rng : numpy.random.Generator
        Draws the He-initialised weight (fan-in KH*KW).
    dtype : float32 or float64
    device : "cpu" or "cuda"
    """

    def __init__(self, in_channels, multiplier=1, kernel_size=3, *, stride=1, padding=0, dilation=1, bias=True,
                 rng, dtype=np.float32, device="cpu"):
        kh, kw = geometry.normalize_pair(kernel_size, "kernel_size")
        self.options = {"stride": stride, "padding": padding, "dilation": dilation}
        weight = he_normal(rng, (in_channels * multiplier, 1, kh, kw), kh * kw, dtype)
        super().__init__(weight, bias, dtype, device)

    def forward(self, x, training=False):
        """(N, C, H, W) -> (N, C*M, Ho, Wo)."""
        x = self._ops.to_device(x)
        self._x = x if training else None
        return self._ops.conv.depthwise_conv2d(x, self._weight_value(), self._bias_value(), **self.options)

    def backward(self, grad_y, need_input_grad=True):
        """(N, C*M, Ho, Wo) -> (N, C, H, W)."""
        x = self._saved(self._x, "input")
        grad_y = self._ops.to_device(grad_y)
        conv = self._ops.conv
        grad_w = conv.depthwise_conv2d_grad_weight(grad_y, x, self.weight.value.shape, **self.options)
        self.weight.grad += self._ops.to_host(grad_w)
        self._accumulate_bias_grad(grad_y)
        if not need_input_grad:
            return None
        return conv.depthwise_conv2d_grad_input(grad_y, self._weight_value(), tuple(x.shape), **self.options)


class PointwiseConv2d(_WeightAndBias):
    """Pointwise (1x1) convolution: (N, Cin, H, W) -> (N, Cout, H, W).

    Weight (Cout, Cin, 1, 1), He-initialised with fan-in Cin; bias (Cout,).
    """

    def __init__(self, in_channels, out_channels, *, bias=True, rng, dtype=np.float32, device="cpu"):
        super().__init__(he_normal(rng, (out_channels, in_channels, 1, 1), in_channels, dtype), bias, dtype, device)

    def forward(self, x, training=False):
        """(N, Cin, H, W) -> (N, Cout, H, W)."""
        x = self._ops.to_device(x)
        self._x = x if training else None
        return self._ops.conv.pointwise_conv2d(x, self._weight_value(), self._bias_value())

    def backward(self, grad_y, need_input_grad=True):
        """(N, Cout, H, W) -> (N, Cin, H, W)."""
        x = self._saved(self._x, "input")
        grad_y = self._ops.to_device(grad_y)
        self.weight.grad += self._ops.to_host(self._ops.conv.pointwise_conv2d_grad_weight(grad_y, x))
        self._accumulate_bias_grad(grad_y)
        if not need_input_grad:
            return None
        return self._ops.conv.pointwise_conv2d_grad_input(grad_y, self._weight_value())


class SeparableConv2d(Layer):
    """Depthwise (multiplier 1) then pointwise convolution: (N, Cin, H, W) -> (N, Cout, Ho, Wo).

    Parameters are named ``depthwise.weight``, ``depthwise.bias``, ``pointwise.weight``, ``pointwise.bias``
    (the two halves are held as a :class:`DepthwiseConv2d` and a :class:`PointwiseConv2d`).

    Evaluation runs :func:`numba_dsconv.separable_conv2d` (fused on the CPU: the intermediate (N, Cin, Ho,
    Wo) activation is never held in full). Training keeps that intermediate from the forward pass, which then
    runs the two halves, and hands it to :func:`numba_dsconv.separable_conv2d_backward`, which takes every
    gradient group by group without holding the intermediate's gradient in full. Recomputing the
    intermediate in the backward pass instead (the backward's default) measured 10-35% slower per block at
    the trainer's shapes, against 0-15% gained by a fused training forward.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, *, stride=1, padding=0, dilation=1,
                 depthwise_bias=True, pointwise_bias=True, rng, dtype=np.float32, device="cpu"):
        self.depthwise = DepthwiseConv2d(in_channels, 1, kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, bias=depthwise_bias, rng=rng, dtype=dtype,
                                         device=device)
        self.pointwise = PointwiseConv2d(in_channels, out_channels, bias=pointwise_bias, rng=rng, dtype=dtype,
                                         device=device)
        self._ops = backend_ops(device)
        self._x = self._h = None

    def parameters(self):
        """Return the depthwise then the pointwise parameters, prefixed by the half they belong to."""
        return {f"{half}.{name}": p for half in ("depthwise", "pointwise")
                for name, p in getattr(self, half).parameters().items()}

    def forward(self, x, training=False):
        """(N, Cin, H, W) -> (N, Cout, Ho, Wo)."""
        x = self._ops.to_device(x)
        conv, options = self._ops.conv, self.depthwise.options
        dw, db = self.depthwise._weight_value(), self.depthwise._bias_value()
        pw, pb = self.pointwise._weight_value(), self.pointwise._bias_value()
        if not training:
            self._x = self._h = None
            return conv.separable_conv2d(x, dw, pw, db, pb, **options)
        self._x = x
        self._h = conv.depthwise_conv2d(x, dw, db, **options)
        return conv.pointwise_conv2d(self._h, pw, pb)

    def backward(self, grad_y, need_input_grad=True):
        """(N, Cout, Ho, Wo) -> (N, Cin, H, W)."""
        x = self._saved(self._x, "input")
        depthwise, pointwise = self.depthwise, self.pointwise
        grads = self._ops.conv.separable_conv2d_backward(
            self._ops.to_device(grad_y), x, depthwise._weight_value(), pointwise._weight_value(),
            depthwise._bias_value(), need_input_grad=need_input_grad, depthwise_output=self._h,
            **depthwise.options,
        )
        to_host = self._ops.to_host
        depthwise.weight.grad += to_host(grads.grad_depthwise_weight)
        pointwise.weight.grad += to_host(grads.grad_pointwise_weight)
        if depthwise.bias is not None:
            depthwise.bias.grad += to_host(grads.grad_depthwise_bias)
        if pointwise.bias is not None:
            pointwise.bias.grad += to_host(grads.grad_pointwise_bias)
        return grads.grad_input


class ReLU(Layer):
    """max(x, 0), elementwise, on (N, C, H, W); NaN propagates."""

    def __init__(self, *, device="cpu"):
        self._y = None
        self._ops = backend_ops(device)

    def forward(self, x, training=False):
        """(N, C, H, W) -> same shape."""
        y = self._ops.relu(self._ops.to_device(x))
        self._y = y if training else None
        return y

    def backward(self, grad_y, need_input_grad=True):
        """Pass the gradient where the output was positive."""
        y = self._saved(self._y, "output")
        if not need_input_grad:
            return None
        return self._ops.relu_backward(grad_y, y)


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel, with learned scale and shift, optionally then a ReLU.

    Training uses the batch's mean and biased variance and updates the running statistics
    (``running = (1 - momentum) * running + momentum * batch``, the unbiased variance, as PyTorch does);
    evaluation uses the running statistics.

    Parameters
    ----------
    channels : int
    momentum : float
    eps : float
        Added to the variance before the square root.
    relu : bool
        Apply max(., 0) to the output in the same pass (and mask the gradient in the backward pass), as a
        separate :class:`ReLU` would, without its two extra passes over the activations.
    dtype : float32 or float64
    device : "cpu" or "cuda"
    """

    def __init__(self, channels, *, momentum=0.1, eps=1e-5, relu=False, dtype=np.float32, device="cpu"):
        self.weight = Parameter(np.ones(channels, dtype))
        self.bias = Parameter(np.zeros(channels, dtype))
        self.running_mean = np.zeros(channels, np.float64)
        self.running_var = np.ones(channels, np.float64)
        self.momentum = momentum
        self.eps = eps
        self.relu = relu
        self._saved_state = None
        self._ops = backend_ops(device)

    def parameters(self):
        """``weight`` (scale) and ``bias`` (shift), each (C,)."""
        return {"weight": self.weight, "bias": self.bias}

    def buffers(self):
        """``running_mean`` and ``running_var``, each (C,) float64."""
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def forward(self, x, training=False):
        """(N, C, H, W) -> same shape."""
        x = self._ops.to_device(x)
        if len(x.shape) != 4 or x.shape[1] != self.weight.value.shape[0]:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, {self.weight.value.shape[0]}, H, W)")
        if training:
            mean, var = self._ops.channel_moments(x)
            count = x.size // x.shape[1]
            unbiased = var * count / max(count - 1, 1)
            self.running_mean *= 1.0 - self.momentum
            self.running_mean += self.momentum * mean
            self.running_var *= 1.0 - self.momentum
            self.running_var += self.momentum * unbiased
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = 1.0 / np.sqrt(var + self.eps)
        scale = self.weight.value * inv_std
        shift = self.bias.value - mean * scale
        scale, shift = scale.astype(x.dtype), shift.astype(x.dtype)
        y = self._ops.scale_shift(x, scale, shift, self.relu)
        # The backward recomputes where the ReLU passed from x, scale and shift (cheaper than reading y).
        self._saved_state = (x, mean, inv_std, scale, shift) if training else None
        return y

    def backward(self, grad_y, need_input_grad=True):
        """(N, C, H, W) -> same shape; accumulates the scale and shift gradients."""
        x, mean, inv_std, scale, shift = self._saved(self._saved_state, "batch statistics")
        grad_y = self._ops.to_device(grad_y)
        sum_gy, sum_gy_xc = self._ops.batchnorm_backward_sums(grad_y, x, mean, scale, shift, self.relu)
        grad_scale = sum_gy_xc * inv_std
        self.weight.grad += grad_scale.astype(self.weight.grad.dtype)
        self.bias.grad += sum_gy.astype(self.bias.grad.dtype)
        if not need_input_grad:
            return None
        # dx = gamma * inv_std / m * (m * gy - sum_gy - xhat * grad_scale), folded into a * gy + b * x + d.
        count = x.size // x.shape[1]
        a = self.weight.value * inv_std
        b = -a * inv_std * grad_scale / count
        d = -a * sum_gy / count - b * mean
        dtype = x.dtype
        return self._ops.batchnorm_backward_input(grad_y, x, scale, shift, self.relu, a.astype(dtype),
                                                  b.astype(dtype), d.astype(dtype))


class GlobalAvgPool2d(Layer):
    """Mean over height and width: (N, C, H, W) -> (N, C)."""

    def __init__(self, *, device="cpu"):
        self._shape = None
        self._ops = backend_ops(device)

    def forward(self, x, training=False):
        """(N, C, H, W) -> (N, C)."""
        x = self._ops.to_device(x)
        self._shape = tuple(x.shape) if training else None
        return self._ops.global_avg_pool(x)

    def backward(self, grad_y, need_input_grad=True):
        """(N, C) -> (N, C, H, W): each pixel gets grad / (H*W)."""
        shape = self._saved(self._shape, "input shape")
        if not need_input_grad:
            return None
        return self._ops.global_avg_pool_backward(grad_y, shape)


class Linear(_WeightAndBias):
    """Fully connected layer: (N, Fin) -> (N, Fout); weight (Fout, Fin), He fan-in Fin; bias (Fout,)."""

    def __init__(self, in_features, out_features, *, bias=True, rng, dtype=np.float32, device="cpu"):
        super().__init__(he_normal(rng, (out_features, in_features), in_features, dtype), bias, dtype, device)

    def forward(self, x, training=False):
        """(N, Fin) -> (N, Fout)."""
        x = self._ops.to_device(x)
        self._x = x if training else None
        return self._ops.linear(x, self.weight.value, None if self.bias is None else self.bias.value)

    def backward(self, grad_y, need_input_grad=True):
        """(N, Fout) -> (N, Fin)."""
        x = self._saved(self._x, "input")
        grad_w, grad_b, grad_x = self._ops.linear_backward(grad_y, x, self.weight.value, need_input_grad)
        self.weight.grad += grad_w
        if self.bias is not None:
            self.bias.grad += grad_b
        return grad_x


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy of logits (N, K) against integer labels (N,).

    ``forward`` returns the loss (a Python float) and keeps the probabilities; ``backward`` returns the
    gradient of the mean loss with respect to the logits, ``(softmax - onehot) / N``.
    """

    def __init__(self):
        self._probs = None
        self._labels = None

    def forward(self, logits, labels):
        """Return the mean loss over the batch."""
        logits = np.asarray(logits)
        labels = np.asarray(labels)
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise ValueError(f"logits have shape {logits.shape} and labels {labels.shape}; expected (N, K) and (N,)")
        if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise ValueError(f"labels must lie in [0, {logits.shape[1]}); got {labels.min()}..{labels.max()}")
        # Non-finite logits give a NaN loss (the caller decides what to do), not a NumPy warning.
        with np.errstate(all="ignore"):
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            log_probs = shifted - log_norm
            self._probs = np.exp(log_probs)
        self._labels = labels.astype(np.intp)
        return float(-log_probs[np.arange(len(labels)), self._labels].mean(dtype=np.float64))

    def backward(self):
        """Gradient of the mean loss with respect to the logits, (N, K)."""
        probs = self._probs
        if probs is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        grad = probs.copy()
        grad[np.arange(len(self._labels)), self._labels] -= 1.0
        grad /= len(self._labels)
        return grad


class Sequential(Layer):
    """Layers applied in order; parameter names are ``<layer name>.<parameter name>``.

    Parameters
    ----------
    layers : sequence of (str, Layer)
    """

    def __init__(self, layers):
        self.layers = list(layers)
        names = [name for name, _ in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique; got {names}")

    def parameters(self):
        """Every layer's parameters, in layer order."""
        return {f"{lname}.{pname}": p for lname, layer in self.layers for pname, p in layer.parameters().items()}

    def buffers(self):
        """Every layer's buffers, in layer order."""
        return {f"{lname}.{bname}": b for lname, layer in self.layers for bname, b in layer.buffers().items()}

    def forward(self, x, training=False):
        """Apply each layer in turn."""
        for _, layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, grad_y, need_input_grad=True):
        """Back through each layer in reverse; the first layer is asked for an input gradient only if needed."""
        for index in range(len(self.layers) - 1, -1, -1):
            grad_y = self.layers[index][1].backward(grad_y, need_input_grad or index > 0)
        return grad_y
