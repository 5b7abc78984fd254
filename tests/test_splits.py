"""Product-level splits: hypothesis properties."""

from __future__ import annotations

import math

import polars as pl
import pytest
from fbml.errors import FbmlError
from fbml.tables.splits import SPLIT_NAMES, product_splits, split_by_product
from hypothesis import given, settings
from hypothesis import strategies as st


@st.composite
def manifests(draw) -> pl.DataFrame:
    """Rows of photos: each product has 1-3 photos and one category."""
    categories = draw(st.lists(st.sampled_from("ABCDE"), min_size=1, max_size=60))
    photos = draw(st.lists(st.integers(1, 3), min_size=len(categories), max_size=len(categories)))
    rows = [
        {"id": f"p{index}", "product_name": f"item {index}", "product_description": "", "price": 1.0,
         "category": category, "subcategory": None, "category_path": category, "location": None, "county": None,
         "image_id": f"p{index}-{photo}"}
        for index, (category, count) in enumerate(zip(categories, photos, strict=True))
        for photo in range(count)
    ]
    return pl.DataFrame(rows, schema_overrides={"subcategory": pl.String, "location": pl.String, "county": pl.String})


fractions = st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 10)).filter(lambda t: sum(t) > 0).map(
    lambda t: tuple(value / sum(t) for value in t)
)


@settings(max_examples=80, deadline=None)
@given(manifests(), fractions, st.integers(0, 2**32 - 1))
def test_splits_partition_products_with_fractions_within_one_per_class(frame, fractions, seed) -> None:
    splits = split_by_product(frame, fractions, seed)
    parts = [splits.train, splits.validation, splits.test]
    assert sum(part.height for part in parts) == frame.height
    assert sorted(pl.concat(parts)["image_id"]) == sorted(frame["image_id"])
    ids = [set(part["id"]) for part in parts]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    products = frame.unique("id")
    for category, count in products["category"].value_counts().iter_rows():
        for part_ids, fraction in zip(ids, fractions, strict=True):
            in_part = products.filter(pl.col("category") == category, pl.col("id").is_in(list(part_ids))).height
            assert math.floor(count * fraction) <= in_part <= math.ceil(count * fraction)


@settings(max_examples=40, deadline=None)
@given(manifests(), st.integers(0, 1000), st.randoms())
def test_splits_are_deterministic_and_independent_of_row_order(frame, seed, random) -> None:
    order = list(range(frame.height))
    random.shuffle(order)
    first = product_splits(frame, seed=seed).sort("id")
    again = product_splits(frame[order], seed=seed).sort("id")
    assert first.equals(again)
    assert set(first["split"]) <= set(SPLIT_NAMES)


def test_bad_fractions_are_a_clear_error() -> None:
    with pytest.raises(FbmlError, match="fractions"):
        product_splits(pl.DataFrame({"id": ["a"], "category": ["x"]}), (0.5, 0.6, 0.1))


def test_real_data_splits(real_data) -> None:
    from fbml.tables.clean import clean_tables

    tables = clean_tables(real_data / "Products.csv", real_data / "Images.csv")
    splits = split_by_product(tables.cleaned.products, seed=0)
    assert (splits.train.height, splits.validation.height, splits.test.height) == pytest.approx(
        (0.7 * 6081, 0.15 * 6081, 0.15 * 6081), abs=13
    )
