"""Contracts for every table that crosses a stage boundary (pandera's polars API)."""

from __future__ import annotations

import polars as pl
import pandera.polars as pa

NON_BLANK = r"\S"


def all_distinct(data: pa.PolarsData) -> bool | pl.LazyFrame:
    """True when no two values of the column are equal; otherwise, per row, whether its value is unique.

    Distinct hashes prove distinct values, so values are compared only once two hashes are equal.
    """
    column = pl.col(data.key)
    if data.lazyframe.select(column.hash().n_unique() == pl.len()).collect().item():
        return True
    return data.lazyframe.select(~column.is_duplicated())


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
    """One clean product per row: ASCII text, a float price, the category path split."""

    id: str = pa.Field(str_matches=NON_BLANK)
    product_name: str = pa.Field(str_matches=NON_BLANK)
    product_description: str
    price: pl.Float64 = pa.Field(ge=0)
    category: str = pa.Field(str_matches=NON_BLANK)
    subcategory: str = pa.Field(nullable=True)
    category_path: str = pa.Field(str_matches=NON_BLANK)
    location: str = pa.Field(nullable=True)
    county: str = pa.Field(nullable=True)

    @pa.check("id", name="unique")
    def _unique_id(cls, data: pa.PolarsData) -> bool | pl.LazyFrame:
        return all_distinct(data)

    @pa.check("product_name", "product_description", name="ascii_only")
    def _ascii_only(cls, data: pa.PolarsData) -> pl.LazyFrame:
        text = pl.col(data.key)
        return data.lazyframe.select(text.str.len_bytes() == text.str.len_chars())

    @pa.dataframe_check(name="category_path_starts_with_category")
    def _path_starts_with_category(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("category_path").str.starts_with(pl.col("category")))

    class Config:
        strict = True
        ordered = True


class ImageManifest(CleanProducts):
    """One row per photo, with its product's clean fields (`id` is the product's id)."""

    image_id: str = pa.Field(str_matches=NON_BLANK)
    id: str = pa.Field(str_matches=NON_BLANK)

    @pa.check("image_id", name="unique")
    def _unique_id(cls, data: pa.PolarsData) -> bool | pl.LazyFrame:
        """Overrides the products' check: here ``id`` repeats, once per photo of the product."""
        return all_distinct(data)

    class Config:
        strict = True
        ordered = False


class Rejected(pa.DataFrameModel):
    """An input row that was not cleaned: where it came from, the raw row as JSON, and why."""

    source: str
    source_row: pl.Int64 = pa.Field(ge=1, description="1-based data record in the source (header not counted)")
    stage: str = pa.Field(isin=["products", "images"])
    reason: str = pa.Field(str_matches=NON_BLANK)
    raw: str = pa.Field(description="the raw row's fields as a JSON object")

    class Config:
        strict = True
        ordered = True
