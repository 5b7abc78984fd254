"""Text for the classifier: tokens, the text a model reads, and a vocabulary that encodes it to ids.

Tokens are the runs of ASCII letters and digits of the lowercased text (``"iPhone11 4K, x2!"`` ->
``["iphone11", "4k", "x2"]``); ``tokenize`` (one string) and ``tokens`` (a polars column) agree.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import numpy as np
import polars as pl

from fbml.errors import FbmlError

TOKEN_PATTERN = r"[a-z0-9]+"
PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1
RESERVED = (PAD, UNK)
SMALL_BATCH = 64
"""Texts up to which a batch is prepared in Python, one text at a time, rather than by one polars query (whose
fixed cost, a millisecond or more a query, is most of a small batch's)."""


def tokenize(text: str) -> list[str]:
    """The runs of ASCII letters and digits of the lowercased text."""
    return re.findall(TOKEN_PATTERN, text.lower())


def tokens(text: pl.Expr) -> pl.Expr:
    """``tokenize`` as a polars expression (list[str]; null where the text is null)."""
    return text.str.to_lowercase().str.extract_all(TOKEN_PATTERN)


def product_text(name: pl.Expr, description: pl.Expr) -> pl.Expr:
    """The text a model reads: the name (the strongest signal), then the description."""
    return pl.concat_str(name, description, separator=" ", ignore_nulls=True).str.strip_chars()


def _token_tuple(value: Iterable[str]) -> tuple[str, ...]:
    tokens = tuple(value)
    if not all(isinstance(token, str) and token for token in tokens):
        raise FbmlError("every vocabulary token must be a non-empty string")
    return tokens


def _check_tokens(instance: Vocabulary, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if value[: len(RESERVED)] != RESERVED:
        raise FbmlError(f"a vocabulary must start with {PAD!r}, {UNK!r}; got {list(value[:2])}")
    if len(instance._ids) != len(value):
        duplicates = sorted(token for token, count in Counter(value).items() if count > 1)
        raise FbmlError(f"duplicate vocabulary token(s): {', '.join(duplicates[:5])}")


@attrs.frozen
class Vocabulary:
    """Tokens and their ids: ``<pad>`` is 0, ``<unk>`` (any token not in it) is 1, then the words."""

    tokens: tuple[str, ...] = attrs.field(converter=_token_tuple, validator=_check_tokens)
    _ids: dict[str, int] = attrs.field(init=False, eq=False, repr=False)

    @_ids.default
    def _token_ids(self) -> dict[str, int]:
        return {token: index for index, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def index(self, token: str) -> int:
        """The token's id; ``UNK_ID`` when it is not in the vocabulary."""
        return self._ids.get(token, UNK_ID)

    def encode(self, tokens: Sequence[str], length: int) -> np.ndarray:
        """Exactly ``length`` int64 ids: the first ``length`` tokens, right-padded with ``PAD_ID``."""
        _check_length(length)
        ids = np.full(length, PAD_ID, dtype=np.int64)
        kept = [self.index(token) for token in tokens[:length]]
        ids[: len(kept)] = kept
        return ids

    def encode_texts(self, texts: Sequence[str] | pl.Series, length: int) -> np.ndarray:
        """``encode(tokenize(text), length)`` for every text, as one (n, length) int64 array (at most ``SMALL_BATCH``
        texts: by those two, one text at a time; more: by one query)."""
        _check_length(length)
        if not isinstance(texts, pl.Series) and len(texts) <= SMALL_BATCH:
            return np.array([self.encode(tokenize(text), length) for text in texts], dtype=np.int64).reshape(len(texts), length)
        placed = (
            pl.DataFrame({"text": texts}, schema={"text": pl.String})
            .select(tokens(pl.col("text")).list.head(length).alias("token"))
            .with_row_index("row")
            .explode("token")
            .drop_nulls("token")
            .with_columns(pl.int_range(pl.len()).over("row").alias("position"))
            .join(self._id_frame(), on="token", how="left")
            .with_columns(pl.col("id").fill_null(UNK_ID))
        )
        ids = np.full((len(texts), length), PAD_ID, dtype=np.int64)
        ids[placed["row"].to_numpy(), placed["position"].to_numpy()] = placed["id"].to_numpy()
        return ids

    def to_json(self) -> dict[str, list[str]]:
        """``{"tokens": [...]}``, ids in order."""
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_json(cls, data: object) -> Vocabulary:
        """The vocabulary ``to_json`` wrote; ``FbmlError`` when ``data`` is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise FbmlError('a vocabulary must be a JSON object {"tokens": [...]}')
        return cls(data["tokens"])

    def _id_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {"token": self.tokens, "id": np.arange(len(self.tokens), dtype=np.int64)},
            schema={"token": pl.String, "id": pl.Int64},
        )


def build_vocabulary(
    token_lists: Iterable[Sequence[str]] | pl.Series, *, min_count: int = 2, max_size: int | None = None
) -> Vocabulary:
    """The tokens seen at least ``min_count`` times, most frequent first, ties alphabetical.

    Build it from the training split only, so validation and test words stay unknown as they
    would be in use. ``max_size`` bounds ``len(vocabulary)``, ``<pad>`` and ``<unk>`` included.
    The order does not depend on the order of ``token_lists``.
    """
    if min_count < 1:
        raise FbmlError(f"min_count must be at least 1, got {min_count}")
    if max_size is not None and max_size < len(RESERVED):
        raise FbmlError(f"max_size must be at least {len(RESERVED)} (room for {PAD} and {UNK}), got {max_size}")
    lists = token_lists if isinstance(token_lists, pl.Series) else list(token_lists)
    counts = (
        pl.Series("token", lists, dtype=pl.List(pl.String))
        .explode()
        .drop_nulls()
        .value_counts(name="count")
        .filter((pl.col("count") >= min_count) & ~pl.col("token").is_in(RESERVED))
        .sort(["count", "token"], descending=[True, False])
    )
    words = counts["token"] if max_size is None else counts["token"].head(max_size - len(RESERVED))
    return Vocabulary((*RESERVED, *words))


def _check_length(length: int) -> None:
    if length < 1:
        raise FbmlError(f"sequence length must be at least 1, got {length}")
