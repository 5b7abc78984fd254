"""Request and response shapes of the HTTP API (msgspec structs; the OpenAPI schema is built from them).

Request bodies are parsed by the API itself (uploads stay in memory), so their OpenAPI form is
written here too, from the same limits the API enforces: ``request_bodies``.
"""

from __future__ import annotations

import msgspec
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, RequestBody, Schema

from contracts.limits import MAX_K

DEFAULT_K = 10
TOP_CATEGORIES = 5
JSON = "application/json"
URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"


class TextInput(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /predict/text`` as JSON: the listing's text (name and description)."""

    text: str


class RecommendInput(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /recommend`` as JSON: a known product's id, or text to look for (photos go by multipart).

    ``k`` is read as a number, since JSON writes the integer 5 as ``5`` or ``5.0`` alike; the API
    refuses a fraction."""

    product_id: str | None = None
    text: str | None = None
    k: float = DEFAULT_K


class Health(msgspec.Struct):
    """What the server serves."""

    ready: bool
    models: list[str]
    classes: int
    bundle_format: str
    indexed_products: int | None


class CategoryScore(msgspec.Struct):
    """A category and its probability."""

    category: str
    probability: float


class Prediction(msgspec.Struct):
    """The most likely category, every category's probability, and the most likely few, best first."""

    category: str
    probabilities: dict[str, float]
    top: list[CategoryScore]


class Listing(msgspec.Struct):
    """A catalogue listing and its cosine similarity to the query."""

    id: str
    name: str
    category: str
    price: float
    score: float


class Recommendations(msgspec.Struct):
    """The most similar listings, best first."""

    results: list[Listing]


class ErrorBody(msgspec.Struct):
    """Any error: the HTTP status, what is wrong and, for bad input, the field at fault."""

    status_code: int
    detail: str
    field: str | None = None


def request_bodies(max_text_chars: int) -> dict[str, RequestBody]:
    """The OpenAPI request body of each endpoint that takes one, by path."""
    text = _text(max_text_chars, "The listing's text: name and description.")
    image = _image()
    k = _k()
    product_id = _string("A catalogue product's id (alone: its neighbours, itself left out).")
    query_text = _text(max_text_chars, "Text to look for (with or without an image).")

    def body(*media: tuple[str, Schema]) -> RequestBody:
        return RequestBody(required=True, content={name: OpenAPIMediaType(schema=schema) for name, schema in media})

    by_id_or_text = [_requiring("product_id"), _requiring("text")]
    by_id_or_content = [_requiring("product_id"), Schema(any_of=[_requiring("image"), _requiring("text")])]
    return {
        "/predict/image": body((MULTIPART, _object({"image": image}, ["image"]))),
        "/predict/text": body(*((media, _object({"text": text}, ["text"])) for media in (JSON, URLENCODED, MULTIPART))),
        "/predict/combined": body((MULTIPART, _object({"image": image, "text": text}, ["image", "text"]))),
        "/recommend": body(
            (JSON, _object({"product_id": product_id, "text": query_text, "k": k}, [], one_of=by_id_or_text)),
            (
                MULTIPART,
                _object({"image": image, "text": query_text, "product_id": product_id, "k": k}, [], one_of=by_id_or_content),
            ),
        ),
    }


def _object(properties: dict[str, Schema], required: list[str], *, one_of: list[Schema] | None = None) -> Schema:
    """A closed object: fields outside ``properties`` are refused."""
    return Schema(
        type=OpenAPIType.OBJECT, properties=properties, required=required or None, additional_properties=False, one_of=one_of
    )


def _requiring(field: str) -> Schema:
    return Schema(required=[field])


def _text(max_chars: int, description: str) -> Schema:
    return Schema(type=OpenAPIType.STRING, min_length=1, max_length=max_chars, pattern=r"\S", description=description)


def _string(description: str) -> Schema:
    return Schema(type=OpenAPIType.STRING, min_length=1, description=description)


def _image() -> Schema:
    return Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, description="A photo (JPEG, PNG, WebP, ...).")


def _k() -> Schema:
    return Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=MAX_K, default=DEFAULT_K, description="How many listings.")
