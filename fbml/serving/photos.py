"""Uploaded photos decoded with bounded work, and prepared as the image models read them.

Only the formats of ``contracts.api.PHOTO_FORMATS`` are opened. A JPEG is decoded at a reduced
scale (PIL's ``draft``: 1/2, 1/4 or 1/8, its longest side staying at least the model's size, as
the training photos were); other formats decode whole. Either way an upload whose decode would
make more than ``max_pixels`` pixels is refused before decoding, and a decode that runs past
``decode_seconds`` is stopped at its next read of the file. PIL's process-wide settings are left
alone. Preparation is numpy (both runtimes read it; it equals training's ``eval_transform``).
"""

from __future__ import annotations

import io
import time

import attrs
import numpy as np
from contracts.api import PHOTO_FORMATS
from PIL import Image, UnidentifiedImageError

from fbml.bundle.store import ImageSettings
from fbml.serving.errors import ApiError

DEFAULT_MAX_IMAGE_PIXELS = 12_000_000
DEFAULT_DECODE_SECONDS = 1.0
FORMAT_NAMES = "JPEG, PNG, WebP or GIF"


@attrs.frozen
class PhotoLimits:
    """How much decoding one upload may cost: pixels decoded (after a JPEG's reduction) and seconds."""

    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    decode_seconds: float = DEFAULT_DECODE_SECONDS


class TooCostly(Exception):
    """An upload whose decode would exceed a ``PhotoLimits`` bound."""


def prepared_image(data: bytes, settings: ImageSettings, limits: PhotoLimits, field: str = "image") -> np.ndarray:
    """An uploaded photo as the image models read it (float32 (3, S, S)): decoded within ``limits``,
    upright RGB letterboxed to ``settings.size``, normalised; 422 naming ``field`` when unusable."""
    from fbml.vision.cleaning import clean_image

    try:
        with decoded_photo(data, settings.size, limits) as image:
            square = clean_image(image, settings.size)
    except UnidentifiedImageError:
        raise ApiError(422, f"{field} is not an image ({FORMAT_NAMES})", field) from None
    except (TooCostly, Image.DecompressionBombError) as error:
        raise ApiError(422, f"{field} {error}", field) from None
    except Exception as error:  # PIL raises many kinds for broken files: each is the client's bad input
        raise ApiError(422, f"{field} is a truncated or corrupt image ({type(error).__name__})", field) from None
    return normalised(np.asarray(square), settings)


def normalised(pixels: np.ndarray, settings: ImageSettings) -> np.ndarray:
    """uint8 (S, S, 3) pixels as float32 (3, S, S) scaled to [0, 1] and normalised by the backbone's mean and std."""
    mean = np.asarray(settings.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(settings.std, np.float32).reshape(3, 1, 1)
    scaled = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    prepared: np.ndarray = np.ascontiguousarray((scaled - mean) / std)
    return prepared


def decoded_photo(data: bytes, size: int, limits: PhotoLimits) -> Image.Image:
    """``data`` decoded (a JPEG at the smallest scale whose longest side is at least ``size``), within ``limits``."""
    image = Image.open(_Deadline(data, limits.decode_seconds), formats=list(PHOTO_FORMATS))
    try:
        if image.format == "JPEG":
            image.draft("RGB", (size, 1) if image.width >= image.height else (1, size))
        if image.width * image.height > limits.max_pixels:
            raise TooCostly(f"has more than {limits.max_pixels} pixels to decode ({image.width} x {image.height})")
        image.load()
    except BaseException:
        image.close()
        raise
    return image


class _Deadline(io.BytesIO):
    """The upload's bytes, refusing to be read ``seconds`` after opening (PIL reads a file in chunks as it decodes)."""

    def __init__(self, data: bytes, seconds: float) -> None:
        super().__init__(data)
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds

    def read(self, size: int | None = -1, /) -> bytes:
        if time.monotonic() > self._deadline:
            raise TooCostly(f"took more than {self._seconds:g} s to decode")
        return super().read(size)
