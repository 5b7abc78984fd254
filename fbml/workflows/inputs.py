"""What the workflows read, as values: clean tables split by product, photos decoded once into a cache, and
a frame's listings as the prediction path takes them.

``TrainingData`` is one training's tables, their product-level splits and where its caches live; the
steps that read it are functions (``decoded_photos``, ``split_frames``, ``frame_listings``, and
``fbml.workflows.fitting``). A run of several processes training in data parallel (``world``) calls them
in every process; rank 0 alone builds the caches (the others wait, then memory-map them).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import polars as pl
from contracts.bundle import ModelKind
from contracts.limits import MAX_LISTING_PHOTOS

from fbml.errors import FbmlError
from fbml.modeling.distributed import World, main_first
from fbml.modeling.inference import CachedPhoto, FrozenFeatures
from fbml.tables.clean import CleanTables, restricted_tables
from fbml.tables.splits import SplitTables, split_tables
from fbml.text.labels import LabelCodec
from fbml.text.listings import listing_texts
from fbml.vision.cache import ImageCache, build_image_cache


class Examples(enum.Enum):
    """What a model learns from and is scored on: products (their text) or photos (each with its product's text)."""

    PRODUCTS = "products"
    PHOTOS = "photos"

    @classmethod
    def of(cls, kind: ModelKind) -> Examples:
        """Photos for a model that reads them, else products."""
        return cls.PHOTOS if ModelKind(kind).reads_photos else cls.PRODUCTS


@attrs.frozen
class TrainingData:
    """One training's clean tables, their product-level splits (a product's text and photos in one split),
    the photo folder, and the work folder where its caches and checkpoints live."""

    tables: CleanTables
    splits: SplitTables
    image_dir: Path | None
    work_dir: Path
    split_seed: int = 0
    world: World = World()
    progress: bool = True


@attrs.frozen
class SplitFrames:
    """The training, validation and test rows of some examples (products, or photos that decoded)."""

    train: pl.DataFrame
    validation: pl.DataFrame
    test: pl.DataFrame


def training_data(
    tables: CleanTables, image_dir: Path | None, work_dir: Path, *, split_seed: int = 0, world: World = World(),
    progress: bool = True,
) -> TrainingData:
    """``tables`` split by product (stratified by category, seeded) for a training."""
    return TrainingData(tables, split_tables(tables, seed=split_seed), image_dir, work_dir, split_seed, world, progress)


def decoded_photos(tables: CleanTables, image_dir: Path | None, work_dir: Path, size: int, *, world: World = World(),
                   progress: bool = True) -> ImageCache:  # fmt: skip
    """Every photo of the tables decoded once at ``size`` into ``work_dir/photos-<size>`` (or the cache already
    there; by rank 0, the others then open it)."""
    if tables.manifest is None or image_dir is None:
        raise FbmlError("the photos need an images table and a photo folder")
    manifest = tables.manifest.images
    return main_first(world, lambda: build_image_cache(manifest, image_dir, work_dir / f"photos-{size}", size=size, progress=progress))


def training_photos(data: TrainingData, size: int) -> ImageCache:
    """``decoded_photos`` of a training's tables."""
    return decoded_photos(data.tables, data.image_dir, data.work_dir, size, world=data.world, progress=data.progress)


def with_decoded_photos(frame: pl.DataFrame, photos: ImageCache) -> pl.DataFrame:
    """The rows of a photo frame whose photo decoded."""
    return frame.filter(pl.Series(photos.cached(frame["image_id"])))


def split_frames(data: TrainingData, examples: Examples, photos: ImageCache | None = None) -> SplitFrames:
    """Training, validation and test frames of products, or of the photos that decoded (``photos``)."""
    if examples is Examples.PRODUCTS:
        parts = data.splits.products
        return SplitFrames(parts.train, parts.validation, parts.test)
    if data.splits.images is None or photos is None:
        raise FbmlError("photo examples need an images table and the decoded photos")
    images = data.splits.images
    return SplitFrames(*(with_decoded_photos(frame, photos) for frame in (images.train, images.validation, images.test)))


def frame_listings(frame: pl.DataFrame, photos: ImageCache | None, features: FrozenFeatures | None = None
                   ) -> tuple[list[str], list[np.ndarray | CachedPhoto] | None]:  # fmt: skip
    """A frame's listings as the prediction path takes them: each row's listing text, and for a photo frame
    (``photos`` given) each row's photo (``cache_photo``)."""
    texts = listing_texts(frame)
    if photos is None:
        return texts, None
    return texts, [cache_photo(photos, row, features) for row in photos.rows_for(frame["image_id"]).tolist()]


def product_photos(products: pl.DataFrame, manifest: pl.DataFrame, photos: ImageCache, features: FrozenFeatures | None = None
                   ) -> list[list[np.ndarray | CachedPhoto]]:  # fmt: skip
    """Each product's photos (``cache_photo``; none for a product without one)."""
    decoded = with_decoded_photos(manifest.filter(pl.col("id").is_in(products["id"].implode())), photos)
    rows = photos.rows_for(decoded["image_id"])
    grouped: dict[str, list[np.ndarray | CachedPhoto]] = {}
    for product_id, row in zip(decoded["id"].to_list(), rows.tolist(), strict=True):
        grouped.setdefault(product_id, []).append(cache_photo(photos, row, features))
    return [grouped.get(product_id, []) for product_id in products["id"].to_list()]


def cache_photo(photos: ImageCache, row: int, features: FrozenFeatures | None) -> np.ndarray | CachedPhoto:
    """The cache's photo ``row`` as the prediction path takes it: its pixels (uint8 H x W x 3, a view of the cache),
    with their frozen features when ``features`` (of every photo of the cache, by row) are given."""
    pixels: np.ndarray = photos.pixels[row].transpose(1, 2, 0)
    if features is None:
        return pixels
    return CachedPhoto(pixels, features, row)


def with_photo_ids(products: pl.DataFrame, tables: CleanTables) -> pl.DataFrame:
    """``products`` with ``photos``: each product's photo ids in the images table of ``tables``, in its order (at
    most ``MAX_LISTING_PHOTOS``; none without an images table or a photo)."""
    if tables.manifest is None:
        return products.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("photos"))
    grouped = (
        tables.manifest.images.lazy()
        .select("id", "image_id")
        .group_by("id", maintain_order=True)
        .agg(pl.col("image_id").head(MAX_LISTING_PHOTOS).alias("photos"))
    )
    joined = products.lazy().drop("photos", strict=False).join(grouped, on="id", how="left", maintain_order="left")
    return joined.with_columns(pl.col("photos").fill_null(pl.lit([], dtype=pl.List(pl.String)))).collect()


def known_categories(tables: CleanTables, codec: LabelCodec) -> CleanTables:
    """``tables`` without the products (and photos) whose category the codec does not know."""
    return restricted_tables(tables, pl.col("category").is_in(list(codec.classes)))


def labels_of(frame: pl.DataFrame, codec: LabelCodec) -> np.ndarray:
    """The class index of each row's category."""
    return codec.encode(frame["category"]) if frame.height else np.zeros(0, np.int64)


def keys_of(kind: ModelKind, frame: pl.DataFrame) -> Sequence[str]:
    """The key of each row as ``kind``'s examples: the product id for text models, the photo id otherwise."""
    keys: list[str] = frame["image_id" if Examples.of(kind) is Examples.PHOTOS else "id"].to_list()
    return keys
