"""Arrays a bundle carries, read as untrusted input: ``.npy`` and safetensors bytes whose header is checked against
the bytes that follow it before anything is allocated, and values checked finite.

A header may claim any shape: ``np.load`` would allocate it first (a few bytes claiming terabytes end a
process with ``MemoryError``). Here the claimed size must be exactly what the file holds.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, TypeGuard

import numpy as np

from fbml.errors import FbmlError

MAX_HEADER = 65_536
"""The longest ``.npy`` header read (numpy writes them padded to 64 or 128 bytes)."""
MAX_SAFETENSORS_HEADER = 100_000_000
"""The longest safetensors header read (the safetensors library's own limit)."""
SAFETENSORS_DTYPES = {"BOOL": "|b1", "U8": "|u1", "I8": "|i1", "I16": "<i2", "I32": "<i4", "I64": "<i8", "F16": "<f2",
                      "F32": "<f4", "F64": "<f8"}  # fmt: skip
"""The safetensors dtypes read (little-endian, as the format stores them): those numpy and torch both have."""


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
    data = memoryview(content)[stream.tell() :]  # no copy: the array views the bytes read
    expected = int(np.prod(shape, dtype=np.float64)) * wanted.itemsize
    if expected != len(data):
        raise FbmlError(f"its header claims {shape} ({expected} bytes), the file holds {len(data)} bytes of data")
    array = np.frombuffer(data, dtype=wanted).reshape(shape, order="F" if fortran else "C")
    return np.require(array, requirements=("C", "A"))  # copied only when Fortran-ordered or misaligned


def safetensors_arrays(content: bytes) -> dict[str, np.ndarray]:
    """The named arrays of safetensors bytes, as read-only views of ``content`` (nothing copied); ``FbmlError`` saying
    what is wrong when the header is not one, names a dtype not read, or its arrays do not fill the data after it
    exactly, one after the other (no gap, no overlap, nothing past the end or left over: what the safetensors library
    checks)."""
    if len(content) < 8:
        raise FbmlError(f"{len(content)} bytes, too few for the header's length")
    length = int.from_bytes(content[:8], "little")
    if length > min(MAX_SAFETENSORS_HEADER, len(content) - 8):
        raise FbmlError(f"its header claims {length} bytes, the file holds {len(content) - 8} after the length")
    try:
        header = json.loads(content[8 : 8 + length].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise FbmlError(f"its header is not JSON ({_first_line(error)})") from None
    if not isinstance(header, dict):
        raise FbmlError("its header is not a JSON object")
    header.pop("__metadata__", None)
    data = memoryview(content)[8 + length :]
    end, arrays = 0, {}
    for name, dtype, shape, start, stop in sorted((_tensor_entry(name, entry) for name, entry in header.items()),
                                                  key=lambda entry: entry[3]):  # fmt: skip
        if start != end or stop - start != math.prod(shape) * dtype.itemsize:
            raise FbmlError(f"tensor {name!r} ({math.prod(shape)} x {dtype.itemsize} bytes) lies at bytes {start} to {stop} "
                            f"of the data; the tensors must fill it one after the other from its start")  # fmt: skip
        if stop > len(data):
            raise FbmlError(f"tensor {name!r} ends at byte {stop} of the data, the file holds {len(data)}")
        try:
            arrays[name] = np.ndarray(shape, dtype, buffer=data, offset=start)
        except ValueError as error:  # a shape numpy cannot hold, with a 0 among huge sizes
            raise FbmlError(f"tensor {name!r} cannot be an array of shape {shape}: {_first_line(error)}") from None
        end = stop
    if end != len(data):
        raise FbmlError(f"its tensors fill {end} bytes of the data, the file holds {len(data)}")
    return arrays


def _tensor_entry(name: str, entry: object) -> tuple[str, np.dtype[Any], tuple[int, ...], int, int]:
    """A tensor's header entry as its name, dtype, shape and data offsets; ``FbmlError`` when it is not one."""
    fields: dict[str, Any] = entry if isinstance(entry, dict) else {}
    dtype, shape, offsets = fields.get("dtype"), fields.get("shape"), fields.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise FbmlError(f"tensor {name!r} has dtype {dtype!r}, not one of {', '.join(SAFETENSORS_DTYPES)}")
    if not _naturals(shape) or not _naturals(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise FbmlError(f"tensor {name!r} needs a shape and two ascending data offsets, integers >= 0, got {shape!r} and {offsets!r}")  # fmt: skip
    return name, np.dtype(SAFETENSORS_DTYPES[dtype]), tuple(shape), offsets[0], offsets[1]


def _naturals(value: object) -> TypeGuard[list[int]]:
    """Whether ``value`` is a list of integers >= 0."""
    return isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value)


def finite(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` when every value is finite; ``FbmlError`` naming ``what`` and how many are not."""
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise FbmlError(f"{what} has {bad} value(s) that are not finite numbers (NaN or infinite)")
    return array


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
