"""Reading the IDX format that MNIST and Fashion-MNIST ship in (gzipped or raw).

An IDX file is: two zero bytes, a type code, the number of dimensions D, D big-endian uint32 sizes, then
the values in row-major order (big-endian for multi-byte types).
"""

import gzip
import os
import zlib

import numpy as np

# IDX type code -> NumPy dtype (big-endian where it matters).
IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path):
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({error})") from error


def read_idx(path):
    """Read an IDX file into an array of its shape and type.

    Parameters
    ----------
    path : str or os.PathLike
        Raw or gzip-compressed (recognised by its content, not its name).

    Returns
    -------
    ndarray
        Shape as the header says; uint8 for MNIST images (N, 28, 28) and labels (N,); multi-byte types are
        converted to native byte order.

    Raises
    ------
    ValueError
        Naming the file and what is wrong: bad magic number, unknown type code, truncated header or data,
        trailing bytes, corrupt gzip stream.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes; the header needs at least 4)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic number {data[:4].hex()} does not start with 0000)")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x} (known: "
                         f"{', '.join(f'0x{c:02x}' for c in IDX_TYPES)})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes; {ndim} dimensions need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < expected:
        raise ValueError(f"{path}: truncated IDX data: shape {shape} of {dtype.name} needs {expected} bytes, "
                         f"the file holds {len(data)}")
    if len(data) > expected:
        raise ValueError(f"{path}: {len(data) - expected} unexpected bytes after the IDX data of shape {shape}")
    values = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def write_idx(path, array, *, compress=None):
    """Write ``array`` as an IDX file (gzipped when ``compress`` or when the name ends in ``.gz``).

    Parameters
    ----------
    path : str or os.PathLike
    array : ndarray
        uint8, int8, int16, int32, float32 or float64, at least one dimension.
    compress : bool, optional
    """
    path = os.fspath(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("=").str: code for code, dtype in IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("=").str)
    if code is None or array.ndim == 0:
        raise TypeError(f"IDX cannot store an array of dtype {array.dtype} with {array.ndim} dimensions")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(array, IDX_TYPES[code]).tobytes()
    if compress or (compress is None and path.endswith(".gz")):
        payload = gzip.compress(payload, mtime=0)
    with open(path, "wb") as handle:
        handle.write(payload)
