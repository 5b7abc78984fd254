"""Contracts checked on the data where it enters each stage: ContractError names contract, column and check."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable

import fbml
import numpy as np
import pandera.errors
import polars as pl
import pytest
from contracts import Catalogue, CleanProducts, ImageCleaningFiles, Rejected, polars_schema
from contracts.rules import (
    CATALOGUE,
    CATALOGUE_SCHEMA,
    IMAGE_CLEANING_FILES_SCHEMA,
    NULLABLE_IMAGE_CLEANING_COLUMNS,
    catalogue_rules,
    failed_rule,
    image_cleaning_file_rules,
    row_failures,
)
from fbml.bundle.search import SearchIndex, unit_rows
from fbml.errors import ContractError
from fbml.tables.cleaning import clean_products, image_manifest
from fbml.tables.splits import product_splits, split_by_product, splits_from_assignment
from fbml.tables.validation import rules_checked, validated
from hypothesis import given, settings
from hypothesis import strategies as st

GOOD = {
    "id": "p1",
    "product_name": "Oak table",
    "product_description": "Solid oak.",
    "price": 19.5,
    "category": "Home",
    "subcategory": "Tables",
    "category_path": "Home / Tables",
    "location": "Leeds",
    "county": None,
}


def products(*changes: dict[str, object]) -> pl.DataFrame:
    """A clean-products frame: one good row per entry of ``changes``, each with its changes, ids p0, p1, ..."""
    rows = [GOOD | {"id": f"p{row}"} | change for row, change in enumerate(changes)]
    return pl.DataFrame(rows, schema=polars_schema(CleanProducts))


def manifest(frame: pl.DataFrame) -> pl.DataFrame:
    """One photo per product of ``frame``."""
    return frame.with_columns(pl.format("img-{}", pl.col("id")).alias("image_id"))


BROKEN = {
    "duplicate id": (products({}, {"id": "p0"}), "id", "unique"),
    "non-ASCII name": (products({}, {"product_name": "Café table"}), "product_name", "ascii"),
    "non-ASCII description": (products({"product_description": "crème"}), "product_description", "ascii"),
    "negative price": (products({}, {"price": -0.01}), "price", "finite_non_negative"),
    "infinite price": (products({"price": math.inf}), "price", "finite_non_negative"),
    "NaN price": (products({"price": math.nan}), "price", "not_null"),
    "empty category": (products({"category": "", "category_path": ""}), "category", "non_blank"),
    "blank category": (products({"category": "  ", "category_path": "  "}), "category", "non_blank"),
    "path without its category": (products({"category_path": "Garden / Tables"}), "category_path", "starts_with_category"),
    "one-level path with a subcategory": (products({"category_path": "Home"}), "category_path", "starts_with_category"),
    "NUL in an id": (products({"id": "p\x000"}), "id", "printable"),
    "missing id": (products({"id": None}), "id", "not_null"),
    "missing column": (products({}).drop("price"), "price", "present"),
    "extra column": (products({}).with_columns(pl.lit(1).alias("extra")), "extra", "in_contract"),
    "price as text": (products({}).with_columns(pl.col("price").cast(pl.String)), "price", "dtype Float64"),
}


@pytest.mark.parametrize(("frame", "column", "check"), BROKEN.values(), ids=BROKEN.keys())
def test_split_by_product_refuses_a_frame_that_breaks_clean_products(frame: pl.DataFrame, column: str, check: str) -> None:
    with pytest.raises(ContractError) as caught:
        split_by_product(frame)
    error = caught.value
    assert (error.contract, error.column, error.check) == ("CleanProducts", column, check)
    assert str(error).startswith(f"CleanProducts: column {column!r} fails {check}")
    assert "\n" not in str(error)


@pytest.mark.parametrize(("frame", "column", "check"), BROKEN.values(), ids=BROKEN.keys())
def test_every_split_entry_and_the_photo_join_refuse_the_same_frames(frame: pl.DataFrame, column: str, check: str) -> None:
    raw_images = pl.DataFrame({"id": ["i1"], "product_id": ["p0"]})
    for enter in (product_splits, lambda f: splits_from_assignment(f, pl.DataFrame({"id": ["p0"], "split": ["train"]})),
                  lambda f: image_manifest(f, raw_images)):
        with pytest.raises(ContractError, match=f"^CleanProducts: column {column!r} fails {check}"):
            enter(frame)


def test_photo_rows_are_split_under_the_manifest_contract() -> None:
    photos = manifest(products({}, {}, {}))
    splits = split_by_product(photos)
    assert splits.train.height + splits.validation.height + splits.test.height == 3
    with pytest.raises(ContractError, match="^ImageManifest: column 'image_id' fails unique"):
        split_by_product(photos.with_columns(pl.lit("img").alias("image_id")))
    with pytest.raises(ContractError, match="^ImageManifest: column 'price' fails finite_non_negative"):
        split_by_product(photos.with_columns(pl.lit(-1.0).alias("price")))


def test_a_valid_frame_passes_every_entry_unchanged() -> None:
    frame = products({}, {"subcategory": None, "category_path": "Home"}, {"category_path": "Home / Tables / Oak"})
    assert validated(frame, CleanProducts).equals(frame)
    splits = split_by_product(frame, (1.0, 0.0, 0.0))
    assert splits.train.equals(frame)


def test_pandera_errors_never_escape_the_public_functions() -> None:
    with pytest.raises(ContractError, match="^RawProducts: column 'price' fails present$"):
        clean_products(pl.DataFrame({"id": ["a"], "product_name": ["b"], "category": ["c"], "product_description": ["d"],
                                     "location": ["e"]}))
    with pytest.raises(ContractError, match="^CleanProducts: the frame fails is_polars_dataframe \\(got dict\\)$"):
        split_by_product(GOOD)  # type: ignore[arg-type]
    assert not issubclass(ContractError, pandera.errors.SchemaError)
    assert fbml.ContractError is ContractError


def test_an_error_line_shows_a_bounded_part_of_the_offending_value() -> None:
    with pytest.raises(ContractError) as caught:
        validated(products({"product_name": "\ufffd" * 15_000}), CleanProducts)
    message = str(caught.value)
    assert message.startswith("CleanProducts: column 'product_name' fails ascii (1 failing, e.g. '\ufffd")
    assert len(message) < 300 and "more characters" in message


def test_contracts_hold_whatever_pandera_environment_variables_say() -> None:
    code = (
        "import polars as pl; from contracts import CleanProducts, polars_schema; "
        "from fbml.tables.validation import validated; from fbml.errors import ContractError\n"
        "frame = pl.DataFrame([{'id': 'a', 'product_name': 'x', 'product_description': '', 'price': -1.0, 'category': 'A',"
        " 'subcategory': None, 'category_path': 'A', 'location': None, 'county': None}], schema=polars_schema(CleanProducts))\n"
        "try:\n    validated(frame, CleanProducts)\nexcept ContractError as error:\n    print(error.check)"
    )
    env = os.environ | {"PANDERA_VALIDATION_ENABLED": "False", "PANDERA_VALIDATION_DEPTH": "SCHEMA_ONLY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "finite_non_negative"


def catalogue_of(frame: pl.DataFrame) -> pl.DataFrame:
    photos = pl.Series("photos", [[f"{number}a", f"{number}b"] for number in range(frame.height)], dtype=pl.List(pl.String))
    return frame.with_columns(photos).select(list(polars_schema(Catalogue)))


@pytest.mark.parametrize(
    ("change", "column", "check"),
    [
        (pl.Series("id", ["p0", "p0"]), "id", "unique"),
        (pl.Series("id", ["p0", None], dtype=pl.String), "id", "not_null"),
        (pl.Series("price", [1.0, math.inf]), "price", "finite_non_negative"),
        (pl.Series("category", ["Home", " "]), "category", "non_blank"),
        (pl.Series("id", ["p0", "p\x85"]), "id", "printable"),
        (pl.Series("price", [math.nan, 1.0]), "price", "not_null"),
        (pl.Series("price", [1, 2]), "price", "dtype Float64"),
        (pl.Series("product_name", ["a", "b"], dtype=pl.Categorical), "product_name", "dtype String"),
        (pl.Series("category_path", ["Home", "Garden > Home"]), "category_path", "starts_with_category"),
        (pl.Series("category_path", ["Home", " "]), "category_path", "non_blank"),
        (pl.Series("photos", [["a"], ["b", " "]]), "photos", "non_blank"),
        (pl.Series("photos", [["a\n"], []]), "photos", "printable"),
        (pl.Series("photos", [["a"], None]), "photos", "not_null"),
        (pl.Series("photos", ["a", "b"]), "photos", "dtype List"),
    ],
)
def test_the_search_catalogue_is_checked_by_its_contract(change: pl.Series, column: str, check: str) -> None:
    catalogue = catalogue_of(products({}, {}))
    vectors = unit_rows(np.eye(2, dtype=np.float32))
    assert SearchIndex(vectors, catalogue).catalogue.equals(catalogue)
    with pytest.raises(ContractError, match=f"^Catalogue: column {column!r} fails {check}"):
        SearchIndex(vectors, catalogue.with_columns(change))


def test_the_search_catalogue_is_checked_for_its_columns_without_pandera() -> None:
    catalogue = catalogue_of(products({}, {}))
    vectors = unit_rows(np.eye(2, dtype=np.float32))
    with pytest.raises(ContractError, match="^Catalogue: column 'location' fails in_contract$"):
        SearchIndex(vectors, catalogue.with_columns(pl.lit("Leeds").alias("location")))
    with pytest.raises(ContractError, match="^Catalogue: the frame fails column_order \\(\"column 'price' out-of-order\"\\)$"):
        SearchIndex(vectors, catalogue.select("price", "id", "product_name", "category", "category_path", "photos"))
    with pytest.raises(ContractError, match="^Catalogue: column 'category' fails present$"):
        SearchIndex(vectors, catalogue.drop("category"))
    with pytest.raises(ContractError, match="^Catalogue: the frame fails is_polars_dataframe \\(got LazyFrame\\)$"):
        SearchIndex(vectors, catalogue.lazy())  # type: ignore[arg-type]


def test_the_catalogue_rules_have_the_models_columns() -> None:
    assert polars_schema(Catalogue) == CATALOGUE_SCHEMA
    assert Catalogue.__name__ == CATALOGUE


CATALOGUE_DTYPES = {
    "id": [pl.String, pl.Categorical, pl.Int64, pl.Null],
    "product_name": [pl.String, pl.Categorical, pl.Null],
    "category": [pl.String, pl.Categorical],
    "category_path": [pl.String, pl.Categorical],
    "price": [pl.Float64, pl.Float32, pl.Int64, pl.String, pl.Null],
    "photos": [pl.List(pl.String), pl.List(pl.Categorical)],
}
catalogue_rows = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["p1", "p2", "p3", "p4", "p5", "p6", "", " ", "p\x00", "p\x9f", "é", None]),
        "product_name": st.sampled_from(["Oak table", "x", "", "\t", "Café", None]),
        "category": st.sampled_from(["Home", "A", "B", "É", "", " ", None]),
        "category_path": st.sampled_from(["Home", "Home > Garden", "A > B", "A", "", " ", None]),
        "price": st.sampled_from([0.0, 1.5, 1e308, -0.0, 2.0, -1.0, math.inf, -math.inf, math.nan, None]),
        "photos": st.sampled_from([[], ["a", "b"], ["a"], [""], ["a", " "], ["a\x00"], ["\x85"], [None], None]),
    }
)


def reshaped(draw: st.DrawFn, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` now and then with its columns reordered, one dropped or an extra one inserted."""
    columns = list(frame.columns)
    if draw(st.integers(0, 9)) == 0:
        columns = draw(st.permutations(columns))
    if draw(st.integers(0, 9)) == 0:
        columns.remove(draw(st.sampled_from(columns)))
    frame = frame.select(columns)
    if draw(st.integers(0, 9)) == 0:
        frame = frame.insert_column(draw(st.integers(0, frame.width)), pl.Series("extra", [1] * frame.height))
    return frame


@st.composite
def catalogue_frames(draw: st.DrawFn) -> pl.DataFrame:
    """Mostly catalogues of the right columns and dtypes with bad values; sometimes a wrong dtype, a column
    missing, unknown or out of order."""
    rows = draw(st.lists(catalogue_rows, max_size=5))
    for column in ("id", "product_name", "category"):  # often good, for the checks of the columns after it
        if draw(st.booleans()):
            rows = [row | {column: f"p{number}"} for number, row in enumerate(rows)]
    if draw(st.booleans()):
        rows = [row | {"category_path": f"{row['category']} > x"} for row in rows]
    frame = pl.DataFrame(rows, schema=CATALOGUE_SCHEMA)
    dtypes = {name: draw(st.sampled_from(choices) if draw(st.integers(0, 9)) == 0 else st.just(choices[0]))
              for name, choices in CATALOGUE_DTYPES.items()}
    frame = frame.with_columns(pl.col(name).cast(dtype, strict=False) for name, dtype in dtypes.items())
    return reshaped(draw, frame)


def contract_outcome(check: Callable[[], object]) -> tuple[str, str, str | None, str] | None:
    try:
        check()
    except ContractError as error:
        return str(error), error.contract, error.column, error.check
    return None


@settings(max_examples=400, deadline=None)
@given(catalogue_frames())
def test_the_catalogue_rules_fail_as_the_pandera_model_does(frame: pl.DataFrame) -> None:
    """The same first failure, word for word (contract, column, check, the failing values), or none."""
    by_rules = contract_outcome(lambda: rules_checked(frame, CATALOGUE, CATALOGUE_SCHEMA, catalogue_rules()))
    assert by_rules == contract_outcome(lambda: validated(frame, Catalogue))


def rejected_frame(**columns: list[object]) -> pl.DataFrame:
    base: dict[str, list[object]] = {"source": ["a.csv", "a.csv"], "source_row": [1, 2], "stage": ["products", "products"],
                                     "reason": ["x", "y"], "raw": ["{}", '{"id": "a"}']}
    return pl.DataFrame(base | columns, schema=polars_schema(Rejected))


@pytest.mark.parametrize(
    ("columns", "column", "check"),
    [
        ({"source_row": [1, 1]}, "source_row", "rejected_once"),
        ({"source_row": [0, 1]}, "source_row", "positive"),
        ({"stage": ["products", "photos"]}, "stage", "isin"),
        ({"reason": ["x", " "]}, "reason", "non_blank"),
        ({"raw": ["{}", "[1]"]}, "raw", "json_object"),
    ],
)
def test_rejected_rows_are_checked_by_their_contract(columns: dict[str, list[object]], column: str, check: str) -> None:
    assert validated(rejected_frame(), Rejected).height == 2
    with pytest.raises(ContractError, match=f"^Rejected: column {column!r} fails {check}"):
        validated(rejected_frame(**columns), Rejected)


def test_the_image_cleaning_report_is_checked_by_its_contract() -> None:
    schema = polars_schema(ImageCleaningFiles)
    good = pl.DataFrame({"file": ["a.png", "b.png"], "status": ["cleaned", "rejected"], "reason": [None, "not an image"],
                         "output": ["a.jpg", None]}, schema=schema)
    assert validated(good, ImageCleaningFiles).height == 2
    with pytest.raises(ContractError, match="^ImageCleaningFiles: column 'status' fails reason_or_output"):
        validated(good.with_columns(pl.lit(None, pl.String).alias("reason")), ImageCleaningFiles)
    with pytest.raises(ContractError, match="^ImageCleaningFiles: column 'file' fails unique"):
        validated(good.with_columns(pl.lit("a.png").alias("file")), ImageCleaningFiles)


def plain_image_cleaning_check(frame: pl.DataFrame) -> pl.DataFrame:
    return rules_checked(frame, "ImageCleaningFiles", IMAGE_CLEANING_FILES_SCHEMA, image_cleaning_file_rules(),
                         nullable=NULLABLE_IMAGE_CLEANING_COLUMNS, unique="file")


def test_the_image_cleaning_report_has_the_contract_s_schema_without_pandera() -> None:
    assert polars_schema(ImageCleaningFiles) == IMAGE_CLEANING_FILES_SCHEMA
    good = pl.DataFrame({"file": ["a.png"], "status": ["cleaned"], "reason": [None], "output": ["a.jpg"]},
                        schema=IMAGE_CLEANING_FILES_SCHEMA)
    assert plain_image_cleaning_check(good).equals(good)
    for changed, check in [
        (good.select("status", "file", "reason", "output"), "column_order"),
        (good.drop("output"), "present"),
        (good.with_columns(pl.lit(1).alias("output")), "dtype String"),
        (good.with_columns(pl.lit("x").alias("extra")), "in_contract"),
    ]:
        with pytest.raises(ContractError, match=f"^ImageCleaningFiles: .* fails {check}"):
            plain_image_cleaning_check(changed)


image_files = st.fixed_dictionaries(
    {
        "file": st.sampled_from(["a.png", "b.png", "c.jpg", "", " ", "é.gif"]) | st.none(),
        "status": st.sampled_from(["cleaned", "rejected", "", "Cleaned"]) | st.none(),
        "reason": st.sampled_from(["not an image", "decompression bomb: big", "", "\t"]) | st.none(),
        "output": st.sampled_from(["a.jpg", "b.jpg", "", " "]) | st.none(),
    }
)


@settings(max_examples=300)
@given(st.lists(image_files, min_size=1, max_size=5))
def test_the_image_cleaning_report_s_plain_checks_agree_with_its_pandera_model(records: list[dict[str, str | None]]) -> None:
    frame = pl.DataFrame(records, schema=IMAGE_CLEANING_FILES_SCHEMA)
    failures = {failed_rule(name) for name, count in frame.select(row_failures(image_cleaning_file_rules())).row(0, named=True).items()
                if count}
    if frame["file"].drop_nulls().is_duplicated().any():
        failures.add(("file", "unique"))
    outcomes = []
    for check in (plain_image_cleaning_check, lambda frame: validated(frame, ImageCleaningFiles)):
        try:
            check(frame)
        except ContractError as error:
            assert (error.column, error.check) in failures
            outcomes.append(False)
        else:
            outcomes.append(True)
    assert outcomes == [not failures] * 2


# The same rules in plain Python and polars, written apart from the contract, to agree with it.

def reference_failures(frame: pl.DataFrame) -> set[tuple[str, str]]:
    """The (column, check) pairs of ``CleanProducts`` that ``frame`` (of the right columns and dtypes) fails."""
    rows = frame.to_dicts()
    failures: set[tuple[str, str]] = set()
    required = ("id", "product_name", "product_description", "price", "category", "category_path")
    for column in required:
        if any(row[column] is None or (column == "price" and math.isnan(row[column])) for row in rows):
            failures.add((column, "not_null"))
    present = [row for row in rows if all(row[c] is not None for c in required) and not math.isnan(row["price"])]
    for column in ("id", "product_name", "category", "subcategory", "category_path", "location", "county"):
        if frame.select(pl.col(column).str.strip_chars() == "").to_series().any():
            failures.add((column, "non_blank"))
    for column in ("product_name", "product_description", "category", "subcategory", "category_path", "location", "county"):
        if frame.select(pl.col(column).str.contains(r"[^\x00-\x7F]")).to_series().any():
            failures.add((column, "ascii"))
    if any(row["id"] is not None and any(0x00 <= ord(c) <= 0x1F or 0x7F <= ord(c) <= 0x9F for c in row["id"]) for row in rows):
        failures.add(("id", "printable"))
    if frame["id"].drop_nulls().is_duplicated().any():
        failures.add(("id", "unique"))
    if any(not 0 <= row["price"] < math.inf for row in present):
        failures.add(("price", "finite_non_negative"))
    for row in present:
        path, category, subcategory = row["category_path"], row["category"], row["subcategory"]
        if not (path.startswith(category) and (path == category) == (subcategory is None)):
            failures.add(("category_path", "starts_with_category"))
    return failures


def optional(values: list[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.sampled_from(values))


rows = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["p1", "p2", "p3", "", " ", "p\x00", "p\x85", "é"]) | st.none(),
        "product_name": st.sampled_from(["Oak table", "x", "", "\t", "Café", "a\x00b"]),
        "product_description": st.sampled_from(["", "ok", "crème", " "]),
        "price": st.sampled_from([0.0, 1.5, 1e308, -0.0, -1.0, math.inf, -math.inf, math.nan]),
        "category": st.sampled_from(["A", "B", "", " ", "É"]),
        "subcategory": optional(["S", "T", "", "ß"]),
        "category_path": st.sampled_from(["A", "A / S", "A / S / x", "AB / S", "B", "B / T", "", "É / S"]),
        "location": optional(["Leeds", "", " ", "Dún Laoghaire"]),
        "county": optional(["Kent", "\u00a0"]),
    }
)


@settings(max_examples=400)
@given(st.lists(rows, min_size=1, max_size=6))
def test_the_contract_agrees_with_the_same_rules_in_plain_polars(records: list[dict[str, object]]) -> None:
    frame = pl.DataFrame(records, schema=polars_schema(CleanProducts))
    failures = reference_failures(frame)
    try:
        validated(frame, CleanProducts)
    except ContractError as error:
        assert (error.column, error.check) in failures
    else:
        assert failures == set()
