"""A JPEG's decode cost read from its markers (``fbml.vision.jpeg``): its layout equals what PIL reads, hostile
progressive JPEGs (a few KB declaring a huge image, or hundreds of scans) are refused before decoding by the
library, the server's decoder and ``clean-images``, and ordinary photos (the real marketplace's progressive ones
among them) decode as before."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from fbml.errors import InputError
from fbml.vision.cleaning import clean_images, open_image
from fbml.vision.jpeg import MAX_SCANS, JpegLayout, check_decode_cost, jpeg_layout
from fbml.vision.photos import PhotoLimits, Preparation
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

REAL_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "marketplace" / "raw_images"


def jpeg(pixels: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def segments(data: bytes) -> list[tuple[int, bytes]]:
    """A JPEG's marker segments, each with its scan data (what a test forges from), SOI left out."""
    found, position = [], 2
    while position < len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            break
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
        found.append((marker, data[position:end]))
        position = end
    return found


def progressive_bomb(width: int, height: int, repeats: int) -> bytes:
    """A few KB: a small progressive JPEG's tables and scans, its frame declaring ``width`` x ``height`` and its
    scans (with their Huffman tables) repeated ``repeats`` times. libjpeg goes over the whole declared image
    for each scan, warning of the data that runs out."""
    rng = np.random.default_rng(0)
    parts = segments(jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), progressive=True, quality=90))
    first_scan = next(index for index, (marker, _) in enumerate(parts) if marker == 0xDA) - 1
    head = b"".join(bytes(part[:5] + struct.pack(">HH", height, width) + part[9:]) if marker == 0xC2 else part
                    for marker, part in parts[:first_scan])
    scans = b"".join(part for _, part in parts[first_scan:])
    return b"\xff\xd8" + head + scans * repeats + b"\xff\xd9"


def test_the_layout_of_baseline_and_progressive_jpegs() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert jpeg_layout(jpeg(pixels)) == JpegLayout(60, 40, False, 1)
    assert jpeg_layout(jpeg(pixels, progressive=True)) == JpegLayout(60, 40, True, 10)
    assert jpeg_layout(jpeg(pixels[..., 0], progressive=True)).scans >= 2  # type: ignore[union-attr]
    assert jpeg_layout(progressive_bomb(9000, 7000, 5)) == JpegLayout(9000, 7000, True, 50)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    assert jpeg_layout(png.getvalue()) is None and jpeg_layout(b"") is None and jpeg_layout(b"\xff\xd8\x00junk") is None


@settings(max_examples=60)
@given(width=st.integers(1, 80), height=st.integers(1, 80), progressive=st.booleans(), quality=st.integers(5, 95),
       grey=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_the_layout_says_what_pil_reads(width: int, height: int, progressive: bool, quality: int, grey: bool, seed: int) -> None:
    shape = (height, width) if grey else (height, width, 3)
    data = jpeg(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), progressive=progressive, quality=quality)
    layout = jpeg_layout(data)
    assert layout is not None and (layout.width, layout.height, layout.progressive) == (width, height, progressive)
    assert 1 <= layout.scans <= MAX_SCANS and (layout.scans == 1) == (not progressive)
    check_decode_cost(data, width * height)


@settings(max_examples=200)
@given(st.binary(max_size=200) | st.binary(max_size=200).map(lambda tail: b"\xff\xd8" + tail))
def test_any_bytes_get_a_layout_or_none_and_never_fail(data: bytes) -> None:
    layout = jpeg_layout(data)
    assert layout is None or layout.scans >= 0


@pytest.mark.parametrize(("bomb", "reason"), [
    (lambda: progressive_bomb(10000, 9000, 1), "is a progressive JPEG of 10000 x 9000 pixels"),
    (lambda: progressive_bomb(300, 200, 12), "has 120 scans"),
])
def test_a_costly_jpeg_is_refused_before_decoding_everywhere(bomb, reason: str, tmp_path: Path) -> None:
    """A few KB that would hold hundreds of megabytes and take seconds: refused by the prediction path's decoder
    (what the server runs: a 422 naming the field), by the cache's and by ``clean-images`` (rejected, with why)."""
    data = bomb()
    assert len(data) < 60_000
    with pytest.raises(InputError, match=f"image: {reason}"):
        Preparation(224, (0.5,) * 3, (0.5,) * 3).prepared(data, limits=PhotoLimits())
    with pytest.raises(Image.DecompressionBombError, match=reason):
        open_image(data, size=224, max_pixels=12_000_000)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bomb.jpg").write_bytes(data)
    report = clean_images(tmp_path / "src", tmp_path / "dst", size=64, workers=1, progress=False)
    assert report.rejected == 1 and report.files["reason"][0].startswith(f"decompression bomb: {reason}")


def test_ordinary_progressive_photos_still_decode(tmp_path: Path) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    data = jpeg(pixels, progressive=True)
    prepared = Preparation(64, (0.5,) * 3, (0.5,) * 3).prepared(data, limits=PhotoLimits(max_pixels=400 * 300))
    assert prepared.pixels.shape == (3, 64, 64)
    if not REAL_PHOTOS.is_dir():
        pytest.skip("the real marketplace photos are not here")
    real = [path for path in sorted(REAL_PHOTOS.iterdir()) if jpeg_layout(path.read_bytes())][:20]
    (tmp_path / "real").mkdir()
    for path in real:
        assert jpeg_layout(path.read_bytes()).progressive  # type: ignore[union-attr]
        (tmp_path / "real" / path.name).write_bytes(path.read_bytes())
    report = clean_images(tmp_path / "real", tmp_path / "clean", size=64, workers=1, progress=False)
    assert (report.cleaned, report.rejected) == (len(real), 0)
