"""Arrays a bundle carries, read as untrusted input: ``.npy`` bytes whose header is checked against the bytes
that follow it before anything is allocated, and values checked finite.

A header may claim any shape: ``np.load`` would allocate it first (a few bytes claiming terabytes end a
process with ``MemoryError``). Here the claimed size must be exactly what the file holds.
"""

from __future__ import annotations

import io

import numpy as np

from fbml.errors import FbmlError

MAX_HEADER = 65_536
"""The longest ``.npy`` header read (numpy writes them padded to 64 or 128 bytes)."""


def plain_array(content: bytes, dtype: np.dtype[np.generic] | type[np.generic], ndim: int) -> np.ndarray:
    """The ``ndim``-D ``dtype`` array in ``.npy`` bytes (no pickle, C or Fortran order); ``FbmlError`` saying what
    is wrong when the header is not one, claims another dtype or rank, or claims more or fewer bytes than follow it."""
    wanted = np.dtype(dtype)
    stream = io.BytesIO(content)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, stored = read_header(stream, max_header_size=MAX_HEADER)
    except (ValueError, EOFError, OSError, SyntaxError) as error:
        raise FbmlError(f"not a plain .npy array ({_first_line(error)})") from None
    if stored != wanted or len(shape) != ndim:
        raise FbmlError(f"holds {stored} {shape}, not a {ndim}-D {wanted} array")
    data = content[stream.tell():]
    expected = int(np.prod(shape, dtype=np.float64)) * wanted.itemsize
    if expected != len(data):
        raise FbmlError(f"its header claims {shape} ({expected} bytes), the file holds {len(data)} bytes of data")
    array = np.frombuffer(data, dtype=wanted).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(array)


def finite(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` when every value is finite; ``FbmlError`` naming ``what`` and how many are not."""
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise FbmlError(f"{what} has {bad} value(s) that are not finite numbers (NaN or infinite)")
    return array


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
