"""Contracts for every table that crosses a stage boundary (pandera's polars API)."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from contracts.base import all_distinct, check, holds_per_distinct
from contracts.rules import (
    REJECTED_STAGES,
    REPEATED_COLUMNS,
    TEXT_COLUMNS,
    is_ascii,
    is_finite_non_negative,
    is_json_object,
    is_non_blank,
    is_printable,
    path_starts_with_category,
)


class RawProducts(pa.DataFrameModel):
    """The products table as read: every column a string, the junk index column optional."""

    index: str | None = pa.Field(alias="", nullable=True, required=False)
    id: str = pa.Field(nullable=True)
    product_name: str = pa.Field(nullable=True)
    category: str = pa.Field(nullable=True)
    product_description: str = pa.Field(nullable=True)
    price: str = pa.Field(nullable=True)
    location: str = pa.Field(nullable=True)

    class Config:
        strict = False


class RawImages(pa.DataFrameModel):
    """The images table as read, long form (`,id,product_id,bucket_link,image_ref,create_time`) or short (`,id,product_id`)."""

    index: str | None = pa.Field(alias="", nullable=True, required=False)
    id: str = pa.Field(nullable=True)
    product_id: str = pa.Field(nullable=True)
    bucket_link: str | None = pa.Field(nullable=True, required=False)
    image_ref: str | None = pa.Field(nullable=True, required=False)
    create_time: str | None = pa.Field(nullable=True, required=False)

    class Config:
        strict = False


class CleanProducts(pa.DataFrameModel):
    """One clean product per row: a unique printable id, ASCII text, a finite price >= 0, the category path split.

    Blank optional fields are null, never empty (the description excepted: empty when there is none).
    """

    id: str
    product_name: str
    product_description: str
    price: pl.Float64
    category: str
    subcategory: str = pa.Field(nullable=True)
    category_path: str
    location: str = pa.Field(nullable=True)
    county: str = pa.Field(nullable=True)

    @check("id", "product_name", name="non_blank")
    def _non_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_non_blank(pl.col(data.key)))

    @check(*REPEATED_COLUMNS, name="non_blank")
    def _non_blank_repeated(cls, data: pa.PolarsData) -> bool | pl.LazyFrame:
        return holds_per_distinct(data, is_non_blank)

    @check("id", name="printable")
    def _printable(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_printable(pl.col(data.key)))

    @check("id", name="unique")
    def _unique_id(cls, data: pa.PolarsData) -> bool | pl.LazyFrame:
        return all_distinct(data)

    @check(*TEXT_COLUMNS, name="ascii")
    def _ascii(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_ascii(pl.col(data.key)))

    @check("price", name="finite_non_negative")
    def _finite_non_negative(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_finite_non_negative(pl.col(data.key)))

    @check("category_path", name="starts_with_category")
    def _path_starts_with_category(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(path_starts_with_category(pl.col("category_path"), pl.col("category"), pl.col("subcategory")))

    class Config:
        strict = True
        ordered = True


class ImageManifest(CleanProducts):
    """One row per photo, with its product's clean fields (``id`` is the product's id, ``image_id`` unique)."""

    image_id: str

    @check("image_id", name="non_blank")
    def _non_blank_image_id(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_non_blank(pl.col(data.key)))

    @check("image_id", name="printable")
    def _printable_image_id(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_printable(pl.col(data.key)))

    @check("image_id", name="unique")
    def _unique_id(cls, data: pa.PolarsData) -> bool | pl.LazyFrame:
        """Overrides the products' check: here ``id`` repeats, once per photo of the product."""
        return all_distinct(data)

    class Config:
        strict = True
        ordered = False


class Rejected(pa.DataFrameModel):
    """An input row that was not cleaned: where it came from, the raw row as a JSON object, and why.

    A row is rejected once: ``(source, stage, source_row)`` is unique.
    """

    source: str
    source_row: pl.Int64 = pa.Field(description="1-based data record in the source (header not counted)")
    stage: str = pa.Field(isin=list(REJECTED_STAGES))
    reason: str
    raw: str = pa.Field(description="the raw row's fields as a JSON object")

    @check("source_row", name="positive")
    def _positive(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key) >= 1)

    @check("reason", name="non_blank")
    def _non_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_non_blank(pl.col(data.key)))

    @check("raw", name="json_object")
    def _json_object(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_json_object(pl.col(data.key)))

    @check("source_row", name="rejected_once")
    def _rejected_once(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(~pl.struct("source", "stage", "source_row").is_duplicated())

    class Config:
        strict = True
        ordered = True
