"""The cleaned tables: products and photos read, cleaned and joined, with every rejected row; written as parquet."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import polars as pl

from fbml.files import write_atomically
from fbml.tables.cleaning import Cleaned, Manifest, clean_products, image_manifest
from fbml.tables.sources import UTF8, StorageOptions, read_images, read_products
from fbml.tables.validation import rejected_checked, rows_of

if TYPE_CHECKING:
    from contracts import Rejected
    from pandera.typing.polars import DataFrame

OUTPUT_NAMES = ("products.parquet", "rejected.parquet", "images.parquet")


@attrs.frozen
class PhotoCounts:
    """What became of the images table's rows."""

    read: int
    joined: int
    rejected_by_reason: dict[str, int]
    products_without_photos: int


@attrs.frozen
class CleanCounts:
    """What became of every input row: the counts ``fbml clean-products`` prints, whichever engine ran."""

    products_read: int
    products_clean: int
    rejected_by_reason: dict[str, int]
    photos: PhotoCounts | None

    def summary(self) -> str:
        """Counts that account for every input row."""
        rejected = sum(self.rejected_by_reason.values())
        lines = [
            f"products: {self.products_read} read, {self.products_clean} clean, {rejected} rejected",
            *_reason_lines(self.rejected_by_reason),
        ]
        if self.photos is not None:
            photos = self.photos
            lines += [
                f"photos: {photos.read} read, {photos.joined} joined to a product, "
                f"{sum(photos.rejected_by_reason.values())} rejected",
                *_reason_lines(photos.rejected_by_reason),
                f"products without photos: {photos.products_without_photos}",
            ]
        return "\n".join(lines)


def output_paths(out: Path, *, with_images: bool) -> list[Path]:
    """The files the cleaned tables are written to in ``out``: products, rejected rows, the photo manifest."""
    return [out / name for name in OUTPUT_NAMES[: 3 if with_images else 2]]


@attrs.frozen
class CleanTables:
    """The cleaned products, and the photo manifest when an images table was given."""

    products_read: int
    cleaned: Cleaned
    manifest: Manifest | None
    images_read: int = 0

    @property
    def rejected(self) -> DataFrame[Rejected]:
        """Every rejected row of both tables."""
        frames = [self.cleaned.rejected, *([self.manifest.rejected] if self.manifest else [])]
        return rejected_checked(pl.concat(frames))

    def counts(self) -> CleanCounts:
        """What became of every input row."""
        manifest = self.manifest
        photos = None if manifest is None else PhotoCounts(
            self.images_read, manifest.images.height, manifest.rejected_by_reason(), manifest.products_without_images.height
        )
        return CleanCounts(self.products_read, self.cleaned.products.height, self.cleaned.rejected_by_reason(), photos)

    def summary(self) -> str:
        """Counts that account for every input row."""
        return self.counts().summary()

    def output_paths(self, out: Path) -> list[Path]:
        """The files ``write_clean_tables`` writes into ``out``."""
        return output_paths(out, with_images=self.manifest is not None)


def clean_tables(
    products: str | Path,
    images: str | Path | None = None,
    *,
    storage_options: StorageOptions = None,
    encoding: str = UTF8,
) -> CleanTables:
    """Read and clean the products table, and join the images table when given (both in ``encoding``)."""
    raw_products = read_products(products, storage_options=storage_options, encoding=encoding)
    cleaned = clean_products(raw_products, source=str(products))
    if images is None:
        return CleanTables(raw_products.height, cleaned, None)
    raw_images = read_images(images, storage_options=storage_options, encoding=encoding)
    manifest = image_manifest(cleaned.products, raw_images, source=str(images))
    return CleanTables(raw_products.height, cleaned, manifest, raw_images.height)


def write_clean_tables(tables: CleanTables, out: Path) -> None:
    """Write products, rejected rows and (when present) the photo manifest as parquet, each file afresh and
    renamed into place (a link left under its name is replaced, not written through)."""
    out.mkdir(parents=True, exist_ok=True)
    frames: list[pl.DataFrame] = [tables.cleaned.products, tables.rejected, *([tables.manifest.images] if tables.manifest else [])]
    for frame, path in zip(frames, tables.output_paths(out), strict=True):
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        write_atomically(path, buffer.getvalue())


def restricted_tables(tables: CleanTables, keep: pl.Expr) -> CleanTables:
    """``tables`` with only the products (and photos) where ``keep`` holds; rejected rows as they were."""
    cleaned = attrs.evolve(tables.cleaned, products=rows_of(tables.cleaned.products, keep))
    if tables.manifest is None:
        return attrs.evolve(tables, cleaned=cleaned)
    manifest = attrs.evolve(tables.manifest, images=rows_of(tables.manifest.images, keep))
    return attrs.evolve(tables, cleaned=cleaned, manifest=manifest)


def _reason_lines(counts: dict[str, int]) -> list[str]:
    return [f"  rejected {count:>6}  {reason}" for reason, count in counts.items()]
