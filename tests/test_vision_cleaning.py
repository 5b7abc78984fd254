"""Tests for the photo-cleaning stage."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fbml.errors import FbmlError, InputError
from fbml.testing import ENCODABLE_MODES, EXIF_FORMATS, ORIENTATION, encoded, photos
from fbml.vision.cleaning import (
    BROKEN_LINK,
    OUTSIDE_LINK,
    STORED_RESAMPLING,
    clean_image,
    clean_images,
    open_image,
)
from fbml.vision.cleaning_report import ImageCleaningReport
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "marketplace" / "raw_images"
BRIGHT = {
    "RGB": (230, 180, 40),
    "L": 200,
    "LA": (200, 255),
    "P": (230, 180, 40),
    "RGBA": (230, 180, 40, 255),
    "CMYK": (0, 50, 200, 0),
    "I;16": 50_000,
    "1": 1,
}


def solid(mode: str, size: tuple[int, int]) -> Image.Image:
    """A bright, opaque, single-colour image in `mode`."""
    if mode == "P":
        return Image.new("RGB", size, BRIGHT["RGB"]).convert("P")
    return Image.new(mode, size, BRIGHT[mode])


def gradient(width: int, height: int) -> Image.Image:
    """A smooth RGB test picture."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, axis=1)
    return Image.fromarray(np.stack([x, y, (x + y) / 2], axis=-1).astype(np.uint8))


def jpeg_bytes(image: Image.Image, **params: object) -> bytes:
    """`image` encoded as JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **params)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` RGB pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two same-size images, in grey levels."""
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


@settings(max_examples=50, deadline=None)
@given(
    width=st.integers(1, 400),
    height=st.integers(1, 400),
    mode=st.sampled_from(sorted(BRIGHT)),
    size=st.integers(8, 128),
)
def test_clean_image_letterboxes_any_mode(width: int, height: int, mode: str, size: int) -> None:
    out = clean_image(solid(mode, (width, height)), size)

    assert (out.size, out.mode) == ((size, size), "RGB")
    left, top, right, bottom = out.getbbox()  # padding outside the box is black by definition
    scale = size / max(width, height)
    assert abs((right - left) - width * scale) <= 1
    assert abs((bottom - top) - height * scale) <= 1
    assert abs(left - (size - right)) <= 1
    assert abs(top - (size - bottom)) <= 1
    assert np.asarray(out.crop((left, top, right, bottom))).max(axis=-1).min() > 0


def letterbox(size: tuple[int, int], orientation: int | None, square: int) -> tuple[int, int, int, int]:
    """Where a photo of ``size`` shown upright (EXIF 5-8 turn it) lies on a black ``square``: left, top, right, bottom."""
    width, height = size[::-1] if orientation in (5, 6, 7, 8) else size
    scale = square / max(width, height)
    fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
    left, top = (square - fitted[0]) // 2, (square - fitted[1]) // 2
    return left, top, left + fitted[0], top + fitted[1]


@settings(max_examples=150)
@given(image=photos(max_side=300, max_pixels=20_000), size=st.integers(1, 48))
def test_any_photo_becomes_an_rgb_square_black_outside_it_and_is_left_as_it_was(image: Image.Image, size: int) -> None:
    before = (image.mode, image.size, image.tobytes(), dict(image.info))

    out = clean_image(image, size)

    assert (image.mode, image.size, image.tobytes(), dict(image.info)) == before
    assert (out.mode, out.size) == ("RGB", (size, size))
    left, top, right, bottom = letterbox(image.size, image.getexif().get(ORIENTATION), size)
    pixels = np.asarray(out).copy()
    pixels[top:bottom, left:right] = 0
    assert not pixels.any()


@settings(max_examples=100)
@given(data=st.data(), format=st.sampled_from(sorted(ENCODABLE_MODES)), size=st.integers(1, 48))
def test_a_photo_file_of_any_format_opens_and_cleans_to_its_upright_letterbox(data: st.DataObject, format: str, size: int) -> None:
    photo = data.draw(photos(modes=ENCODABLE_MODES[format], max_side=200, max_pixels=10_000), label="photo")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"photo.{format.lower()}"
        path.write_bytes(encoded(photo, format))
        with open_image(path, size=None, max_pixels=10**6) as image:
            out = clean_image(image, size)
            loaded_size = image.size

    assert (out.mode, out.size) == ("RGB", (size, size))
    if format == "TIFF":  # Pillow turns a TIFF as it loads it (and drops the tag), its own way for tiny ones
        left, top, right, bottom = letterbox(loaded_size, None, size)
    else:
        orientation = photo.getexif().get(ORIENTATION) if format in EXIF_FORMATS else None
        left, top, right, bottom = letterbox(photo.size, orientation, size)
    pixels = np.asarray(out).copy()
    pixels[top:bottom, left:right] = 0
    assert not pixels.any()


def test_clean_image_applies_exif_orientation_without_touching_input() -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    image = Image.open(io.BytesIO(jpeg_bytes(solid("RGB", (200, 100)), exif=exif)))

    left, top, right, bottom = clean_image(image, 64).getbbox()

    assert (right - left, bottom - top) == (32, 64)
    assert image.size == (200, 100)
    assert image.getexif()[ORIENTATION] == 6


def test_open_image_drafts_jpegs_and_keeps_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = tmp_path / "wide.jpg"
    path.write_bytes(jpeg_bytes(solid("RGB", (2000, 1000)), exif=exif))

    image = open_image(path, size=100, max_pixels=10**7)
    left, top, right, bottom = clean_image(image, 100).getbbox()

    assert image.size == (250, 125)  # decoded at 1/8 scale, still >= 100 px on the long side
    assert (right - left, bottom - top) == (50, 100)


def test_open_image_does_not_draft_below_size(tmp_path: Path) -> None:
    path = tmp_path / "odd.jpg"
    path.write_bytes(jpeg_bytes(gradient(1020, 750)))

    assert open_image(path, size=512, max_pixels=10**7).size == (1020, 750)
    assert open_image(path, size=255, max_pixels=10**7).size == (255, 188)


def test_transparency_becomes_black() -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 255, 255, 255))
    rgba.paste((255, 0, 0, 0), (0, 0, 5, 10))
    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0])
    palette.paste(2, (0, 0, 5, 10))
    palette.info["transparency"] = 2

    for image in (rgba, palette, rgba.convert("LA")):
        out = np.asarray(clean_image(image, 10))
        assert (out[:, :5] == 0).all(), image.mode
        assert (out[:, 5:] == 255).all(), image.mode


def test_half_transparent_pixels_are_darkened() -> None:
    out = clean_image(Image.new("RGBA", (4, 4), (255, 255, 255, 128)), 4)

    assert np.asarray(out).min() == np.asarray(out).max() == 128


def test_sixteen_bit_png_is_rescaled(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 30), 65_000, dtype=np.uint16)).save(path)

    image = open_image(path, size=30, max_pixels=10**6)
    out = np.asarray(clean_image(image, 30))

    assert image.mode == "I;16"
    assert out[5:25].min() >= 252


@pytest.mark.parametrize(
    ("image", "grey"),
    [
        (Image.new("I", (4, 4), 65_535), 255),
        (Image.new("I", (4, 4), 70_000), 255),
        (Image.new("I", (4, 4), -5), 0),
        (Image.new("F", (4, 4), 127.6), 128),
        (Image.new("F", (4, 4), 300.0), 255),
    ],
)
def test_wide_modes_are_scaled_and_clipped(image: Image.Image, grey: int) -> None:
    assert np.unique(np.asarray(clean_image(image, 4))).tolist() == [grey]


def test_cleaning_is_idempotent() -> None:
    once = clean_image(gradient(300, 200), 64)

    assert clean_image(once, 64).tobytes() == once.tobytes()


def test_recleaning_a_saved_jpeg_changes_nothing_visible() -> None:
    once = clean_image(gradient(300, 200), 256)
    reloaded = Image.open(io.BytesIO(jpeg_bytes(once, quality=90)))

    twice = clean_image(reloaded, 256)

    assert twice.size == once.size
    assert twice.tobytes() == reloaded.tobytes()
    assert mean_abs_diff(once, twice) < 1.0


def test_clean_image_refuses_a_bad_size() -> None:
    with pytest.raises(FbmlError, match="size must be at least 1"):
        clean_image(gradient(4, 4), 0)


def test_open_image_refuses_bombs_without_leaking_settings(tmp_path: Path) -> None:
    big, huge = tmp_path / "big.png", tmp_path / "huge.png"
    big.write_bytes(png_claiming(5_000, 5_000))
    huge.write_bytes(png_claiming(100_000, 100_000))
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)

    with pytest.raises(Image.DecompressionBombError, match="^5000 x 5000 pixels exceeds max_pixels 1000000$"):
        open_image(big, size=None, max_pixels=1_000_000)
    with pytest.raises(Image.DecompressionBombError, match="10000000000 pixels"):  # PIL's own limit refuses it first
        open_image(huge, size=None, max_pixels=89_478_485)

    assert (Image.MAX_IMAGE_PIXELS, warnings.filters) == (limit, filters)


def test_sixteen_threads_decoding_at_once_leave_pils_limit_alone(tmp_path: Path) -> None:
    bomb, good = tmp_path / "bomb.png", tmp_path / "good.png"
    bomb.write_bytes(png_claiming(30_000, 30_000))
    gradient(64, 48).save(good)
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    seen: set[int | None] = set()
    done = threading.Event()
    start = threading.Barrier(17)

    def watch() -> None:
        start.wait()
        while not done.is_set():
            seen.add(Image.MAX_IMAGE_PIXELS)

    def decode(thread: int) -> list[object]:
        start.wait()
        outcomes: list[object] = []
        for _ in range(25):
            try:
                with open_image(bomb if thread % 2 else good, size=32, max_pixels=89_478_485) as image:
                    outcomes.append(image.size)
            except Image.DecompressionBombError:
                outcomes.append("refused")
        return outcomes

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(decode, range(16)))
    done.set()
    watcher.join()

    assert seen == {limit}
    assert (Image.MAX_IMAGE_PIXELS, warnings.filters) == (limit, filters)
    assert results[1::2] == [["refused"] * 25] * 8
    assert results[0::2] == [[(64, 48)] * 25] * 8


def test_no_library_code_switches_pils_limit_or_the_warnings_filters() -> None:
    """Process-wide switches belong to the host: only the command line's entry point may set them."""
    library = [path for path in (Path(__file__).parents[1] / "fbml").rglob("*.py") if path.name != "cli.py"]
    switch = re.compile(r"\bMAX_IMAGE_PIXELS\s*=[^=]|\bwarnings\.(simplefilter|filterwarnings|catch_warnings)\b")
    assert [path.name for path in library if switch.search(path.read_text())] == []


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """A folder of good, broken, hostile and clashing files."""
    src = tmp_path / "src"
    src.mkdir()
    gradient(200, 150).save(src / "good.jpg", quality=95)
    rgba = gradient(90, 120).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(src / "clear.png")
    (src / "x.jpg").write_text("not a picture at all")
    whole = jpeg_bytes(gradient(200, 150))
    (src / "half.jpg").write_bytes(whole[: len(whole) // 2])
    gradient(300, 300).save(src / "big.png")
    (src / "huge.png").write_bytes(png_claiming(100_000, 100_000))
    gradient(60, 40).save(src / "twin.jpg")
    gradient(40, 60).save(src / "twin.png")
    (src / "nested").mkdir()
    gradient(10, 10).save(src / "nested" / "ignored.jpg")
    return src


def clean_messy(src: Path, dst: Path, workers: int) -> ImageCleaningReport:
    """`clean_images` as the folder tests call it."""
    return clean_images(src, dst, size=48, workers=workers, max_pixels=50_000, progress=False)


def test_clean_images_accounts_for_every_file(messy_folder: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out" / "deeper"

    report = clean_messy(messy_folder, dst, workers=2)

    rows = {row["file"]: row for row in report.files.iter_rows(named=True)}
    assert sorted(rows) == sorted(path.name for path in messy_folder.iterdir() if path.is_file())
    assert {name: row["output"] for name, row in rows.items() if row["status"] == "cleaned"} == {
        "clear.png": "clear.jpg",
        "good.jpg": "good.jpg",
        "twin.jpg": "twin.jpg",
    }
    reasons = {name: row["reason"] for name, row in rows.items() if row["status"] == "rejected"}
    assert reasons["x.jpg"] == "not an image"
    assert reasons["half.jpg"].startswith("truncated or corrupt image: ")
    assert reasons["big.png"] == "decompression bomb: 300 x 300 pixels exceeds max_pixels 50000"
    assert reasons["huge.png"].startswith("decompression bomb: Image size (10000000000 pixels) exceeds limit")
    assert reasons["twin.png"] == "duplicate stem"
    assert all(row["output"] is None for name, row in rows.items() if name in reasons)
    assert (report.cleaned, report.rejected) == (3, 5)
    assert report.rejected_by_reason() == {
        "decompression bomb": 2,
        "duplicate stem": 1,
        "not an image": 1,
        "truncated or corrupt image": 1,
    }
    assert sorted(path.name for path in dst.iterdir()) == ["clear.jpg", "good.jpg", "twin.jpg"]
    for path in dst.iterdir():
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (48, 48))


def test_clean_images_is_the_same_in_one_process_or_two(messy_folder: Path, tmp_path: Path) -> None:
    one = clean_messy(messy_folder, tmp_path / "one", workers=1)
    two = clean_messy(messy_folder, tmp_path / "two", workers=2)

    assert one == two
    assert one.files.columns == ["file", "status", "reason", "output"]
    outputs = sorted(path.name for path in (tmp_path / "one").iterdir())
    assert outputs == sorted(path.name for path in (tmp_path / "two").iterdir())
    for name in outputs:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_clean_images_overwrites_previous_outputs(messy_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "good.jpg").write_text("stale")

    clean_messy(messy_folder, tmp_path / "out", workers=1)

    with Image.open(tmp_path / "out" / "good.jpg") as image:
        assert image.size == (48, 48)


def test_clean_images_replaces_a_link_in_the_destination_never_writes_through_it(messy_folder: Path, tmp_path: Path) -> None:
    """A link left under an output's name, or under the name its temporary file takes, is replaced by the cleaned
    photo (or removed): what it points to is left as it was."""
    import os

    outside = tmp_path / "precious.jpg"
    outside.write_text("keep")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "good.jpg").symlink_to(outside)
    (tmp_path / "out" / f".good.jpg.{os.getpid()}.tmp").symlink_to(outside)
    clean_messy(messy_folder, tmp_path / "out", workers=1)
    assert outside.read_text() == "keep" and not (tmp_path / "out" / "good.jpg").is_symlink()
    with Image.open(tmp_path / "out" / "good.jpg") as image:
        assert image.size == (48, 48)


def test_clean_images_reports_other_os_errors(messy_folder: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    (dst / "good.jpg").mkdir(parents=True)

    report = clean_messy(messy_folder, dst, workers=1)

    assert report.files.filter(file="good.jpg")["reason"].item().startswith("[Errno 21] Is a directory")
    assert report.rejected_by_reason()["[Errno 21] Is a directory"] == 1
    assert sorted(path.name for path in dst.iterdir()) == ["clear.jpg", "good.jpg", "twin.jpg"]


def test_clean_images_shows_progress_on_stderr(messy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean_images(messy_folder, tmp_path / "out", size=16, workers=1, max_pixels=50_000)

    captured = capsys.readouterr()
    assert "8/8" in captured.err
    assert captured.out == ""


def test_clean_images_handles_an_empty_folder(tmp_path: Path) -> None:
    report = clean_images(tmp_path, tmp_path / "out", progress=False)

    assert (report.cleaned, report.rejected, report.rejected_by_reason()) == (0, 0, {})


def test_clean_images_reports_names_that_are_not_utf8(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    gradient(20, 10).save(src / os.fsdecode(b"caf\xe9.png"))

    report = clean_images(src, tmp_path / "out", size=8, workers=1, progress=False)

    assert report.files.select("file", "output").row(0) == ("caf\\xe9.png", "caf\\xe9.jpg")
    assert [path.name for path in (tmp_path / "out").iterdir()] == [os.fsdecode(b"caf\xe9.jpg")]


def test_clean_images_follows_links_only_to_files_inside_the_folder(tmp_path: Path) -> None:
    src, outside = tmp_path / "src", tmp_path / "outside"
    src.mkdir()
    outside.mkdir()
    gradient(20, 10).save(src / "real.png")
    gradient(20, 10).save(outside / "secret.png")
    (src / "inside.png").symlink_to(src / "real.png")
    (src / "relative.png").symlink_to("real.png")
    (src / "out.png").symlink_to(outside / "secret.png")
    (src / "sneaky.png").symlink_to(Path("..") / "outside" / "secret.png")
    (src / "broken.png").symlink_to(src / "nowhere.png")
    (src / "folder").symlink_to(outside)

    report = clean_images(src, tmp_path / "out", size=8, workers=1, progress=False)

    assert report.files.select("file", "status", "reason").rows() == [
        ("broken.png", "rejected", BROKEN_LINK),
        ("inside.png", "cleaned", None),
        ("out.png", "rejected", OUTSIDE_LINK),
        ("real.png", "cleaned", None),
        ("relative.png", "cleaned", None),
        ("sneaky.png", "rejected", OUTSIDE_LINK),
    ]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["inside.jpg", "real.jpg", "relative.jpg"]


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_clean_images_deletes_the_partial_jpegs_a_killed_run_left(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    gradient(20, 10).save(src / "good.png")
    dead, an_hour_ago = dead_pid(), time.time() - 3600
    stale = [dst / f".good.jpg.{dead}.tmp", dst / f".other.jpg.{dead}.tmp"]
    kept = [
        dst / f".live.jpg.{os.getpid()}.tmp",  # a process that still runs
        dst / f".new.jpg.{dead}.tmp",  # changed after the run started
        dst / ".notes.tmp",
        dst / f"visible.jpg.{dead}.tmp",
        dst / f".photo.png.{dead}.tmp",
    ]
    for path in [*stale, *kept]:
        path.write_bytes(b"partial")
        os.utime(path, (an_hour_ago, an_hour_ago) if path.name != f".new.jpg.{dead}.tmp" else None)
    os.utime(dst / f".new.jpg.{dead}.tmp", (time.time() + 3600, time.time() + 3600))
    (dst / f".dir.jpg.{dead}.tmp").mkdir()

    report = clean_images(src, dst, size=8, workers=1, progress=False)

    assert report.cleaned == 1
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept) and (dst / f".dir.jpg.{dead}.tmp").is_dir()


@pytest.mark.parametrize("name", ["missing", "file.txt"])
def test_clean_images_needs_a_source_folder(tmp_path: Path, name: str) -> None:
    (tmp_path / "file.txt").write_text("")

    with pytest.raises(InputError, match="no such directory"):
        clean_images(tmp_path / name, tmp_path / "out", progress=False)


@pytest.mark.real_data
def test_clean_images_on_real_photos(tmp_path: Path) -> None:
    if not REAL.is_dir():
        pytest.skip(f"real photos not found at {REAL}")
    src = tmp_path / "src"
    src.mkdir()
    photos = sorted(REAL.iterdir())[:10]
    for photo in photos:
        shutil.copyfile(photo, src / photo.name)

    report = clean_images(src, tmp_path / "out", size=128, workers=2, progress=False)

    assert (report.cleaned, report.rejected) == (10, 0)
    diffs = []
    for photo in photos:
        with Image.open(tmp_path / "out" / f"{photo.stem}.jpg") as out, Image.open(photo) as original:
            assert (out.mode, out.size) == ("RGB", (128, 128))
            diffs.append(mean_abs_diff(out, clean_image(original, 128)))  # full decode, no draft
    assert max(diffs) < 8.0
    assert np.mean(diffs) < 3.0


def test_clean_images_stores_photos_resized_with_the_stored_filter(tmp_path: Path) -> None:
    """The stored photos are resized with ``STORED_RESAMPLING`` (Hamming), a network's input with bicubic."""
    x = np.arange(300, dtype=np.float64)
    stripes = (127.5 + 127.5 * np.sin(x[None, :] / 1.7 + x[:, None] / 2.3)).astype(np.uint8)  # grey: no chroma lost
    photo = Image.fromarray(np.stack([stripes] * 3, axis=-1))
    (tmp_path / "src").mkdir()
    photo.save(tmp_path / "src" / "stripes.png")
    clean_images(tmp_path / "src", tmp_path / "out", size=128, workers=1, progress=False)
    with Image.open(tmp_path / "out" / "stripes.jpg") as stored:
        to_hamming = mean_abs_diff(stored, clean_image(photo, 128, resample=STORED_RESAMPLING))
        to_bicubic = mean_abs_diff(stored, clean_image(photo, 128))
    assert 2 * to_hamming < to_bicubic  # JPEG costs ~2.5 grey levels here; the filters lie ~7 apart
