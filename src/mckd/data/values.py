"""Arrays read from a user's files, checked before they are trusted: the one loader of ``.npy``/``.npz`` and image files.

What a file claims is checked before anything is allocated, against the
bounds of :mod:`mckd.bounds`: a ``.npy`` header's shape against the bytes
the file holds (and the machine's memory), each ``.npz`` member the same way
(a zip can claim far more than it stores), an image's pixel count before it
is decoded (a decompression bomb). What the values are is checked after:
:func:`check_real` refuses text, Python objects (pickles are never loaded),
complex numbers (NumPy would drop their imaginary part with only a warning)
and magnitudes that float32 cannot hold (they would become infinities, then
NaN, later).
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mckd.bounds import BOUNDS, check_size
from mckd.errors import DataError, MckdError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_real(array: np.ndarray, where: str, hint: str = "") -> None:
    """``array`` must hold real numbers that float32 can hold: not text, objects, complex numbers or huge values.

    ``hint``: said after the problem (e.g. a NIfTI header's scale slope that made the values).
    """
    kind = array.dtype.kind
    if kind == "c":
        raise DataError(f"{where} holds complex numbers ({array.dtype}); expected real values (take the magnitude "
                        "or the real part first)")
    if kind in "OUSV" or kind == "M" or kind == "m":
        what = {"O": "Python objects", "U": "text", "S": "bytes", "V": "records"}.get(kind, "dates or times")
        raise DataError(f"{where} holds {what} ({array.dtype}); expected numbers")
    if kind == "f" and array.dtype.itemsize > 4 and array.size:
        finite = array[np.isfinite(array)]
        largest = float(np.abs(finite).max()) if finite.size else 0.0
        if largest > FLOAT32_MAX:
            raise DataError(f"{where} holds values up to {largest:.3g}, beyond what float32 holds ({FLOAT32_MAX:.3g})"
                            f"{hint}; they would become infinite")


def _npy_header(stream: Any, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, header bytes)`` of a ``.npy`` stream, read without reading the data."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(stream)
        reader = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"unknown .npy version {version}")
        shape, _, dtype = reader(stream, max_header_size=10_000)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as error:
        raise DataError(f"{where} is not a readable .npy array (its header: {' '.join(str(error).split())[:120]})") \
            from None
    return tuple(int(d) for d in shape), dtype, stream.tell()


def _check_header(shape: tuple[int, ...], dtype: np.dtype, where: str, stored: int | None) -> None:
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects (pickled); mckd never loads pickles: save numbers "
                        "(np.save of a numeric array)")
    try:
        check_size("array_bytes", shape, dtype.itemsize, where)
    except MckdError as error:
        raise DataError(str(error)) from None
    claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if stored is not None and claimed != stored:
        state = "truncated" if claimed > stored else "longer than its header says"
        raise DataError(f"{where} claims shape {shape} of {dtype} ({claimed:,} bytes) but holds {stored:,} bytes: "
                        f"the file is {state}")


def load_array(path: str | Path, what: str) -> Any:
    """A ``.npy`` array or an ``.npz`` archive (``np.load``), its headers checked first (see the module docstring).

    Raises:
        DataError: unreadable, pickled, truncated, or claiming more than the file or the machine holds.
    """
    from mckd.io import file_problem

    path = Path(path)
    where = f"{path} ({what})"
    problem = file_problem(path)  # a folder, a FIFO (reading it would wait for ever) or a device
    if problem:
        raise DataError(f"{where} {problem}")
    try:
        with path.open("rb") as stream:
            head = stream.read(6)
            stream.seek(0)
            archive = path.name.lower().endswith(".npz")
            if head.startswith(b"PK") != archive and head.startswith((b"PK", b"\x93NUMPY")):
                raise DataError(f"{where} is {'a .npy array' if archive else 'an .npz archive'} though it is named "
                                f"{path.suffix}; rename it")
            if head.startswith(b"PK"):
                _check_npz(path, where)
            elif head == b"\x93NUMPY":
                shape, dtype, offset = _npy_header(stream, where)
                _check_header(shape, dtype, where, path.stat().st_size - offset)
            else:
                raise DataError(f"{where} is not a .npy or .npz file (it does not start with NumPy's or zip's "
                                "signature)")
        return np.load(path, allow_pickle=False)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{where} is not a readable .npy/.npz file ({' '.join(str(error).split())[:160]})") from None


def _check_npz(path: Path, where: str) -> None:
    """Every member of an ``.npz``: a ``.npy`` whose header fits its uncompressed size and the machine's memory."""
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            inside = f"{where}, array {member.filename[:-4] if member.filename.endswith('.npy') else member.filename!r}"
            if member.file_size > BOUNDS["array_bytes"].high():
                raise DataError(f"{inside} unpacks to {member.file_size / 2**30:,.1f} GiB, more than this machine's "
                                "memory")
            with archive.open(member) as stream:
                shape, dtype, offset = _npy_header(stream, inside)
            _check_header(shape, dtype, inside, member.file_size - offset)


def open_image(path: str | Path, what: str) -> np.ndarray:
    """An image file (PNG, JPEG, TIFF) as float32 ``[H, W]`` or ``[H, W, C]``; its pixel count checked before decoding."""
    from PIL import Image, UnidentifiedImageError

    from mckd.io import file_problem

    problem = file_problem(path)
    if problem:
        raise DataError(f"{path} ({what}) {problem}")
    limit = int(BOUNDS["image_pixels"].high())
    Image.MAX_IMAGE_PIXELS = limit  # PIL's own bomb check (a warning, then an error) at mckd's bound
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, with mckd's words
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
                if width * height > limit:
                    raise DataError(f"{path} ({what}) is a {width} x {height} image ({width * height:,} pixels); at "
                                    f"most {limit:,} ({BOUNDS['image_pixels'].why})")
                array = np.asarray(image, dtype=np.float32)
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path} ({what}) is not a readable image ({' '.join(str(error).split())[:160]})") from None
    return array
