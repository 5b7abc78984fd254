"""Hypothesis strategies for property tests of code that takes fbml's inputs: raw tables and photos.

``pip install 'fbml[testing]'`` brings hypothesis; ``import fbml`` never imports this module.

- ``raw_products()``: raw products tables with the real data's mess (``£1,900.00`` prices, ``| in Town,
  County | Gumtree`` names, 1-5 level category paths with blank levels and stray slashes, locations
  with and without a comma, bare ``\\r`` and other whitespace runs, accents, ligatures, curly quotes,
  emoji, non-breaking spaces) and, at the rate ``bad_rows`` asks, rows fbml rejects (missing or blank
  required fields, prices that are not prices, duplicate ids, ...).
- ``raw_images(product_ids)``: raw images tables (long or short form) whose rows reference those
  products, and at the rate ``bad_rows`` asks, unknown products, missing or repeated image ids.
- ``labelled_raw_products()`` / ``labelled_raw_images()``: the same tables with, per row, the reason
  fbml rejects it with (None for a row it keeps), for tests that check the reasons too.
- ``photos()``: PIL images in every mode fbml's photo cleaning handles, of odd sizes, some with an EXIF
  orientation; ``photo_bytes(format)``: such photos encoded as a file of that format.
- ``raw_products_frame(rows)``: a raw products table from rows written by hand.

Every strategy is deterministic for hypothesis: a row's structure (which mess, which defect) is drawn,
its prose comes from a ``random.Random`` and a photo's pixels from a numpy generator, each seeded by a
drawn integer (few draws a row, so large tables stay fast to draw); no global random state is read or
changed.
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs
import numpy as np
import polars as pl
from contracts.rules import RAW_IMAGE_COLUMNS, RAW_PRODUCT_COLUMNS
from PIL import Image

from fbml.sample.marketplace import BAD_PRICES, BUCKET_URL, CATEGORY_PATHS, CITIES, LISTING_NOUNS, TOWNS
from fbml.tables.cleaning import REQUIRED_PRODUCT_FIELDS

try:
    from hypothesis import strategies as st
    from hypothesis.errors import InvalidArgument
except ImportError as error:  # pragma: no cover - only without the extra
    raise ImportError("fbml.testing needs hypothesis: pip install 'fbml[testing]'") from error

RAW_PRODUCT_TABLE_COLUMNS = ("", *RAW_PRODUCT_COLUMNS)
"""The raw products table's header: the unnamed index column, then ``RAW_PRODUCT_COLUMNS``."""
LONG_IMAGE_COLUMNS = ("", *RAW_IMAGE_COLUMNS, "bucket_link", "image_ref", "create_time")
SHORT_IMAGE_COLUMNS = ("", *RAW_IMAGE_COLUMNS)
PHOTO_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "I;16", "I", "F")
"""Every PIL mode ``photos()`` draws (a ``P`` photo has a transparent palette entry or not)."""
ENCODABLE_MODES: Mapping[str, tuple[str, ...]] = {
    "JPEG": ("1", "L", "RGB", "CMYK"),
    "PNG": ("1", "L", "P", "RGB", "RGBA", "LA", "I;16"),
    "WEBP": PHOTO_MODES,
    "GIF": ("1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F"),
    "TIFF": PHOTO_MODES,
    "BMP": ("1", "L", "P", "RGB", "RGBA"),
}
"""The modes of ``PHOTO_MODES`` that PIL can write in each format ``photo_bytes`` writes."""
EXIF_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})
"""The formats whose files keep a photo's EXIF orientation."""
ORIENTATION = 0x0112
"""The EXIF tag of a photo's orientation (1 upright, 2-8 mirrored and/or turned)."""

WHITESPACE_RUNS = ("  ", "\r", "\r\n", "\n", "\t", " \r ", " \t ", "\u00a0", "\u3000", "\u2028")
"""Whitespace as the raw tables have it inside fields: runs, bare carriage returns, tabs, no-break spaces."""
NON_ASCII = (
    "é", "ü", "ñ", "ç", "ø", "ß", "Æ", "ﬁ", "ﬂ", "’", "‘", "“", "”", "–", "—", "…", "•", "●", "°", "®", "™", "×",
    "·", "£", "€", "👉", "✅", "🔥", "🚚", "❤️", "1️⃣", "🇬🇧", "\u200b", "\u200e", "\uf0d8", "ｆ", "𝐀",
)  # fmt: skip
"""Non-ASCII characters of real listings: accents, ligatures, curly quotes, dashes, symbols, emoji,
zero-width and private-use characters, full-width and mathematical letters."""
ACCENTED_WORDS = ("café", "crème", "Renée", "naïve", "Zoë", "Dún", "ﬁne", "Kids’", "“new”", "déjà")
"""Words that keep some ASCII after normalisation (``é`` becomes ``e``, ``ﬁ`` becomes ``fi``)."""
BLANKS = (None, "", " ", "\t", "\r", " \r\n ", "\u00a0")
"""What a missing field looks like: null, empty, or whitespace only."""
UNPARSEABLE_PRICES = (
    *BAD_PRICES, "-£5.00", "£-5", "1.2.3", "nan", "inf", "£1,90.00", "£5 - £10", "five pounds", "£5.", "£.50",
    "1e3", "£١٢",
)  # fmt: skip
"""Prices that are not prices (fbml rejects the row)."""
OUT_OF_RANGE_PRICES = ("£" + "9" * 400, "9" * 320 + ".00")
"""Prices too large for a float."""
EMPTY_NAMES = ("★★★ | in Leeds, West Yorkshire | Gumtree", "| Gumtree", "✅🔥 | in Bath, Somerset | Gumtree", "’’", "👉\u00a0✨")
"""Names with nothing left once normalised to ASCII and cut of their ``| Gumtree`` suffix."""
EMPTY_CATEGORIES = (" / ", "/", " / / ", "//", "✅ / 🔥", "✅")
"""Category paths with no level left once normalised."""
ID_CONTROLS = ("\x00", "\x07", "\x1b", "\x7f", "\x90", "\x9f")
"""Control characters (that are not whitespace, so stripping an id keeps them)."""

REJECT_REASONS = {
    "missing": "missing required field: {field}",
    "control id": "id has control characters",
    "empty name": "empty product_name after cleaning",
    "empty category": "empty category after cleaning",
    "unparseable price": "unparseable price",
    "price out of range": "price out of range",
    "duplicate id": "duplicate id",
}
"""Why fbml rejects a product row of each kind ``raw_products`` draws (its ``rejected.reason``)."""
IMAGE_REJECT_REASONS = {
    "missing": "missing required field: {field}",
    "control id": "image id has control characters",
    "unknown product": "no clean product with this product_id",
    "duplicate id": "duplicate image id",
}
"""Why fbml rejects an image row of each kind ``raw_images`` draws."""
_SCRAMBLE_RANGE = 1 << 16
_SCRAMBLE_FACTOR = 40503  # about 2**16 / the golden ratio, odd
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:#éüß中"
_ID_PADDING = ("", " ", "  ", "\t", "\u00a0", "\u3000")


@attrs.frozen
class LabelledTable:
    """A raw table and, for each of its rows, the reason fbml rejects the row with (None: the row is kept)."""

    frame: pl.DataFrame = attrs.field(eq=attrs.cmp_using(eq=pl.DataFrame.equals))
    reasons: tuple[str | None, ...]


def raw_products_frame(rows: Sequence[Mapping[str, str | None]], *, index: Sequence[str] | None = None) -> pl.DataFrame:
    """A raw products table from ``rows`` (dicts of any of ``RAW_PRODUCT_COLUMNS``; a column a row lacks is
    null): every column a string, the unnamed index first (``index``, or 0, 1, 2, ...)."""
    for number, row in enumerate(rows):
        unknown = sorted(set(row) - set(RAW_PRODUCT_COLUMNS))
        if unknown:
            raise ValueError(f"row {number}: unknown column(s) {unknown} (raw products have {list(RAW_PRODUCT_COLUMNS)})")
    labels = [str(number) for number in range(len(rows))] if index is None else list(index)
    if len(labels) != len(rows):
        raise ValueError(f"{len(labels)} index values for {len(rows)} rows")
    data = {"": labels, **{name: [row.get(name) for row in rows] for name in RAW_PRODUCT_COLUMNS}}
    return pl.DataFrame(data, schema=dict.fromkeys(RAW_PRODUCT_TABLE_COLUMNS, pl.String))


def raw_products(*, min_rows: int = 0, max_rows: int = 20, bad_rows: float = 0.25) -> st.SearchStrategy[pl.DataFrame]:
    """Raw products tables (``contracts.RawProducts``, the real header: an unnamed index column, then
    ``id, product_name, category, product_description, price, location``, all strings) of ``min_rows``
    to ``max_rows`` rows, each row bad (fbml rejects it) with probability about ``bad_rows``.

    ``bad_rows=0`` draws only rows fbml keeps (still messy); ``bad_rows=1`` only rows it rejects.
    """
    return labelled_raw_products(min_rows=min_rows, max_rows=max_rows, bad_rows=bad_rows).map(_frame_of)


def labelled_raw_products(
    *, min_rows: int = 0, max_rows: int = 20, bad_rows: float = 0.25
) -> st.SearchStrategy[LabelledTable]:
    """``raw_products()`` with each row's rejection reason (None where fbml keeps the row)."""
    _check_rows(min_rows, max_rows)
    _check_probability(bad_rows)
    return _labelled_products(min_rows=min_rows, max_rows=max_rows, bad_rows=bad_rows)


def raw_images(
    product_ids: Sequence[str],
    *,
    min_rows: int = 0,
    max_rows: int = 20,
    bad_rows: float = 0.25,
    form: Literal["long", "short"] | None = None,
) -> st.SearchStrategy[pl.DataFrame]:
    """Raw images tables (``contracts.RawImages``) whose rows reference ``product_ids`` (the ids of clean
    products), each row bad with probability about ``bad_rows``: an unknown product, a missing or blank
    id, an image id with control characters or one an earlier row has. ``form`` is ``long``
    (``,id,product_id,bucket_link,image_ref,create_time``), ``short`` (``,id,product_id``) or either.

    With no ``product_ids`` every row references an unknown product.
    """
    return labelled_raw_images(product_ids, min_rows=min_rows, max_rows=max_rows, bad_rows=bad_rows, form=form).map(_frame_of)


def labelled_raw_images(
    product_ids: Sequence[str],
    *,
    min_rows: int = 0,
    max_rows: int = 20,
    bad_rows: float = 0.25,
    form: Literal["long", "short"] | None = None,
) -> st.SearchStrategy[LabelledTable]:
    """``raw_images()`` with each row's rejection reason (None where fbml joins the row to its product)."""
    _check_rows(min_rows, max_rows)
    _check_probability(bad_rows)
    if form not in (None, "long", "short"):
        raise InvalidArgument(f"form must be 'long', 'short' or None, got {form!r}")
    forms = ("long", "short") if form is None else (form,)
    return _labelled_images(tuple(product_ids), min_rows=min_rows, max_rows=max_rows, bad_rows=bad_rows, forms=forms)


def photos(
    *,
    modes: Sequence[str] = PHOTO_MODES,
    max_side: int = 1024,
    max_pixels: int = 1 << 18,
    orientations: Sequence[int | None] = (None, 1, 2, 3, 4, 5, 6, 7, 8),
) -> st.SearchStrategy[Image.Image]:
    """PIL images in ``modes`` (``P`` with and without a transparent entry; ``I`` and ``F`` with values
    beyond 0..65535 and 0..255), of any size up to ``max_side`` a side and ``max_pixels`` in all, odd
    ones often (1x1, one pixel wide or high, very wide or tall, as large as allowed), each with the EXIF
    orientation tag drawn from ``orientations`` (None: no tag). Pixels are a solid colour, a gradient or noise.
    """
    unknown = sorted(set(modes) - set(PHOTO_MODES))
    if unknown or not modes:
        raise InvalidArgument(f"modes must be some of {PHOTO_MODES}, got {list(modes)}")
    if max_side < 1 or max_pixels < 1:
        raise InvalidArgument(f"max_side and max_pixels must be at least 1, got {max_side} and {max_pixels}")
    if not orientations or any(tag is not None and not 1 <= tag <= 8 for tag in orientations):
        raise InvalidArgument(f"orientations must be some of None and 1..8, got {list(orientations)}")
    return _photos(tuple(modes), max_side, max_pixels, tuple(orientations))


def photo_bytes(
    format: str = "PNG",
    *,
    modes: Sequence[str] | None = None,
    max_side: int = 512,
    max_pixels: int = 1 << 16,
    orientations: Sequence[int | None] = (None, 1, 2, 3, 4, 5, 6, 7, 8),
) -> st.SearchStrategy[bytes]:
    """``photos()`` encoded as ``format`` files (one of ``ENCODABLE_MODES``), in the modes that format
    holds (all of them by default); the orientation tag is kept in ``EXIF_FORMATS``."""
    if format not in ENCODABLE_MODES:
        raise InvalidArgument(f"format must be one of {sorted(ENCODABLE_MODES)}, got {format!r}")
    chosen = ENCODABLE_MODES[format] if modes is None else tuple(modes)
    refused = sorted(set(chosen) - set(ENCODABLE_MODES[format]))
    if refused:
        raise InvalidArgument(f"{format} cannot hold mode(s) {refused}; it holds {ENCODABLE_MODES[format]}")
    drawn = photos(modes=chosen, max_side=max_side, max_pixels=max_pixels, orientations=orientations)
    return drawn.map(lambda photo: encoded(photo, format))


def encoded(photo: Image.Image, format: str) -> bytes:
    """``photo`` as a file of ``format``, with its EXIF orientation where the format keeps one."""
    buffer = io.BytesIO()
    exif = photo.info.get("exif")
    options = {"exif": exif} if exif is not None and format in EXIF_FORMATS else {}
    photo.save(buffer, format, **options)
    return buffer.getvalue()


# --- products ---------------------------------------------------------------------------------------


def _frame_of(table: LabelledTable) -> pl.DataFrame:
    return table.frame


def _check_rows(min_rows: int, max_rows: int) -> None:
    if not 0 <= min_rows <= max_rows:
        raise InvalidArgument(f"need 0 <= min_rows <= max_rows, got min_rows={min_rows}, max_rows={max_rows}")


def _check_probability(bad_rows: float) -> None:
    if not 0.0 <= bad_rows <= 1.0:
        raise InvalidArgument(f"bad_rows must be a probability between 0 and 1, got {bad_rows}")


def _is_bad(draw: st.DrawFn, bad_rows: float) -> bool:
    """True with probability about ``bad_rows``. Hypothesis favours small integers, so the one drawn is
    scrambled (Fibonacci hashing) before it is compared; 0, where shrinking goes, is a good row."""
    if bad_rows in (0.0, 1.0):
        return bad_rows == 1.0
    scrambled = draw(st.integers(0, _SCRAMBLE_RANGE - 1)) * _SCRAMBLE_FACTOR % _SCRAMBLE_RANGE
    return scrambled >= _SCRAMBLE_RANGE * (1.0 - bad_rows)


_id_cores = st.one_of(
    st.integers(0, 10**6).map("p{}".format),
    st.uuids().map(str),
    st.text(alphabet=_ID_ALPHABET, min_size=1, max_size=8),
)


def _padded(draw: st.DrawFn, core: str) -> str:
    """``core`` with whitespace around it (fbml strips ids)."""
    return draw(st.sampled_from(_ID_PADDING)) + core + draw(st.sampled_from(_ID_PADDING))


def _mess(rng: random.Random) -> str:
    """What separates two words of a listing: a space, a whitespace run, or non-ASCII between spaces."""
    kind = rng.randrange(4)
    if kind == 0:
        return " "
    if kind == 1:
        return rng.choice(WHITESPACE_RUNS)
    return rng.choice(("", " ")) + rng.choice(NON_ASCII) + rng.choice(("", " "))


def _words(rng: random.Random, max_words: int) -> str:
    """Listing words joined by mess; the first is ASCII, so some text always survives normalisation."""
    words = [rng.choice(LISTING_NOUNS)]
    for _ in range(rng.randrange(max_words)):
        words += [_mess(rng), rng.choice(LISTING_NOUNS if rng.random() < 0.7 else ACCENTED_WORDS)]
    return rng.choice(("", "", "👉 ", "“", "\r", " ", "✅")) + "".join(words)


def _location(draw: st.DrawFn, rng: random.Random) -> str | None:
    """``Town, County``, a bare city, odd spacing, non-ASCII, blank, or any text (all kept)."""
    town, county = rng.choice(TOWNS)
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return f"{town}, {county}"
    if kind == 1:
        return rng.choice(CITIES)
    if kind == 2:
        return rng.choice((f"{town},{county}", f" {town} , {county} ", f"{town},\u00a0{county}", f"{town}, {county}, UK"))
    if kind == 3:
        return rng.choice(("Dún Laoghaire, County Dublin", "Ynys Môn, Anglesey", "Zürich", "Newry,\rCounty Down"))
    if kind == 4:
        return draw(st.sampled_from(BLANKS))
    return draw(st.text(max_size=20))


def _name(rng: random.Random, location: str | None) -> str:
    """A listing title, mostly with the ``| in Town, County | Gumtree`` suffix."""
    place = location if location and location.strip() else rng.choice(CITIES)
    suffix = rng.choice((f" | in {place} | Gumtree", f" | in {place} | Gumtree", " | Gumtree", "", f" |in {place}|gumtree "))
    return _words(rng, 5) + suffix


def _category(rng: random.Random) -> str:
    """A 1-5 level path under a real top-level category; some with blank levels, stray slashes, mess."""
    levels = rng.choice(CATEGORY_PATHS).split(" / ")
    levels = levels[: rng.randint(1, min(5, len(levels)))]
    if rng.random() < 0.3:
        levels[-1] += rng.choice((" café", " & Co’s", "\u00a0Bits", "  Misc"))
    separators = [rng.choice((" / ", " / ", " / ", " / / ", " /  / ", " / \r / ", " /\t/ ")) for _ in levels[1:]]
    path = levels[0] + "".join(separator + level for separator, level in zip(separators, levels[1:], strict=True))
    return rng.choice(("", "", "", "/ ", " / ")) + path + rng.choice(("", "", "", " /", "/", " / "))


def _price(draw: st.DrawFn) -> str:
    """A price as listings write it: ``£1,900.00``, ``£5``, ``1900``, ``£ 12.50``, padded."""
    pence = draw(st.integers(0, 10**11))
    pounds, whole = pence / 100, pence // 100
    return draw(st.sampled_from((
        f"£{pounds:,.2f}", f"£{pounds:.2f}", f"£{whole}", f"{whole}", f"{pounds:,.2f}", f"£{whole:,}",
        f" £{pounds:,.2f} ", f"£ {whole}", f"£{pounds:.1f}",
    )))  # fmt: skip


def _description(draw: st.DrawFn, rng: random.Random) -> str | None:
    """Listing prose with mess, blank, or any text at all (every description is kept)."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return _words(rng, 12) + rng.choice(("", " £20 ono.", "\rCollection only.", " 👉 Delivery available 🚚"))
    if kind == 1:
        return draw(st.sampled_from(BLANKS))
    if kind == 2:
        return draw(st.text(max_size=40))
    return _words(rng, 3)


def _good_product(draw: st.DrawFn, core: str) -> dict[str, str | None]:
    """A row fbml keeps: its structure drawn, its prose from a generator seeded by a draw (few draws a row)."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    location = _location(draw, rng)
    return {
        "id": _padded(draw, core),
        "product_name": _name(rng, location),
        "category": _category(rng),
        "product_description": _description(draw, rng),
        "price": _price(draw),
        "location": location,
    }


def _bad_product(draw: st.DrawFn, core: str, kept: Sequence[str]) -> tuple[dict[str, str | None], str, str | None]:
    """A row with one defect (and otherwise good), the reason fbml rejects it with, and the id it has
    once stripped (None for a blank one or one with control characters). The id is ``core``, or for a
    duplicate one of ``kept``: the ids of the earlier rows fbml keeps."""
    row = _good_product(draw, core)
    kinds = [kind for kind in REJECT_REASONS if kind != "duplicate id" or kept]
    kind = draw(st.sampled_from(kinds))
    reason = REJECT_REASONS[kind]
    clean_id: str | None = core
    if kind == "missing":
        field = draw(st.sampled_from(REQUIRED_PRODUCT_FIELDS))
        row[field] = draw(st.sampled_from(BLANKS))
        reason, clean_id = reason.format(field=field), None if field == "id" else core
    elif kind == "control id":
        row["id"] = _padded(draw, core + draw(st.sampled_from(ID_CONTROLS)) + draw(st.sampled_from(("x", "1", "é"))))
        clean_id = None
    elif kind == "empty name":
        row["product_name"] = draw(st.sampled_from(EMPTY_NAMES))
    elif kind == "empty category":
        row["category"] = draw(st.sampled_from(EMPTY_CATEGORIES))
    elif kind == "unparseable price":
        row["price"] = draw(st.sampled_from(UNPARSEABLE_PRICES))
    elif kind == "price out of range":
        row["price"] = draw(st.sampled_from(OUT_OF_RANGE_PRICES))
    else:
        clean_id = draw(st.sampled_from(kept))
        row["id"] = _padded(draw, clean_id)
    return row, reason, clean_id


def _reused(draw: st.DrawFn, ids: Sequence[str]) -> str | None:
    """Now and then one of ``ids`` (an earlier row's), else None."""
    return draw(st.sampled_from(ids)) if ids and draw(st.integers(0, 3)) == 0 else None


def _index(draw: st.DrawFn, count: int) -> list[str]:
    """The unnamed index column: increasing, with a gap now and then, as the real tables have."""
    values, index = [], 0
    for _ in range(count):
        values.append(str(index))
        index += 1 + draw(st.integers(0, 1))
    return values


@st.composite
def _labelled_products(draw: st.DrawFn, *, min_rows: int, max_rows: int, bad_rows: float) -> LabelledTable:
    count = draw(st.integers(min_rows, max_rows))
    cores = draw(st.lists(_id_cores, min_size=count, max_size=count, unique=True))
    rows: list[dict[str, str | None]] = []
    reasons: list[str | None] = []
    kept: list[str] = []  # the ids of the rows fbml keeps
    only_rejected: list[str] = []  # ids that only rejected rows have: a row fbml keeps may have one
    for core in cores:
        if _is_bad(draw, bad_rows):
            row, reason, clean_id = _bad_product(draw, _reused(draw, [*kept, *only_rejected]) or core, kept)
            if clean_id is not None and clean_id not in kept and clean_id not in only_rejected:
                only_rejected.append(clean_id)
        else:
            core = _reused(draw, only_rejected) or core
            only_rejected = [other for other in only_rejected if other != core]
            row, reason = _good_product(draw, core), None
            kept.append(core)
        rows.append(row)
        reasons.append(reason)
    return LabelledTable(raw_products_frame(rows, index=_index(draw, count)), tuple(reasons))


# --- images -----------------------------------------------------------------------------------------


def _unknown_product_id(draw: st.DrawFn, known: frozenset[str]) -> str:
    """A product id that is none of ``known`` (once stripped)."""
    return draw(_id_cores.map("x-{}".format).filter(lambda product_id: product_id not in known))


def _image_row(draw: st.DrawFn, core: str, product_id: str, form: str) -> dict[str, str | None]:
    row: dict[str, str | None] = {"id": _padded(draw, core), "product_id": _padded(draw, product_id)}
    if form == "long":
        row["bucket_link"] = f"{BUCKET_URL}{core}.jpg"
        row["image_ref"] = draw(st.text(alphabet="abcdefghijkABCDEFGHIJK0123456789", min_size=16, max_size=16))
        row["create_time"] = draw(st.sampled_from(("2022-02-26", "2022-02-10", "2021-12-31 23:59:59", None)))
    return row


def _bad_image(
    draw: st.DrawFn, core: str, product_ids: tuple[str, ...], form: str, earlier_cores: Sequence[str]
) -> tuple[dict[str, str | None], str]:
    """An image row with one defect (and otherwise good), and the reason fbml rejects it with."""
    known = frozenset(product_ids)
    kinds = [
        kind for kind in IMAGE_REJECT_REASONS
        if (kind != "duplicate id" or earlier_cores) and (kind == "unknown product" or product_ids)
    ]  # fmt: skip
    kind = draw(st.sampled_from(kinds))
    product_id = _unknown_product_id(draw, known) if kind == "unknown product" else draw(st.sampled_from(product_ids))
    row = _image_row(draw, core, product_id, form)
    reason = IMAGE_REJECT_REASONS[kind]
    if kind == "missing":
        field = draw(st.sampled_from(RAW_IMAGE_COLUMNS))
        row[field] = draw(st.sampled_from(BLANKS))
        reason = reason.format(field=field)
    elif kind == "control id":
        row["id"] = _padded(draw, core + draw(st.sampled_from(ID_CONTROLS)) + "x")
    elif kind == "duplicate id":
        row["id"] = _padded(draw, draw(st.sampled_from(earlier_cores)))
    return row, reason


@st.composite
def _labelled_images(
    draw: st.DrawFn, product_ids: tuple[str, ...], *, min_rows: int, max_rows: int, bad_rows: float, forms: tuple[str, ...]
) -> LabelledTable:
    form = draw(st.sampled_from(forms))
    columns = LONG_IMAGE_COLUMNS if form == "long" else SHORT_IMAGE_COLUMNS
    count = draw(st.integers(min_rows, max_rows))
    cores = draw(st.lists(_id_cores, min_size=count, max_size=count, unique=True))
    rows: list[dict[str, str | None]] = []
    reasons: list[str | None] = []
    kept: list[str] = []
    for core in cores:
        if not product_ids or _is_bad(draw, bad_rows):
            row, reason = _bad_image(draw, core, product_ids, form, kept)
        else:
            row, reason = _image_row(draw, core, draw(st.sampled_from(product_ids)), form), None
            kept.append(core)
        rows.append(row)
        reasons.append(reason)
    data = {"": _index(draw, count), **{name: [row.get(name) for row in rows] for name in columns[1:]}}
    return LabelledTable(pl.DataFrame(data, schema=dict.fromkeys(columns, pl.String)), tuple(reasons))


# --- photos -----------------------------------------------------------------------------------------


def _side_pair(draw: st.DrawFn, max_side: int, max_pixels: int) -> tuple[int, int]:
    """(width, height): any, 1x1, a line one pixel across, very wide or tall, or as large as allowed."""
    kind = draw(st.integers(0, 4))
    if kind == 1:
        return 1, 1
    if kind == 2:
        length = draw(st.integers(1, min(max_side, max_pixels)))
        return (length, 1) if draw(st.booleans()) else (1, length)
    if kind == 3:
        short = draw(st.integers(1, max(1, min(4, max_side, max_pixels // max_side))))
        long = draw(st.integers(max(1, max_side // 2), max_side))
        long = max(1, min(long, max_pixels // short))
        return (long, short) if draw(st.booleans()) else (short, long)
    if kind == 4:
        side = min(max_side, int(max_pixels**0.5))
        other = min(max_side, max_pixels // side)
        return (side, other) if draw(st.booleans()) else (other, side)
    width = draw(st.integers(1, min(max_side, max_pixels)))
    height = draw(st.integers(1, max(1, min(max_side, max_pixels // width))))
    return width, height


def _levels(rng: np.random.Generator, pattern: str, size: tuple[int, int]) -> np.ndarray:
    """Levels in [0, 1] of four channels, shape (height, width, 4): one colour, a gradient, or noise."""
    width, height = size
    if pattern == "solid":
        return np.broadcast_to(rng.random(4), (height, width, 4)).copy()
    if pattern == "gradient":
        ramp = (np.arange(width)[None, :] / max(1, width - 1) + np.arange(height)[:, None] / max(1, height - 1)) / 2
        return np.clip(ramp[..., None] * rng.random(4) + rng.random(4) * 0.2, 0, 1)
    return rng.random((height, width, 4))


def _photo_of(mode: str, levels: np.ndarray, rng: np.random.Generator, transparent: bool) -> Image.Image:
    """An image of ``mode`` made from levels (height, width, 4) in [0, 1]."""
    grey = levels[..., 0]
    rgb = Image.fromarray((levels[..., :3] * 255).astype(np.uint8))
    alpha = Image.fromarray((levels[..., 3] * 255).astype(np.uint8))
    if mode == "1":
        return Image.fromarray(grey > 0.5)
    if mode == "I;16":
        return Image.fromarray((grey * 65535).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((grey * 140_000 - 20_000).astype(np.int32))
    if mode == "F":
        return Image.fromarray((grey * 400 - 100).astype(np.float32))
    if mode == "CMYK":
        return Image.frombytes("CMYK", rgb.size, (levels * 255).astype(np.uint8).tobytes())
    if mode in ("P", "PA"):
        palette = rgb.quantize(int(rng.integers(1, 257)))
        if mode == "PA":
            photo = palette.convert("PA")
            photo.putalpha(alpha)
            return photo
        if transparent:
            palette.info["transparency"] = int(rng.integers(0, len(palette.getpalette() or [0, 0, 0]) // 3))
        return palette
    if mode in ("RGBA", "LA"):
        photo = rgb.convert(mode[:-1])
        photo.putalpha(alpha)
        return photo
    return rgb.convert(mode)


@st.composite
def _photos(
    draw: st.DrawFn, modes: tuple[str, ...], max_side: int, max_pixels: int, orientations: tuple[int | None, ...]
) -> Image.Image:
    mode = draw(st.sampled_from(modes))
    size = _side_pair(draw, max_side, max_pixels)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    levels = _levels(rng, draw(st.sampled_from(("solid", "gradient", "noise"))), size)
    photo = _photo_of(mode, levels, rng, transparent=draw(st.booleans()))
    orientation = draw(st.sampled_from(orientations))
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        photo.info["exif"] = exif.tobytes()
    return photo
