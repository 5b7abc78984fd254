"""Listing vectors: how a listing (its text, its photos, or both) becomes one vector of the search index.

A listing's vector joins four parts, each weighted: the text CNN's embedding of its text and the image
model's embedding of its photos (their mean), each of unit length; its class probabilities raised to the
recipe's power (1: the dot product of two listings' parts is the chance that both are of one class; 0.5,
indexes built before it was chosen: their Bhattacharyya coefficient): the ``combined`` predictor's for a
listing with text and photos (the mean over its photos), the ``image`` predictor's for photos alone, the
``text`` predictor's for text alone; and its subcategory probabilities, ``P(category) * P(subcategory |
category)`` with those class probabilities (``fbml.modeling.subcategories``; listings with text, in bundles
that predict subcategories), raised to the same power. A part the listing lacks is zero. The recipe (weights,
power) is chosen on the validation products and saved with the index.
``listing_parts`` is the one place that computes the parts, for the catalogue (``fbml.workflows.index``)
and for queries alike; ``alikeness`` measures how alike an index's neighbours are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
from contracts.bundle import ModelKind, Role
from tqdm import tqdm

from fbml.bundle.predictions import Fields, Photo, batch_probabilities, chunks, prepared_listings
from fbml.bundle.search import PRECISION_K, SearchIndex, unit_rows
from fbml.errors import FbmlError, InputError
from fbml.modeling.metrics import group_means
from fbml.vision.photos import PhotoLimits

if TYPE_CHECKING:
    from fbml.bundle.bundle import Bundle

PARTS = ("text", "image", "classes", "subcategories")
REQUIRED_PARTS = {"text", "image", "classes"}
PROBABILITY_POWERS = (0.5, 1.0)
"""The powers a recipe may raise probabilities to; 0.5 is that of indexes whose report names none."""
TIE_TOLERANCE = 1e-6
"""Ten neighbours whose scores all lie within this of each other are tied: the index cannot order them."""
TEXT_MODEL = ModelKind.TEXT_CNN
IMAGE_MODEL = ModelKind.IMAGE_CNN


@attrs.frozen
class ListingWeights:
    """How much each part counts in a listing's vector."""

    text: float
    image: float
    classes: float
    subcategories: float = 0.0

    def to_json(self) -> dict[str, float]:
        """The weights by part name."""
        return attrs.asdict(self)

    @classmethod
    def from_report(cls, report: Mapping[str, object]) -> ListingWeights:
        """The weights an index's report records (an index built before subcategories has no such weight:
        0); ``FbmlError`` when it records none that are usable."""
        weights = report.get("weights")
        if not isinstance(weights, Mapping) or not REQUIRED_PARTS <= set(weights) <= set(PARTS):
            raise FbmlError("the search index does not say how its vectors were built")
        values = {name: weights.get(name, 0.0) for name in PARTS}
        if not all(type(value) in (int, float) and 0.0 <= value <= 100.0 for value in values.values()):
            raise FbmlError(f"the search index's part weights must be numbers from 0 to 100, got {values}")
        if not any(values.values()):
            raise FbmlError("the search index's part weights are all 0: its vectors would say nothing of a listing")
        return cls(**{name: float(value) for name, value in values.items()})


@attrs.frozen
class ListingRecipe:
    """How a listing's parts become its vector: their weights and the power its probabilities are raised to."""

    weights: ListingWeights
    power: float = 1.0

    def to_json(self) -> dict[str, Any]:
        """The recipe as an index's report records it."""
        return {"weights": self.weights.to_json(), "probability_power": self.power}

    @classmethod
    def from_report(cls, report: Mapping[str, object]) -> ListingRecipe:
        """The recipe an index's report records (an index built before powers: 0.5); ``FbmlError`` naming what is
        unusable."""
        power = report.get("probability_power", PROBABILITY_POWERS[0])
        if type(power) is not float or power not in PROBABILITY_POWERS:
            raise FbmlError(f"the search index's probability power must be one of {PROBABILITY_POWERS}, got {power!r}")
        return cls(ListingWeights.from_report(report), power)


@attrs.frozen
class ListingParts:
    """Per listing: the text embedding, the photos' mean embedding, the class probabilities and the joint
    subcategory probabilities (zero rows: absent; no columns: the bundle predicts no subcategory)."""

    text: np.ndarray
    image: np.ndarray
    classes: np.ndarray
    subcategories: np.ndarray

    def vectors(self, recipe: ListingRecipe) -> np.ndarray:
        """Unit-length float32 vectors joining the parts as ``recipe`` weighs them."""
        weights, power = recipe.weights, recipe.power
        parts = [unit_rows(self.text) * weights.text, unit_rows(self.image) * weights.image,
                 np.clip(self.classes, 0.0, 1.0) ** power * weights.classes,
                 np.clip(self.subcategories, 0.0, 1.0) ** power * weights.subcategories]
        return unit_rows(np.concatenate(parts, axis=1).astype(np.float32))

    def rows(self, rows: np.ndarray) -> ListingParts:
        """The parts of these listings only."""
        return ListingParts(self.text[rows], self.image[rows], self.classes[rows], self.subcategories[rows])


def listing_parts(
    bundle: Bundle, texts: Sequence[str | None] | None, photos: Sequence[Sequence[Photo]] | None, *,
    limits: PhotoLimits = PhotoLimits(), batch_size: int, single: bool = False, progress: bool = False,
) -> ListingParts:
    """The parts of each listing: listing ``i`` has the text ``texts[i]`` (None: none) and the photos
    ``photos[i]`` (empty: none); ``single``: one listing, whose fields errors name ``text`` and ``image``."""
    text_of, photos_of = _listings(texts, photos)
    count = len(text_of)
    parts = ListingParts(np.zeros((count, bundle.embedding_dim(TEXT_MODEL)), np.float32),
                         np.zeros((count, bundle.embedding_dim(IMAGE_MODEL)), np.float32),
                         np.zeros((count, bundle.codec.num_classes), np.float32),
                         np.zeros((count, bundle.subcategory_count()), np.float32))  # fmt: skip
    pairs = [(row, photo, position) for row, group in enumerate(photos_of) for position, photo in enumerate(group)]
    text_rows = [row for row, text in enumerate(text_of) if text is not None]
    with tqdm(total=len(text_rows) + len(pairs), desc="listing vectors", unit="row", disable=not progress) as bar:
        for part in chunks(len(text_rows), batch_size):
            rows = text_rows[part]
            _add_text_parts(bundle, parts, rows, [str(text_of[row]) for row in rows], [not photos_of[row] for row in rows],
                            limits, Fields(["text"] if single else [f"texts[{row}]" for row in rows]))  # fmt: skip
            bar.update(len(rows))
        photo_rows: list[int] = []
        embeddings: list[np.ndarray] = []
        classes: list[np.ndarray] = []
        for part in chunks(len(pairs), batch_size):
            chunk = pairs[part]
            for with_text in (True, False):
                group = [pair for pair in chunk if (text_of[pair[0]] is not None) == with_text]
                if group:
                    photo_rows.extend(row for row, _, _ in group)
                    embedded, classed = _photo_parts(bundle, group, text_of if with_text else None, limits, single)
                    embeddings.append(embedded)
                    classes.append(classed)
            bar.update(len(chunk))
    if photo_rows:
        listing_of, photographed = np.asarray(photo_rows), np.unique(photo_rows)
        parts.image[photographed] = group_means(listing_of, np.concatenate(embeddings), count)[photographed]
        parts.classes[photographed] = group_means(listing_of, np.concatenate(classes), count)[photographed]
    for part in chunks(len(text_rows), batch_size):
        rows = text_rows[part]
        joint = bundle.subcategory_joint([str(text_of[row]) for row in rows], parts.classes[rows])
        if joint is not None:
            parts.subcategories[rows] = joint
    return parts


def _listings(texts: Sequence[str | None] | None, photos: Sequence[Sequence[Photo]] | None) -> tuple[list[str | None], list[list[Photo]]]:
    """Each listing's text (or None) and photos (or none); ``InputError`` when the lists do not pair up or a listing is empty."""
    if texts is None and photos is None:
        raise InputError("text", "give a listing's text, a photo or both")
    if isinstance(texts, str):
        raise InputError("texts", "must be a list of texts (one per listing), not a text")
    count = len(texts) if texts is not None else len(photos or ())
    text_of: list[str | None] = list(texts) if texts is not None else [None] * count
    photos_of = [list(group) for group in photos] if photos is not None else [[] for _ in range(count)]
    if len(photos_of) != count:
        raise InputError("images", f"photos of {len(photos_of)} listings for {count} texts: give one list of photos per listing")
    for row, (text, group) in enumerate(zip(text_of, photos_of, strict=True)):
        if text is not None and not isinstance(text, str):
            raise InputError(f"texts[{row}]", f"is a {type(text).__name__}, not a text")
        if text is None and not group:
            raise InputError(f"texts[{row}]", "a listing needs its text, a photo or both")
    return text_of, photos_of


def _add_text_parts(bundle: Bundle, parts: ListingParts, rows: list[int], texts: list[str], text_only: list[bool],
                    limits: PhotoLimits, fields: Fields) -> None:  # fmt: skip
    """The text embeddings of ``rows``, and the ``text`` predictor's classes of those without photos."""
    listings = prepared_listings(bundle, texts, None, limits=limits, fields=fields)
    embeddings = bundle.listing_model(TEXT_MODEL).outputs(listings).embeddings
    assert embeddings is not None
    parts.text[rows] = embeddings
    if any(text_only):
        classes = batch_probabilities(bundle, listings, [Role.TEXT])[Role.TEXT]
        alone = np.asarray(text_only)
        parts.classes[np.asarray(rows)[alone]] = classes[alone]


def _photo_parts(bundle: Bundle, pairs: list[tuple[int, Photo, int]], text_of: list[str | None] | None, limits: PhotoLimits,
                 single: bool) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each photo's image embedding and its predictor's classes (``combined`` with its listing's text, ``image``
    without)."""
    rows = [row for row, _, _ in pairs]
    texts = None if text_of is None else [str(text_of[row]) for row in rows]
    fields = Fields(["text"], ["image"]) if single else Fields([f"texts[{row}]" for row in rows],
                                                                [f"images[{row}][{position}]" for row, _, position in pairs])
    listings = prepared_listings(bundle, texts, [photo for _, photo, _ in pairs], limits=limits, fields=fields)
    embeddings = bundle.listing_model(IMAGE_MODEL).outputs(listings).embeddings
    assert embeddings is not None
    role = Role.COMBINED if texts is not None else Role.IMAGE
    return embeddings, batch_probabilities(bundle, listings, [role])[role]


@attrs.frozen
class Alikeness:
    """How alike query listings and their ``k`` nearest others are: the share of neighbours with the query's
    category, subcategory (first two levels of the path) and full category path, and the share of queries
    whose neighbours' scores all tie (the index cannot order them: it has collapsed onto something coarse)."""

    category: float
    subcategory: float
    path: float
    tied: float

    def to_json(self, k: int = PRECISION_K) -> dict[str, float]:
        """The figures under the names reports and ``fbml index --json`` give them."""
        return {f"precision_at_{k}": self.category, f"subcategory_precision_at_{k}": self.subcategory,
                f"path_precision_at_{k}": self.path, f"tied_at_{k}": self.tied}


def alikeness(vectors: np.ndarray, paths: np.ndarray, queries: np.ndarray, candidates: np.ndarray | None = None, *,
              k: int = PRECISION_K, index: SearchIndex | None = None) -> Alikeness:  # fmt: skip
    """How alike each query row and its ``k`` nearest other rows are, judged by the rows' category ``paths``
    (``A / B / C``); neighbours are drawn from ``candidates`` (default: every row) by exact search, or by
    ``index``'s own engine (whose vectors ``vectors`` are) when given."""
    if queries.size == 0 or len(vectors) < 2:
        return Alikeness(0.0, 0.0, 0.0, 0.0)
    if index is not None:
        neighbours, scores = index.search(vectors[queries], k, exclude=queries.tolist())
    else:
        neighbours, scores = exact_neighbours(vectors, queries, candidates, k)
    levels = [np.asarray([_first_levels(path, depth) for path in paths]) for depth in (1, 2, None)]
    shares = [float((level[neighbours] == level[queries][:, None]).mean()) for level in levels]
    tied = float(((scores[:, 0] - scores[:, -1]) <= TIE_TOLERANCE).mean()) if scores.shape[1] > 1 else 0.0
    return Alikeness(shares[0], shares[1], shares[2], tied)


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows (of ``candidates``, default every row; never the query itself) of each query row's ``k`` most
    similar vectors and their scores, each (Q, min(k, candidates - 1)), best first (ties: the lower row)."""
    pool = np.arange(len(vectors)) if candidates is None else candidates
    similarity = vectors[queries] @ vectors[pool].T
    similarity[pool[None, :] == queries[:, None]] = -np.inf
    take = max(min(k, pool.size - 1), 1)
    top = np.argpartition(-similarity, take - 1, axis=1)[:, :take]
    order = np.lexsort((top, -np.take_along_axis(similarity, top, axis=1)), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    return pool[top], np.take_along_axis(similarity, top, axis=1)


def _first_levels(path: str, depth: int | None) -> str:
    return " / ".join(path.split(" / ")[:depth])
