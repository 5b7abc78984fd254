"""What the frame contracts share: pandera's side of the checks (``contracts.rules`` holds the polars
predicates) and a model's polars schema.

Each check is one cheap expression over a column (no regular expression scans a long text column):
pandera runs it on an eager frame, and a stream is checked against the same predicates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandera.polars as pa
import polars as pl

from contracts.rules import CONTROL_CHARACTERS, is_ascii, is_distinct, is_finite_non_negative, is_non_blank, is_printable

__all__ = ["CONTROL_CHARACTERS", "all_distinct", "check", "holds_per_distinct", "is_ascii", "is_finite_non_negative",
           "is_non_blank", "is_printable", "polars_schema"]



def check(*columns: str, name: str) -> Callable[[Callable[..., Any]], Any]:
    """``pandera.polars.check`` on ``columns`` under ``name``, which also names the function: pandera
    takes a check's ``name`` only the first time it builds a schema with it, and names the check after
    its function in a subclass's schema (``ImageManifest`` inherits the checks of ``CleanProducts``)."""

    def decorate(function: Callable[..., Any]) -> Any:
        function.__name__ = name
        return pa.check(*columns, name=name)(function)

    return decorate


def all_distinct(data: pa.PolarsData) -> bool | pl.LazyFrame:
    """True when no two values of the column are equal; otherwise, per row, whether its value is unique.

    Distinct hashes prove distinct values, so values are compared only once two hashes are equal.
    """
    column = pl.col(data.key)
    if data.lazyframe.select(column.hash().n_unique() == pl.len()).collect().item():
        return True
    return data.lazyframe.select(is_distinct(column))


def holds_per_distinct(data: pa.PolarsData, rule: Callable[[pl.Expr], pl.Expr]) -> bool | pl.LazyFrame:
    """True when ``rule`` holds for every distinct value of the column; otherwise, per row, whether it
    holds. For columns that repeat a few values many times (categories, places): the rule runs once
    per value, and per row only to name the failures."""
    column = pl.col(data.key)
    if data.lazyframe.select(rule(column.unique()).all()).collect().item():
        return True
    return data.lazyframe.select(rule(column))


def polars_schema(model: type[pa.DataFrameModel]) -> pl.Schema:
    """The column names and polars dtypes of ``model``, in order: to build a frame that fits it."""
    return pl.Schema({name: column.dtype.type for name, column in model.to_schema().columns.items()})
