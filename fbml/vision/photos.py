"""Photos as the image models read them: decoded with bounded work, letterboxed, normalised.

``decoded_photo`` opens only the formats of ``contracts.api.PHOTO_FORMATS``. A JPEG is decoded at a
reduced scale (PIL's ``draft``: 1/2, 1/4 or 1/8, its longest side staying at least the model's size,
as the training photos were); other formats decode whole. Either way a photo whose decode would make
more than ``max_pixels`` pixels is refused before decoding, and a decode that runs past
``decode_seconds`` is stopped at its next read of the data. PIL's process-wide settings are left alone.

``Preparation.prepared`` turns a photo (encoded bytes, a file, a PIL image or a pixel array) into what
an image network reads: upright RGB letterboxed onto a black square (``clean_image``, as the training
photos were), scaled to [0, 1] and normalised by the backbone's mean and std (``normalised``, the one
normalisation training's evaluation transform uses too). Bad input raises ``InputError`` naming the field.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from typing import Union

import attrs
import numpy as np
from contracts.api import PHOTO_FORMATS
from PIL import GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError, WebPImagePlugin

from fbml.errors import InputError
from fbml.vision.cleaning import clean_image
from fbml.vision.jpeg import check_decode_cost

DEFAULT_MAX_IMAGE_PIXELS = 12_000_000
DEFAULT_DECODE_SECONDS = 1.0
FORMAT_NAMES = "JPEG, PNG, WebP or GIF"
PhotoInput = Union[bytes, bytearray, memoryview, "os.PathLike[str]", Image.Image, np.ndarray]
"""What a caller may give as a photo: encoded bytes, a file, a PIL image or uint8 pixels (H x W or H x W x 3)."""
Stats = tuple[float, float, float]
PLUGINS = (JpegImagePlugin, PngImagePlugin, WebPImagePlugin, GifImagePlugin)
"""The decoders of ``PHOTO_FORMATS``, imported with this module: else PIL imports every plugin it has on the first
photo it cannot place (seconds on a busy machine, which a photo's decode budget would be charged)."""


@attrs.frozen
class PhotoLimits:
    """How much decoding one photo may cost: pixels decoded (after a JPEG's reduction) and seconds."""

    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    decode_seconds: float = DEFAULT_DECODE_SECONDS


class TooCostly(Exception):
    """A photo whose decode would exceed a ``PhotoLimits`` bound."""


@attrs.frozen(eq=False)
class PreparedPhoto:
    """A photo as an image network reads it: float32 (3, S, S), letterboxed and normalised by ``preparation``."""

    pixels: np.ndarray
    preparation: Preparation


@attrs.frozen
class Preparation:
    """How photos are prepared for an image network: the square's side and the backbone's mean and std."""

    size: int
    mean: Stats
    std: Stats

    def prepared(self, photo: PhotoInput | PreparedPhoto, field: str = "image", limits: PhotoLimits = PhotoLimits()) -> PreparedPhoto:
        """``photo`` decoded within ``limits`` (when encoded), letterboxed to ``size`` and normalised;
        ``InputError`` naming ``field`` when it is not a usable photo."""
        if isinstance(photo, PreparedPhoto):
            if photo.preparation != self:
                raise InputError(field, f"was prepared for {photo.preparation}, not {self}")
            return photo
        image = photo_image(photo, self.size, limits, field)
        try:
            square = clean_image(image, self.size)
        except Exception as error:  # a PIL image given unloaded decodes here: its breakage is the caller's bad input
            raise InputError(field, f"is a truncated or corrupt image ({type(error).__name__})") from None
        pixels = np.asarray(square).transpose(2, 0, 1)
        return PreparedPhoto(normalised(pixels, self.mean, self.std), self)


def normalised(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 pixels (..., 3, S, S) as float32 scaled to [0, 1] and normalised by the per-channel ``mean`` and ``std``."""
    if pixels.dtype != np.uint8 or pixels.ndim < 3 or pixels.shape[-3] != 3:
        raise ValueError(f"expected uint8 pixels (..., 3, S, S), got {pixels.dtype} {pixels.shape}")
    centre = np.asarray(mean, np.float32).reshape(3, 1, 1)
    spread = np.asarray(std, np.float32).reshape(3, 1, 1)
    scaled = pixels.astype(np.float32) / np.float32(255)
    prepared: np.ndarray = np.ascontiguousarray((scaled - centre) / spread)
    return prepared


def photo_image(photo: PhotoInput, size: int, limits: PhotoLimits, field: str) -> Image.Image:
    """``photo`` as a PIL image: decoded within ``limits`` (bytes or a file), as given (a PIL image), or from
    uint8 pixels; ``InputError`` naming ``field`` otherwise."""
    if isinstance(photo, Image.Image):
        return photo
    if isinstance(photo, np.ndarray):
        return _from_pixels(photo, field)
    if isinstance(photo, os.PathLike):
        return decoded_photo(_file_bytes(photo, field), size, limits, field)
    if isinstance(photo, bytes | bytearray | memoryview):
        return decoded_photo(bytes(photo), size, limits, field)
    raise InputError(field, f"is a {type(photo).__name__}, not a photo (bytes, a path, a PIL image or a uint8 array)")


def decoded_photo(data: bytes, size: int, limits: PhotoLimits, field: str = "image") -> Image.Image:
    """``data`` decoded (a JPEG at the smallest scale whose longest side is at least ``size``), within
    ``limits``; ``InputError`` naming ``field`` when it is not a photo or would cost too much."""
    try:
        check_decode_cost(data, limits.max_pixels)
        image = Image.open(_Deadline(data, limits.decode_seconds), formats=list(PHOTO_FORMATS))
    except Image.DecompressionBombError as error:
        raise InputError(field, str(error)) from None
    except UnidentifiedImageError:
        raise InputError(field, f"is not an image ({FORMAT_NAMES})") from None
    except Exception as error:  # PIL raises many kinds for a broken header
        raise InputError(field, f"is a truncated or corrupt image ({type(error).__name__})") from None
    try:
        if image.format == "JPEG":
            image.draft("RGB", (size, 1) if image.width >= image.height else (1, size))
        if image.width * image.height > limits.max_pixels:
            raise TooCostly(f"has more than {limits.max_pixels} pixels to decode ({image.width} x {image.height})")
        image.load()
    except (TooCostly, Image.DecompressionBombError) as error:
        image.close()
        raise InputError(field, str(error)) from None
    except Exception as error:  # PIL raises many kinds for broken data: each is the caller's bad input
        image.close()
        raise InputError(field, f"is a truncated or corrupt image ({type(error).__name__})") from None
    return image


def _from_pixels(pixels: np.ndarray, field: str) -> Image.Image:
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))):
        raise InputError(field, f"pixels must be uint8 H x W, H x W x 3 (RGB) or H x W x 4 (RGBA), got {pixels.dtype} {pixels.shape}")
    if min(pixels.shape[:2]) < 1:
        raise InputError(field, f"has no pixels ({pixels.shape})")
    return Image.fromarray(np.ascontiguousarray(pixels))


def _file_bytes(path: os.PathLike[str], field: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise InputError(field, f"cannot read {os.fspath(path)!r} ({error.strerror or type(error).__name__})") from None


class _Deadline(io.BytesIO):
    """The photo's bytes, refusing to be read ``seconds`` after opening (PIL reads a file in chunks as it decodes)."""

    def __init__(self, data: bytes, seconds: float) -> None:
        super().__init__(data)
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds

    def read(self, size: int | None = -1, /) -> bytes:
        if time.monotonic() > self._deadline:
            raise TooCostly(f"took more than {self._seconds:g} s to decode")
        return super().read(size)
