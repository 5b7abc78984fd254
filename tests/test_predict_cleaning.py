"""The light path ``fbml predict`` cleans and checks its tables by: the streamed cleaning read back into memory
(``streamed_tables``) is ``clean_tables``' result, field for field, and the rejected rows checked by the
``Rejected`` contract's rules (``rejected_checked``) fail exactly as pandera's model fails them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
from contracts import Rejected
from contracts.rules import REJECTED_SCHEMA
from fbml.sample.marketplace import write_raw_table
from fbml.tables.clean import CleanTables, clean_tables
from fbml.tables.streaming import RawTables, streamed_tables
from fbml.tables.validation import rejected_checked, validated
from fbml.testing import raw_images, raw_products
from hypothesis import given, settings
from hypothesis import strategies as st

from test_contracts import contract_outcome, reshaped


def assert_same_tables(streamed: CleanTables, eager: CleanTables) -> None:
    assert (streamed.products_read, streamed.images_read) == (eager.products_read, eager.images_read)
    assert streamed.cleaned.products.equals(eager.cleaned.products)
    assert streamed.cleaned.rejected.equals(eager.cleaned.rejected)
    assert (streamed.manifest is None) == (eager.manifest is None)
    if streamed.manifest is not None and eager.manifest is not None:
        assert streamed.manifest.images.equals(eager.manifest.images)
        assert streamed.manifest.rejected.equals(eager.manifest.rejected)
        assert streamed.manifest.products_without_images.equals(eager.manifest.products_without_images)
    assert streamed.rejected.equals(eager.rejected)
    assert streamed.summary() == eager.summary()


@settings(max_examples=30, deadline=None)
@given(data=st.data(), with_images=st.booleans())
def test_streamed_tables_are_the_eager_tables(data: st.DataObject, with_images: bool) -> None:
    products = data.draw(raw_products(max_rows=15, bad_rows=0.4), label="products")
    ids = products["id"].drop_nulls().str.strip_chars().unique(maintain_order=True).to_list()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        write_raw_table(products, folder / "Products.csv")
        images = None
        if with_images:
            write_raw_table(data.draw(raw_images(ids, max_rows=10), label="images"), folder / "Images.csv")
            images = str(folder / "Images.csv")
        (folder / "work").mkdir()
        streamed = streamed_tables(RawTables(str(folder / "Products.csv"), images, batch_rows=4), folder / "work")
        assert_same_tables(streamed, clean_tables(folder / "Products.csv", images))


def test_the_sample_streams_to_the_eager_tables(sample, tmp_path: Path) -> None:
    streamed = streamed_tables(RawTables(str(sample.products_csv), str(sample.images_csv)), tmp_path)
    assert_same_tables(streamed, clean_tables(sample.products_csv, sample.images_csv))
    assert streamed.manifest is not None and streamed.manifest.products_without_images.height > 0


rejected_rows = st.fixed_dictionaries(
    {
        "source": st.sampled_from(["a.csv", "photos", "", None]),
        "source_row": st.sampled_from([1, 2, 3, 0, -4, None]),
        "stage": st.sampled_from(["products", "images", "photos", None]),
        "reason": st.sampled_from(["unparseable price", " ", "", None]),
        "raw": st.sampled_from(['{"id": "p1"}', "{}", "[1]", "", None]),
    }
)


@st.composite
def rejected_frames(draw: st.DrawFn) -> pl.DataFrame:
    """Mostly rejected rows of the right columns and dtypes with bad values, often rows rejected twice;
    sometimes a wrong dtype, a column missing, unknown or out of order."""
    rows = draw(st.lists(rejected_rows, max_size=5))
    if draw(st.booleans()):
        rows = [row | {"source_row": number + 1} for number, row in enumerate(rows)]
    if draw(st.booleans()):
        rows = [row | {"source": "a.csv", "stage": "products", "reason": "why", "raw": "{}"} for row in rows]
    frame = pl.DataFrame(rows, schema=REJECTED_SCHEMA)
    if draw(st.integers(0, 9)) == 0:
        name = draw(st.sampled_from(frame.columns))
        other = [pl.Int32, pl.Float64, pl.String] if name == "source_row" else [pl.Categorical, pl.Null]
        frame = frame.with_columns(pl.col(name).cast(draw(st.sampled_from(other)), strict=False))
    return reshaped(draw, frame)


@settings(max_examples=300, deadline=None)
@given(rejected_frames())
def test_rejected_rows_fail_the_rules_as_they_fail_the_pandera_model(frame: pl.DataFrame) -> None:
    """The same first failure, word for word (column, check, the failing values), or none."""
    assert contract_outcome(lambda: rejected_checked(frame)) == contract_outcome(lambda: validated(frame, Rejected))


def test_a_row_rejected_twice_fails_the_rules() -> None:
    row = {"source": "a.csv", "source_row": 3, "stage": "products", "reason": "why", "raw": "{}"}
    frame = pl.DataFrame([row, row | {"stage": "images"}, row], schema=REJECTED_SCHEMA)
    outcome = contract_outcome(lambda: rejected_checked(frame))
    assert outcome is not None and outcome[1:] == ("Rejected", "source_row", "rejected_once")
    assert rejected_checked(frame.head(2)).equals(frame.head(2))
