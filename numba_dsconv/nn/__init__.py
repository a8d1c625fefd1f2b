"""A minimal trainer built on the library's kernels: layers, loss, optimisers, the ``dscnn`` model, checkpoints.

Every layer has ``forward(x, training)`` and ``backward(grad_y, need_input_grad)``; parameter gradients
accumulate into buffers that the optimiser zeroes. See :mod:`numba_dsconv.nn.layers`.
"""

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .layers import (
    BatchNorm2d,
    DepthwiseConv2d,
    GlobalAvgPool2d,
    Layer,
    Linear,
    Parameter,
    PointwiseConv2d,
    ReLU,
    SeparableConv2d,
    Sequential,
    SoftmaxCrossEntropy,
    he_normal,
)
from .model import Model, dscnn
from .optim import SGD, Adam, Optimizer, cosine_lr
from .train import (
    EpochStats,
    confusion_matrix,
    input_dtype,
    pixel_statistics,
    predict,
    random_shift,
    standardize,
    train_epoch,
    train_step,
)

__all__ = [
    "SGD",
    "Adam",
    "BatchNorm2d",
    "DepthwiseConv2d",
    "EpochStats",
    "GlobalAvgPool2d",
    "Layer",
    "Linear",
    "Model",
    "Optimizer",
    "Parameter",
    "PointwiseConv2d",
    "ReLU",
    "SeparableConv2d",
    "Sequential",
    "SoftmaxCrossEntropy",
    "confusion_matrix",
    "cosine_lr",
    "dscnn",
    "he_normal",
    "input_dtype",
    "load_checkpoint",
    "load_model",
    "pixel_statistics",
    "predict",
    "random_shift",
    "save_checkpoint",
    "standardize",
    "train_epoch",
    "train_step",
]
