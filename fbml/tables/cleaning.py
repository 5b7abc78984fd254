"""Clean the raw products table and join it to its photos: polars expressions, one lazy query.

Every raw row ends in exactly one place: a clean table or ``rejected`` with its reason. The per-row
cleaning (``annotated_rows``) is one function of a batch of numbered rows, the same for a whole table,
a streamed batch or a Ray batch; only the duplicate ids look across rows (``duplicate_rejection``).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import attrs
import contracts
import polars as pl
from contracts.rules import CLEAN_PRODUCT_SCHEMA, CONTROL_CHARACTERS, RAW_PRODUCT_COLUMNS

from fbml.errors import ContractError
from fbml.tables.validation import rows_of, validated

if TYPE_CHECKING:
    from contracts import CleanProducts, ImageManifest, RawImages, RawProducts, Rejected
    from pandera.typing.polars import DataFrame

CATEGORY_SEPARATOR = " / "
PRODUCT_TEXT_COLUMNS = RAW_PRODUCT_COLUMNS
REQUIRED_PRODUCT_FIELDS = ("id", "product_name", "category", "price")
PRICE_PATTERN = r"^£?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$"
GUMTREE_SUFFIX = r"(?i)(\s*\|\s*in\s[^|]*)?\s*\|\s*gumtree\s*$"
CLEAN_COLUMNS = tuple(CLEAN_PRODUCT_SCHEMA.names())
MANIFEST_COLUMNS = ("image_id", *CLEAN_COLUMNS)
NON_ASCII = r"[^\x00-\x7F]+"
# Latin-1 Supplement, General Punctuation, Variation Selectors, Miscellaneous Symbols and
# Pictographs, Emoticons: most of the non-ASCII characters listings use (£ ’ – • … é, emoji).
COMMON_BLOCKS = ((0x80, 0x100), (0x2000, 0x2070), (0xFE00, 0xFE10), (0x1F300, 0x1F650))
MESSY_SPACE = r"[\x00-\x1F\x7F][\x00-\x20\x7F]*|\x20[\x00-\x20\x7F]+"
Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)
BATCH_ROWS = 250_000
"""Rows per streamed batch: enough that per-batch costs (automata, distinct lookups) stay small."""
_ROW = "source_row"
_REASON = "reason"
BATCH_SCHEMA = pl.Schema([(_ROW, pl.Int64), *CLEAN_PRODUCT_SCHEMA.items(), (_REASON, pl.String), ("raw", pl.String)])


@attrs.frozen
class Cleaned:
    """The clean products (``CleanProducts``) and the rejected rows (``Rejected``)."""

    products: DataFrame[CleanProducts]
    rejected: DataFrame[Rejected]

    def rejected_by_reason(self) -> dict[str, int]:
        """How many rows each reason rejected."""
        return reasons_count(self.rejected)


@attrs.frozen
class Manifest:
    """Every photo of every clean product (``ImageManifest``), the image rows that could not be
    joined (``Rejected``), and the clean products that have no photo (``CleanProducts``)."""

    images: DataFrame[ImageManifest]
    rejected: DataFrame[Rejected]
    products_without_images: DataFrame[CleanProducts]

    def rejected_by_reason(self) -> dict[str, int]:
        """How many image rows each reason rejected."""
        return reasons_count(self.rejected)


def ascii_text(text: pl.Expr) -> pl.Expr:
    """Unicode-normalised to ASCII (é -> e, ﬁ -> fi, ’ dropped), whitespace runs to one space, stripped.

    Equal to NFKD then dropping non-ASCII, character by character, with the costly steps run only
    on the rows that need them (elsewhere their input is null, which string kernels skip): rows with
    non-ASCII go through a table of the common blocks' characters to their NFKD ASCII forms ("" for
    none), and the few still not ASCII through the table of every character with an ASCII form,
    dropping the rest. Whitespace is replaced on every row: finding the rows first costs as much.
    """
    transliterated = _only_where(text, has_non_ascii, _transliterate)
    return transliterated.str.replace_all(MESSY_SPACE, " ").str.strip_chars()


def ascii_string(text: str) -> str:
    """``ascii_text`` of one string in Python (no query: a small batch's cost): the same table, then the same
    whitespace rule."""
    ascii = text if text.isascii() else text.translate(_ascii_forms())
    return re.sub(MESSY_SPACE, " ", ascii).strip(" ")


class _AsciiForms(dict[int, str]):
    """``str.translate``'s table of ``ascii_text``: a non-ASCII character to its form in ``common_ascii_forms``,
    else in ``ascii_equivalents``, else "" (ASCII is left alone)."""

    def __missing__(self, code: int) -> str:
        if code < 0x80:
            raise LookupError(code)  # translate keeps the character
        character = chr(code)
        common = common_ascii_forms().get(character)
        self[code] = form = common if common is not None else ascii_equivalents().get(character, "")
        return form


@functools.cache
def _ascii_forms() -> _AsciiForms:
    """The one ``_AsciiForms`` table, filled as characters are met."""
    return _AsciiForms()


def has_non_ascii(text: pl.Expr) -> pl.Expr:
    """True where the text has a character outside ASCII (a cheap length comparison, no regex)."""
    return text.str.len_bytes() != text.str.len_chars()


@functools.cache
def ascii_equivalents() -> dict[str, str]:
    """Every non-ASCII character (below U+20000) whose NFKD form keeps some ASCII, to that ASCII.

    Only characters with a decomposition mapping can have one (Hangul syllables decompose to jamo).
    """
    characters = (chr(code) for code in range(0x80, 0x20000))
    table = {character: _nfkd_ascii(character) for character in characters if unicodedata.decomposition(character)}
    return {character: ascii for character, ascii in table.items() if ascii}


@functools.cache
def common_ascii_forms() -> dict[str, str]:
    """Every character of ``COMMON_BLOCKS`` to its NFKD ASCII form, "" where it has none."""
    return {chr(code): _nfkd_ascii(chr(code)) for first, end in COMMON_BLOCKS for code in range(first, end)}


def product_name(raw: pl.Expr) -> pl.Expr:
    """The listing title without its ``| in Town, County | Gumtree`` suffix.

    Already stripped: ``ascii_text`` strips, and a suffix match never leaves a space behind, since
    ``GUMTREE_SUFFIX`` takes in any spaces before it.
    """
    return ascii_text(raw).str.replace(GUMTREE_SUFFIX, "")


def price(raw: pl.Expr) -> pl.Expr:
    """``£1,900.00`` -> 1900.0; null where the text is not a price, infinite where it is too large for a float."""
    text = raw.str.strip_chars().str.replace_all(r"\s", "")
    return pl.when(text.str.contains(PRICE_PATTERN)).then(
        text.str.replace_all(r"[£,]", "").cast(pl.Float64, strict=False)
    )


def category_levels(raw: pl.Expr) -> pl.Expr:
    """``A / B / C`` -> ["A", "B", "C"]; levels are stripped of spaces and slashes at their ends, and
    blank ones (as in ``A /``, `` / `` or `` / / ``) dropped. A slash inside a level (``Ham/Amateur``) stays."""
    padded = pl.concat_str(pl.lit(" "), ascii_text(raw), pl.lit(" "))
    stripped = padded.str.split(CATEGORY_SEPARATOR).list.eval(pl.element().str.strip_chars(" /"))
    return stripped.list.eval(pl.element().filter(pl.element() != ""))


def category(levels: pl.Expr) -> pl.Expr:
    """The top level of a category path."""
    return levels.list.first()


def subcategory(levels: pl.Expr) -> pl.Expr:
    """The second level of a category path; null for a one-level path."""
    return levels.list.get(1, null_on_oob=True)


def category_path(levels: pl.Expr) -> pl.Expr:
    """The whole path, normalised to ``A / B / C``."""
    return pl.when(levels.list.len() > 0).then(levels.list.join(CATEGORY_SEPARATOR))


def location(raw: pl.Expr) -> pl.Expr:
    """``Town, County`` -> ``Town``."""
    return _blank_to_null(ascii_text(raw).str.splitn(",", 2).struct.field("field_0").str.strip_chars())


def county(raw: pl.Expr) -> pl.Expr:
    """``Town, County`` -> ``County``; null when there is no comma."""
    return _blank_to_null(ascii_text(raw).str.splitn(",", 2).struct.field("field_1").str.strip_chars())


def category_fields(raw: pl.Expr) -> pl.Expr:
    """``category``, ``subcategory`` and ``category_path`` of a raw category path, as a struct."""
    levels = category_levels(raw)
    return pl.struct(part(levels).alias(part.__name__) for part in (category, subcategory, category_path))


def place_fields(raw: pl.Expr) -> pl.Expr:
    """``location`` and ``county`` of a raw ``Town, County``, as a struct."""
    return pl.struct(location(raw).alias("location"), county(raw).alias("county"))


def per_distinct(key: pl.Expr, derive: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
    """``derive(key)``, computed once per distinct key and looked up for every row: prices,
    category paths and places repeat across many rows. ``derive`` must map null to null."""
    distinct = key.unique(maintain_order=True)
    return key.replace_strict(distinct, derive(distinct), default=None)


def product_rejection() -> pl.Expr:
    """Why a product row cannot be kept, or null: a blank required raw field, then a clean one."""
    missing = [
        pl.when(_is_blank(pl.col(f"_raw_{name}"))).then(pl.lit(f"missing required field: {name}"))
        for name in REQUIRED_PRODUCT_FIELDS
    ]
    return pl.coalesce(
        *missing,
        pl.when(pl.col("id").str.contains(CONTROL_CHARACTERS)).then(pl.lit("id has control characters")),
        pl.when(pl.col("product_name") == "").then(pl.lit("empty product_name after cleaning")),
        pl.when(pl.col("category").is_null()).then(pl.lit("empty category after cleaning")),
        pl.when(pl.col("price").is_null()).then(pl.lit("unparseable price")),
        pl.when(pl.col("price").is_infinite()).then(pl.lit("price out of range")),
    )


def duplicate_rejection(key: pl.Expr, reason: pl.Expr, what: str) -> pl.Expr:
    """The reason, or for an otherwise valid row whose key an earlier valid row has, a duplicate."""
    seen_before = ~pl.when(reason.is_null()).then(key).is_first_distinct()
    return pl.when(reason.is_null() & seen_before).then(pl.lit(f"duplicate {what}")).otherwise(reason)


def clean_products(raw: DataFrame[RawProducts] | pl.LazyFrame, *, source: str = "products") -> Cleaned:
    """The clean products and every rejected row, with reasons (``RawProducts`` -> ``Cleaned``).

    A lazy source is read by polars' streaming engine in batches, each cleaned on its own, so only the
    results are ever whole in memory; ids are made unique across all batches.
    """
    if isinstance(raw, pl.LazyFrame):
        batches = numbered(_raw_schema_checked(raw), PRODUCT_TEXT_COLUMNS).collect_batches(chunk_size=BATCH_ROWS, engine="streaming")
        rows = pl.concat([annotated_rows(batch) for batch in batches], rechunk=True)
    else:
        rows = annotated_rows(numbered(validated(raw, contracts.RawProducts).lazy(), PRODUCT_TEXT_COLUMNS).collect())
    annotated = rows.with_columns(duplicate_rejection(pl.col("id"), pl.col(_REASON), "id").alias(_REASON))
    products = annotated.filter(pl.col(_REASON).is_null()).select(CLEAN_COLUMNS)
    rejected = rejected_rows(annotated, PRODUCT_TEXT_COLUMNS, source=source, stage="products")
    return Cleaned(validated(products, contracts.CleanProducts), validated(rejected, contracts.Rejected))


def _raw_schema_checked(raw: pl.LazyFrame) -> pl.LazyFrame:
    """A lazy raw table checked against ``RawProducts``' schema (its only checks): every raw column, a string."""
    schema = raw.collect_schema()
    for name in PRODUCT_TEXT_COLUMNS:
        if name not in schema:
            raise ContractError("RawProducts", name, "present")
        if schema[name] != pl.String:
            raise ContractError("RawProducts", name, f"dtype {pl.String}", f"got {schema[name]}")
    return raw


def numbered(raw: pl.LazyFrame, columns: tuple[str, ...]) -> pl.LazyFrame:
    """The raw columns as ``_raw_*``, each row with its 1-based record number (a streamable row index)."""
    return raw.with_row_index(_ROW, offset=1).select(
        pl.col(_ROW).cast(pl.Int64), *(pl.col(name).alias(f"_raw_{name}") for name in columns)
    )


def annotated_rows(numbered_rows: pl.DataFrame) -> pl.DataFrame:
    """Each numbered raw row (``_raw_*``) with its clean fields and why it is rejected (null if kept),
    duplicate ids aside: a function of the rows alone, so any batch of them can be cleaned alone.

    The batch is first made one chunk per column: ``str.replace_many`` builds its automaton (over
    about a thousand characters) once per chunk, and a 1M-row CSV reads as some 240 chunks.
    """
    return (
        numbered_rows.rechunk()
        .lazy()
        .with_columns(
            pl.col("_raw_id").str.strip_chars().alias("id"),
            product_name(pl.col("_raw_product_name")).alias("product_name"),
            ascii_text(pl.col("_raw_product_description")).fill_null("").alias("product_description"),
            per_distinct(pl.col("_raw_price"), price).alias("price"),
            per_distinct(pl.col("_raw_category"), category_fields).alias("_category"),
            per_distinct(pl.col("_raw_location"), place_fields).alias("_place"),
        )
        .unnest("_category", "_place")
        .with_columns(product_rejection().alias(_REASON))
        .collect()
    )


def cleaned_batch(numbered_rows: pl.DataFrame) -> pl.DataFrame:
    """``annotated_rows`` as a batch leaves a worker: the row number, the clean fields, the reason, and
    the raw row as JSON where it is rejected (``BATCH_SCHEMA``)."""
    annotated = annotated_rows(numbered_rows)
    raw = pl.when(pl.col(_REASON).is_not_null()).then(raw_json(PRODUCT_TEXT_COLUMNS))
    return annotated.select(_ROW, *CLEAN_COLUMNS, _REASON, raw.alias("raw"))


def raw_json(columns: tuple[str, ...]) -> pl.Expr:
    """The raw fields ``_raw_*`` of a row as a JSON object."""
    return pl.struct(pl.col(f"_raw_{name}").alias(name) for name in columns).struct.json_encode()


def image_manifest(
    products: DataFrame[CleanProducts], raw_images: DataFrame[RawImages], *, source: str = "images"
) -> Manifest:
    """Join every photo row to its clean product (``CleanProducts`` x ``RawImages`` -> ``Manifest``)."""
    products = validated(products, contracts.CleanProducts)
    raw_images = validated(raw_images, contracts.RawImages)
    columns = image_columns(raw_images.columns)
    annotated = annotated_images(numbered(raw_images.lazy(), columns), products.lazy().select("id")).collect()
    photos = joined_photos(annotated.lazy()).collect()
    images = manifest_rows(photos.lazy(), products.lazy()).collect()
    without = rows_of(products, ~pl.col("id").is_in(photos["id"].implode()))
    rejected = rejected_rows(annotated, columns, source=source, stage="images")
    return Manifest(validated(images, contracts.ImageManifest), validated(rejected, contracts.Rejected), without)


def image_columns(columns: list[str]) -> tuple[str, ...]:
    """The columns of a raw images table kept in a rejected row (the unnamed index dropped)."""
    return tuple(name for name in columns if name != "")


def annotated_images(numbered_images: pl.LazyFrame, product_ids: pl.LazyFrame) -> pl.LazyFrame:
    """Each numbered raw image row with its ids and why it cannot join (null if it does): blank or
    unprintable ids, no clean product among ``product_ids`` (a frame of ``id``), or an image id already seen."""
    known = product_ids.select(pl.col("id").alias("product_id"), pl.lit(True).alias("_known"))
    return (
        numbered_images.with_columns(
            pl.col("_raw_id").str.strip_chars().alias("id"),
            pl.col("_raw_product_id").str.strip_chars().alias("product_id"),
        )
        .join(known, on="product_id", how="left", maintain_order="left")
        .with_columns(
            pl.coalesce(
                pl.when(_is_blank(pl.col("id"))).then(pl.lit("missing required field: id")),
                pl.when(_is_blank(pl.col("product_id"))).then(pl.lit("missing required field: product_id")),
                pl.when(pl.col("id").str.contains(CONTROL_CHARACTERS)).then(pl.lit("image id has control characters")),
                pl.when(pl.col("_known").is_null()).then(pl.lit("no clean product with this product_id")),
            ).alias(_REASON)
        )
        .with_columns(duplicate_rejection(pl.col("id"), pl.col(_REASON), "image id").alias(_REASON))
    )


def joined_photos(annotated: pl.LazyFrame) -> pl.LazyFrame:
    """The image rows that join: ``image_id`` and its product's ``id``."""
    return annotated.filter(pl.col(_REASON).is_null()).select(pl.col("id").alias("image_id"), pl.col("product_id").alias("id"))


def manifest_rows(photos: pl.LazyFrame, products: pl.LazyFrame) -> pl.LazyFrame:
    """Every joined photo with its product's clean fields, in the images table's order."""
    return photos.join(products, on="id", how="inner", maintain_order="left").select(MANIFEST_COLUMNS)


def reasons_count(rejected: pl.DataFrame | pl.LazyFrame) -> dict[str, int]:
    """Rejected rows per reason, most frequent first."""
    counts = rejected.lazy().group_by("reason").len().sort(["len", "reason"], descending=[True, False])
    return dict(counts.collect(engine="streaming").iter_rows())


def rejected_rows(annotated: Frame, columns: tuple[str, ...], *, source: str, stage: str) -> Frame:
    """The rejected rows of an annotated table, as ``Rejected`` rows."""
    return annotated.filter(pl.col(_REASON).is_not_null()).select(
        pl.lit(source).alias("source"),
        pl.col(_ROW),
        pl.lit(stage).alias("stage"),
        pl.col(_REASON),
        raw_json(columns).alias("raw"),
    )


def _transliterate(text: pl.Expr) -> pl.Expr:
    common = text.str.replace_many(common_ascii_forms())
    return _only_where(common, has_non_ascii, _transliterate_rare)


def _transliterate_rare(text: pl.Expr) -> pl.Expr:
    return text.str.replace_many(ascii_equivalents()).str.replace_all(NON_ASCII, "")


def _nfkd_ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _only_where(text: pl.Expr, where: Callable[[pl.Expr], pl.Expr], change: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
    """``change(text)`` on the rows where ``where(text)`` holds, ``text`` unchanged elsewhere.

    ``text`` is evaluated once: it becomes a struct field that both branches reference.
    """
    field = pl.field("text")
    chosen = pl.coalesce(change(pl.when(where(field)).then(field)), field)
    return pl.struct(text.alias("text")).struct.with_fields(chosen.alias("text")).struct.field("text")


def _is_blank(text: pl.Expr) -> pl.Expr:
    return text.is_null() | (text.str.strip_chars() == "")


def _blank_to_null(text: pl.Expr) -> pl.Expr:
    return pl.when(text != "").then(text)
