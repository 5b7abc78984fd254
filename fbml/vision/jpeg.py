"""What a JPEG will cost to decode, read from its markers before any pixel is.

A JPEG's header says its size, and PIL's ``draft`` lets a baseline JPEG decode at 1/2, 1/4 or 1/8 of it. A
progressive one cannot be decoded in less than its full size: the decoder holds every coefficient of the
declared image (two bytes per pixel and channel) and goes over all of them once per scan. A few KB can declare
a huge image and hundreds of cheap scans: seconds of work and gigabytes the pixel limit after the draft never
sees. So before decoding: at most ``MAX_SCANS`` scans (real photos use 10: libjpeg's progressive script; the
real marketplace photos all do), and a progressive JPEG's declared size within the pixel limit.
"""

from __future__ import annotations

import attrs
from PIL import Image

MAX_SCANS = 32
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame (not DHT, JPG, DAC)
PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and the restart markers carry no length
SOS, EOI = 0xDA, 0xD9


@attrs.frozen
class JpegLayout:
    """What a JPEG's markers say: its declared size, whether it is progressive, how many scans its data holds."""

    width: int
    height: int
    progressive: bool
    scans: int


def check_decode_cost(data: bytes, max_pixels: int) -> None:
    """``Image.DecompressionBombError`` (as for too many pixels) when ``data`` is a JPEG with more than
    ``MAX_SCANS`` scans, or a progressive one declaring more than ``max_pixels`` pixels; nothing otherwise
    (other formats, or markers the decoder will refuse itself)."""
    layout = jpeg_layout(data)
    if layout is None:
        return
    if layout.scans > MAX_SCANS:
        raise Image.DecompressionBombError(f"has {layout.scans} scans (photos use at most {MAX_SCANS}): each one goes over "
                                           "every pixel again")
    pixels = layout.width * layout.height
    if layout.progressive and pixels > max_pixels:
        raise Image.DecompressionBombError(f"is a progressive JPEG of {layout.width} x {layout.height} pixels: it decodes "
                                           f"only at full size, more than {max_pixels} pixels")


def jpeg_layout(data: bytes) -> JpegLayout | None:
    """The layout of JPEG bytes, read from their markers (entropy-coded data skipped, not decoded); None when
    they are not a JPEG or its markers cannot be read (the decoder then says what is wrong)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    position, width, height, progressive, scans = 2, 0, 0, False, 0
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before a marker
            position += 1
            continue
        if marker == EOI:
            break
        if marker in STANDALONE:
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2:
            return None
        if marker in SOF_MARKERS and position + 9 <= len(data):
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            progressive = progressive or marker in PROGRESSIVE_SOF
        position += 2 + length
        if marker == SOS:
            scans += 1
            position = _end_of_scan(data, position)
    return JpegLayout(width, height, progressive, scans)


def _end_of_scan(data: bytes, position: int) -> int:
    """Where the entropy-coded data starting at ``position`` ends: at the next marker that is not a stuffed byte
    (FF 00), a restart marker (FF D0-D7) or a fill byte (FF FF)."""
    while True:
        found = data.find(b"\xff", position)
        if found < 0 or found + 1 >= len(data):
            return len(data)
        following = data[found + 1]
        if following == 0xFF:
            position = found + 1
        elif following == 0x00 or 0xD0 <= following <= 0xD7:
            position = found + 2
        else:
            return found
