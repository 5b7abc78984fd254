"""Decoded photos and the image cache: every manifest row accounted for, caches round-trip and reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import attrs
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import fbml.vision.cache
from contracts import ImageManifest, Rejected
from fbml.tables.cleaning import MANIFEST_COLUMNS
from fbml.errors import FbmlError, InputError
from fbml.vision.cleaning import clean_image, open_image
from fbml.vision.cache import (
    INDEX_FILE,
    MISSING,
    PIXELS_FILE,
    UNREADABLE,
    ImageCache,
    build_image_cache,
    load_photos,
)
from fbml.tables.clean import clean_tables

CATEGORIES = ("Appliances", "Home & Garden", "Other Goods")
FILE_KINDS = ("jpg", "png", "missing")


@attrs.frozen
class PhotoSpec:
    """One manifest row's photo: how it is stored (or ``missing`` / ``corrupt``), its size and colour."""

    kind: str
    width: int
    height: int
    colour: tuple[int, int, int]


def manifest_of(image_ids: list[str], categories: list[str] | None = None) -> pl.DataFrame:
    """A valid ``ImageManifest`` with one product per photo."""
    count = len(image_ids)
    names = categories or [CATEGORIES[row % len(CATEGORIES)] for row in range(count)]
    frame = pl.DataFrame(
        {
            "image_id": image_ids,
            "id": [f"product-{row}" for row in range(count)],
            "product_name": [f"thing {row}" for row in range(count)],
            "product_description": ["a thing"] * count,
            "price": [float(row) for row in range(count)],
            "category": names,
            "subcategory": [None] * count,
            "category_path": names,
            "location": ["Leeds"] * count,
            "county": [None] * count,
        },
        schema={name: pl.Float64 if name == "price" else pl.String for name in MANIFEST_COLUMNS},
    )
    return ImageManifest.validate(frame)


def write_photo(path: Path, spec: PhotoSpec) -> None:
    """A small RGB JPEG, an RGBA PNG, or text bytes named ``.jpg`` for ``corrupt``."""
    pixels = np.zeros((spec.height, spec.width, 3), dtype=np.uint8) + np.array(spec.colour, dtype=np.uint8)
    pixels[:, : spec.width // 2] //= 2
    if spec.kind == "jpg":
        Image.fromarray(pixels).save(path.with_suffix(".jpg"), "JPEG")
    elif spec.kind == "png":
        Image.fromarray(pixels).convert("RGBA").save(path.with_suffix(".png"), "PNG")
    elif spec.kind == "corrupt":
        path.with_suffix(".jpg").write_bytes(b"this is not a photo")


def photo_folder(folder: Path, specs: list[PhotoSpec]) -> pl.DataFrame:
    """Write ``specs`` into ``folder`` (plus an orphan file) and return their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    image_ids = [f"img-{row:03d}" for row in range(len(specs))]
    for image_id, spec in zip(image_ids, specs, strict=True):
        write_photo(folder / image_id, spec)
    write_photo(folder / "orphan", PhotoSpec("jpg", 5, 5, (1, 2, 3)))
    return manifest_of(image_ids)


photo_specs = st.builds(
    PhotoSpec,
    kind=st.sampled_from(FILE_KINDS),
    width=st.integers(1, 24),
    height=st.integers(1, 24),
    colour=st.tuples(*[st.integers(0, 255)] * 3),
)


@st.composite
def photo_sets(draw: st.DrawFn) -> list[PhotoSpec]:
    """Some photos, some missing, and exactly one corrupt file somewhere among them."""
    specs = draw(st.lists(photo_specs, max_size=7))
    corrupt = PhotoSpec("corrupt", 1, 1, (0, 0, 0))
    return [*specs[: (at := draw(st.integers(0, len(specs))))], corrupt, *specs[at:]]


def assert_accounts_for_every_row(photos: fbml.vision.cache.Photos, manifest: pl.DataFrame, specs: list[PhotoSpec], size: int) -> None:
    """Loaded rows are the stored photos, rejected rows the rest with their reasons, pixels well-formed."""
    Rejected.validate(photos.rejected)
    rejected_rows = (photos.rejected["source_row"] - 1).to_list()
    assert sorted([*photos.rows.tolist(), *rejected_rows]) == list(range(manifest.height))
    assert photos.rows.tolist() == [row for row, spec in enumerate(specs) if spec.kind in ("jpg", "png")]
    assert photos.image_ids == tuple(manifest["image_id"].gather(photos.rows).to_list())
    assert photos.pixels.dtype == np.uint8 and photos.pixels.shape == (len(photos.rows), 3, size, size)
    for row, reason, raw in photos.rejected.select(pl.col("source_row") - 1, "reason", "raw").iter_rows():
        assert reason == MISSING if specs[row].kind == "missing" else reason.startswith(f"{UNREADABLE}: ")
        assert json.loads(raw) == manifest.row(row, named=True)


@settings(max_examples=25, deadline=None)
@given(specs=photo_sets(), size=st.sampled_from([4, 9, 16]), workers=st.sampled_from([1, 2]))
def test_load_photos_accounts_for_every_row(specs: list[PhotoSpec], size: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        manifest = photo_folder(Path(scratch), specs)
        photos = load_photos(manifest, Path(scratch), size=size, workers=workers, progress=False)
    assert_accounts_for_every_row(photos, manifest, specs, size)
    assert set(photos.rejected["source"]) <= {scratch}


@settings(max_examples=15, deadline=None)
@given(specs=photo_sets(), size=st.sampled_from([4, 16]))
def test_cache_round_trips_load_photos_and_leaves_no_temporary_folders(specs: list[PhotoSpec], size: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        photo_dir, cache_dir = Path(scratch) / "photos", Path(scratch) / "cache"
        manifest = photo_folder(photo_dir, specs)
        photos = load_photos(manifest, photo_dir, size=size, progress=False)
        built = build_image_cache(manifest, photo_dir, cache_dir, size=size, progress=False)
        opened = ImageCache.open(cache_dir)
        assert sorted(os.listdir(scratch)) == ["cache", "photos"]
        assert sorted(os.listdir(cache_dir)) == [INDEX_FILE, PIXELS_FILE]
        assert opened == built
        assert opened.image_ids == photos.image_ids and opened.size == size
        np.testing.assert_array_equal(opened.pixels, photos.pixels)
        assert opened.rejected.equals(photos.rejected)
        np.testing.assert_array_equal(opened.rows_for(list(photos.image_ids)), np.arange(len(photos.image_ids)))
        del built, opened


def test_pixels_are_the_cleaned_photo_in_chw_order(tmp_path: Path) -> None:
    spec = PhotoSpec("png", 20, 7, (200, 100, 50))
    manifest = photo_folder(tmp_path, [spec])
    photos = load_photos(manifest, tmp_path, size=12, progress=False)
    with Image.open(tmp_path / "img-000.png") as image:
        expected = np.asarray(clean_image(image, 12)).transpose(2, 0, 1)
    np.testing.assert_array_equal(photos.pixels[0], expected)


def test_sample_marketplace_photos_are_loaded_or_rejected_as_unreadable(sample) -> None:
    manifest = clean_tables(sample.products_csv, sample.images_csv).manifest.images
    photos = load_photos(manifest, sample.image_dir, size=16, progress=False)
    assert len(photos.rows) + photos.rejected.height == manifest.height
    assert photos.rejected.height == sample.defects.unreadable_photos
    assert photos.rejected["reason"].str.starts_with(f"{UNREADABLE}: ").all()


def test_missing_photo_folder_is_an_input_error(tmp_path: Path) -> None:
    manifest = manifest_of(["a"])
    with pytest.raises(InputError, match="no such directory"):
        load_photos(manifest, tmp_path / "nowhere", size=8, progress=False)
    with pytest.raises(InputError, match="no such directory"):
        build_image_cache(manifest, tmp_path / "nowhere", tmp_path / "cache", size=8, progress=False)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """Four good photos and one corrupt one."""
    specs = [PhotoSpec(kind, 10, 6, (10 * row, 40, 90)) for row, kind in enumerate(["jpg", "png", "corrupt", "jpg", "png"])]
    photo_folder(tmp_path / "photos", specs)
    return tmp_path / "photos"


def photo_manifest() -> pl.DataFrame:
    return manifest_of([f"img-{row:03d}" for row in range(5)])


def test_a_valid_cache_is_reused_without_decoding(photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir = tmp_path / "cache"
    decoded: list[Path] = []

    def counted(path: Path, **options: object) -> Image.Image:
        decoded.append(path)
        return open_image(path, **options)

    monkeypatch.setattr(fbml.vision.cache, "open_image", counted)
    first = build_image_cache(photo_manifest(), photo_dir, cache_dir, size=8, progress=False)
    stamp = (cache_dir / PIXELS_FILE).stat().st_mtime_ns
    assert len(decoded) == 5
    assert build_image_cache(photo_manifest(), photo_dir, cache_dir, size=8, progress=False) == first
    assert len(decoded) == 5 and (cache_dir / PIXELS_FILE).stat().st_mtime_ns == stamp
    build_image_cache(photo_manifest(), photo_dir, cache_dir, size=12, progress=False)
    build_image_cache(photo_manifest().head(3), photo_dir, cache_dir, size=12, progress=False)
    assert len(decoded) == 5 + 5 + 3


def test_a_cache_of_another_size_is_replaced(photo_dir: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    build_image_cache(photo_manifest(), photo_dir, cache_dir, size=8, progress=False)
    rebuilt = build_image_cache(photo_manifest(), photo_dir, cache_dir, size=12, progress=False)
    assert rebuilt.pixels.shape == (4, 3, 12, 12)
    assert sorted(os.listdir(tmp_path)) == ["cache", "photos"]


def rewrite_index(cache_dir: Path, **changes: object) -> None:
    index = json.loads((cache_dir / INDEX_FILE).read_text())
    (cache_dir / INDEX_FILE).write_text(json.dumps(index | changes))


CORRUPTIONS = {
    "not JSON": lambda cache_dir: (cache_dir / INDEX_FILE).write_text("{ nope"),
    "not an index": lambda cache_dir: (cache_dir / INDEX_FILE).write_text("[1, 2]"),
    "another format": lambda cache_dir: rewrite_index(cache_dir, format="fbml.image-cache/0"),
    "size disagrees": lambda cache_dir: rewrite_index(cache_dir, size=9),
    "size not an integer": lambda cache_dir: rewrite_index(cache_dir, size="8"),
    "too few ids": lambda cache_dir: rewrite_index(cache_dir, image_ids=["img-000"]),
    "duplicate ids": lambda cache_dir: rewrite_index(cache_dir, image_ids=["img-000"] * 4),
    "bad rejected rows": lambda cache_dir: rewrite_index(cache_dir, rejected=[{"source": "x"}]),
    "no index": lambda cache_dir: (cache_dir / INDEX_FILE).unlink(),
    "no pixels": lambda cache_dir: (cache_dir / PIXELS_FILE).unlink(),
    "pixels not npy": lambda cache_dir: (cache_dir / PIXELS_FILE).write_bytes(b"\x93NUMPY garbage"),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupted_cache_is_a_clear_error_and_is_rebuilt(corrupt, photo_dir: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    built = build_image_cache(photo_manifest(), photo_dir, cache_dir, size=8, progress=False)
    expected = np.array(built.pixels)
    del built
    corrupt(cache_dir)
    with pytest.raises(FbmlError, match=f"^{cache_dir}: not a valid image cache: "):
        ImageCache.open(cache_dir)
    rebuilt = build_image_cache(photo_manifest(), photo_dir, cache_dir, size=8, progress=False)
    np.testing.assert_array_equal(rebuilt.pixels, expected)


def test_an_interrupted_build_leaves_nothing_behind(photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fbml.vision.cache, "clean_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_image_cache(photo_manifest(), photo_dir, tmp_path / "cache", size=8, progress=False)
    assert os.listdir(tmp_path) == ["photos"]


def test_a_folder_that_is_not_a_cache_is_never_replaced(photo_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an image cache"):
        build_image_cache(photo_manifest(), photo_dir, tmp_path / "cache", size=8, progress=False)
    assert os.listdir(tmp_path / "cache") == ["notes.txt"]


def test_rows_for_names_photos_not_in_the_cache(photo_dir: Path, tmp_path: Path) -> None:
    cache = build_image_cache(photo_manifest(), photo_dir, tmp_path / "cache", size=8, progress=False)
    assert cache.cached(["img-004", "img-002", "nope"]).tolist() == [True, False, False]
    assert cache.rows_for(["img-004", "img-000"]).tolist() == [3, 0]
    with pytest.raises(FbmlError, match=r"2 photo\(s\) not in the image cache, e\.g\. \['img-002', 'nope'\]"):
        cache.rows_for(["img-000", "img-002", "nope"])


def test_duplicate_image_ids_cannot_be_cached(photo_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FbmlError, match="duplicate image ids"):
        build_image_cache(pl.concat([photo_manifest(), photo_manifest().head(1)]), photo_dir, tmp_path / "c", size=8)


def test_a_manifest_needs_an_image_id_on_every_row(photo_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FbmlError, match="no image_id column"):
        load_photos(photo_manifest().drop("image_id"), photo_dir, size=8)
    with pytest.raises(FbmlError, match="rows without an image_id"):
        build_image_cache(photo_manifest().with_columns(image_id=None), photo_dir, tmp_path / "c", size=8)


def test_importing_photos_does_not_import_torch() -> None:
    code = "import sys, fbml.vision.cache; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.real_data
def test_real_cleaned_photos_load_at_their_size(real_data: Path) -> None:
    manifest = clean_tables(real_data / "Products.csv", real_data / "Images.csv").manifest.images.head(40)
    photos = load_photos(manifest, real_data / "images_224", size=224, progress=False)
    assert photos.pixels.shape == (40, 3, 224, 224) and photos.rejected.height == 0
