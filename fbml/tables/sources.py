"""Read the raw products and images tables from a local path or an ``s3://`` URI."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandera.errors
import polars as pl
import pandera.polars as pa

from contracts import RawImages, RawProducts
from fbml.errors import InputError

StorageOptions = Mapping[str, str] | None


def is_remote(source: str | Path) -> bool:
    """True for object-store URIs such as ``s3://bucket/key``."""
    return "://" in str(source)


def read_table(source: str | Path, *, storage_options: StorageOptions = None) -> pl.DataFrame:
    """Every column of a CSV as strings; records end at ``\\n`` so bare ``\\r`` stay inside fields."""
    if not is_remote(source) and not Path(source).is_file():
        raise InputError(source, "no such file")
    try:
        return pl.read_csv(
            str(source),
            infer_schema=False,
            encoding="utf8-lossy",
            storage_options=dict(storage_options) if storage_options else None,
        )
    except pl.exceptions.NoDataError:
        raise InputError(source, "empty file: no header row") from None
    except (pl.exceptions.PolarsError, OSError) as error:
        raise InputError(source, f"cannot read as CSV: {_first_line(error)}") from None


def read_products(source: str | Path, *, storage_options: StorageOptions = None) -> pl.DataFrame:
    """The raw products table, checked against ``RawProducts``."""
    return _validated(read_table(source, storage_options=storage_options), RawProducts, source)


def read_images(source: str | Path, *, storage_options: StorageOptions = None) -> pl.DataFrame:
    """The raw images table (long or short form), checked against ``RawImages``."""
    return _validated(read_table(source, storage_options=storage_options), RawImages, source)


def _validated(frame: pl.DataFrame, schema: type[pa.DataFrameModel], source: str | Path) -> pl.DataFrame:
    missing = [name for name in _required_columns(schema) if name not in frame.columns]
    if missing:
        found = ", ".join(repr(name) for name in frame.columns)
        raise InputError(source, f"missing column(s) {', '.join(missing)} (found {found})")
    try:
        return schema.validate(frame)
    except pandera.errors.SchemaError as error:
        raise InputError(source, f"does not match {schema.__name__}: {_first_line(error)}") from None


def _required_columns(schema: type[pa.DataFrameModel]) -> list[str]:
    return [name for name, column in schema.to_schema().columns.items() if column.required]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
