"""How a bundle's networks read their inputs: the text CNN's vocabulary and length, the image branch's
backbone and photo preparation. Saved in the bundle beside the weights (``fbml.bundle.store``)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

from fbml.text.vocabulary import Vocabulary
from fbml.text.word2vec import WordVectors
from fbml.vision.photos import Preparation


@attrs.frozen
class ImageSettings:
    """How photos are prepared for the image branches: the backbone, the side, its normalisation."""

    backbone: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def preparation(self) -> Preparation:
        """The photo preparation these settings describe (letterbox to ``size``, the backbone's mean and std)."""
        return Preparation(self.size, self.mean, self.std)


@attrs.frozen
class TextSettings:
    """How text is prepared for the text CNN: the vocabulary, its word vectors, the length."""

    vocabulary: Vocabulary
    word_vectors: WordVectors
    length: int

    def token_ids(self, normalised_texts: Sequence[str]) -> np.ndarray:
        """int64 (n, length) token ids of texts already normalised (``fbml.text.listings.normalised_texts``)."""
        return self.vocabulary.encode_texts(normalised_texts, self.length)
