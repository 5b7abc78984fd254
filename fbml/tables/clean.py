"""The cleaned tables: products and photos read, cleaned and joined, with every rejected row; written as parquet."""

from __future__ import annotations

from pathlib import Path

import attrs
import polars as pl
from contracts import Rejected
from pandera.typing.polars import DataFrame

from fbml.tables.cleaning import Cleaned, Manifest, clean_products, image_manifest
from fbml.tables.sources import UTF8, StorageOptions, read_images, read_products
from fbml.tables.validation import rows_of, validated


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
        return validated(pl.concat(frames), Rejected)

    def summary(self) -> str:
        """Counts that account for every input row."""
        lines = [
            f"products: {self.products_read} read, {self.cleaned.products.height} clean, "
            f"{self.cleaned.rejected.height} rejected",
            *_reason_lines(self.cleaned.rejected_by_reason()),
        ]
        if self.manifest is not None:
            lines += [
                f"photos: {self.images_read} read, {self.manifest.images.height} joined to a product, "
                f"{self.manifest.rejected.height} rejected",
                *_reason_lines(self.manifest.rejected_by_reason()),
                f"products without photos: {self.manifest.products_without_images.height}",
            ]
        return "\n".join(lines)

    def output_paths(self, out: Path) -> list[Path]:
        """The files ``write_clean_tables`` writes into ``out``."""
        names = ["products.parquet", "rejected.parquet", *(["images.parquet"] if self.manifest else [])]
        return [out / name for name in names]


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
    """Write products, rejected rows and (when present) the photo manifest as parquet."""
    out.mkdir(parents=True, exist_ok=True)
    frames: list[pl.DataFrame] = [tables.cleaned.products, tables.rejected, *([tables.manifest.images] if tables.manifest else [])]
    for frame, path in zip(frames, tables.output_paths(out), strict=True):
        frame.write_parquet(path)


def restricted_tables(tables: CleanTables, keep: pl.Expr) -> CleanTables:
    """``tables`` with only the products (and photos) where ``keep`` holds; rejected rows as they were."""
    cleaned = attrs.evolve(tables.cleaned, products=rows_of(tables.cleaned.products, keep))
    if tables.manifest is None:
        return attrs.evolve(tables, cleaned=cleaned)
    manifest = attrs.evolve(tables.manifest, images=rows_of(tables.manifest.images, keep))
    return attrs.evolve(tables, cleaned=cleaned, manifest=manifest)


def _reason_lines(counts: dict[str, int]) -> list[str]:
    return [f"  rejected {count:>6}  {reason}" for reason, count in counts.items()]
