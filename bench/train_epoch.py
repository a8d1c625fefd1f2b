"""Training speed: one epoch of ``dscnn`` in numba_dsconv and in PyTorch (CPU), same data, same batch size.

Usage::

    python -m bench.train_epoch                          # Fashion-MNIST if installed, else mnist5k
    python -m bench.train_epoch --dataset mnist5k --batches 60 --json bench/results/train.json

The three trainers (numba_dsconv; PyTorch in its default contiguous layout; PyTorch channels_last) take
turns: each runs ``--chunk`` training steps (forward, loss, backward, Adam step), then the next, after a
pause so that one library's spinning thread pool does not slow the next, until each has done one epoch
(or ``--batches`` steps). Images per second is each trainer's images over its own summed step time. The
PyTorch model is the same network (same layers, batch norm, initial weights copied from numba_dsconv's).
"""

import os

# As examples/mnist_numba.py does (see there): one OpenBLAS thread for the pointwise products while training.
# PyTorch's CPU build does not use OpenBLAS, so this changes numba_dsconv's side only.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from numba_dsconv import data, nn  # noqa: E402

from . import peers  # noqa: E402

torch = peers.torch


def torch_dscnn(model):
    """PyTorch twin of ``nn.dscnn(batch_norm=True)``, initialised with ``model``'s weights."""
    tnn = torch.nn
    layers = []
    for name, layer in model.layers:
        if isinstance(layer, nn.DepthwiseConv2d):
            cin, cout = model.config["in_channels"], layer.weight.value.shape[0]
            o = layer.options
            layers.append(tnn.Conv2d(cin, cout, 3, stride=o["stride"], padding=o["padding"], dilation=o["dilation"],
                                     groups=cin, bias=layer.bias is not None))
        elif isinstance(layer, nn.SeparableConv2d):
            dw, pw = layer.depthwise, layer.pointwise
            c = dw.weight.value.shape[0]
            o = dw.options
            layers.append(tnn.Conv2d(c, c, 3, stride=o["stride"], padding=o["padding"], dilation=o["dilation"],
                                     groups=c, bias=dw.bias is not None))
            layers.append(tnn.Conv2d(c, pw.weight.value.shape[0], 1, bias=pw.bias is not None))
        elif isinstance(layer, nn.BatchNorm2d):
            layers.append(tnn.BatchNorm2d(layer.weight.value.shape[0]))
            if layer.relu:
                layers.append(tnn.ReLU())
        elif isinstance(layer, nn.ReLU):
            layers.append(tnn.ReLU())
        elif isinstance(layer, nn.GlobalAvgPool2d):
            layers.append(tnn.AdaptiveAvgPool2d(1))
            layers.append(tnn.Flatten())
        elif isinstance(layer, nn.Linear):
            layers.append(tnn.Linear(*layer.weight.value.shape[::-1]))
        else:
            raise TypeError(f"no PyTorch twin for layer {name} ({type(layer).__name__})")
    twin = tnn.Sequential(*layers)
    ours = [p.value for p in model.parameters().values()]
    theirs = list(twin.parameters())
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    with torch.no_grad():
        for mine, peer in zip(ours, theirs, strict=True):
            peer.copy_(torch.from_numpy(mine.reshape(peer.shape)))
    return twin


class OursTrainer:
    """numba_dsconv's training step."""

    def __init__(self, model, mean, std):
        self.model = model
        self.optimizer = nn.Adam(model.parameters(), lr=2e-3)
        self.loss = nn.SoftmaxCrossEntropy()
        self.mean, self.std = mean, std

    def step(self, images, labels):
        nn.train_step(self.model, self.optimizer, self.loss, images, labels, mean=self.mean, std=self.std)


class TorchTrainer:
    """PyTorch's training step for the same model, in one memory layout."""

    def __init__(self, model, mean, std, layout):
        self.layout = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        self.model = torch_dscnn(model).to(memory_format=self.layout)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3)
        self.mean, self.std = mean, std

    def step(self, images, labels):
        x = torch.from_numpy(nn.standardize(images, self.mean, self.std)).contiguous(memory_format=self.layout)
        y = torch.from_numpy(labels.astype(np.int64))
        self.optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()


def run(dataset, *, batch_size, batches, chunk, settle, threads, seed):
    """Interleave the trainers over one epoch each; return images/s and step-time medians per trainer."""
    import numba

    numba.set_num_threads(threads)
    mean, std = nn.pixel_statistics(dataset.train_images)
    trainers = {"numba_dsconv": OursTrainer(nn.dscnn(seed=seed), mean, std)}
    if torch is not None:
        torch.set_num_threads(threads)
        for layout in peers.LAYOUTS:
            trainers[f"torch-{layout}"] = TorchTrainer(nn.dscnn(seed=seed), mean, std, layout)
    n = len(dataset.train_images)
    total = min(batches or -(-n // batch_size), -(-n // batch_size))
    order = np.random.default_rng(seed).permutation(n)
    # One untimed step each: compilation (numba_dsconv loads its kernels) and PyTorch's first-call set-up.
    for trainer in trainers.values():
        index = order[:batch_size]
        trainer.step(dataset.train_images[index], dataset.train_labels[index])
    seconds = {name: [] for name in trainers}
    images = dict.fromkeys(trainers, 0)
    for first in range(0, total, chunk):
        for name, trainer in trainers.items():
            time.sleep(settle)
            for b in range(first, min(first + chunk, total)):
                index = order[b * batch_size:(b + 1) * batch_size]
                start = time.perf_counter()
                trainer.step(dataset.train_images[index], dataset.train_labels[index])
                seconds[name].append(time.perf_counter() - start)
                images[name] += len(index)
    return {name: {"images": images[name], "seconds": float(sum(seconds[name])),
                   "images_per_second": images[name] / sum(seconds[name]),
                   "median_step_ms": float(np.median(seconds[name]) * 1e3)} for name in trainers}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("fashion", "mnist5k"), default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=0, help="steps per trainer (default: one epoch)")
    parser.add_argument("--chunk", type=int, default=10, help="steps per turn")
    parser.add_argument("--settle", type=float, default=0.2, help="seconds of pause between turns")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    name = args.dataset
    if name is None:
        name = "fashion" if _has_fashion() else "mnist5k"
    dataset = data.load_fashion() if name == "fashion" else data.load_mnist5k()
    print(f"dscnn training speed, {name} ({len(dataset.train_images)} images), batch {args.batch_size}, "
          f"{args.threads} threads (OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}); {peers.describe()}")
    results = run(dataset, batch_size=args.batch_size, batches=args.batches, chunk=args.chunk,
                  settle=args.settle, threads=args.threads, seed=args.seed)
    ours = results["numba_dsconv"]["images_per_second"]
    for trainer, r in results.items():
        print(f"{trainer:22s} {r['images_per_second']:8.0f} images/s   median step {r['median_step_ms']:7.1f} ms   "
              f"numba_dsconv / this = {ours / r['images_per_second']:.2f}x")
    if args.json:
        record = {"dataset": name, "batch_size": args.batch_size, "threads": args.threads, "peer": peers.describe(),
                  "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
                  "results": results}
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=2)


def _has_fashion():
    return os.path.isdir(data.datasets.FASHION_DIR)


if __name__ == "__main__":
    main()
