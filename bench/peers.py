"""The same operations in PyTorch on the CPU (the benchmark peer), when it is installed.

Backward passes call ``aten.convolution_backward`` directly with one output mask, so PyTorch is timed
on exactly the gradient asked for (no forward recomputation, no autograd bookkeeping).
"""

try:
    import torch
except ImportError:  # the benchmark runs without it and says so
    torch = None

LAYOUTS = ("contiguous", "channels_last")


def available():
    return torch is not None


def describe():
    if torch is None:
        return "PyTorch not installed: no peer comparison"
    return f"PyTorch {torch.__version__} (CPU build, {torch.get_num_threads()} threads)"


def set_threads(n):
    if torch is not None:
        torch.set_num_threads(n)


def _tensor(array, layout):
    t = torch.from_numpy(array)
    if layout == "channels_last" and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def depthwise_ops(x, weight, grad_y, *, stride, padding, dilation, layout):
    """Callables for forward, grad-input, grad-weight of the depthwise convolution in PyTorch."""
    groups = x.shape[1]
    tx, tw, tg = _tensor(x, layout), _tensor(weight, layout), _tensor(grad_y, layout)
    conv_args = ([stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], groups)

    def backward(mask):
        return torch.ops.aten.convolution_backward(tg, tx, tw, None, *conv_args, mask)

    return {
        "forward": lambda: torch.nn.functional.conv2d(tx, tw, None, stride, padding, dilation, groups),
        "grad_input": lambda: backward([True, False, False])[0],
        "grad_weight": lambda: backward([False, True, False])[1],
    }


def pointwise_ops(x, weight, grad_y, *, layout):
    """Callables for forward, grad-input, grad-weight of the 1x1 convolution in PyTorch."""
    tx, tw, tg = _tensor(x, layout), _tensor(weight, layout), _tensor(grad_y, layout)
    conv_args = ([1, 1], [0, 0], [1, 1], False, [0, 0], 1)

    def backward(mask):
        return torch.ops.aten.convolution_backward(tg, tx, tw, None, *conv_args, mask)

    return {
        "forward": lambda: torch.nn.functional.conv2d(tx, tw),
        "grad_input": lambda: backward([True, False, False])[0],
        "grad_weight": lambda: backward([False, True, False])[1],
    }


def separable_ops(x, depthwise_weight, pointwise_weight, grad_y, *, stride, padding, dilation, layout):
    """Forward and backward (input and both weight gradients) of depthwise then 1x1 convolution in PyTorch."""
    groups = x.shape[1]
    tx, tdw, tpw, tg = (_tensor(a, layout) for a in (x, depthwise_weight, pointwise_weight, grad_y))
    dw_args = ([stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], groups)
    pw_args = ([1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    th = torch.nn.functional.conv2d(tx, tdw, None, stride, padding, dilation, groups)

    def forward():
        h = torch.nn.functional.conv2d(tx, tdw, None, stride, padding, dilation, groups)
        return torch.nn.functional.conv2d(h, tpw)

    def backward():
        # The depthwise output is kept from the forward pass, as autograd keeps it.
        dh, dpw, _ = torch.ops.aten.convolution_backward(tg, th, tpw, None, *pw_args, [True, True, False])
        return torch.ops.aten.convolution_backward(dh, tx, tdw, None, *dw_args, [True, True, False]), dpw

    return {"forward": forward, "backward": backward}
