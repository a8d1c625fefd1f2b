"""Training and evaluation loops for image classifiers built from :mod:`numba_dsconv.nn` layers.

Shape legend: N = images, H, W = image height and width, K = classes.

Images come in as uint8 (N, H, W), the form the data loaders return; :func:`standardize` turns a batch
into the float (N, 1, H, W) input of the model. Every random choice (shuffling, augmentation) draws from the
generator the caller passes, so a seed fixes a whole run.
"""

import time
from dataclasses import dataclass

import numpy as np

from .layers import SoftmaxCrossEntropy


def standardize(images, mean, std, dtype=np.float32):
    """Scale uint8 pixels to [0, 1], subtract ``mean``, divide by ``std``.

    Parameters
    ----------
    images : ndarray, shape (N, H, W), uint8
    mean, std : float
        Statistics of the training pixels after scaling to [0, 1].

    Returns
    -------
    ndarray, shape (N, 1, H, W), ``dtype``
    """
    scale = 1.0 / (255.0 * std)
    out = images.astype(dtype)[:, None]
    out *= dtype(scale)
    out -= dtype(mean / std)
    return out


def pixel_statistics(images):
    """Mean and standard deviation of uint8 pixels scaled to [0, 1] (float64 accumulation)."""
    scaled = images.astype(np.float64) / 255.0
    return float(scaled.mean()), float(scaled.std())


def random_shift(images, rng, max_shift):
    """Translate each image by a random whole number of pixels in [-max_shift, max_shift] per axis.

    Pixels shifted in from outside are 0 (background), so apply this to uint8 images before standardising.

    Parameters
    ----------
    images : ndarray, shape (N, H, W)
    rng : numpy.random.Generator
    max_shift : int

    Returns
    -------
    ndarray, same shape and dtype
    """
    n, h, w = images.shape
    s = max_shift
    padded = np.zeros((n, h + 2 * s, w + 2 * s), images.dtype)
    padded[:, s:s + h, s:s + w] = images
    offsets = rng.integers(0, 2 * s + 1, size=(n, 2))
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, dy:dy + h, dx:dx + w]
    return out


@dataclass
class EpochStats:
    """What one pass over the training set measured."""

    loss: float
    accuracy: float
    images: int
    seconds: float


def input_dtype(model):
    """Return the floating type of the model's parameters, which its input must share."""
    return next(iter(model.parameters().values())).value.dtype.type


def train_step(model, optimizer, loss_fn, images, labels, *, mean, std):
    """One optimiser step on a batch: forward, loss, backward, update.

    Parameters
    ----------
    model : numba_dsconv.nn.Model
    optimizer : numba_dsconv.nn.Optimizer
    loss_fn : SoftmaxCrossEntropy
    images : ndarray, shape (B, H, W), uint8
    labels : ndarray, shape (B,)
    mean, std : float
        Standardisation (see :func:`standardize`).

    Returns
    -------
    loss : float
    logits : ndarray, shape (B, K)

    Raises
    ------
    FloatingPointError
        The loss is not finite; the parameters are left as they were before this step.
    """
    optimizer.zero_grad()
    logits = model.forward(standardize(images, mean, std, input_dtype(model)), training=True)
    loss = loss_fn.forward(logits, labels)
    if not np.isfinite(loss):
        raise FloatingPointError(f"the training loss became {loss} at step {optimizer.steps + 1}; "
                                 "lower the learning rate")
    model.backward(loss_fn.backward(), need_input_grad=False)
    optimizer.step()
    return loss, logits


def train_epoch(model, optimizer, images, labels, *, batch_size, rng, mean, std, lr_at=None, max_shift=0,
                on_batch=None):
    """One pass over the training set in a random order, one optimiser step per batch.

    Parameters
    ----------
    model : numba_dsconv.nn.Model
        Maps (B, 1, H, W) to logits (B, K).
    optimizer : numba_dsconv.nn.Optimizer
    images : ndarray, shape (N, H, W), uint8
    labels : ndarray, shape (N,), integer in [0, K)
    batch_size : int
        The last batch holds what is left.
    rng : numpy.random.Generator
        Draws the order and the shifts.
    mean, std : float
        Standardisation (see :func:`standardize`).
    lr_at : callable, optional
        ``lr_at(step)`` gives the learning rate of global step ``optimizer.steps`` (a schedule).
    max_shift : int
        Random translation of up to this many pixels (augmentation); 0 for none.
    on_batch : callable, optional
        Called after each step as ``on_batch(images_done, running_loss, running_accuracy)``.

    Returns
    -------
    EpochStats
        Mean loss and accuracy over the epoch's batches as they were trained (weighted by batch size).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    loss_fn = SoftmaxCrossEntropy()
    n = len(images)
    order = rng.permutation(n)
    total_loss = 0.0
    correct = 0
    start_time = time.perf_counter()
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        batch = images[index]
        if max_shift:
            batch = random_shift(batch, rng, max_shift)
        target = labels[index]
        if lr_at is not None:
            optimizer.lr = lr_at(optimizer.steps)
        loss, logits = train_step(model, optimizer, loss_fn, batch, target, mean=mean, std=std)
        total_loss += loss * len(index)
        correct += int((logits.argmax(axis=1) == target).sum())
        done = start + len(index)
        if on_batch is not None:
            on_batch(done, total_loss / done, correct / done)
    return EpochStats(total_loss / n, correct / n, n, time.perf_counter() - start_time)


def predict(model, images, *, mean, std, batch_size=1000):
    """Predicted class of each image, in evaluation mode.

    Parameters
    ----------
    images : ndarray, shape (N, H, W), uint8

    Returns
    -------
    ndarray, shape (N,), int64
    """
    dtype = input_dtype(model)
    out = np.empty(len(images), np.int64)
    for start in range(0, len(images), batch_size):
        batch = standardize(images[start:start + batch_size], mean, std, dtype)
        out[start:start + len(batch)] = model.forward(batch, training=False).argmax(axis=1)
    return out


def confusion_matrix(labels, predictions, num_classes):
    """Count (K, K) outcomes: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.intp), np.asarray(predictions, np.intp)), 1)
    return matrix
