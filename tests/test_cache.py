"""Decoded photos and the image cache: every manifest row accounted for, caches round-trip and reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import fbml.vision.cache
import numpy as np
import polars as pl
import pytest
from contracts import ImageManifest, Rejected
from fbml.errors import ContractError, FbmlError, InputError
from fbml.tables.clean import clean_tables
from fbml.tables.cleaning import MANIFEST_COLUMNS
from fbml.tables.validation import validated
from fbml.testing import photo_bytes
from fbml.vision.cache import (
    INDEX_FILE,
    MISSING,
    PIXELS_FILE,
    UNREADABLE,
    ImageCache,
    build_image_cache,
    load_photos,
)
from fbml.vision.cleaning import BROKEN_LINK, OUTSIDE_LINK, clean_image, open_image
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

CATEGORIES = ("Appliances", "Home & Garden", "Other Goods")


@attrs.frozen
class PhotoSpec:
    """One manifest row's photo: how it is stored (or ``missing`` / ``corrupt``), and its size and colour
    or, for a drawn photo, the file's bytes."""

    kind: str
    width: int = 1
    height: int = 1
    colour: tuple[int, int, int] = (0, 0, 0)
    data: bytes | None = None


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
    return validated(frame, ImageManifest)


def write_photo(path: Path, spec: PhotoSpec) -> None:
    """The spec's bytes, or a small RGB JPEG, an RGBA PNG, or text bytes named ``.jpg`` for ``corrupt``."""
    if spec.data is not None:
        path.with_suffix(f".{spec.kind}").write_bytes(spec.data)
        return
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


def drawn_photo(kind: str, format: str) -> st.SearchStrategy[PhotoSpec]:
    """Photos of every mode ``format`` holds (fbml.testing), stored as ``.kind`` files."""
    return photo_bytes(format, max_side=24, max_pixels=24 * 24).map(lambda data: PhotoSpec(kind, data=data))


photo_specs = st.one_of(drawn_photo("jpg", "JPEG"), drawn_photo("png", "PNG"), st.just(PhotoSpec("missing")))


@st.composite
def photo_sets(draw: st.DrawFn) -> list[PhotoSpec]:
    """Some photos, some missing, and exactly one corrupt file somewhere among them."""
    specs = draw(st.lists(photo_specs, max_size=7))
    corrupt = PhotoSpec("corrupt")
    return [*specs[: (at := draw(st.integers(0, len(specs))))], corrupt, *specs[at:]]


def assert_accounts_for_every_row(photos: fbml.vision.cache.Photos, manifest: pl.DataFrame, specs: list[PhotoSpec], size: int) -> None:
    """Loaded rows are the stored photos, rejected rows the rest with their reasons, pixels well-formed."""
    validated(photos.rejected, Rejected)
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
    "the format of Lanczos resizing": lambda cache_dir: rewrite_index(cache_dir, format="fbml.image-cache/1"),
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
    with pytest.raises(ContractError, match="^ImageManifest: column 'image_id' fails unique \\(2 failing, e.g. 'img-000', 'img-000'\\)$"):
        build_image_cache(pl.concat([photo_manifest(), photo_manifest().head(1)]), photo_dir, tmp_path / "c", size=8)
    assert os.listdir(tmp_path) == ["photos"]


BAD_MANIFESTS = {
    "no image_id": (lambda frame: frame.drop("image_id"), "image_id", "present"),
    "a row without an image_id": (lambda frame: frame.with_columns(image_id=None), "image_id", "not_null"),
    "a NUL in an image_id": (lambda frame: frame.with_columns(pl.col("image_id") + "\x00"), "image_id", "printable"),
    "a negative price": (lambda frame: frame.with_columns(price=-1.0), "price", "finite_non_negative"),
    "a name not ASCII": (lambda frame: frame.with_columns(product_name=pl.lit("Café")), "product_name", "ascii"),
}


@pytest.mark.parametrize(("spoil", "column", "check"), BAD_MANIFESTS.values(), ids=BAD_MANIFESTS.keys())
def test_photos_are_loaded_only_for_a_manifest_that_keeps_its_contract(spoil, column: str, check: str, photo_dir: Path, tmp_path: Path) -> None:
    for load in (lambda manifest: load_photos(manifest, photo_dir, size=8), lambda manifest: build_image_cache(manifest, photo_dir, tmp_path / "c", size=8)):
        with pytest.raises(ContractError) as caught:
            load(spoil(photo_manifest()))
        assert (caught.value.contract, caught.value.column, caught.value.check) == ("ImageManifest", column, check)


def test_photos_linked_from_outside_the_folder_are_rejected(tmp_path: Path) -> None:
    folder, outside = tmp_path / "photos", tmp_path / "outside"
    manifest = photo_folder(folder, [PhotoSpec("jpg", 6, 6, (200, 10, 10))])
    outside.mkdir()
    write_photo(outside / "secret", PhotoSpec("jpg", 6, 6, (10, 200, 10)))
    (folder / "img-001.jpg").symlink_to(folder / "img-000.jpg")
    (folder / "img-002.jpg").symlink_to(outside / "secret.jpg")
    (folder / "img-003.jpg").symlink_to(Path("..") / "outside" / "secret.jpg")
    (folder / "img-004.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "img-005.jpg").symlink_to(outside / "secret.jpg")
    write_photo(folder / "img-005", PhotoSpec("png", 6, 6, (10, 10, 200)))  # the stem's other file is used
    manifest = manifest_of([f"img-{row:03d}" for row in range(7)])

    photos = load_photos(manifest, folder, size=8, progress=False)

    assert photos.image_ids == ("img-000", "img-001", "img-005")
    assert photos.rejected.select("source_row", "reason").rows() == [
        (3, OUTSIDE_LINK), (4, OUTSIDE_LINK), (5, BROKEN_LINK), (7, MISSING),
    ]
    cache = build_image_cache(manifest, folder, tmp_path / "cache", size=8, progress=False)
    assert cache.image_ids == photos.image_ids and cache.rejected.equals(photos.rejected)


def test_the_leftovers_of_a_killed_build_are_deleted(photo_dir: Path, tmp_path: Path) -> None:
    an_hour_ago = time.time() - 3600
    leftovers = [tmp_path / ".cache.abcd1234.tmp", tmp_path / ".cache.zz_9zz99.old"]
    kept = [tmp_path / ".cache.fresh123.tmp", tmp_path / ".other.abcd1234.tmp", tmp_path / ".cache.tmp"]
    for folder in [*leftovers, *kept]:
        folder.mkdir()
        (folder / PIXELS_FILE).write_bytes(b"partial")
        os.utime(folder, (an_hour_ago, an_hour_ago))
    os.utime(kept[0], (time.time() + 3600, time.time() + 3600))  # changed after the build started
    (tmp_path / ".cache.abcd5678.tmp").write_bytes(b"a file, not a build folder")
    os.utime(tmp_path / ".cache.abcd5678.tmp", (an_hour_ago, an_hour_ago))

    build_image_cache(photo_manifest(), photo_dir, tmp_path / "cache", size=8, progress=False)

    assert sorted(os.listdir(tmp_path)) == sorted(["cache", "photos", ".cache.abcd5678.tmp", *(path.name for path in kept)])


def test_importing_photos_does_not_import_torch() -> None:
    code = "import sys, fbml.vision.cache; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.real_data
def test_real_cleaned_photos_load_at_their_size(real_data: Path) -> None:
    manifest = clean_tables(real_data / "Products.csv", real_data / "Images.csv").manifest.images.head(40)
    photos = load_photos(manifest, real_data / "images_224", size=224, progress=False)
    assert photos.pixels.shape == (40, 3, 224, 224) and photos.rejected.height == 0


def test_frozen_features_are_recomputed_for_pixels_of_another_format(photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Features of the same photos decoded by an older ``clean_image`` (another cache format: Lanczos) are never reused."""
    import torch
    from fbml.modeling import features
    from fbml.modeling.datasets import IMAGENET_MEAN, IMAGENET_STD
    from fbml.modeling.models import image_model

    torch.manual_seed(1)
    model = image_model(3, backbone="efficientnet_lite0", weights="none", trainable_stages=0, embedding_dim=8).eval()
    photos = build_image_cache(photo_manifest(), photo_dir, tmp_path / "cache", size=32, progress=False)
    settings = (IMAGENET_MEAN, IMAGENET_STD)
    first = np.array(features.feature_cache(model, photos, settings, tmp_path / "work", progress=False))
    assert np.array_equal(features.feature_cache(model, photos, settings, tmp_path / "work", progress=False), first)
    assert len(list((tmp_path / "work").glob("features-*"))) == 1
    monkeypatch.setattr(features, "CACHE_FORMAT", "fbml.image-cache/1")
    features.feature_cache(model, photos, settings, tmp_path / "work", progress=False)
    assert len(list((tmp_path / "work").glob("features-*"))) == 2
