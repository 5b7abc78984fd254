"""Predictions for listings as a service receives them: prepared photos and raw texts, a batch at a time.

``predictor_probabilities`` is what an endpoint answers: its predictor's ensemble over the models'
probabilities; ``listing_queries`` embeds queries as ``fbml.workflows.index`` embeds the catalogue.
``class_probabilities`` and ``query_vectors`` run them on the requests a micro-batch holds
(``Example``s). Inputs and outputs are numpy, the same for both runtimes: a network is an ONNX
Runtime session (``OnnxModel``) or a torch module, run by ``fbml.serving.torch_runtime`` (imported
only for a torch network, so the ONNX runtime never imports torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import attrs
import numpy as np
import polars as pl

from fbml.bundle.listings import IMAGE_MODEL, TEXT_MODEL, ListingParts
from fbml.bundle.store import Bundle, TextSettings
from fbml.modeling.linear_text import LinearTextModel
from fbml.modeling.onnx_runtime import INPUTS, OnnxModel
from fbml.tables.cleaning import ascii_text

T = TypeVar("T")


@attrs.frozen(eq=False)
class Batch:
    """Prepared photos (float32 (B, 3, S, S)) and/or raw texts of the same listings."""

    images: np.ndarray | None = None
    texts: Sequence[str] | None = None

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.texts or ())


@attrs.frozen(eq=False)
class Example:
    """One request's input to a model: a prepared photo (float32 (3, S, S)) and/or raw text."""

    image: np.ndarray | None = None
    text: str | None = None


@attrs.frozen(eq=False)
class Outputs:
    """A model's class probabilities (float32 (B, C)) and its embeddings of the batch (None for a linear model)."""

    probabilities: np.ndarray
    embeddings: np.ndarray | None


def model_outputs(bundle: Bundle, kind: str, batch: Batch) -> Outputs:
    """The ``kind`` model's outputs for ``batch`` (which has what the model reads), from torch or ONNX Runtime."""
    model = bundle.model(kind)
    if isinstance(model, LinearTextModel):
        return Outputs(model.predict_proba(readable_texts(_needed(batch.texts, kind))), None)
    inputs: dict[str, np.ndarray] = {}
    if kind in ("image-cnn", "combined-nn"):
        inputs["images"] = _needed(batch.images, kind)
    if kind in ("text-cnn", "combined-nn"):
        assert bundle.text is not None
        inputs["tokens"] = token_ids(_needed(batch.texts, kind), bundle.text)
    if isinstance(model, OnnxModel):
        logits, embeddings = model.run(inputs)
    else:
        from fbml.serving.torch_runtime import network_outputs

        logits, embeddings = network_outputs(model, [inputs[name] for name in INPUTS[kind]])
    return Outputs(_softmax(logits), embeddings)


def predictor_probabilities(bundle: Bundle, role: str, batch: Batch) -> np.ndarray:
    """The probabilities the ``role`` predictor gives each listing of ``batch``."""
    ensemble = bundle.predictor(role).ensemble
    return ensemble.combine({kind: model_outputs(bundle, kind, batch).probabilities for kind in ensemble.names})


def listing_queries(bundle: Bundle, images: Sequence[np.ndarray | None], texts: Sequence[str | None]) -> np.ndarray:
    """Each query's listing vector (photo and/or text), as ``fbml.workflows.index`` makes the catalogue's."""
    count = len(images)
    text_dim = int(getattr(bundle.model(TEXT_MODEL), "embedding_dim"))  # noqa: B009 (a union: only the networks have it)
    image_dim = int(getattr(bundle.model(IMAGE_MODEL), "embedding_dim"))  # noqa: B009
    parts = ListingParts(np.zeros((count, text_dim), np.float32), np.zeros((count, image_dim), np.float32),
                         np.zeros((count, bundle.codec.num_classes), np.float32))
    for rows, role in _query_groups(images, texts):
        batch = Batch(_stacked([images[row] for row in rows]) if role != "text" else None,
                      [str(texts[row]) for row in rows] if role != "image" else None)
        if batch.texts is not None:
            parts.text[rows] = _embeddings(bundle, TEXT_MODEL, batch)
        if batch.images is not None:
            parts.image[rows] = _embeddings(bundle, IMAGE_MODEL, batch)
        parts.classes[rows] = predictor_probabilities(bundle, role, batch)
    return parts.vectors(bundle.listing_weights())


def class_probabilities(bundle: Bundle, role: str, examples: list[Example]) -> list[np.ndarray]:
    """Each example's class probabilities under the ``role`` predictor."""
    images = [example.image for example in examples if example.image is not None]
    texts = [example.text for example in examples if example.text is not None]
    batch = Batch(np.stack(images) if images else None, texts or None)
    return list(predictor_probabilities(bundle, role, batch))


def query_vectors(bundle: Bundle, examples: list[Example]) -> list[np.ndarray]:
    """Each example's listing vector (a photo and/or text)."""
    return list(listing_queries(bundle, [example.image for example in examples], [example.text for example in examples]))


def token_ids(texts: Sequence[str], settings: TextSettings) -> np.ndarray:
    """Texts normalised as training text was (``ascii_text``), tokenised and encoded: int64 (n, length)."""
    return settings.vocabulary.encode_texts(readable_texts(texts), settings.length)


def readable_texts(texts: Sequence[str]) -> list[str]:
    """Texts as cleaning makes them (ASCII, one space between words), by the cleaning's own expression."""
    frame = pl.DataFrame({"text": list(texts)}, schema={"text": pl.String})
    return frame.select(ascii_text(pl.col("text"))).to_series().to_list()


def _query_groups(images: Sequence[np.ndarray | None], texts: Sequence[str | None]) -> list[tuple[list[int], str]]:
    """The query rows that have both, only a photo and only text, with the predictor each gets."""
    groups: dict[str, list[int]] = {"combined": [], "image": [], "text": []}
    for row, (image, text) in enumerate(zip(images, texts, strict=True)):
        groups["combined" if image is not None and text is not None else "image" if image is not None else "text"].append(row)
    return [(rows, role) for role, rows in groups.items() if rows]


def _softmax(logits: np.ndarray) -> np.ndarray:
    exponentials: np.ndarray = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = exponentials / exponentials.sum(axis=1, keepdims=True)
    return probabilities


def _embeddings(bundle: Bundle, kind: str, batch: Batch) -> np.ndarray:
    embeddings = model_outputs(bundle, kind, batch).embeddings
    assert embeddings is not None
    return embeddings


def _stacked(images: Sequence[np.ndarray | None]) -> np.ndarray:
    return np.stack([image for image in images if image is not None])


def _needed(value: T | None, kind: str) -> T:
    if value is None:
        raise ValueError(f"the {kind} model needs {'photos' if kind == 'image-cnn' else 'texts'}")
    return value
