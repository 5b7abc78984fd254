"""Request and response shapes of the HTTP API (msgspec structs).

A request struct is what the API decodes a body into, for each media type it reads, and the OpenAPI
request bodies are generated from these structs (``fbml.serving.requests``): a constraint written
here is both enforced and documented. What depends on the server's settings is added there: how
long a ``ListingText`` may be, and that it has something a model can read once normalised.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType

from contracts.limits import MAX_K

DEFAULT_K = 10
TOP_CATEGORIES = 5
JSON = "application/json"
URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
PHOTO_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
"""The photo formats the API decodes (PIL's names), with their media types."""
LISTING_TEXT = "listing_text"
"""The ``Meta.extra`` key that marks a text the models read (the server's text rules apply to it)."""

ListingText = Annotated[str, Meta(extra={LISTING_TEXT: True})]
Photo = Annotated[bytes, Meta(min_length=1, description="A photo: JPEG, PNG, WebP or GIF.")]
ProductId = Annotated[str, Meta(min_length=1, description="A catalogue product's id (alone: its neighbours, itself left out).")]
ModelVersion = Annotated[str, Meta(description="The model version: the SHA-256 of the bundle's manifest.")]
Count = Annotated[float, Meta(ge=1, le=MAX_K, multiple_of=1, description="How many listings.")]
"""A whole number: JSON may write the integer 5 as ``5`` or ``5.0`` alike (JSON Schema's ``integer``)."""


class TextInput(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /predict/text``: the listing's text (JSON, form or multipart)."""

    text: Annotated[ListingText, Meta(description="The listing's text: name and description.")]


class PhotoInput(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /predict/image``: a photo (multipart)."""

    image: Photo


class ListingInput(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /predict/combined``: a photo and the listing's text (multipart)."""

    image: Photo
    text: Annotated[ListingText, Meta(description="The listing's text: name and description.")]


class RecommendInput(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /recommend`` as JSON: a known product's id, or text to look for (photos go by multipart)."""

    product_id: ProductId | UnsetType = UNSET
    text: Annotated[ListingText, Meta(description="Text to look for (with or without a photo).")] | UnsetType = UNSET
    k: Count = DEFAULT_K


class RecommendForm(RecommendInput):
    """``POST /recommend`` as multipart: a known product's id, or a photo and/or text to look for."""

    image: Photo | UnsetType = UNSET


class Health(msgspec.Struct):
    """What the server serves."""

    ready: bool
    models: list[str]
    classes: int
    bundle_format: str
    indexed_products: int | None
    photos: bool = False
    """Whether ``GET /photos/{id}`` serves the indexed listings' photos."""


class Probe(msgspec.Struct):
    """A probe's answer: ``live``, ``ready`` or ``starting`` (the models not yet warmed up), and the model version."""

    status: str
    model_version: ModelVersion


class CategoryScore(msgspec.Struct):
    """A category and its probability."""

    category: str
    probability: float


class Prediction(msgspec.Struct):
    """The most likely category, every category's probability, and the most likely few, best first."""

    category: str
    probabilities: dict[str, float]
    top: list[CategoryScore]
    model_version: ModelVersion
    subcategory: str | None = None
    """The most likely subcategory (first two levels of the category path) within ``category``; null when
    the bundle predicts none."""
    subcategory_probability: float | None = None


class Listing(msgspec.Struct):
    """A catalogue listing and its cosine similarity to the query."""

    id: str
    name: str
    category: str
    price: float
    score: float
    category_path: Annotated[str, Meta(description="The listing's category path, from its top-level category down.")]
    photos: Annotated[list[str], Meta(description="The ids of the listing's photos, first first (`GET /photos/{id}` "
                                                  "serves them when the server has its photo folder).")]


class Recommendations(msgspec.Struct):
    """The most similar listings, best first."""

    results: list[Listing]
    model_version: ModelVersion


class ErrorBody(msgspec.Struct):
    """Any error: the HTTP status, what is wrong and, for bad input, the field at fault."""

    status_code: int
    detail: str
    field: str | None = None
