"""fbml's n-gram counting is scikit-learn's ``CountVectorizer``: the same n-grams, the same vocabulary once
fitted, the same counts over a fixed vocabulary, for every analyzer and n-gram range, on texts with
accents, punctuation, digits, runs of whitespace and empty strings."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from fbml.text.ngrams import ANALYZERS, NgramCounter, Rows, fitted_counts, ngrams
from fbml.text.vocabulary import TOKEN_PATTERN
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import CountVectorizer

SPECIAL = list("aAbBzZ09 .,;!?'-/\\|()\t\n\r\x0b\x0c\u00a0\u2028\u3000éÉàÀßİıŉǅΣς€£½\u0301\ufb01\x00\x85")
TEXTS = st.text(alphabet=st.sampled_from(SPECIAL) | st.characters(codec="utf-8"), max_size=40)
RANGES = st.integers(1, 4).flatmap(lambda low: st.tuples(st.just(low), st.integers(low, 5)))


def vectorizer(analyzer: str, ngram_range: tuple[int, int], **options: Any) -> CountVectorizer:
    """The ``CountVectorizer`` ``fbml.modeling.linear_text`` used before it counted n-grams itself."""
    pattern = {"token_pattern": TOKEN_PATTERN} if analyzer == "word" else {}
    return CountVectorizer(analyzer=analyzer, ngram_range=ngram_range, lowercase=True, dtype=np.float64, **pattern, **options)


def assert_same_rows(rows: Rows, expected: sp.spmatrix) -> None:
    """The same CSR arrays: row starts, columns (ascending) and counts."""
    expected = sp.csr_matrix(expected)
    assert (len(rows), rows.width) == expected.shape
    np.testing.assert_array_equal(rows.indptr, expected.indptr)
    np.testing.assert_array_equal(rows.indices, expected.indices)
    np.testing.assert_array_equal(rows.values, expected.data)


@settings(max_examples=300, deadline=None)
@given(TEXTS, st.sampled_from(ANALYZERS), RANGES)
def test_the_ngrams_of_a_text_are_scikit_learns(text: str, analyzer: str, ngram_range: tuple[int, int]) -> None:
    assert Counter(ngrams(text, analyzer, ngram_range)) == Counter(vectorizer(analyzer, ngram_range).build_analyzer()(text))


@settings(max_examples=300, deadline=None)
@given(st.lists(TEXTS, max_size=8), st.lists(TEXTS, max_size=4), st.sampled_from(ANALYZERS), RANGES, st.integers(1, 3))
def test_fitted_vocabulary_and_counts_are_scikit_learns(
    texts: list[str], others: list[str], analyzer: str, ngram_range: tuple[int, int], min_df: int
) -> None:
    vocabulary, rows = fitted_counts(texts, analyzer, ngram_range, min_df)
    try:
        fitted = vectorizer(analyzer, ngram_range, min_df=min_df).fit(texts)
    except ValueError:  # scikit-learn refuses an empty vocabulary
        assert vocabulary == ()
        return
    assert vocabulary == tuple(sorted(fitted.vocabulary_))
    assert_same_rows(rows, fitted.transform(texts))
    counter = NgramCounter(analyzer, ngram_range, vocabulary)
    assert_same_rows(counter.counts(texts), fitted.transform(texts))
    assert_same_rows(counter.counts(others), fitted.transform(others))


@settings(max_examples=200, deadline=None)
@given(st.lists(TEXTS, max_size=6), st.sampled_from(ANALYZERS), RANGES, st.data())
def test_counts_over_any_fixed_vocabulary_are_scikit_learns(
    texts: list[str], analyzer: str, ngram_range: tuple[int, int], data: st.DataObject
) -> None:
    """A vocabulary in any order, of n-grams the texts have and others they do not."""
    found = sorted({gram for text in texts for gram in ngrams(text, analyzer, ngram_range)})
    chosen = data.draw(st.lists(st.sampled_from(found), unique=True)) if found else []
    vocabulary = tuple(dict.fromkeys([*chosen, *data.draw(st.lists(TEXTS.filter(bool), min_size=1, max_size=5))]))
    expected = vectorizer(analyzer, ngram_range, vocabulary=vocabulary).transform(texts)
    assert_same_rows(NgramCounter(analyzer, ngram_range, vocabulary).counts(texts), expected)


def test_a_repeated_ngram_has_one_column_its_last() -> None:
    """``columns`` holds each n-gram once: fewer entries than the vocabulary tell a repeat (what the linear model's
    check of its vocabularies reads)."""
    counter = NgramCounter("word", (1, 1), ("a", "b", "a"))
    assert counter.columns == {"a": 2, "b": 1} and len(counter.columns) < len(counter.vocabulary)
    assert counter.counts(["a b a"]).indices.tolist() == [1, 2]


def test_a_hand_example() -> None:
    counter = NgramCounter("char_wb", (2, 3), (" a", "a ", " a ", "ab", "xyz"))
    rows = counter.counts(["A  b", "", "a\ta a"])
    assert rows.indptr.tolist() == [0, 3, 3, 6]
    assert rows.indices.tolist() == [0, 1, 2, 0, 1, 2]
    assert rows.values.tolist() == [1.0, 1.0, 1.0, 3.0, 3.0, 3.0]
    assert ngrams("Red  BIKE, 2 wheels", "word", (1, 2)) == ["red", "bike", "2", "wheels", "red bike", "bike 2", "2 wheels"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 6), st.floats(-3, 3, width=32)), max_size=5), max_size=5), st.data())
def test_rows_beside_and_dot_are_scipys(entries: list[list[tuple[int, float]]], data: st.DataObject) -> None:
    """Side by side as ``scipy.sparse.hstack``; the product with a float32 matrix bit for bit as scipy's."""

    def rows_of(entries: list[list[tuple[int, float]]], width: int) -> Rows:
        rows = [dict(row) for row in entries]
        indptr = np.cumsum([0, *map(len, rows)])
        indices = np.array([column for row in rows for column in sorted(row)], dtype=np.int64)
        values = np.array([row[column] for row in rows for column in sorted(row)], dtype=np.float64)
        return Rows(indptr.astype(np.int64), indices, values, width)

    left = rows_of(entries, 7)
    right = rows_of(data.draw(st.lists(st.lists(st.tuples(st.integers(0, 3), st.floats(-3, 3, width=32)), max_size=4),
                                       min_size=len(entries), max_size=len(entries))), 4)
    both = left.beside(right)
    expected = sp.hstack([left.csr(), right.csr()], format="csr")
    np.testing.assert_array_equal(both.csr().toarray(), expected.toarray())
    assert all(np.all(np.diff(both.indices[start:end]) > 0) for start, end in zip(both.indptr[:-1], both.indptr[1:], strict=True))
    matrix = np.random.default_rng(len(entries)).normal(size=(11, 3)).astype(np.float32)
    np.testing.assert_array_equal(both.dot(matrix), expected.astype(np.float32) @ matrix)


def test_an_unknown_analyzer_is_refused() -> None:
    with pytest.raises(ValueError, match="analyzer"):
        NgramCounter("bytes", (1, 2), ("a",))
