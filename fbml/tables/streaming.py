"""The cleaned tables written in a bounded footprint, however long the raw tables are.

polars' streaming engine reads the raw CSV in batches; each batch is cleaned alone (``cleaned_batch``,
here or on Ray workers) and written as a part; the steps that look across batches (duplicate ids, the
photo join, the contracts' checks) are streaming queries over the parts. Memory grows with the batch
size, the repeated ids and the rejected rows, not with the table. The outputs appear in ``out`` only
once every one is written and checked.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast

import attrs
import polars as pl
from contracts.rules import REJECTED_SCHEMA, RowRule, clean_product_rules, image_manifest_rules, rejected_rules, row_failures

from fbml.errors import ContractError
from fbml.tables.clean import OUTPUT_NAMES, CleanCounts, CleanTables, PhotoCounts
from fbml.tables.cleaning import (
    BATCH_ROWS,
    BATCH_SCHEMA,
    CLEAN_COLUMNS,
    PRODUCT_TEXT_COLUMNS,
    Cleaned,
    Manifest,
    annotated_images,
    cleaned_batch,
    duplicate_rejection,
    image_columns,
    joined_photos,
    manifest_rows,
    numbered,
    reasons_count,
    rejected_rows,
)
from fbml.tables.sources import UTF8, StorageOptions, read_errors, scan_images, scan_products
from fbml.tables.validation import raise_rule_failures, rows_of

if TYPE_CHECKING:
    from contracts import CleanProducts, ImageManifest, Rejected
    from pandera.typing.polars import DataFrame

ROW, REASON = "source_row", "reason"
REJECTED_COLUMNS = tuple(REJECTED_SCHEMA.names())
PARTS: Final = "lz4"
"""The parts are read once, soon: written fast rather than small."""


@attrs.frozen
class RawTables:
    """Where the raw tables are and how to read them; each scan can be opened again."""

    products: str
    images: str | None = None
    storage_options: StorageOptions = None
    encoding: str = UTF8
    batch_rows: int = BATCH_ROWS

    def numbered_products(self) -> pl.LazyFrame:
        """The raw products, numbered from 1, columns checked (``RawProducts``)."""
        scan = scan_products(self.products, storage_options=self.storage_options, encoding=self.encoding)
        return numbered(scan, PRODUCT_TEXT_COLUMNS)

    def product_batches(self) -> Iterator[pl.DataFrame]:
        """The numbered raw products in batches of ``batch_rows``, read by the streaming engine."""
        yield from self.numbered_products().collect_batches(chunk_size=self.batch_rows, engine="streaming")

    def images_scan(self, images: str) -> pl.LazyFrame:
        """The raw images table, columns checked (``RawImages``)."""
        return scan_images(images, storage_options=self.storage_options, encoding=self.encoding)


def stream_clean_tables(raw: RawTables, out: Path) -> CleanCounts:
    """Clean the raw tables into ``out`` on polars' streaming engine (the default engine)."""
    return write_cleaned(raw, (cleaned_batch(batch) for batch in raw.product_batches()), out)


def streamed_tables(raw: RawTables, work: Path) -> CleanTables:
    """The cleaned tables in memory, equal to ``clean_tables``': cleaned on the streaming engine into the folder
    ``work`` (its outputs read back; the caller removes them), so every contract is checked by its rules
    (``contracts.rules``) and pandera is never imported."""
    counts = stream_clean_tables(raw, work)
    products = cast("DataFrame[CleanProducts]", pl.read_parquet(work / OUTPUT_NAMES[0]))
    rejected = cast("DataFrame[Rejected]", pl.read_parquet(work / OUTPUT_NAMES[1]))
    of_products = pl.col("stage") == "products"
    cleaned = Cleaned(products, rows_of(rejected, of_products))
    if counts.photos is None:
        return CleanTables(counts.products_read, cleaned, None)
    images = cast("DataFrame[ImageManifest]", pl.read_parquet(work / OUTPUT_NAMES[2]))
    without = rows_of(products, ~pl.col("id").is_in(images["id"].implode()))
    manifest = Manifest(images, rows_of(rejected, ~of_products), without)
    return CleanTables(counts.products_read, cleaned, manifest, counts.photos.read)


def write_cleaned(raw: RawTables, batches: Iterable[pl.DataFrame], out: Path) -> CleanCounts:
    """Write cleaned batches (``BATCH_SCHEMA``, in row order) as ``out``'s products, rejected rows and,
    with an images table, photo manifest: ids unique across batches, every output checked by its contract."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".clean-products.", dir=out) as folder:
        work = Path(folder)
        with read_errors(raw.products, raw.encoding):
            products_read = _write_parts(batches, raw.products, work)
            parts = pl.scan_parquet(work / "products-*.parquet")
            duplicates = later_duplicates(parts)
            rejected = pl.scan_parquet(work / "rejected-*.parquet")
            if duplicates.height:
                rejected = rejected.merge_sorted(_duplicates_rejected(raw, duplicates), key=ROW)
        products = parts.filter(~pl.col(ROW).is_in(duplicates[ROW].implode())).select(CLEAN_COLUMNS)
        products_clean = _sink_checked(products, work / OUTPUT_NAMES[0], "CleanProducts", clean_product_rules(), ("id",))
        photos = None
        if raw.images is not None:
            with read_errors(raw.images, raw.encoding):
                photos, rejected_images = _join_photos(raw, raw.images, work)
            rejected = pl.concat([rejected, rejected_images])
        _sink_checked(rejected, work / OUTPUT_NAMES[1], "Rejected", rejected_rules(), ("source", "stage", ROW))
        product_reasons = reasons_count(pl.scan_parquet(work / OUTPUT_NAMES[1]).filter(pl.col("stage") == "products"))
        for name in OUTPUT_NAMES[: 3 if photos else 2]:
            os.replace(work / name, out / name)
    return CleanCounts(products_read, products_clean, product_reasons, photos)


def later_duplicates(products: pl.LazyFrame) -> pl.DataFrame:
    """The clean rows (``source_row``, ``id``) whose id an earlier clean row has, with their reason.

    Ids are first grouped by hash (8 bytes a row); only the rows whose hash repeats are compared by value.
    """
    hashed = pl.col("id").hash()
    repeated = products.group_by(hashed.alias("hash")).len().filter(pl.col("len") > 1).collect(engine="streaming")
    rows = (
        products.filter(hashed.is_in(repeated["hash"].implode()))
        .select(ROW, "id")
        .collect(engine="streaming")
        .sort(ROW)
    )
    no_reason = pl.lit(None, dtype=pl.String)
    return rows.select(ROW, duplicate_rejection(pl.col("id"), no_reason, "id").alias(REASON)).drop_nulls(REASON)


def _write_parts(batches: Iterable[pl.DataFrame], source: str, work: Path) -> int:
    """Each batch's kept rows and rejected rows as numbered parquet parts (an empty pair last); the rows read."""
    read = 0
    for number, batch in enumerate(itertools.chain(batches, [pl.DataFrame(schema=BATCH_SCHEMA)])):
        kept = pl.col(REASON).is_null()
        batch.filter(kept).select(ROW, *CLEAN_COLUMNS).write_parquet(work / f"products-{number:08}.parquet", compression=PARTS)
        rejected = batch.filter(~kept).select(
            pl.lit(source).alias("source"), ROW, pl.lit("products").alias("stage"), REASON, "raw"
        )
        rejected.write_parquet(work / f"rejected-{number:08}.parquet", compression=PARTS)
        read += batch.height
    return read


def _duplicates_rejected(raw: RawTables, duplicates: pl.DataFrame) -> pl.LazyFrame:
    """The rejected rows of the later duplicates, their raw fields read again from the source."""
    rows = raw.numbered_products().join(duplicates.lazy(), on=ROW, how="inner").collect(engine="streaming")
    return rejected_rows(rows.sort(ROW), PRODUCT_TEXT_COLUMNS, source=raw.products, stage="products").lazy()


def _join_photos(raw: RawTables, images: str, work: Path) -> tuple[PhotoCounts, pl.LazyFrame]:
    """Write the photo manifest into ``work``; what became of the image rows, and the rejected ones."""
    scan = raw.images_scan(images)
    columns = image_columns(scan.collect_schema().names())
    products = pl.scan_parquet(work / OUTPUT_NAMES[0])
    annotated = annotated_images(numbered(scan, columns), products.select("id"))
    photos = joined_photos(annotated)
    rejected_path = work / "images-rejected.parquet"
    rejected_rows(annotated, columns, source=images, stage="images").sink_parquet(rejected_path, engine="streaming")
    joined = _sink_checked(manifest_rows(photos, products), work / OUTPUT_NAMES[2], "ImageManifest",
                           image_manifest_rules(), ("image_id",))
    without = products.join(pl.scan_parquet(work / OUTPUT_NAMES[2]).select("id"), on="id", how="anti")
    rejected = pl.scan_parquet(rejected_path)
    read = joined + rejected.select(pl.len()).collect().item()
    counts = PhotoCounts(read, joined, reasons_count(rejected), without.select(pl.len()).collect(engine="streaming").item())
    return counts, rejected


def _sink_checked(frame: pl.LazyFrame, path: Path, contract: str, rules: tuple[RowRule, ...], unique: tuple[str, ...]) -> int:
    """Write ``frame`` to ``path`` and, in the same streaming pass, check it: ``ContractError`` naming the
    contract, column and check at the first rule a row breaks, or when the ``unique`` columns repeat; its rows."""
    key = pl.struct(unique).hash() if len(unique) > 1 else pl.col(unique[0]).hash()
    checks = frame.select(*row_failures(rules), pl.len().alias("rows"), key.n_unique().alias("distinct"))
    _, result = pl.collect_all([frame.sink_parquet(path, lazy=True), checks], engine="streaming")
    figures = result.row(0, named=True)
    rows, distinct = figures.pop("rows"), figures.pop("distinct")
    raise_rule_failures(contract, figures)
    if distinct < rows:
        _check_unique(pl.scan_parquet(path), contract, unique, rows)
    return int(rows)


def _check_unique(frame: pl.LazyFrame, contract: str, unique: tuple[str, ...], rows: int) -> None:
    """Distinct hashes prove distinct values: compare the values only when two hashes are equal."""
    distinct = frame.select(pl.struct(unique).n_unique()).collect(engine="streaming").item()
    if distinct < rows:
        check = "unique" if len(unique) == 1 else "rejected_once"
        raise ContractError(contract, unique[-1], check, f"{rows - distinct} repeated")
