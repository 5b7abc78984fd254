"""The route handlers, the body each endpoint reads, and the answers they build.

A handler receives its body already read into its struct (``given``, provided by ``body_provider``)
and the ``Service``; the ``bundle_serves`` guard has answered 404 before that when the bundle lacks
what the endpoint needs (``opt["needs"]``). It parses, then asks the bundle's prediction path (through
the service's micro-batchers: ``Bundle.predict_many``, ``Bundle.embed_many``; and ``Bundle.similar``)
and turns its ``Prediction``s and ``Similar`` listings into the API's answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
from contracts.api import (
    JSON,
    MULTIPART,
    TOP_CATEGORIES,
    URLENCODED,
    CategoryScore,
    ErrorBody,
    Health,
    Listing,
    ListingInput,
    PhotoInput,
    Prediction,
    Probe,
    Recommendations,
    RecommendForm,
    RecommendInput,
    TextInput,
)
from contracts.bundle import BUNDLE_FORMAT, Role
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import SkipValidation
from msgspec import Struct

from fbml.bundle import predictions
from fbml.bundle.predictions import Similar
from fbml.bundle.search import UnknownProductError
from fbml.serving.errors import ApiError
from fbml.serving.metrics import exposition
from fbml.serving.requests import RequestShape
from fbml.serving.service import Example, Service, service_of

Served = SkipValidation[Service]
INDEX = "index"
PHOTOS_SERVED = "photos_served"
"""The app state's key saying whether the app serves the catalogue's photos (``GET /photos/{id}``)."""
"""What ``/recommend`` needs of the bundle (the other endpoints need their predictor role)."""


def health(service: Served, request: Request[Any, Any, Any]) -> Health:
    """Readiness, the models served, the class count, the bundle format, the listings indexed and whether
    ``GET /photos/{id}`` serves their photos."""
    bundle = service.bundle
    indexed = None if bundle.index is None else len(bundle.index)
    photos = bool(request.app.state.get(PHOTOS_SERVED, False))
    return Health(True, sorted(bundle.predictors), bundle.codec.num_classes, BUNDLE_FORMAT, indexed, photos)


def live(service: Served) -> Probe:
    """The process answers."""
    return Probe("live", service.model_version)


def ready(service: Served) -> Response[Probe]:
    """200 once every model has answered its warm-up request, 503 before."""
    warm = service.warm.is_set()
    return Response(Probe("ready" if warm else "starting", service.model_version), status_code=200 if warm else 503)


def metrics(service: Served) -> bytes:
    """The app's metrics in Prometheus' text format."""
    return exposition(service.metrics)


async def predict_image(given: SkipValidation[PhotoInput], service: Served) -> Prediction:
    """The category of a photo (multipart field ``image``)."""
    image = await service.prepared_photo(given.image, "image")
    return answer(service.logged(await service.predictors[Role.IMAGE](Example(image=image)), photo=given.image))


async def predict_text(given: SkipValidation[TextInput], service: Served) -> Prediction:
    """The category of a listing's text (JSON ``{"text": ...}``, or form or multipart field ``text``)."""
    return answer(service.logged(await service.predictors[Role.TEXT](Example(text=given.text)), text=given.text))


async def predict_combined(given: SkipValidation[ListingInput], service: Served) -> Prediction:
    """The category of a photo and its text (multipart fields ``image`` and ``text``)."""
    image = await service.prepared_photo(given.image, "image")
    found = await service.predictors[Role.COMBINED](Example(image, given.text))
    return answer(service.logged(found, text=given.text, photo=given.image))


async def recommend(given: SkipValidation[RecommendInput], service: Served) -> Recommendations:
    """The ``k`` listings most like a known product (``product_id``), or like a photo and/or text."""
    service.require_index()
    k = int(given.k)
    if isinstance(given.product_id, str):
        try:
            with service.tracing.span("search"):
                found = service.bundle.similar(product_id=given.product_id, k=k)
            return recommendations(found, service.model_version)
        except UnknownProductError as error:
            raise ApiError(404, str(error), "product_id") from None
    photo = given.image if isinstance(given, RecommendForm) and isinstance(given.image, bytes) else None
    image = None if photo is None else await service.prepared_photo(photo, "image")
    text = given.text if isinstance(given.text, str) else None
    assert service.embedder is not None  # the bundle has an index
    vector = await service.embedder(Example(image, text))
    with service.tracing.span("search"):
        found = service.bundle.similar(vector=vector, k=k)
    return recommendations(found, service.model_version)


@attrs.frozen
class Endpoint:
    """A ``POST`` endpoint: its path, handler, body and what it needs of the bundle."""

    path: str
    handler: Callable[..., Awaitable[Any]]
    body: RequestShape[Any]
    needs: str


ENDPOINTS = (
    Endpoint("/predict/image", predict_image, RequestShape({MULTIPART: PhotoInput}), "image"),
    Endpoint("/predict/text", predict_text, RequestShape({JSON: TextInput, URLENCODED: TextInput, MULTIPART: TextInput}), "text"),
    Endpoint("/predict/combined", predict_combined, RequestShape({MULTIPART: ListingInput}), "combined"),
    Endpoint(
        "/recommend",
        recommend,
        RequestShape({JSON: RecommendInput, MULTIPART: RecommendForm}, alternatives=(("product_id",), ("image", "text"))),
        INDEX,
    ),
)

ERROR_RESPONSES = {
    400: ResponseSpec(ErrorBody, description="The body is not valid JSON, form or multipart data", generate_examples=False),
    404: ResponseSpec(ErrorBody, description="The bundle lacks the model or index, or no such product", generate_examples=False),
    413: ResponseSpec(ErrorBody, description="The body is over the size limit", generate_examples=False),
    415: ResponseSpec(ErrorBody, description="The body's media type is not one this endpoint reads", generate_examples=False),
    422: ResponseSpec(ErrorBody, description="A field is missing or unusable (named in `field`)", generate_examples=False),
}


def bundle_serves(connection: ASGIConnection[Any, Any, Any, Any], route_handler: BaseRouteHandler) -> None:
    """Guard: 404 unless the bundle has what the endpoint needs (its predictor role, or the index)."""
    service = service_of(connection.app.state)
    needs = route_handler.opt["needs"]
    if needs == INDEX:
        service.require_index()
    else:
        service.require(Role(needs))


def body_provider(shape: RequestShape[Any]) -> Provide:
    """The dependency that reads a request's body as ``shape`` (the handlers' ``given``)."""

    async def given(request: Request[Any, Any, Any], service: Served) -> Struct:
        body: Struct = await shape.read(request, service.text)
        return body

    return Provide(given)


def answer(found: predictions.Prediction) -> Prediction:
    """A ``Prediction`` of the bundle as the API answers it."""
    top = [CategoryScore(category, probability) for category, probability in found.top(TOP_CATEGORIES)]
    return Prediction(found.category, dict(found.probabilities), top, found.model_version, found.subcategory,
                      found.subcategory_probability)


def recommendations(found: Sequence[Similar], model_version: str) -> Recommendations:
    """The answer for a search's listings, best first."""
    listings = [Listing(item.id, item.name, item.category, item.price, item.score, item.category_path, list(item.photos))
                for item in found]  # fmt: skip
    return Recommendations(listings, model_version)
