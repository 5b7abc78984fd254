"""The search index's catalogue: the listings its vectors stand for, as the API shows them.

Its columns are ``contracts.rules.CATALOGUE_SCHEMA`` and its checks the predicates of
``contracts.rules.catalogue_rules``, which check catalogues without pandera where bundles are loaded.
"""

from __future__ import annotations

from typing import Annotated

import pandera.polars as pa
import polars as pl

from contracts.base import all_distinct, check, is_finite_non_negative, is_non_blank, is_printable
from contracts.rules import has_only


class Catalogue(pa.DataFrameModel):
    """One listing per row, row ``i`` being the index's vector ``i``: a unique printable id, its name,
    its top-level category, its category path (starting with the category), a finite price >= 0 and the
    ids of its photos (non-blank, printable; none for a listing without one)."""

    id: str
    product_name: str
    category: str
    category_path: str
    price: pl.Float64
    photos: Annotated[pl.List, pl.String]

    @check("id", "category", "category_path", name="non_blank")
    def _non_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_non_blank(pl.col(data.key)))

    @check("id", name="printable")
    def _printable(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_printable(pl.col(data.key)))

    @check("id", name="unique")
    def _unique_id(cls, data: pa.PolarsData) -> bool | pl.LazyFrame:
        return all_distinct(data)

    @check("category_path", name="starts_with_category")
    def _starts_with_category(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("category_path").str.starts_with(pl.col("category")))

    @check("price", name="finite_non_negative")
    def _finite_non_negative(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_finite_non_negative(pl.col(data.key)))

    @check("photos", name="non_blank")
    def _photos_non_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(has_only(pl.col(data.key), is_non_blank))

    @check("photos", name="printable")
    def _photos_printable(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(has_only(pl.col(data.key), is_printable))

    class Config:
        strict = True
        ordered = True
