"""Product-level train/validation/test splits: a product's photos and text never cross splits."""

from __future__ import annotations

import math
from typing import Generic, TypeVar, cast

import attrs
import numpy as np
import polars as pl
from contracts import CleanProducts, ImageManifest
from pandera.typing.polars import DataFrame

from fbml.errors import FbmlError
from fbml.tables.clean import CleanTables
from fbml.tables.validation import rows_of, validated

SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
Rows = TypeVar("Rows", CleanProducts, ImageManifest)


@attrs.frozen
class Splits(Generic[Rows]):
    """The rows of each split (``CleanProducts`` or ``ImageManifest``, as given); every row of the input is in exactly one."""

    train: DataFrame[Rows]
    validation: DataFrame[Rows]
    test: DataFrame[Rows]


def checked_rows(frame: DataFrame[Rows]) -> DataFrame[Rows]:
    """``frame`` checked against its contract: ``ImageManifest`` for photo rows (it has ``image_id``), else ``CleanProducts``."""
    contract = ImageManifest if isinstance(frame, pl.DataFrame) and "image_id" in frame.columns else CleanProducts
    return cast(DataFrame[Rows], validated(frame, contract))


def product_splits(
    frame: DataFrame[Rows],
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    *,
    key: str = "id",
    stratify: str = "category",
) -> pl.DataFrame:
    """``key -> split`` for every product, stratified by ``stratify``.

    Within each class the split sizes are the fractions of its product count rounded by largest
    remainder (so within one product of exact), and which products go where is a seeded draw over
    the products sorted by (class, key): the result does not depend on row order.
    """
    _check_fractions(fractions)
    return _assignment(checked_rows(frame), fractions, seed, key=key, stratify=stratify)


def _assignment(
    frame: pl.DataFrame, fractions: tuple[float, float, float], seed: int, *, key: str, stratify: str
) -> pl.DataFrame:
    products = frame.select(key, stratify).unique(key, keep="first").sort(stratify, key)
    draws = np.random.default_rng(seed).random(products.height)
    sizes = _class_sizes(products[stratify].value_counts(), stratify, fractions)
    ranked = products.with_columns(pl.Series("_draw", draws)).with_columns(
        (pl.col("_draw").rank("ordinal").over(stratify) - 1).alias("_rank")
    )
    return ranked.join(sizes, on=stratify).select(
        key,
        pl.when(pl.col("_rank") < pl.col("_train"))
        .then(pl.lit(SPLIT_NAMES[0]))
        .when(pl.col("_rank") < pl.col("_train") + pl.col("_validation"))
        .then(pl.lit(SPLIT_NAMES[1]))
        .otherwise(pl.lit(SPLIT_NAMES[2]))
        .alias("split"),
    )


def split_by_product(
    frame: DataFrame[Rows],
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    *,
    key: str = "id",
    stratify: str = "category",
) -> Splits[Rows]:
    """``frame``'s rows (one or many per product) in train, validation and test, by product."""
    _check_fractions(fractions)
    checked = checked_rows(frame)
    return _splits(checked, _assignment(checked, fractions, seed, key=key, stratify=stratify), key)


def splits_from_assignment(frame: DataFrame[Rows], assignment: pl.DataFrame, *, key: str = "id") -> Splits[Rows]:
    """``frame``'s rows in the splits an existing ``key -> split`` assignment names."""
    return _splits(checked_rows(frame), assignment, key)


def _splits(frame: DataFrame[Rows], assignment: pl.DataFrame, key: str) -> Splits[Rows]:
    split = frame.select(key).join(assignment, on=key, how="left", maintain_order="left")["split"]
    return Splits(*(rows_of(frame, split == name) for name in SPLIT_NAMES))


def _class_sizes(counts: pl.DataFrame, stratify: str, fractions: tuple[float, float, float]) -> pl.DataFrame:
    rows = [(name, *_largest_remainder(count, fractions)) for name, count in counts.iter_rows()]
    return pl.DataFrame(
        rows, schema={stratify: counts.schema[stratify], "_train": pl.Int64, "_validation": pl.Int64, "_test": pl.Int64},
        orient="row",
    )


def _largest_remainder(count: int, fractions: tuple[float, float, float]) -> tuple[int, ...]:
    exact = [count * fraction for fraction in fractions]
    sizes = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda index: (-(exact[index] - sizes[index]), index))
    for index in by_remainder[: count - sum(sizes)]:
        sizes[index] += 1
    return tuple(sizes)


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise FbmlError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")


@attrs.frozen
class SplitTables:
    """Products and (when there is a manifest) photos split by product, by one assignment."""

    assignment: pl.DataFrame
    products: Splits[CleanProducts]
    images: Splits[ImageManifest] | None


def split_tables(
    tables: CleanTables, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> SplitTables:
    """Split the clean products (stratified by category) and carry the split over to their photos."""
    _check_fractions(fractions)
    products = validated(tables.cleaned.products, CleanProducts)
    assignment = _assignment(products, fractions, seed, key="id", stratify="category")
    images = None if tables.manifest is None else splits_from_assignment(tables.manifest.images, assignment)
    return SplitTables(assignment, _splits(products, assignment, "id"), images)
