"""Word and character n-grams of texts, and their counts over a fixed vocabulary, as sparse rows.

What scikit-learn's ``CountVectorizer(lowercase=True)`` computes, without scikit-learn (tests compare the
two): the text is lowercased; ``word`` n-grams join runs of ``TOKEN_PATTERN`` tokens with a space;
``char`` n-grams are the text's substrings once each run of two or more whitespace characters is one
space; ``char_wb`` n-grams stay inside the whitespace-separated words, each padded with a space on both
sides (a padded word shorter than n counts once, whole). Plain Python and numpy, cheap to import.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs
import numpy as np
from numpy.typing import NDArray

from fbml.text.vocabulary import TOKEN_PATTERN

if TYPE_CHECKING:
    import scipy.sparse as sp

ANALYZERS = ("word", "char_wb", "char")
_TOKENS = re.compile(TOKEN_PATTERN)
_WHITESPACE_RUNS = re.compile(r"\s\s+")


def ngrams(text: str, analyzer: str, ngram_range: tuple[int, int]) -> list[str]:
    """Every n-gram of ``text`` (lowercased) with ``low <= n <= high``, each occurrence once."""
    low, high = ngram_range
    lowered = text.lower()
    if analyzer == "word":
        return _joined_ngrams(_TOKENS.findall(lowered), low, high)
    spaced = _WHITESPACE_RUNS.sub(" ", lowered)
    if analyzer == "char":
        return _substrings(spaced, low, high)
    if analyzer == "char_wb":
        return _padded_word_ngrams([f" {word} " for word in spaced.split()], low, high)
    raise ValueError(f"analyzer must be one of {ANALYZERS}, got {analyzer!r}")


def _joined_ngrams(tokens: list[str], low: int, high: int) -> list[str]:
    return [" ".join(tokens[start : start + n]) for n in range(low, min(high, len(tokens)) + 1)
            for start in range(len(tokens) - n + 1)]


def _substrings(text: str, low: int, high: int) -> list[str]:
    return [text[start : start + n] for n in range(low, min(high, len(text)) + 1) for start in range(len(text) - n + 1)]


def _padded_word_ngrams(words: list[str], low: int, high: int) -> list[str]:
    """The n-grams of padded words, each word on its own: its substrings shorter than itself, and the whole
    word, once, when an n covers it."""
    grams = [word[start : start + n] for word in words for n in range(low, min(high, len(word) - 1) + 1)
             for start in range(len(word) - n + 1)]
    return grams + [word for word in words if high >= len(word)]


@attrs.frozen(eq=False)
class Rows:
    """Sparse rows in CSR layout, as numpy arrays: row ``i`` holds ``values[indptr[i]:indptr[i + 1]]`` in the
    columns ``indices[indptr[i]:indptr[i + 1]]`` (ascending) of ``width``."""

    indptr: NDArray[np.int64]
    indices: NDArray[np.int64]
    values: NDArray[np.float64]
    width: int

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row_of_entries(self) -> NDArray[np.int64]:
        """The row of each stored entry."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.indptr))

    def with_values(self, values: NDArray[np.float64]) -> Rows:
        """The same sparsity, other values."""
        return attrs.evolve(self, values=values)

    def beside(self, other: Rows) -> Rows:
        """These rows with ``other``'s to their right (its columns after these ``width``)."""
        order = np.argsort(np.concatenate([self.row_of_entries(), other.row_of_entries()]), kind="stable")
        indices = np.concatenate([self.indices, other.indices + self.width])[order]
        return Rows(self.indptr + other.indptr, indices, np.concatenate([self.values, other.values])[order],
                    self.width + other.width)

    def dot(self, matrix: NDArray[np.float32]) -> NDArray[np.float32]:
        """The rows times a dense ``matrix`` (width x k) in its dtype, (rows, k): each row's products summed in
        order, as scipy's sparse product sums them; row by row, in bounded memory."""
        product = np.zeros((len(self), matrix.shape[1]), dtype=matrix.dtype)
        values = self.values.astype(matrix.dtype)
        for row, (start, end) in enumerate(zip(self.indptr[:-1].tolist(), self.indptr[1:].tolist(), strict=True)):
            if end > start:
                product[row] = (values[start:end, None] * matrix[self.indices[start:end]]).sum(axis=0)
        return product

    def csr(self) -> sp.csr_matrix:
        """The rows as a scipy sparse matrix (for fitting: scipy is imported here)."""
        import scipy.sparse as sp

        return sp.csr_matrix((self.values, self.indices, self.indptr), shape=(len(self), self.width))


@attrs.frozen
class NgramCounter:
    """Counts of a fixed vocabulary's n-grams: column ``i`` counts ``vocabulary[i]``; others are not counted.
    ``columns``: the column of each n-gram (of a repeated one, its last: fewer entries than the vocabulary)."""

    analyzer: str = attrs.field(validator=attrs.validators.in_(ANALYZERS))
    ngram_range: tuple[int, int]
    vocabulary: tuple[str, ...] = attrs.field(repr=False)
    columns: dict[str, int] = attrs.field(init=False, eq=False, repr=False)

    @columns.default
    def _column_of_ngram(self) -> dict[str, int]:
        return dict(zip(self.vocabulary, range(len(self.vocabulary)), strict=True))

    def counts(self, texts: Iterable[str]) -> Rows:
        """One row of counts per text (float64, columns ascending)."""
        column = self.columns.get
        indptr, indices, values = _column_counts(texts, self.analyzer, self.ngram_range,
                                                 lambda grams: list(map(column, grams, itertools.repeat(-1))))
        return Rows(indptr, indices, values, len(self.vocabulary))


def fitted_counts(texts: Iterable[str], analyzer: str, ngram_range: tuple[int, int], min_df: int) -> tuple[tuple[str, ...], Rows]:
    """The vocabulary of the n-grams found in at least ``min_df`` of ``texts``, sorted, and the texts' counts
    over it: ``CountVectorizer.fit_transform``, in one reading of the texts."""
    found = _Numbering()
    indptr, met, values = _column_counts(texts, analyzer, ngram_range, lambda grams: [found[gram] for gram in grams])
    kept = np.bincount(met, minlength=len(found)) >= min_df
    vocabulary = sorted(gram for gram, number in found.items() if kept[number])
    column = np.full(len(found), -1, dtype=np.int64)
    column[[found[gram] for gram in vocabulary]] = np.arange(len(vocabulary))
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    columns = column[met]
    rows, columns, values = rows[columns >= 0], columns[columns >= 0], values[columns >= 0]
    order = np.lexsort((columns, rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(indptr) - 1))]).astype(np.int64)
    return tuple(vocabulary), Rows(indptr, columns[order], values[order], len(vocabulary))


class _Numbering(dict[str, int]):
    """N-grams numbered in the order met: a new one gets the next number when first looked up."""

    def __missing__(self, gram: str) -> int:
        number = self[gram] = len(self)
        return number


def _column_counts(
    texts: Iterable[str], analyzer: str, ngram_range: tuple[int, int], columns_of: Callable[[list[str]], list[int]]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """CSR ``indptr``, ``indices`` and ``values``: per text, the columns ``columns_of`` gives its n-grams
    (ascending; a negative column is not counted) and how often each occurs."""
    indptr, indices, values = [0], [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.float64)]
    for text in texts:
        columns = np.array(columns_of(ngrams(text, analyzer, ngram_range)), dtype=np.int64)
        found, counts = np.unique(columns[columns >= 0], return_counts=True)
        indices.append(found)
        values.append(counts.astype(np.float64))
        indptr.append(indptr[-1] + len(found))
    return np.array(indptr, dtype=np.int64), np.concatenate(indices), np.concatenate(values)
