"""Tokens, the model's text, and the vocabulary: properties, round trips, corrupt files, the real data."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fbml.errors import FbmlError
from fbml.text.vocabulary import PAD_ID, UNK_ID, Vocabulary, build_vocabulary, product_text, tokenize, tokens
from hypothesis import given, settings
from hypothesis import strategies as st

word = st.text(alphabet="abcdefghij0123", min_size=1, max_size=4)
token_lists = st.lists(st.lists(word, max_size=8), max_size=12)
texts = st.lists(st.text(max_size=60) | st.lists(word, max_size=12).map(" ".join), max_size=12)


def expression_tokens(values: list[str]) -> list[list[str]]:
    return pl.DataFrame({"t": values}, schema={"t": pl.String}).select(tokens(pl.col("t"))).to_series().to_list()


def test_tokenize_examples() -> None:
    expected = ["iphone11", "4k", "x2", "caf", "bar", "1", "200", "50"]
    assert tokenize("iPhone11 4K, x2! Café-bar  £1,200.50") == expected
    assert tokenize("") == tokenize("  !? ") == []


@given(text=st.text())
def test_tokens_are_lowercase_ascii_alnum_runs_of_the_text(text: str) -> None:
    result = tokenize(text)
    assert all(re.fullmatch(r"[a-z0-9]+", token) for token in result)
    assert "".join(result) in re.sub(r"[^a-z0-9]", "", text.lower())
    assert tokenize(text) == result


@settings(max_examples=200)
@given(values=st.lists(st.text(), max_size=10))
def test_expression_agrees_with_tokenize(values: list[str]) -> None:
    assert expression_tokens(values) == [tokenize(value) for value in values]


def test_product_text_is_name_then_description() -> None:
    frame = pl.DataFrame({"name": ["Oak table", "Bike", "Lamp"], "description": ["Solid oak.", "", None]})
    text = frame.select(product_text(pl.col("name"), pl.col("description"))).to_series().to_list()
    assert text == ["Oak table Solid oak.", "Bike", "Lamp"]


def vocabulary_of(lists: list[list[str]]) -> Vocabulary:
    return build_vocabulary(lists, min_count=1)


@given(lists=token_lists, text=st.lists(word, max_size=20), length=st.integers(1, 16))
def test_encode_has_the_fixed_length_and_valid_ids(lists: list[list[str]], text: list[str], length: int) -> None:
    vocabulary = vocabulary_of(lists)
    ids = vocabulary.encode(text, length)
    assert ids.dtype == np.int64 and ids.shape == (length,)
    assert ((ids >= 0) & (ids < len(vocabulary))).all()
    kept = text[:length]
    assert ids.tolist() == [vocabulary.index(token) for token in kept] + [PAD_ID] * (length - len(kept))
    assert all(ids[i] == UNK_ID for i, token in enumerate(kept) if token not in vocabulary.tokens)
    np.testing.assert_array_equal(vocabulary.encode(text, length), ids)


@given(lists=token_lists, values=texts, length=st.integers(1, 10))
def test_encode_texts_equals_encoding_each_row(lists: list[list[str]], values: list[str], length: int) -> None:
    vocabulary = vocabulary_of(lists)
    ids = vocabulary.encode_texts(values, length)
    assert ids.dtype == np.int64 and ids.shape == (len(values), length)
    expected = [vocabulary.encode(tokenize(value), length).tolist() for value in values]
    assert ids.tolist() == expected
    np.testing.assert_array_equal(vocabulary.encode_texts(pl.Series(values, dtype=pl.String), length), ids)


def test_encode_known_words_unknown_and_padding() -> None:
    vocabulary = Vocabulary(["<pad>", "<unk>", "oak", "table"])
    assert vocabulary.encode(["table", "chair", "oak"], 5).tolist() == [3, 1, 2, 0, 0]
    assert vocabulary.encode_texts(["Oak TABLE chair, oak table", ""], 3).tolist() == [[2, 3, 1], [0, 0, 0]]
    with pytest.raises(FbmlError, match="length"):
        vocabulary.encode_texts(["oak"], 0)


@given(lists=token_lists, seed=st.integers(0, 2**16), min_count=st.integers(1, 3))
def test_vocabulary_does_not_depend_on_input_order(lists: list[list[str]], seed: int, min_count: int) -> None:
    shuffled = [random.Random(seed).sample(tokens, len(tokens)) for tokens in lists]
    random.Random(seed).shuffle(shuffled)
    assert build_vocabulary(shuffled, min_count=min_count) == build_vocabulary(lists, min_count=min_count)


@given(lists=token_lists, min_count=st.integers(1, 4), max_size=st.none() | st.integers(2, 10))
def test_vocabulary_keeps_frequent_tokens_most_frequent_first(
    lists: list[list[str]], min_count: int, max_size: int | None
) -> None:
    vocabulary = build_vocabulary(lists, min_count=min_count, max_size=max_size)
    counts: dict[str, int] = {}
    for token in (token for listed in lists for token in listed):
        counts[token] = counts.get(token, 0) + 1
    expected = sorted((token for token, count in counts.items() if count >= min_count), key=lambda t: (-counts[t], t))
    words = list(vocabulary.tokens[2:])
    assert vocabulary.tokens[:2] == ("<pad>", "<unk>")
    assert words == expected[: None if max_size is None else max_size - 2]
    assert len(vocabulary) <= (max_size or len(vocabulary))


def test_vocabulary_from_a_series_and_its_arguments() -> None:
    series = pl.Series([["b", "a"], ["a", "<unk>", "c"], [], None, ["b", "a"]])
    assert build_vocabulary(series).tokens == ("<pad>", "<unk>", "a", "b")
    assert build_vocabulary(series, min_count=1).tokens == ("<pad>", "<unk>", "a", "b", "c")
    with pytest.raises(FbmlError, match="min_count"):
        build_vocabulary(series, min_count=0)
    with pytest.raises(FbmlError, match="max_size"):
        build_vocabulary(series, max_size=1)


@given(lists=token_lists)
def test_json_round_trip(lists: list[list[str]]) -> None:
    vocabulary = vocabulary_of(lists)
    assert Vocabulary.from_json(json.loads(json.dumps(vocabulary.to_json()))) == vocabulary


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"tokens": ["<pad>", "<unk>", "a", "a"]}, "duplicate vocabulary token"),
        ({"tokens": ["<unk>", "<pad>", "a"]}, "must start with"),
        ({"tokens": ["a", "b"]}, "must start with"),
        ({"tokens": []}, "must start with"),
        ({"tokens": ["<pad>", "<unk>", 3]}, "non-empty string"),
        ({"tokens": ["<pad>", "<unk>", ""]}, "non-empty string"),
        ({"words": ["<pad>", "<unk>"]}, "JSON object"),
        (["<pad>", "<unk>"], "JSON object"),
    ],
)
def test_corrupt_vocabulary_is_a_clear_error(data: object, problem: str) -> None:
    with pytest.raises(FbmlError, match=problem):
        Vocabulary.from_json(data)


def test_importing_text_loads_neither_torch_nor_gensim() -> None:
    code = "import sys, fbml.text.vocabulary; print(sorted({'torch', 'gensim'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_real_products_vocabulary(real_data: Path) -> None:
    from fbml.tables.clean import clean_tables

    products = clean_tables(real_data / "Products.csv").cleaned.products
    text = products.select(product_text(pl.col("product_name"), pl.col("product_description"))).to_series()
    token_lists = text.to_frame().select(tokens(pl.col(text.name))).to_series()
    vocabulary = build_vocabulary(token_lists, min_count=2)
    print(f"real vocabulary (min_count 2): {len(vocabulary)} tokens")
    assert 5_000 < len(vocabulary) < 50_000
    assert {"sofa", "bike", "iphone", "table"} <= set(vocabulary.tokens)
    ids = vocabulary.encode_texts(text, 64)
    assert ids.shape == (products.height, 64) and (ids[:, 0] > UNK_ID).mean() > 0.95
