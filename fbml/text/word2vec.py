"""Word vectors for the text classifier: train word2vec (gensim) and turn them into the initial weights of an
embedding layer over a ``Vocabulary`` (a bundle stores them as ``.npy`` and JSON, without pickle)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from fbml.errors import FbmlError
from fbml.text.vocabulary import PAD_ID, RESERVED, Vocabulary


def _read_only_float32(value: object) -> np.ndarray:
    array = np.array(value, dtype=np.float32)
    array.flags.writeable = False
    return array


def _check_vectors(instance: WordVectors, attribute: attrs.Attribute[Any], value: np.ndarray) -> None:
    count = len(instance.words)
    if value.ndim != 2 or value.shape[0] != count:
        raise FbmlError(f"{count} words need a ({count}, dim) array, got shape {value.shape}")
    if len(set(instance.words)) != len(instance.words):
        raise FbmlError("duplicate words")


@attrs.frozen
class WordVectors:
    """One float32 vector per word: ``vectors[i]`` belongs to ``words[i]`` (read-only)."""

    words: tuple[str, ...] = attrs.field(converter=tuple)
    vectors: np.ndarray = attrs.field(
        converter=_read_only_float32, validator=_check_vectors, eq=attrs.cmp_using(eq=np.array_equal)
    )

    def __len__(self) -> int:
        return len(self.words)

    @property
    def dim(self) -> int:
        """The length of each vector."""
        return int(self.vectors.shape[1])


def train_word2vec(
    token_lists: Sequence[Sequence[str]],
    *,
    dim: int = 100,
    window: int = 5,
    min_count: int = 1,
    epochs: int = 10,
    seed: int = 0,
    workers: int = 1,
) -> WordVectors:
    """Word vectors (CBOW, negative sampling) for the words seen at least ``min_count`` times.

    With ``workers=1`` (the default) the same tokens and seed give the same vectors, bit for bit,
    whatever ``PYTHONHASHSEED`` is: gensim seeds its generators from ``seed`` and hashes with
    ``stable_hash``. More workers train faster but the thread scheduling changes the result.
    gensim logs each epoch (``logging``, INFO, ``gensim.models.word2vec``).
    """
    sentences = [list(tokens) for tokens in token_lists]
    from gensim.models import Word2Vec

    model = Word2Vec(
        vector_size=dim, window=window, min_count=min_count, seed=seed, workers=workers, hashfxn=stable_hash
    )
    model.build_vocab(sentences)
    if not model.wv.index_to_key:
        raise FbmlError(f"no word appears at least {min_count} time(s): nothing to train word vectors on")
    model.train(sentences, total_examples=model.corpus_count, epochs=epochs)
    return WordVectors(model.wv.index_to_key, model.wv.vectors)


def stable_hash(text: str) -> int:
    """CRC-32 of the UTF-8 text: unlike ``hash``, the same in every process."""
    return zlib.crc32(text.encode("utf-8"))


def embedding_matrix(vectors: WordVectors, vocabulary: Vocabulary, *, seed: int = 0) -> np.ndarray:
    """Initial embedding weights, float32 (len(vocabulary), dim), one row per vocabulary id.

    ``<pad>`` is zeros; a word with a vector copies it; ``<unk>`` and words without one get a
    seeded normal vector with the vectors' standard deviation. ``coverage`` tells how many had one.
    """
    rows = {word: row for row, word in enumerate(vectors.words)}
    found = [(index, rows[token]) for index, token in enumerate(vocabulary.tokens) if token in rows]
    pairs = np.array(found, dtype=np.int64).reshape(-1, 2)
    scale = _random_scale(vectors)
    matrix = np.random.default_rng(seed).normal(0.0, scale, (len(vocabulary), vectors.dim)).astype(np.float32)
    matrix[pairs[:, 0]] = vectors.vectors[pairs[:, 1]]
    matrix[PAD_ID] = 0.0
    return matrix


def coverage(vectors: WordVectors, vocabulary: Vocabulary) -> float:
    """The fraction of the vocabulary's words (``<pad>``, ``<unk>`` aside) that have a vector."""
    words = vocabulary.tokens[len(RESERVED) :]
    known = set(vectors.words)
    return sum(word in known for word in words) / len(words) if words else 0.0


def _random_scale(vectors: WordVectors) -> float:
    """The vectors' standard deviation, or word2vec's initial scale where they do not vary."""
    spread = float(vectors.vectors.std()) if vectors.vectors.size else 0.0
    return spread or 1.0 / vectors.dim
