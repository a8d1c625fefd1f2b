"""The reference model ``dscnn``: a stem, five depthwise separable blocks, a global-pool head.

Shape legend: N = batch; images are (N, 1, 28, 28).

```
stem   depthwise 3x3, multiplier 16 (1 -> 16 channels), bias [, batch norm], ReLU       28x28
block  depthwise 3x3 (stride s, dilation d, padding d) + bias -> pointwise cin->cout + bias [, batch norm]
       -> ReLU
       (16,32,s1,d1) (32,64,s2,d1) (64,64,s1,d2) (64,128,s2,d1) (128,128,s1,d2)
head   global average pool -> linear 128->10 (softmax cross-entropy is the loss)
```

With ``batch_norm=True`` a batch normalisation follows the stem's depthwise and every block's pointwise
convolution, and the convolutions drop their biases: a bias before a batch norm is cancelled by its mean (the
depthwise bias of a block too, since the pointwise convolution only mixes it into a per-channel constant).
"""

import numpy as np

from ._backend import backend_ops
from .layers import BatchNorm2d, DepthwiseConv2d, GlobalAvgPool2d, Linear, ReLU, SeparableConv2d, Sequential

# (out_channels, stride, dilation) of each block; each block reads the previous one's channels.
BLOCKS = ((32, 1, 1), (64, 2, 1), (64, 1, 2), (128, 2, 1), (128, 1, 2))
STEM_MULTIPLIER = 16


class Model(Sequential):
    """A :class:`Sequential` that remembers the keyword arguments that built it (saved in checkpoints).

    It takes and returns NumPy arrays on every device: on the GPU the images go to the device in the first
    layer and the logits (N, K) come back to the host, the only transfers of activations in a step.
    """

    def __init__(self, layers, config):
        super().__init__(layers)
        self.config = dict(config)
        self._ops = backend_ops(self.config.get("device", "cpu"))

    def forward(self, x, training=False):
        """(N, C, H, W) images -> (N, K) logits, a NumPy array."""
        return self._ops.to_host(super().forward(x, training))

    def predict(self, x):
        """Class scores (N, K) in evaluation mode."""
        return self.forward(x, training=False)


def _activation(prefix, channels, batch_norm, dtype, device):
    """Return the (name, layer) after a convolution: batch norm fused with the ReLU, or a plain ReLU."""
    if batch_norm:
        return f"{prefix}_bn", BatchNorm2d(channels, relu=True, dtype=dtype, device=device)
    return f"{prefix}_relu", ReLU(device=device)


def dscnn(*, in_channels=1, num_classes=10, batch_norm=True, seed=0, dtype="float32", device="cpu"):
    """Build the reference depthwise separable CNN.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for MNIST).
    num_classes : int
    batch_norm : bool
        Batch normalisation after the stem and after every block's pointwise convolution.
    seed : int
        Seeds the He initialisation.
    dtype : "float32" or "float64"
    device : "cpu" or "cuda"

    Returns
    -------
    Model
        Input (N, in_channels, H, W), output logits (N, num_classes).
    """
    config = {"in_channels": in_channels, "num_classes": num_classes, "batch_norm": batch_norm, "seed": seed,
              "dtype": str(np.dtype(dtype)), "device": device}
    dtype = np.dtype(dtype).type
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64; got {np.dtype(dtype)}")
    rng = np.random.default_rng(seed)
    common = {"rng": rng, "dtype": dtype, "device": device}
    stem_channels = in_channels * STEM_MULTIPLIER
    layers = [("stem", DepthwiseConv2d(in_channels, STEM_MULTIPLIER, 3, padding=1, bias=not batch_norm, **common))]
    layers.append(_activation("stem", stem_channels, batch_norm, dtype, device))
    channels = stem_channels
    for index, (cout, stride, dilation) in enumerate(BLOCKS, start=1):
        block = SeparableConv2d(channels, cout, 3, stride=stride, padding=dilation, dilation=dilation,
                                depthwise_bias=not batch_norm, pointwise_bias=not batch_norm, **common)
        layers.append((f"block{index}", block))
        layers.append(_activation(f"block{index}", cout, batch_norm, dtype, device))
        channels = cout
    layers.append(("pool", GlobalAvgPool2d(device=device)))
    layers.append(("head", Linear(channels, num_classes, rng=rng, dtype=dtype, device=device)))
    return Model(layers, config)
