"""Word vectors: reproducible training, topic structure, storage without pickle, the embedding matrix."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fbml.errors import FbmlError
from fbml.text.vocabulary import PAD_ID, UNK_ID, Vocabulary, build_vocabulary, product_text, tokens
from fbml.text.word2vec import WordVectors, coverage, embedding_matrix, train_word2vec
from hypothesis import given, settings
from hypothesis import strategies as st

TOPICS = {name: [f"{name}{index}" for index in range(12)] for name in ("pet", "car", "food")}


def topic_corpus(seed: int = 0) -> list[list[str]]:
    """600 sentences, each of 8 words drawn from one topic: words co-occur only within their topic."""
    rng = random.Random(seed)
    return [rng.choices(TOPICS[rng.choice(sorted(TOPICS))], k=8) for _ in range(600)]


@pytest.fixture(scope="module")
def corpus() -> list[list[str]]:
    return topic_corpus()


@pytest.fixture(scope="module")
def trained(corpus: list[list[str]]) -> WordVectors:
    return train_word2vec(corpus, dim=16, window=4, epochs=20)


def cosines(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit @ unit.T


def test_same_seed_same_vectors_other_seed_other_vectors(corpus: list[list[str]], trained: WordVectors) -> None:
    assert train_word2vec(corpus, dim=16, window=4, epochs=20) == trained
    other = train_word2vec(corpus, dim=16, window=4, epochs=20, seed=1)
    assert other.words == trained.words and not np.array_equal(other.vectors, trained.vectors)


def test_training_does_not_depend_on_the_python_hash_seed(corpus: list[list[str]], trained: WordVectors) -> None:
    code = (
        "import json, sys; from fbml.text.word2vec import train_word2vec; "
        "vectors = train_word2vec(json.load(sys.stdin), dim=16, window=4, epochs=20); "
        "sys.stdout.write(vectors.vectors.tobytes().hex())"
    )
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    command = [sys.executable, "-c", code]
    run = subprocess.run(command, input=json.dumps(corpus), capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert bytes.fromhex(run.stdout) == trained.vectors.tobytes()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_words_of_one_topic_are_closer_than_words_of_two(corpus: list[list[str]], seed: int) -> None:
    vectors = train_word2vec(corpus, dim=16, window=4, epochs=20, seed=seed)
    similarity = cosines(vectors.vectors)
    topic = np.array([word.rstrip("0123456789") for word in vectors.words])
    same = topic[:, None] == topic[None, :]
    other_words = ~np.eye(len(vectors), dtype=bool)
    assert sorted(vectors.words) == sorted(word for words in TOPICS.values() for word in words)
    assert similarity[same & other_words].min() > similarity[~same].max()
    assert similarity[same & other_words].mean() - similarity[~same].mean() > 0.3


def test_training_shape_and_arguments(trained: WordVectors) -> None:
    assert trained.vectors.shape == (36, 16) and trained.vectors.dtype == np.float32 and trained.dim == 16
    assert not trained.vectors.flags.writeable
    assert len(train_word2vec([["a", "b", "a"], ["c"]], dim=4, min_count=2, epochs=1)) == 1
    with pytest.raises(FbmlError, match="no word appears at least 3"):
        train_word2vec([["a", "b", "a"]], dim=4, min_count=3)


@pytest.mark.parametrize(
    ("words", "vectors", "problem"),
    [
        (["a", "b", "c"], np.zeros((2, 4), np.float32), r"3 words need a \(3, dim\) array, got shape \(2, 4\)"),
        (["a", "b"], np.zeros(2, np.float32), r"got shape \(2,\)"),
        (["a", "a"], np.zeros((2, 4), np.float32), "duplicate words"),
    ],
)
def test_vectors_that_do_not_fit_their_words_are_a_clear_error(words: list[str], vectors: np.ndarray, problem: str) -> None:
    with pytest.raises(FbmlError, match=problem):
        WordVectors(words, vectors)


@settings(max_examples=50)
@given(
    known=st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=8),
    wanted=st.lists(st.sampled_from("abcdefghxyz"), unique=True, max_size=11),
    dim=st.integers(1, 6),
)
def test_embedding_matrix_rows(known: list[str], wanted: list[str], dim: int) -> None:
    vectors = WordVectors(known, np.random.default_rng(0).normal(size=(len(known), dim)))
    vocabulary = Vocabulary(["<pad>", "<unk>", *wanted])
    matrix = embedding_matrix(vectors, vocabulary)
    assert matrix.shape == (len(vocabulary), dim) and matrix.dtype == np.float32
    assert not matrix[PAD_ID].any() and matrix[UNK_ID].any()
    for word in wanted:
        row = matrix[vocabulary.index(word)]
        if word in known:
            np.testing.assert_array_equal(row, vectors.vectors[known.index(word)])
        else:
            assert row.any() and not any(np.array_equal(row, vector) for vector in vectors.vectors)
    np.testing.assert_array_equal(embedding_matrix(vectors, vocabulary), matrix)
    assert coverage(vectors, vocabulary) == (sum(word in known for word in wanted) / len(wanted) if wanted else 0.0)


def test_unknown_rows_are_seeded_and_scaled_like_the_vectors(trained: WordVectors) -> None:
    vocabulary = Vocabulary(["<pad>", "<unk>", *(f"new{index}" for index in range(200)), *trained.words[:5]])
    matrix = embedding_matrix(trained, vocabulary, seed=3)
    np.testing.assert_array_equal(embedding_matrix(trained, vocabulary, seed=3), matrix)
    assert not np.array_equal(embedding_matrix(trained, vocabulary, seed=4)[1:202], matrix[1:202])
    assert matrix[1:202].std() == pytest.approx(trained.vectors.std(), rel=0.1)
    assert coverage(trained, vocabulary) == pytest.approx(5 / 205)


def test_real_products_word_vectors(real_data: Path) -> None:
    from fbml.tables.clean import clean_tables

    products = clean_tables(real_data / "Products.csv").cleaned.products
    token_lists = products.select(tokens(product_text(pl.col("product_name"), pl.col("product_description"))))
    token_lists = token_lists.to_series()
    started = time.perf_counter()
    vectors = train_word2vec(token_lists.to_list(), dim=100, epochs=10)
    seconds = time.perf_counter() - started
    vocabulary = build_vocabulary(token_lists, min_count=2)
    print(f"word2vec on {token_lists.list.len().sum()} tokens: {len(vectors)} words, {seconds:.1f} s")
    assert seconds < 60
    assert coverage(vectors, vocabulary) == 1.0
    assert embedding_matrix(vectors, vocabulary).shape == (len(vocabulary), 100)
