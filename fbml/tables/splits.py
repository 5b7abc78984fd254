"""Product-level train/validation/test splits: a product's photos and text never cross splits."""

from __future__ import annotations

import math

import attrs
import numpy as np
import polars as pl

from fbml.errors import FbmlError
from fbml.tables.clean import CleanTables

SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


@attrs.frozen
class Splits:
    """The rows of each split; every row of the input is in exactly one."""

    train: pl.DataFrame
    validation: pl.DataFrame
    test: pl.DataFrame


def product_splits(
    frame: pl.DataFrame,
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
    frame: pl.DataFrame,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    *,
    key: str = "id",
    stratify: str = "category",
) -> Splits:
    """``frame``'s rows (one or many per product) in train, validation and test, by product."""
    assignment = product_splits(frame, fractions, seed, key=key, stratify=stratify)
    return splits_from_assignment(frame, assignment, key=key)


def splits_from_assignment(frame: pl.DataFrame, assignment: pl.DataFrame, *, key: str = "id") -> Splits:
    """``frame``'s rows in the splits an existing ``key -> split`` assignment names."""
    labelled = frame.join(assignment, on=key, how="left", maintain_order="left")
    return Splits(*(labelled.filter(pl.col("split") == name).drop("split") for name in SPLIT_NAMES))


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
    products: Splits
    images: Splits | None


def split_tables(
    tables: CleanTables, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> SplitTables:
    """Split the clean products (stratified by category) and carry the split over to their photos."""
    products = tables.cleaned.products
    assignment = product_splits(products, fractions, seed)
    images = None if tables.manifest is None else splits_from_assignment(tables.manifest.images, assignment)
    return SplitTables(assignment, splits_from_assignment(products, assignment), images)
