"""fbml.testing: its strategies draw what they promise (the real mess, the bounds, every photo mode) and
refuse what they cannot draw; the README's example runs as a user would run it.

How fbml treats what they draw is tested where that is: cleaning in test_tables_cleaning.py, reading CSVs in
test_sources.py, streaming in test_streaming.py, photos in test_vision_cleaning.py and test_cache.py.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from contracts import RawImages, RawProducts
from contracts.rules import RAW_IMAGE_COLUMNS
from fbml.tables.validation import validated
from fbml.testing import (
    ENCODABLE_MODES,
    EXIF_FORMATS,
    IMAGE_REJECT_REASONS,
    LONG_IMAGE_COLUMNS,
    ORIENTATION,
    PHOTO_MODES,
    RAW_PRODUCT_TABLE_COLUMNS,
    SHORT_IMAGE_COLUMNS,
    UNPARSEABLE_PRICES,
    LabelledTable,
    labelled_raw_images,
    labelled_raw_products,
    photo_bytes,
    photos,
    raw_images,
    raw_products,
    raw_products_frame,
)
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
SEARCH = settings(max_examples=1000, database=None, phases=[Phase.generate])  # the first example found: no shrinking
REQUIRED = ("id", "product_name", "category", "price")


def column_matches(column: str, pattern: str) -> Callable[[pl.DataFrame], bool]:
    """Whether some value of ``column`` has a match of ``pattern``."""
    return lambda frame: bool(frame[column].str.contains(pattern).any())


def any_column_matches(pattern: str) -> Callable[[pl.DataFrame], bool]:
    return lambda frame: any(frame[column].str.contains(pattern).any() for column in RAW_PRODUCT_TABLE_COLUMNS[1:])


MESS: dict[str, Callable[[pl.DataFrame], bool]] = {
    "£1,900.00 prices": column_matches("price", r"^£\d{1,3}(,\d{3})+\.\d\d$"),
    "£5 prices": column_matches("price", r"^£\d+$"),
    "bare 1900 prices": column_matches("price", r"^\d{4,}$"),
    "prices that are not prices": lambda frame: bool(frame["price"].is_in(UNPARSEABLE_PRICES).any()),
    "| in Town, County | Gumtree names": column_matches("product_name", r" \| in [A-Za-z ]+, [A-Za-z ]+ \| Gumtree$"),
    "one-level categories": column_matches("category", r"^[A-Za-z ,&]+$"),
    "five-level categories": lambda frame: bool((frame["category"].str.count_matches(r" / [A-Za-z]") >= 4).any()),
    "blank category levels": column_matches("category", r"[A-Za-z] / / [A-Za-z]"),
    "trailing slashes": column_matches("category", r"[A-Za-z] ?/ ?$"),
    "locations with a comma": column_matches("location", r"^[A-Za-z ]+, [A-Za-z ]+$"),
    "locations without a comma": column_matches("location", r"^[A-Za-z]+$"),
    "bare carriage returns": any_column_matches(r"[^\r]\r[^\n]"),
    "tabs": any_column_matches("\t"),
    "runs of spaces": any_column_matches("[^ ]   ?[^ ]"),
    "accents": any_column_matches("é"),
    "ligatures": any_column_matches("ﬁ"),
    "curly quotes": any_column_matches("[’“”]"),
    "emoji": any_column_matches("[\U0001f300-\U0001faff]"),
    "no-break spaces": any_column_matches("\u00a0"),
    "null required fields": lambda frame: any(frame[name].is_null().any() for name in REQUIRED),
    "blank required fields": lambda frame: any((frame[name].str.strip_chars() == "").any() for name in REQUIRED),
    "duplicate ids": lambda frame: bool(frame["id"].str.strip_chars().drop_nulls().is_duplicated().any()),
    "ids with spaces around them": column_matches("id", r"^\s+\S"),
    "ids with control characters": column_matches("id", r"\S[\x00-\x08\x1b\x7f-\x9f]"),
}


@pytest.mark.parametrize("holds", MESS.values(), ids=MESS.keys())
def test_raw_products_draw_the_real_mess(holds: Callable[[pl.DataFrame], bool]) -> None:
    find(raw_products(), holds, settings=SEARCH)


def ids_shared(table: LabelledTable, earlier_kept: bool, later_kept: bool) -> bool:
    """Whether a row that fbml keeps (or not: ``earlier_kept``) has the id of a later row it keeps (or not),
    the later one rejected for another reason than the repeat."""
    ids = [value.strip() if value is not None else None for value in table.frame["id"]]
    rows = list(zip(ids, table.reasons, strict=True))
    return any(
        first == second and first is not None and (first_reason is None) == earlier_kept and (second_reason is None) == later_kept
        and second_reason != "duplicate id"
        for at, (first, first_reason) in enumerate(rows) for second, second_reason in rows[at + 1 :]
    )  # fmt: skip


REPEATS = {
    "a rejected row with the id of an earlier kept one": (True, False),
    "a kept row with the id of an earlier rejected one": (False, True),
    "two rejected rows with one id": (False, False),
}


@pytest.mark.parametrize(("earlier_kept", "later_kept"), REPEATS.values(), ids=REPEATS.keys())
def test_ids_repeat_across_rows_kept_and_rejected(earlier_kept: bool, later_kept: bool) -> None:
    find(labelled_raw_products(), lambda table: ids_shared(table, earlier_kept, later_kept), settings=SEARCH)


@settings(max_examples=200)
@given(data=st.data(), low=st.integers(0, 6), extra=st.integers(0, 6), bad_rows=st.sampled_from([0.0, 0.3, 1.0]))
def test_raw_products_keep_the_raw_contract_and_the_bounds(data: st.DataObject, low: int, extra: int, bad_rows: float) -> None:
    table = data.draw(labelled_raw_products(min_rows=low, max_rows=low + extra, bad_rows=bad_rows))
    frame = table.frame
    assert frame.columns == list(RAW_PRODUCT_TABLE_COLUMNS)
    assert set(frame.dtypes) <= {pl.String}
    assert low <= frame.height <= low + extra and len(table.reasons) == frame.height
    assert validated(frame, RawProducts).height == frame.height
    index = frame[""].cast(pl.Int64)
    assert index.is_sorted() and index.is_unique().all()
    if bad_rows == 0.0:
        assert table.reasons == (None,) * frame.height
    if bad_rows == 1.0:
        assert None not in table.reasons


@pytest.mark.parametrize("bad_rows", [0.25, 0.75])
def test_bad_rows_come_at_about_the_rate_asked(bad_rows: float) -> None:
    """Over 200 tables of 10 rows, the share of bad rows is within 0.1 of the rate asked."""
    drawn: list[str | None] = []

    @settings(max_examples=200, database=None)
    @given(labelled_raw_products(min_rows=10, max_rows=10, bad_rows=bad_rows))
    def collect(table: LabelledTable) -> None:
        drawn.extend(table.reasons)

    collect()
    assert len(drawn) == 2000
    assert abs(sum(reason is not None for reason in drawn) / len(drawn) - bad_rows) < 0.1


def test_invalid_arguments_are_refused_when_the_strategy_is_made() -> None:
    for make in [
        lambda: raw_products(bad_rows=1.5),
        lambda: raw_products(bad_rows=-0.1),
        lambda: raw_products(min_rows=3, max_rows=2),
        lambda: raw_images(["p1"], min_rows=-1),
        lambda: raw_images(["p1"], form="wide"),  # type: ignore[arg-type]
        lambda: photos(modes=["YCbCr"]),
        lambda: photos(modes=[]),
        lambda: photos(max_side=0),
        lambda: photos(orientations=[9]),
        lambda: photo_bytes("PSD"),
        lambda: photo_bytes("JPEG", modes=["RGBA"]),
    ]:
        with pytest.raises(InvalidArgument):
            make()


def test_raw_products_frame_takes_rows_by_hand() -> None:
    frame = raw_products_frame([{"id": "p1", "price": "£5"}, {}], index=["0", "2"])
    assert frame.columns == list(RAW_PRODUCT_TABLE_COLUMNS) and set(frame.dtypes) == {pl.String}
    assert frame.row(0) == ("0", "p1", None, None, None, "£5", None)
    assert frame[""].to_list() == ["0", "2"]
    assert raw_products_frame([])[""].to_list() == []
    with pytest.raises(ValueError, match=r"row 0: unknown column\(s\) \['cost'\]"):
        raw_products_frame([{"cost": "5"}])
    with pytest.raises(ValueError, match="1 index values for 2 rows"):
        raw_products_frame([{}, {}], index=["0"])


product_ids = st.lists(st.sampled_from(["p1", "p2", "a b", "é", "7"]), unique=True, max_size=4)


@settings(max_examples=200)
@given(data=st.data(), ids=product_ids, form=st.sampled_from(["long", "short", None]), bad_rows=st.sampled_from([0.0, 0.4, 1.0]))
def test_raw_images_reference_the_products_given(data: st.DataObject, ids: list[str], form: str | None, bad_rows: float) -> None:
    table = data.draw(labelled_raw_images(ids, max_rows=12, form=form, bad_rows=bad_rows))  # type: ignore[arg-type]
    frame = table.frame
    assert frame.columns in ([list(LONG_IMAGE_COLUMNS)] if form == "long" else [list(SHORT_IMAGE_COLUMNS)] if form == "short"
                             else [list(LONG_IMAGE_COLUMNS), list(SHORT_IMAGE_COLUMNS)])  # fmt: skip
    assert set(frame.dtypes) <= {pl.String} and validated(frame, RawImages).height == frame.height
    unknown, blank = IMAGE_REJECT_REASONS["unknown product"], IMAGE_REJECT_REASONS["missing"].format(field="product_id")
    for row, reason in zip(frame.iter_rows(named=True), table.reasons, strict=True):
        assert (row["product_id"] is None or row["product_id"].strip() == "") == (reason == blank)
        if reason != blank:
            assert (row["product_id"].strip() not in ids) == (reason == unknown)
        assert reason is not None or (ids and bad_rows < 1.0)
    if not ids:
        assert set(table.reasons) <= {unknown}


@pytest.mark.parametrize("reason", sorted({*IMAGE_REJECT_REASONS.values(), None}, key=str), ids=str)
def test_raw_images_draw_every_kind_of_bad_row(reason: str | None) -> None:
    fields = {reason.format(field=field) for field in RAW_IMAGE_COLUMNS} if reason else {None}
    find(labelled_raw_images(["p1", "p2"]), lambda table: bool(fields & set(table.reasons)), settings=SEARCH)


@settings(max_examples=300)
@given(data=st.data(), max_side=st.integers(1, 300), max_pixels=st.integers(1, 5000), modes=st.sets(st.sampled_from(PHOTO_MODES), min_size=1))
def test_photos_keep_within_their_bounds_and_modes(data: st.DataObject, max_side: int, max_pixels: int, modes: set[str]) -> None:
    photo = data.draw(photos(modes=sorted(modes), max_side=max_side, max_pixels=max_pixels, orientations=[None, 6]))
    width, height = photo.size
    assert photo.mode in modes and 1 <= width <= max_side and 1 <= height <= max_side and width * height <= max(1, max_pixels)
    assert photo.getexif().get(ORIENTATION) in (None, 6)


SHAPES: dict[str, Callable[[Image.Image], bool]] = {
    "1x1": lambda photo: photo.size == (1, 1),
    "one pixel wide": lambda photo: photo.width == 1 and photo.height > 20,
    "one pixel high": lambda photo: photo.height == 1 and photo.width > 20,
    "very wide": lambda photo: photo.width >= 100 * photo.height,
    "very tall": lambda photo: photo.height >= 100 * photo.width,
    "as large as allowed": lambda photo: photo.width * photo.height > (1 << 18) * 0.9,
    "P with a transparent entry": lambda photo: photo.mode == "P" and "transparency" in photo.info,
    "P without one": lambda photo: photo.mode == "P" and "transparency" not in photo.info,
    "I beyond 16 bits": lambda photo: photo.mode == "I" and photo.getextrema()[1] > 65535,
    "I below 0": lambda photo: photo.mode == "I" and photo.getextrema()[0] < 0,
    "F beyond 255": lambda photo: photo.mode == "F" and photo.getextrema()[1] > 255,
    "no orientation tag": lambda photo: ORIENTATION not in photo.getexif(),
    **{f"mode {mode}": (lambda photo, mode=mode: photo.mode == mode) for mode in PHOTO_MODES},
    **{f"orientation {tag}": (lambda photo, tag=tag: photo.getexif().get(ORIENTATION) == tag) for tag in range(1, 9)},
}


@pytest.mark.parametrize("holds", SHAPES.values(), ids=SHAPES.keys())
def test_photos_draw_every_mode_odd_sizes_and_orientations(holds: Callable[[Image.Image], bool]) -> None:
    find(photos(), holds, settings=SEARCH)


@pytest.mark.parametrize(("format", "mode"), [(format, mode) for format, modes in ENCODABLE_MODES.items() for mode in modes])
def test_photo_bytes_decode_as_their_format_with_their_orientation(format: str, mode: str) -> None:
    data = find(photo_bytes(format, modes=[mode], orientations=[6]), lambda data: True, settings=SEARCH)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == format
        assert image.getexif().get(ORIENTATION) == (6 if format in EXIF_FORMATS else None)  # PIL applies a TIFF's as it loads
        image.load()


@pytest.mark.parametrize("format", sorted(ENCODABLE_MODES))
def test_encodable_modes_are_all_the_modes_a_format_holds(format: str) -> None:
    for mode in set(PHOTO_MODES) - set(ENCODABLE_MODES[format]):
        photo = find(photos(modes=[mode], max_side=4), lambda photo: True, settings=SEARCH)
        with pytest.raises((OSError, KeyError, ValueError)):
            photo.save(io.BytesIO(), format)


def readme_example() -> str:
    """The Python block of the README's section "Property tests with fbml.testing"."""
    section = README.read_text(encoding="utf-8").split("### Property tests with fbml.testing", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no python block in the README's fbml.testing section"
    return match.group(1)


def test_the_readme_example_passes_under_pytest_as_a_user_runs_it(tmp_path: Path) -> None:
    """Outside fbml's own test settings (no conftest, hypothesis' default profile), in its own process."""
    (tmp_path / "test_example.py").write_text(readme_example(), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--rootdir", str(tmp_path), "test_example.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "2 passed" in run.stdout
