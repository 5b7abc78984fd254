"""The search index's catalogue: the listings its vectors stand for, as the API shows them.

Its columns are ``contracts.rules.CATALOGUE_SCHEMA`` and its checks the predicates of
``contracts.rules.catalogue_rules``, which check catalogues without pandera where bundles are loaded.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from contracts.base import all_distinct, check, is_finite_non_negative, is_non_blank, is_printable


class Catalogue(pa.DataFrameModel):
    """One listing per row, row ``i`` being the index's vector ``i``: a unique printable id, its name,
    its top-level category and a finite price >= 0."""

    id: str
    product_name: str
    category: str
    price: pl.Float64

    @check("id", "category", name="non_blank")
    def _non_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_non_blank(pl.col(data.key)))

    @check("id", name="printable")
    def _printable(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_printable(pl.col(data.key)))

    @check("id", name="unique")
    def _unique_id(cls, data: pa.PolarsData) -> bool | pl.LazyFrame:
        return all_distinct(data)

    @check("price", name="finite_non_negative")
    def _finite_non_negative(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_finite_non_negative(pl.col(data.key)))

    class Config:
        strict = True
        ordered = True
