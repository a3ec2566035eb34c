"""MNIST's IDX format: a big-endian header, then raw values.

The header is a 4-byte magic number ``0x00 0x00 TYPE NDIM`` (``TYPE`` 0x08 is
unsigned bytes, the only type MNIST uses; images have ``NDIM`` 3, magic 2051,
labels ``NDIM`` 1, magic 2049), then one big-endian uint32 per dimension,
then ``prod(dims)`` values. Files may be gzip-compressed (``.gz``, detected by
content, not by name).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from mckd.errors import DataError
from mckd.io import file_problem

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, columns)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
_GZIP_MAGIC = b"\x1f\x8b"
_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when it is a gzip file."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DataError(f"IDX file {str(path)!r} {problem}")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:  # zlib.error: corrupt deflate data inside a valid header
            raise DataError(f"IDX file {str(path)!r} is a damaged gzip file ({error})") from None
    return raw


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip or raw) into an array of the header's shape.

    Args:
        path: the file.
        expected_magic: 2051 (images) or 2049 (labels) to insist on; ``None`` accepts any valid header.

    Returns:
        The values, shape ``dims`` from the header (images ``[S, 28, 28]`` uint8, labels ``[S]`` uint8).

    Raises:
        DataError: naming the file, when the magic number is not an IDX one (or not the
            expected one) or the data length differs from what the header announces.
    """
    raw = read_idx_bytes(path)
    if len(raw) < 4:
        raise DataError(f"IDX file {str(path)!r} has {len(raw)} bytes, too few for the 4-byte magic number")
    magic = int.from_bytes(raw[:4], "big")
    type_code, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or type_code not in _TYPES or ndim == 0:
        raise DataError(f"IDX file {str(path)!r} starts with magic {magic} (0x{magic:08x}), which is not an IDX "
                        f"header (expected {IMAGES_MAGIC} for images or {LABELS_MAGIC} for labels)")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"IDX file {str(path)!r} has magic {magic}; expected {expected_magic} "
                        f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {str(path)!r} ends inside its header ({len(raw)} bytes, header needs {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_TYPES[type_code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"IDX file {str(path)!r}: the header announces shape {dims} ({expected} bytes in all) "
                        f"but the file holds {len(raw)} bytes")
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="), copy=True)


def read_mnist(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images ``[S, 28, 28]`` uint8 and labels ``[S]`` int64 from an IDX pair, checked against each other."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"MNIST IDX files {str(images_path)!r} and {str(labels_path)!r} must hold unsigned bytes")
    if len(images) != len(labels):
        raise DataError(f"MNIST: {str(images_path)!r} holds {len(images)} images but {str(labels_path)!r} holds "
                        f"{len(labels)} labels; expected the same number")
    if labels.size and labels.max() > 9:
        raise DataError(f"MNIST labels in {str(labels_path)!r} go up to {labels.max()}; expected digits 0-9")
    return images, labels.astype(np.int64)
