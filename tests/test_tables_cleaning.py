"""Product cleaning and the photo join: properties, edge cases, the sample and the real data."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable

import polars as pl
import pytest
from contracts import CleanProducts, ImageManifest, RawProducts, Rejected
from contracts.base import CONTROL_CHARACTERS
from contracts.rules import RAW_PRODUCT_COLUMNS
from fbml.errors import ContractError
from fbml.sample.marketplace import TOP_LEVEL_CATEGORIES
from fbml.tables.cleaning import (
    COMMON_BLOCKS,
    ascii_string,
    ascii_text,
    category_fields,
    clean_products,
    image_manifest,
    per_distinct,
    place_fields,
    price,
    product_name,
)
from fbml.tables.validation import validated
from fbml.testing import LabelledTable, labelled_raw_images, labelled_raw_products, raw_products, raw_products_frame
from fbml.text.listings import normalised_texts
from fbml.text.vocabulary import SMALL_BATCH
from hypothesis import given, settings
from hypothesis import strategies as st


def good_row(**overrides: str | None) -> dict[str, str | None]:
    row = {
        "id": "p1",
        "product_name": "Oak table | in Leeds, West Yorkshire | Gumtree",
        "category": "Home & Garden / Dining, Living Room Furniture / Tables",
        "product_description": "Solid oak.",
        "price": "£1,900.00",
        "location": "Leeds, West Yorkshire",
    }
    return {**row, **overrides}


def cleaned_one(value: str | None, column: str) -> pl.Series:
    return pl.DataFrame({"x": [value]}, schema={"x": pl.String}).select(column).to_series()


@given(pence=st.integers(min_value=0, max_value=10**12), pound=st.booleans(), commas=st.booleans())
def test_price_round_trips(pence: int, pound: bool, commas: bool) -> None:
    pounds = pence / 100
    text = ("£" if pound else "") + (f"{pounds:,.2f}" if commas else f"{pounds:.2f}")
    parsed = pl.DataFrame({"p": [text]}).select(price(pl.col("p"))).item()
    assert parsed == pytest.approx(pounds, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("text", ["£abc", "free", "", "£1,90.00", "1.2.3", "-£5.00", "£-5", "nan", "inf", "£"])
def test_price_rejects_what_is_not_a_price(text: str) -> None:
    assert pl.DataFrame({"p": [text]}).select(price(pl.col("p"))).item() is None


def reference_ascii_text(text: str) -> str:
    """NFKD on the whole string, non-ASCII dropped, every whitespace or control run one space."""
    ascii = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[\x00-\x20\x7F]+", " ", ascii).strip(" ")


@settings(max_examples=300)
@given(st.lists(st.text(), min_size=1, max_size=8))
def test_ascii_text_is_ascii_trimmed_single_spaced_and_equals_nfkd(texts: list[str]) -> None:
    out = pl.DataFrame({"t": texts}, schema={"t": pl.String}).select(ascii_text(pl.col("t"))).to_series().to_list()
    assert out == [reference_ascii_text(text) for text in texts]
    for text in out:
        assert text.isascii() and text == text.strip() and "  " not in text
        assert all(character.isprintable() for character in text)


def test_ascii_text_normalises_rather_than_deletes() -> None:
    texts = ["Café crème", "Morphy Richard’s", "£5 … “quoted”", "line\rbreak\r\nhere", "ﬁne"]
    out = pl.DataFrame({"t": texts}).select(ascii_text(pl.col("t"))).to_series().to_list()
    assert out == ["Cafe creme", "Morphy Richards", "5 ... quoted", "line break here", "fine"]


common_character = st.sampled_from([chr(code) for first, end in COMMON_BLOCKS for code in range(first, end)])
mixed_text = st.text(
    alphabet=st.one_of(
        common_character,
        st.characters(codec="ascii"),
        st.characters(min_codepoint=0x80, max_codepoint=0x1FFFF, exclude_categories=("Cs",)),
        st.sampled_from(["\r", "\t", " ", "\u3000", "ｆ", "𝐀", "\ue076"]),
    )
)


@settings(max_examples=300)
@given(st.lists(mixed_text, min_size=1, max_size=8))
def test_ascii_text_equals_nfkd_for_common_and_rare_characters_together(texts: list[str]) -> None:
    out = pl.DataFrame({"t": texts}, schema={"t": pl.String}).select(ascii_text(pl.col("t"))).to_series().to_list()
    assert out == [reference_ascii_text(text) for text in texts]


messy_text = st.text(
    alphabet=st.one_of(
        common_character,
        st.characters(codec="ascii"),
        st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF, exclude_categories=("Cs",)),
        st.sampled_from(["é", "ﬁ", "ﬃ", "’", "“", "”", "😀", "\U0001f3fd", "\u0301", "\u00a0", "\u2009", "\u200b", "\x00", "\x07",
                         "\x1f", "\x7f", "\x85", "\u2028", "Ⅻ", "①", "ß", "Æ", "\U0002f800", "\ufeff", "\t", "\n", " "]),
    )
)


@settings(max_examples=300)
@given(st.lists(messy_text, min_size=1, max_size=8))
def test_ascii_string_equals_ascii_text(texts: list[str]) -> None:
    """The small-batch path (Python, one string) and the query agree on messy Unicode."""
    out = pl.DataFrame({"t": texts}, schema={"t": pl.String}).select(ascii_text(pl.col("t"))).to_series().to_list()
    assert [ascii_string(text) for text in texts] == out


@settings(max_examples=50)
@given(st.lists(messy_text, min_size=1, max_size=4))
def test_normalised_texts_are_the_same_in_a_small_batch_and_a_large_one(texts: list[str]) -> None:
    """A batch over ``SMALL_BATCH`` goes by the query, a smaller one by Python: each text comes out the same."""
    large = (texts * (SMALL_BATCH // len(texts) + 1))[: SMALL_BATCH + 1]
    assert normalised_texts(large)[: len(texts)] == normalised_texts(texts)


name_part = st.sampled_from(
    [" | ", "|", " in ", "in ", "In\t", " Gumtree", "GUMTREE ", "\u00a0", "\u2502", "Leeds, Kent", "Oak table"]
)


@settings(max_examples=300)
@given(st.lists(st.one_of(name_part, mixed_text), max_size=8).map("".join))
def test_product_name_drops_the_suffix_of_the_ascii_title(raw: str) -> None:
    expected = re.sub(r"(?i)(\s*\|\s*in\s[^|]*)?\s*\|\s*gumtree\s*$", "", reference_ascii_text(raw), count=1).strip()
    assert pl.DataFrame({"n": [raw]}).select(product_name(pl.col("n"))).item() == expected


raw_value = st.one_of(st.none(), st.sampled_from(["£5", "A / B", "x, y", " "]), st.text(max_size=12))


@pytest.mark.parametrize("derive", [price, category_fields, place_fields])
@given(values=st.lists(raw_value, max_size=20))
def test_per_distinct_equals_deriving_every_row(derive: Callable[[pl.Expr], pl.Expr], values: list[str | None]) -> None:
    frame = pl.DataFrame({"raw": values}, schema={"raw": pl.String})
    expected = frame.select(derive(pl.col("raw")).alias("out"))
    assert frame.select(per_distinct(pl.col("raw"), derive).alias("out")).equals(expected)


level = st.text(alphabet=st.characters(codec="ascii", exclude_characters="/"), min_size=1).map(str.strip).filter(
    lambda text: text != "" and "  " not in text and all(c.isprintable() for c in text)
)


@given(levels=st.lists(level, min_size=1, max_size=5))
def test_category_and_subcategory_come_from_the_path(levels: list[str]) -> None:
    result = clean_products(raw_products_frame([good_row(category=" / ".join(levels))])).products.row(0, named=True)
    assert result["category"] == levels[0]
    assert result["subcategory"] == (levels[1] if len(levels) > 1 else None)
    assert result["category_path"] == " / ".join(levels)


STARTS_WITH_A_TOP_LEVEL_CATEGORY = "^(" + "|".join(re.escape(name) for name in TOP_LEVEL_CATEGORIES) + ")"


@settings(max_examples=100)
@given(table=labelled_raw_products(max_rows=16))
def test_every_row_is_cleaned_or_rejected_exactly_once_with_its_reason(table: LabelledTable) -> None:
    raw, reasons = table.frame, table.reasons
    result = clean_products(raw)
    assert result.products.height + result.rejected.height == raw.height
    assert dict(result.rejected.select("source_row", "reason").iter_rows()) == {
        row: reason for row, reason in enumerate(reasons, start=1) if reason is not None
    }
    kept = raw.filter(pl.Series([reason is None for reason in reasons], dtype=pl.Boolean))
    assert result.products["id"].to_list() == kept["id"].str.strip_chars().to_list()
    for record in result.rejected.iter_rows(named=True):
        assert json.loads(record["raw"]) == raw.select(RAW_PRODUCT_COLUMNS).row(record["source_row"] - 1, named=True)
    assert validated(result.products, CleanProducts).height == kept.height


@settings(max_examples=40)
@given(table=labelled_raw_products(min_rows=1, max_rows=12, bad_rows=0.0))
def test_a_table_of_only_good_rows_is_kept_whole_in_order(table: LabelledTable) -> None:
    result = clean_products(table.frame)
    assert result.rejected.height == 0
    assert result.products["id"].to_list() == table.frame["id"].str.strip_chars().to_list()
    assert result.products["category"].str.contains(STARTS_WITH_A_TOP_LEVEL_CATEGORY).all()


@settings(max_examples=40)
@given(table=labelled_raw_products(min_rows=1, max_rows=12, bad_rows=1.0))
def test_a_table_of_only_bad_rows_keeps_nothing(table: LabelledTable) -> None:
    result = clean_products(table.frame)
    assert result.products.height == 0
    assert result.rejected["reason"].to_list() == list(table.reasons)


def test_clean_product_fields() -> None:
    row = clean_products(raw_products_frame([good_row()])).products.row(0, named=True)
    assert row == {
        "id": "p1",
        "product_name": "Oak table",
        "product_description": "Solid oak.",
        "price": 1900.0,
        "category": "Home & Garden",
        "subcategory": "Dining, Living Room Furniture",
        "category_path": "Home & Garden / Dining, Living Room Furniture / Tables",
        "location": "Leeds",
        "county": "West Yorkshire",
    }


def test_location_without_county_and_missing_optional_fields() -> None:
    row = clean_products(raw_products_frame([good_row(location="London", product_description=None)])).products.row(
        0, named=True
    )
    assert (row["location"], row["county"], row["product_description"]) == ("London", None, "")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"price": "£abc"}, "unparseable price"),
        ({"price": None}, "missing required field: price"),
        ({"category": "  "}, "missing required field: category"),
        ({"category": " / "}, "empty category after cleaning"),
        ({"category": " / / "}, "empty category after cleaning"),
        ({"category": "/"}, "empty category after cleaning"),
        ({"price": "£" + "9" * 400}, "price out of range"),
        ({"id": "p\x001"}, "id has control characters"),
        ({"id": "p\u00851"}, "id has control characters"),
        ({"product_name": None}, "missing required field: product_name"),
        ({"product_name": "★★★ | in Leeds, Yorkshire | Gumtree"}, "empty product_name after cleaning"),
        ({"id": ""}, "missing required field: id"),
    ],
)
def test_rejection_reasons(overrides: dict[str, str | None], reason: str) -> None:
    result = clean_products(raw_products_frame([good_row(id="ok"), good_row(**overrides)]))
    assert result.products["id"].to_list() == ["ok"]
    assert result.rejected.select("source_row", "stage", "reason").rows() == [(2, "products", reason)]


def test_first_valid_occurrence_of_an_id_wins() -> None:
    rows = [good_row(id="a", price="bad"), good_row(id="a", product_name="second"), good_row(id=" a", product_name="third")]
    result = clean_products(raw_products_frame(rows))
    assert result.products["product_name"].to_list() == ["second"]
    assert dict(result.rejected.select("source_row", "reason").iter_rows()) == {
        1: "unparseable price",
        3: "duplicate id",
    }


def test_clean_products_checks_its_input_contract() -> None:
    with pytest.raises(ContractError, match="^RawProducts: column 'price' fails present$") as caught:
        clean_products(raw_products_frame([good_row()]).drop("price"))
    assert (caught.value.contract, caught.value.column, caught.value.check) == ("RawProducts", "price", "present")
    with pytest.raises(ContractError, match="^RawProducts: column 'price' fails dtype String"):
        clean_products(raw_products_frame([good_row()]).with_columns(pl.lit(1.0).alias("price")))
    assert validated(raw_products_frame([good_row()]), RawProducts).height == 1


def test_category_levels_are_stripped_of_slashes_at_their_ends() -> None:
    rows = [good_row(id="a", category="A / / B"), good_row(id="b", category="A // / Ham/Amateur /"), good_row(id="c", category="/A/")]
    paths = clean_products(raw_products_frame(rows)).products["category_path"].to_list()
    assert paths == ["A / B", "A / Ham/Amateur", "A"]


separator_text = st.lists(st.sampled_from([" ", "/", " / ", "\t", "\u00a0", "A", "Ham/Radio", "é"]), max_size=8).map("".join)


@settings(max_examples=100)
@given(category=separator_text)
def test_a_category_has_no_blank_or_slash_only_level(category: str) -> None:
    result = clean_products(raw_products_frame([good_row(category=category)]))
    for path in result.products["category_path"]:
        levels = path.split(" / ")
        assert all(level.strip(" /") == level and level.strip(" /") != "" for level in levels)
    if result.rejected.height:
        assert result.rejected["reason"].to_list() in (["empty category after cleaning"], ["missing required field: category"])


digits = st.integers(1, 500).flatmap(lambda length: st.text("0123456789", min_size=length, max_size=length))


@settings(max_examples=100)
@given(whole=digits, pence=st.sampled_from(["", ".5", ".99"]), pound=st.booleans())
def test_a_price_is_finite_or_the_row_is_rejected(whole: str, pence: str, pound: bool) -> None:
    result = clean_products(raw_products_frame([good_row(price=("£" if pound else "") + whole + pence)]))
    if result.products.height:
        value = result.products["price"].item()
        assert math.isfinite(value) and value == pytest.approx(float(whole + pence))
    else:
        assert result.rejected["reason"].to_list() == ["price out of range"]
        assert float(whole + pence) == math.inf


@settings(max_examples=100)
@given(raw_id=st.text(max_size=8))
def test_clean_ids_are_printable_text(raw_id: str) -> None:
    result = clean_products(raw_products_frame([good_row(id=raw_id)]))
    for clean_id in result.products["id"]:
        assert clean_id.strip() == clean_id != ""
        assert re.search(CONTROL_CHARACTERS, clean_id) is None
    if result.rejected.height and raw_id.strip():
        assert result.rejected["reason"].to_list() == ["id has control characters"]


any_text = st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["£1,000.00", "£" + "9" * 400, " / / ", "a\x00b", "5"]))
any_row = st.fixed_dictionaries({name: any_text for name in RAW_PRODUCT_COLUMNS})


@settings(max_examples=100)
@given(rows=st.lists(any_row, max_size=8))
def test_whatever_clean_products_returns_keeps_its_contracts(rows: list[dict[str, str | None]]) -> None:
    result = clean_products(raw_products_frame(rows))
    assert validated(result.products, CleanProducts).height + validated(result.rejected, Rejected).height == len(rows)


def test_image_manifest_keeps_every_photo_and_reports_the_rest() -> None:
    products = clean_products(raw_products_frame([good_row(id="a"), good_row(id="b"), good_row(id="c")])).products
    raw_images = pl.DataFrame(
        {
            "": ["0", "1", "2", "3", "4", "5"],
            "id": ["i1", "i2", "i3", "i4", "i1", None],
            "product_id": ["a", "a", "b", "zzz", "b", "a"],
        }
    )
    manifest = image_manifest(products, raw_images)
    assert manifest.images.select("image_id", "id").rows() == [("i1", "a"), ("i2", "a"), ("i3", "b")]
    assert manifest.products_without_images["id"].to_list() == ["c"]
    assert manifest.rejected.select("source_row", "stage", "reason").rows() == [
        (4, "images", "no clean product with this product_id"),
        (5, "images", "duplicate image id"),
        (6, "images", "missing required field: id"),
    ]


@settings(max_examples=60)
@given(data=st.data())
def test_every_photo_row_is_joined_or_rejected_exactly_once_with_its_reason(data: st.DataObject) -> None:
    products = clean_products(data.draw(raw_products(max_rows=8), label="products")).products
    images = data.draw(labelled_raw_images(products["id"].to_list(), max_rows=14), label="images")
    manifest = image_manifest(products, images.frame)
    assert dict(manifest.rejected.select("source_row", "reason").iter_rows()) == {
        row: reason for row, reason in enumerate(images.reasons, start=1) if reason is not None
    }
    joined = images.frame.filter(pl.Series([reason is None for reason in images.reasons], dtype=pl.Boolean))
    assert manifest.images["image_id"].to_list() == joined["id"].str.strip_chars().to_list()
    assert manifest.images["id"].to_list() == joined["product_id"].str.strip_chars().to_list()
    assert sorted(manifest.products_without_images["id"]) == sorted(set(products["id"]) - set(manifest.images["id"]))


def test_real_products_and_images(real_data) -> None:
    from fbml.tables.clean import clean_tables

    tables = clean_tables(real_data / "Products.csv", real_data / "Images.csv")
    products, manifest = tables.cleaned.products, tables.manifest
    assert products.height + tables.cleaned.rejected.height == tables.products_read == 6081
    assert products["category"].n_unique() == 13
    assert manifest.images.height + manifest.rejected.height == tables.images_read
    assert manifest.images["id"].n_unique() + manifest.products_without_images.height == products.height
    assert not products["product_name"].str.contains(r"\| Gumtree").any()
    assert products["product_description"].str.contains(r"[^\x00-\x7F]").sum() == 0
    assert products["price"].max() == 10_000_000.0


def test_output_contracts_check_that_ids_are_unique() -> None:
    products = clean_products(raw_products_frame([good_row(id="a"), good_row(id="b")])).products
    assert validated(products, CleanProducts).height == 2
    with pytest.raises(ContractError, match="^CleanProducts: column 'id' fails unique \\(2 failing, e.g. 'a', 'a'\\)$"):
        validated(pl.concat([products, products.head(1)]), CleanProducts)
    photos = pl.concat([products, products.head(1)]).with_columns(pl.Series("image_id", ["i1", "i2", "i3"]))
    assert validated(photos, ImageManifest).height == 3
    with pytest.raises(ContractError, match="^ImageManifest: column 'image_id' fails unique"):
        validated(photos.with_columns(pl.Series("image_id", ["i1", "i2", "i1"])), ImageManifest)


def test_image_rows_with_control_characters_in_their_id_are_rejected() -> None:
    products = clean_products(raw_products_frame([good_row(id="a")])).products
    raw_images = pl.DataFrame({"id": ["i\x001", "i2"], "product_id": ["a", "a"]})
    manifest = image_manifest(products, raw_images)
    assert manifest.images["image_id"].to_list() == ["i2"]
    assert manifest.rejected.select("source_row", "reason").rows() == [(1, "image id has control characters")]
