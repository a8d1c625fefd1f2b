"""Downloading a file from a list of mirrors with SHA-256 verification and an atomic rename.

The bytes are streamed into a temporary file in the target folder while being hashed; only a complete file
with the expected digest is renamed to the target name. A failed, interrupted or corrupt download leaves
nothing behind.
"""

import hashlib
import http.client
import os
import tempfile
import urllib.request

CHUNK = 1 << 16


class DownloadError(OSError):
    """No mirror delivered the file with the expected checksum; ``failures`` lists (url, reason)."""

    def __init__(self, name, failures):
        self.failures = list(failures)
        reasons = "; ".join(f"{url}: {reason}" for url, reason in self.failures)
        super().__init__(f"could not download {name}: {reasons}")


def sha256_of(path):
    """Hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url, folder, sha256, timeout, on_progress):
    """Download ``url`` into a temporary file in ``folder``; return its path if the digest matches."""
    fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=folder)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done, total)
            if total is not None and done != total:
                raise OSError(f"connection closed after {done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise OSError(f"SHA-256 {digest.hexdigest()} does not match the expected {sha256}")
        return tmp
    except BaseException:
        os.unlink(tmp)
        raise


def download(urls, target, sha256, *, timeout=30.0, on_progress=None):
    """Fetch ``target``'s content from the first mirror that delivers it intact.

    Parameters
    ----------
    urls : sequence of str
        Mirrors, tried in order.
    target : str or os.PathLike
        Final path; its folder is created if needed. An existing file is replaced only by a verified one.
    sha256 : str
        Expected hex digest.
    timeout : float
        Seconds allowed for connecting and for each read.
    on_progress : callable, optional
        ``on_progress(bytes_done, bytes_total_or_None)`` while downloading.

    Returns
    -------
    str
        ``target``.

    Raises
    ------
    DownloadError
        Every mirror failed (unreachable, HTTP error, timeout, short read, wrong checksum).
    """
    target = os.fspath(target)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    failures = []
    for url in urls:
        try:
            tmp = _fetch(url, folder, sha256.lower(), timeout, on_progress)
        except (OSError, http.client.HTTPException, ValueError) as error:
            failures.append((url, getattr(error, "reason", None) or error))
            continue
        os.replace(tmp, target)
        return target
    raise DownloadError(os.path.basename(target), failures)
