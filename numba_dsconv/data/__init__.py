"""MNIST-format data: IDX files, verified downloads, and the offline data sets ``mnist5k`` and ``fashion``."""

from .datasets import (
    DIGITS,
    FASHION_CLASSES,
    Dataset,
    default_cache_dir,
    fetch_mnist,
    load_fashion,
    load_idx_folder,
    load_mnist,
    load_mnist5k,
    mnist5k_path,
)
from .download import DownloadError, download, sha256_of
from .idx import read_idx, write_idx

__all__ = ["DIGITS", "FASHION_CLASSES", "Dataset", "DownloadError", "default_cache_dir", "download", "fetch_mnist",
           "load_fashion", "load_idx_folder", "load_mnist", "load_mnist5k", "mnist5k_path", "read_idx",
           "sha256_of", "write_idx"]
