"""The data checks of the table contracts as plain polars expressions, without pandera (nor pandas).

The pandera models of ``contracts.tables``, ``contracts.catalogue`` and ``contracts.photos`` run these predicates
on eager frames; a stream too large for memory is checked against the same predicates, per row, as it is written
(``row_failures``), and so is a frame checked where pandera's import would cost more than the work: the search
index's catalogue where a bundle is loaded (``catalogue_rules``), so that serving never imports pandera, and the
report of ``fbml clean-images`` (``image_cleaning_file_rules``).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import polars as pl

CONTROL_CHARACTERS = r"[\x00-\x1F\x7F-\x9F]"
"""The Unicode control characters (category Cc): C0, DEL and C1."""

RAW_PRODUCT_COLUMNS = ("id", "product_name", "category", "product_description", "price", "location")
"""The columns a raw products table must have (any others, the unnamed index among them, are ignored)."""
RAW_IMAGE_COLUMNS = ("id", "product_id")
"""The columns a raw images table must have (the long form adds bucket_link, image_ref, create_time)."""
TEXT_COLUMNS = ("product_name", "product_description", "category", "subcategory", "category_path", "location", "county")
REPEATED_COLUMNS = ("category", "subcategory", "category_path", "location", "county")
CLEAN_PRODUCT_SCHEMA = pl.Schema(
    {"id": pl.String, "product_name": pl.String, "product_description": pl.String, "price": pl.Float64,
     "category": pl.String, "subcategory": pl.String, "category_path": pl.String, "location": pl.String,
     "county": pl.String}
)
NULLABLE_CLEAN_COLUMNS = ("subcategory", "location", "county")
REJECTED_SCHEMA = pl.Schema(
    {"source": pl.String, "source_row": pl.Int64, "stage": pl.String, "reason": pl.String, "raw": pl.String}
)
REJECTED_STAGES = ("products", "images")
CATALOGUE = "Catalogue"
"""The catalogue contract's name (its pandera model's)."""
CATALOGUE_SCHEMA = pl.Schema(
    {"id": pl.String(), "product_name": pl.String(), "category": pl.String(), "category_path": pl.String(),
     "price": pl.Float64(), "photos": pl.List(pl.String())}
)
"""The search index's catalogue: these columns, in this order, none null (``photos``: the ids of the listing's
photos in the images table, in its order; empty when it has none)."""
_SEPARATOR = "\x1f"
CLEANED = "cleaned"
REJECTED = "rejected"
IMAGE_CLEANING_FILES_SCHEMA = pl.Schema({"file": pl.String, "status": pl.String, "reason": pl.String, "output": pl.String})
NULLABLE_IMAGE_CLEANING_COLUMNS = ("reason", "output")


@attrs.frozen
class RowRule:
    """One per-row check of a contract: the column it is reported on, its name, and where it holds."""

    column: str
    check: str
    holds: pl.Expr


def is_ascii(text: pl.Expr) -> pl.Expr:
    """True where the text is ASCII: one byte per character."""
    return text.str.len_bytes() == text.str.len_chars()


def is_non_blank(text: pl.Expr) -> pl.Expr:
    """True where the text has a character that is not whitespace."""
    return text.str.contains(r"\S")


def is_printable(text: pl.Expr) -> pl.Expr:
    """True where the text has no control character (NUL, line breaks, tabs, DEL, C1)."""
    return ~text.str.contains(CONTROL_CHARACTERS)


def is_finite_non_negative(number: pl.Expr) -> pl.Expr:
    """True where the number is finite and at least 0 (NaN and infinities are not)."""
    return number.is_finite() & (number >= 0)


def path_starts_with_category(path: pl.Expr, category: pl.Expr, subcategory: pl.Expr) -> pl.Expr:
    """True where ``path`` starts with ``category``, and is ``category`` alone exactly when there is no ``subcategory``."""
    return path.str.starts_with(category) & ((path == category) == subcategory.is_null())


def has_only(items: pl.Expr, rule: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
    """True where ``rule`` holds for every item of the list (an empty list included)."""
    return items.list.eval(rule(pl.element())).list.all()


def is_distinct(value: pl.Expr) -> pl.Expr:
    """True where no other row has the same value."""
    return ~value.is_duplicated()


def is_json_object(raw: pl.Expr) -> pl.Expr:
    """True where the text looks like a JSON object (braces at both ends)."""
    return raw.str.starts_with("{") & raw.str.ends_with("}")


def has_reason_or_output(status: pl.Expr, reason: pl.Expr, output: pl.Expr) -> pl.Expr:
    """True where a ``rejected`` file has a reason and no output, and any other file an output and no reason."""
    rejected = status == REJECTED
    return (rejected == reason.is_not_null()) & (rejected == output.is_null())


def clean_product_rules() -> tuple[RowRule, ...]:
    """``CleanProducts``' per-row checks (its one whole-table check, unique ids, is the caller's)."""
    column = pl.col
    not_null = [RowRule(name, "not_null", column(name).is_not_null())
                for name in CLEAN_PRODUCT_SCHEMA if name not in NULLABLE_CLEAN_COLUMNS]
    return (
        *not_null,
        *(RowRule(name, "non_blank", is_non_blank(column(name))) for name in ("id", "product_name", *REPEATED_COLUMNS)),
        RowRule("id", "printable", is_printable(column("id"))),
        *(RowRule(name, "ascii", is_ascii(column(name))) for name in TEXT_COLUMNS),
        RowRule("price", "finite_non_negative", is_finite_non_negative(column("price"))),
        RowRule("category_path", "starts_with_category",
                path_starts_with_category(column("category_path"), column("category"), column("subcategory"))),
    )


def image_manifest_rules() -> tuple[RowRule, ...]:
    """``ImageManifest``'s per-row checks: its product's, and a printable ``image_id`` (unique: the caller's)."""
    image_id = pl.col("image_id")
    return (
        *clean_product_rules(),
        RowRule("image_id", "not_null", image_id.is_not_null()),
        RowRule("image_id", "non_blank", is_non_blank(image_id)),
        RowRule("image_id", "printable", is_printable(image_id)),
    )


def catalogue_rules() -> tuple[RowRule, ...]:
    """``Catalogue``'s data checks, column by column in the order its pandera model runs them; its nulls and
    dtypes are ``CATALOGUE_SCHEMA``'s. Unique ids included: a catalogue is checked whole, in memory."""
    identifier = pl.col("id")
    return (
        RowRule("id", "non_blank", is_non_blank(identifier)),
        RowRule("id", "printable", is_printable(identifier)),
        RowRule("id", "unique", is_distinct(identifier)),
        RowRule("category", "non_blank", is_non_blank(pl.col("category"))),
        RowRule("category_path", "non_blank", is_non_blank(pl.col("category_path"))),
        RowRule("category_path", "starts_with_category", pl.col("category_path").str.starts_with(pl.col("category"))),
        RowRule("price", "finite_non_negative", is_finite_non_negative(pl.col("price"))),
        RowRule("photos", "non_blank", has_only(pl.col("photos"), is_non_blank)),
        RowRule("photos", "printable", has_only(pl.col("photos"), is_printable)),
    )


def rejected_rules() -> tuple[RowRule, ...]:
    """``Rejected``'s per-row checks (its one whole-table check, rows rejected once, is the caller's)."""
    not_null = [RowRule(name, "not_null", pl.col(name).is_not_null()) for name in REJECTED_SCHEMA]
    return (
        *not_null,
        RowRule("source_row", "positive", pl.col("source_row") >= 1),
        RowRule("stage", "isin", pl.col("stage").is_in(REJECTED_STAGES)),
        RowRule("reason", "non_blank", is_non_blank(pl.col("reason"))),
        RowRule("raw", "json_object", is_json_object(pl.col("raw"))),
    )


def image_cleaning_file_rules() -> tuple[RowRule, ...]:
    """``ImageCleaningFiles``' per-row checks (its one whole-table check, unique file names, is the caller's)."""
    column = pl.col
    not_null = [RowRule(name, "not_null", column(name).is_not_null())
                for name in IMAGE_CLEANING_FILES_SCHEMA if name not in NULLABLE_IMAGE_CLEANING_COLUMNS]
    return (
        *not_null,
        RowRule("status", "isin", column("status").is_in((CLEANED, REJECTED))),
        *(RowRule(name, "non_blank", is_non_blank(column(name))) for name in ("file", "reason", "output")),
        RowRule("status", "reason_or_output", has_reason_or_output(column("status"), column("reason"), column("output"))),
    )


def row_failures(rules: tuple[RowRule, ...]) -> list[pl.Expr]:
    """Per rule, how many rows fail it (a null counts as passing: nullability is its own rule), named
    for ``failed_rule``."""
    return [(~rule.holds.fill_null(True)).sum().alias(f"{rule.column}{_SEPARATOR}{rule.check}") for rule in rules]


def failed_rule(name: str) -> tuple[str, str]:
    """The column and check of a ``row_failures`` figure's name."""
    column, check = name.split(_SEPARATOR)
    return column, check
