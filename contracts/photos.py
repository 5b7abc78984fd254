"""What cleaning a folder of photos did with each file."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from contracts.base import all_distinct, check, is_non_blank
from contracts.rules import CLEANED, REJECTED, has_reason_or_output


class ImageCleaningFiles(pa.DataFrameModel):
    """One row per source file (a unique name): ``cleaned`` with its ``output`` file, or ``rejected``
    with its ``reason`` (the kind before any ``:``), never both. The same checks as plain polars
    predicates: ``contracts.rules.image_cleaning_file_rules``."""

    file: str
    status: str = pa.Field(isin=[CLEANED, REJECTED])
    reason: str = pa.Field(nullable=True)
    output: str = pa.Field(nullable=True)

    @check("file", "reason", "output", name="non_blank")
    def _non_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(is_non_blank(pl.col(data.key)))

    @check("file", name="unique")
    def _unique_file(cls, data: pa.PolarsData) -> bool | pl.LazyFrame:
        return all_distinct(data)

    @check("status", name="reason_or_output")
    def _reason_or_output(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(has_reason_or_output(pl.col("status"), pl.col("reason"), pl.col("output")))

    class Config:
        strict = True
        ordered = True
