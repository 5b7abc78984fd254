"""A listing's text as the text models read it: the name then the description, normalised as cleaning does.

``listing_text`` is the one place that makes a listing's text from its name and description (raw or
clean), ``listing_texts`` the same for a frame of clean products; ``normalised_texts`` is what every
text model applies to the texts it is given (ASCII, one space between words), so a caller's raw text,
accents, ligatures, curly quotes and non-breaking spaces included, is read as the training text was.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from fbml.tables.cleaning import ascii_string, ascii_text, product_name
from fbml.text.vocabulary import SMALL_BATCH, product_text


def listing_text(name: str, description: str | None = None) -> str:
    """The text a model reads for a listing: its name (cleaned as ``fbml clean-products`` cleans names:
    ASCII, the ``| in Town, County | Gumtree`` suffix cut), then its description (ASCII)."""
    frame = pl.DataFrame({"name": [name], "description": [description]}, schema={"name": pl.String, "description": pl.String})
    text: str = frame.select(product_text(product_name(pl.col("name")), ascii_text(pl.col("description")))).item()
    return text


def listing_texts(products: pl.DataFrame) -> list[str]:
    """``listing_text`` of every clean product (its ``product_name`` and ``product_description`` are clean already)."""
    texts: list[str] = products.select(product_text(pl.col("product_name"), pl.col("product_description"))).to_series().to_list()
    return texts


def normalised_texts(texts: Sequence[str]) -> list[str]:
    """Texts as cleaning writes them (ASCII by NFKD, one space between words, stripped), by cleaning's own expression;
    a batch of at most ``SMALL_BATCH`` by its Python twin (``ascii_string``: no query, whose fixed cost is milliseconds)."""
    if len(texts) <= SMALL_BATCH:
        return [ascii_string(text) for text in texts]
    frame = pl.DataFrame({"text": list(texts)}, schema={"text": pl.String})
    normalised: list[str] = frame.select(ascii_text(pl.col("text"))).to_series().to_list()
    return normalised
