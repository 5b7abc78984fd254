"""The prediction path: listings in, each predictor's and model's probabilities out, as ``Prediction``s.

Every prediction fbml makes comes through here: ``Bundle.predict``/``predict_many`` (a caller's
``import fbml``, the HTTP API's micro-batches, batch scoring), ``Bundle.probabilities`` (``evaluate``
and the scores training prints), and the class parts of listing vectors (``fbml.bundle.listings``).
A predictor's probabilities are its ensemble over its models' (``fbml.modeling.ensembles``); each model
reads the listings and prepares them itself (``fbml.modeling.inference``) and runs once per batch,
however many of the asked-for predictors use it.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
import numpy as np
from contracts.bundle import ModelKind, Role

from fbml.errors import FbmlError, InputError
from fbml.modeling.inference import CachedPhoto, Listings, frozen_features_of
from fbml.vision.photos import PhotoInput, PhotoLimits, PreparedPhoto

if TYPE_CHECKING:
    from fbml.bundle.bundle import Bundle

DEFAULT_BATCH = 32
"""Listings per model run when a caller gives more (bounds memory: a photo is 3 x S x S floats)."""
TOP = 5
Name = Role | ModelKind
READABLE = re.compile("[A-Za-z0-9]")
Photo = PhotoInput | PreparedPhoto | CachedPhoto
"""A photo the prediction path takes: encoded or decoded (``PhotoInput``), prepared, or with its cached features."""


def _probability_map(value: Mapping[str, float]) -> Mapping[str, float]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class Prediction:
    """One listing's predicted category, every category's probability, the predictor that made it
    (``role``) and the bundle's ``model_version``; the most likely ``subcategory`` within ``category`` (the
    first two levels of a category path) and its probability, None when the bundle predicts none."""

    category: str
    probabilities: Mapping[str, float] = attrs.field(converter=_probability_map)
    role: Role
    model_version: str
    subcategory: str | None = None
    subcategory_probability: float | None = None

    def top(self, k: int = TOP) -> list[tuple[str, float]]:
        """The ``k`` most likely categories with their probabilities, best first (ties: the codec's order)."""
        if k < 1:
            raise InputError("k", f"must be at least 1, got {k}")
        ranked = sorted(self.probabilities.items(), key=lambda item: -item[1])
        return ranked[:k]


@attrs.frozen
class Similar:
    """A listing of the catalogue and its cosine similarity to the query: its id, name, category, category path,
    price and the ids of its photos (in the images table's order; none when it has no photo)."""

    id: str
    name: str
    category: str
    price: float
    score: float
    category_path: str
    photos: tuple[str, ...]


def resolved_role(bundle: Bundle, role: Role | str | None, *, has_text: bool, has_photos: bool) -> Role:
    """The predictor for listings with text and/or photos: ``role`` if given (it must read exactly what
    they have), else the one reading what they have; ``InputError`` when there is none such."""
    if not (has_text or has_photos):
        raise InputError("text", "give a listing's text, a photo or both")
    if role is None:
        chosen = Role.reading(text=has_text, photo=has_photos)
    else:
        try:
            chosen = Role(role)
        except ValueError:
            raise InputError("role", f"unknown predictor {role!r} (one of {', '.join(Role)})") from None
        if chosen.reads_text != has_text:
            raise InputError("text", f"the {chosen} predictor {'reads' if chosen.reads_text else 'reads no'} text")
        if chosen.reads_photos != has_photos:
            raise InputError("image", f"the {chosen} predictor {'reads' if chosen.reads_photos else 'reads no'} photo")
    if chosen not in bundle.predictors:
        raise InputError("role", f"the bundle has no {chosen} predictor (it has: {', '.join(bundle.predictors) or 'none'})")
    return chosen


def readable(bundle: Bundle, name: Name, *, has_text: bool, has_photos: bool) -> None:
    """``InputError`` unless the bundle has the predictor or model ``name`` and the listings have what it reads
    (text, photos; more is fine: a photo model ignores the text)."""
    if isinstance(name, Role):
        if name not in bundle.predictors:
            raise InputError("names", f"the bundle has no {name} predictor (it has: {', '.join(bundle.predictors) or 'none'})")
    elif name not in bundle.models:
        raise InputError("names", f"the bundle has no {name} model (it has: {', '.join(bundle.models) or 'none'})")
    if name.reads_text and not has_text:
        raise InputError("texts", f"the {name} {'predictor' if isinstance(name, Role) else 'model'} reads text: give texts")
    if name.reads_photos and not has_photos:
        raise InputError("images", f"the {name} {'predictor' if isinstance(name, Role) else 'model'} reads photos: give images")


def checked_texts(texts: Sequence[str] | None, field: str) -> list[str] | None:
    """``texts`` as a list, each a string; ``InputError`` naming the field otherwise."""
    if texts is None:
        return None
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InputError(field, f"must be a list of texts, not a {type(texts).__name__}")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{field}[{position}]", f"is a {type(text).__name__}, not a text")
    return list(texts)


def checked_photos(images: Sequence[Photo] | None, field: str) -> list[Photo] | None:
    """``images`` as a list; ``InputError`` when it is one photo or not a sequence."""
    if images is None:
        return None
    if isinstance(images, bytes | bytearray | memoryview | np.ndarray | str) or not isinstance(images, Sequence):
        raise InputError(field, f"must be a list of photos, not a {type(images).__name__}")
    return list(images)


def prepared_listings(
    bundle: Bundle, texts: Sequence[str] | None, images: Sequence[Photo] | None,
    *, limits: PhotoLimits, fields: Fields,
) -> Listings:
    """One batch of listings with its photos prepared for the bundle's image networks (and, when every photo is a
    ``CachedPhoto``, their frozen features), every text and photo checked: ``InputError`` naming the field
    (``fields``) of a text with nothing a model can read or a photo that does not decode."""
    photos, frozen = None, None
    if images is not None:
        preparation = bundle.image_settings().preparation
        photos = [preparation.prepared(photo.pixels if isinstance(photo, CachedPhoto) else photo, fields.images[row], limits)
                  for row, photo in enumerate(images)]  # fmt: skip
        frozen = frozen_features_of(images)
    listings = Listings(None if texts is None else tuple(texts), None if photos is None else tuple(photos), frozen)
    if texts is not None:
        for row, text in enumerate(listings.normalised_texts("text")):
            if READABLE.search(text) is None:
                raise InputError(fields.texts[row], "is empty: no letter or digit once normalised to ASCII")
    return listings


@attrs.frozen
class Fields:
    """How errors name a batch's texts and photos, row by row (``text``, ``texts[3]``, ``images[3][1]``, ...)."""

    texts: Sequence[str] = ()
    images: Sequence[str] = ()

    @classmethod
    def listed(cls, rows: range, *, texts: str = "texts", images: str = "images") -> Fields:
        """Row ``i`` of the batch is row ``rows[i]`` of the caller's lists."""
        return cls([f"{texts}[{row}]" for row in rows], [f"{images}[{row}]" for row in rows])


def batch_probabilities(bundle: Bundle, listings: Listings, names: Sequence[Name]) -> dict[Name, np.ndarray]:
    """Each named predictor's or model's probabilities (float32 (n, classes)) of one batch, each model run once."""
    outputs: dict[ModelKind, np.ndarray] = {}

    def model(kind: ModelKind) -> np.ndarray:
        if kind not in outputs:
            outputs[kind] = bundle.listing_model(kind).outputs(listings).probabilities
            if not bool(np.isfinite(outputs[kind]).all()):
                raise FbmlError(f"the {kind} model answered probabilities that are not finite numbers")
        return outputs[kind]

    found: dict[Name, np.ndarray] = {}
    for name in names:
        if isinstance(name, Role):
            ensemble = bundle.predictor(name).ensemble
            found[name] = ensemble.combine({member: model(ModelKind(member)) for member in ensemble.names})
        else:
            found[name] = model(name)
    return found


def chunks(count: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` of ``range(count)``."""
    if size < 1:
        raise FbmlError(f"batch size must be at least 1, got {size}")
    return (slice(start, min(start + size, count)) for start in range(0, count, size))


def predictions(bundle: Bundle, probabilities: np.ndarray, role: Role, subcategories: np.ndarray | None = None) -> list[Prediction]:
    """Each row of ``role``'s probabilities as a ``Prediction``, with its most likely subcategory within the
    predicted category when ``subcategories`` (``Bundle.subcategory_joint``) are given."""
    classes = bundle.codec.classes
    predicted = np.argmax(probabilities, axis=1)
    best: list[tuple[str, float] | None] = [None] * len(probabilities)
    if subcategories is not None and bundle.subcategories is not None:
        best = bundle.subcategories.best_within(bundle.codec, predicted, subcategories)
    found = []
    for values, index, subcategory in zip(probabilities, predicted.tolist(), best, strict=True):
        found.append(Prediction(classes[index], dict(zip(classes, map(float, values), strict=True)), role, bundle.model_version,
                                *(subcategory or (None, None))))  # fmt: skip
    return found
