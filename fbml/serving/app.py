"""The HTTP API: ``create_app(bundle)`` builds a Litestar app over a loaded bundle; ``serve`` runs it.

Models are loaded once (by the caller) and put in eval mode once. Handlers read the body (at most
``max_body_bytes``, else 413) and parse it in memory: uploads are never written anywhere. Photos
are decoded on a decoding thread, and inference runs on one inference thread under
``torch.inference_mode``, so the event loop never waits on either. Requests that arrive while a
batch is running are stacked into the next one (micro-batching): under load the model sees
batches, alone a request runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs

import attrs
import msgspec
import numpy as np
import torch
from litestar import Litestar, Request, Response, get, post
from litestar.di import Provide
from litestar.logging import LoggingConfig
from litestar.params import SkipValidation
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Operation, RequestBody
from torch import Tensor

from contracts.api import (
    DEFAULT_K,
    JSON,
    MULTIPART,
    URLENCODED,
    TOP_CATEGORIES,
    CategoryScore,
    ErrorBody,
    Health,
    Listing,
    Prediction,
    RecommendInput,
    Recommendations,
    TextInput,
    request_bodies,
)
from fbml import __version__
from contracts.bundle import BUNDLE_FORMAT
from fbml.bundle.store import Bundle, ImageSettings, load_bundle
from fbml.serving.inference import Batch, listing_queries, predictor_probabilities
from fbml.errors import FbmlError
from fbml.bundle.search import MAX_K, Neighbour, SearchIndex, UnknownProductError

BUNDLE_ENV = "FBML_BUNDLE"
THREADS_ENV = "FBML_TORCH_THREADS"
DEFAULT_MAX_BODY_BYTES = 10 * 2**20
DEFAULT_MAX_TEXT_CHARS = 20_000
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
MAX_BATCH = 32
MAX_FORM_PARTS = 8

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class ApiError(Exception):
    """A request the API refuses: the status, what is wrong and the field at fault (if one is)."""

    def __init__(self, status_code: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.field = field


@attrs.frozen
class Limits:
    """What one request's text and photo may hold (the body's size is Litestar's to enforce)."""

    max_text_chars: int
    max_image_pixels: int


@attrs.frozen(eq=False)
class Example:
    """One input to a model: a prepared photo (float32 (3, S, S)) and/or raw text."""

    image: Tensor | None = None
    text: str | None = None


@attrs.define(eq=False)
class MicroBatcher(Generic[ItemT, ResultT]):
    """Runs ``infer`` (a list of items -> one result each) on ``executor``; the items submitted while
    a batch runs go together into the next one, at most ``max_batch`` at a time.

    Mutable by nature: it holds the waiting items. Its state is only touched on the event loop.
    """

    infer: Callable[[list[ItemT]], list[ResultT]]
    executor: ThreadPoolExecutor
    max_batch: int = MAX_BATCH
    _waiting: list[tuple[ItemT, asyncio.Future[ResultT]]] = attrs.field(factory=list, init=False)
    _draining: asyncio.Task[None] | None = attrs.field(default=None, init=False)

    async def __call__(self, item: ItemT) -> ResultT:
        """``infer``'s result for ``item``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        self._waiting.append((item, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                live = [(item, future) for item, future in batch if not future.done()]
                if live:
                    await self._run(loop, live)
        finally:
            self._draining = None

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        try:
            results = await loop.run_in_executor(self.executor, self.infer, [item for item, _ in batch])
        except Exception as error:  # handed to every waiting request, which answers for it
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


@attrs.frozen(eq=False)
class Service:
    """The bundle, the limits and the threads that serve requests (the handlers' one dependency).

    The threads live as long as the app: they are not tied to its lifespan events, which a test
    client may run around every request. They end when the app is garbage-collected.
    """

    bundle: Bundle
    limits: Limits
    decoder: ThreadPoolExecutor
    batchers: Mapping[str, MicroBatcher[Example, np.ndarray]]

    def require(self, role: str) -> None:
        """404 unless the bundle has the predictor of ``role``."""
        if role not in self.bundle.predictors:
            served = ", ".join(sorted(self.bundle.predictors)) or "none"
            raise ApiError(404, f"the bundle has no {role} model (it has: {served})")

    def require_index(self) -> SearchIndex:
        """The search index; 404 when the bundle has none."""
        if self.bundle.index is None:
            raise ApiError(404, "the bundle has no search index (build one with `fbml index`)")
        return self.bundle.index

    async def decoded_image(self, data: bytes, field: str = "image") -> Tensor:
        """The upload decoded and prepared like the training photos (422 naming ``field`` when unusable)."""
        loop = asyncio.get_running_loop()
        limit = self.limits.max_image_pixels
        return await loop.run_in_executor(self.decoder, prepared_image, data, self.bundle.image, limit, field)

    def checked_text(self, value: str, field: str = "text") -> str:
        """``value`` when it has something to read and is not too long; else 422 naming ``field``."""
        if not value.strip():
            raise ApiError(422, f"{field} is empty", field)
        if len(value) > self.limits.max_text_chars:
            raise ApiError(422, f"{field} is longer than {self.limits.max_text_chars} characters", field)
        return value


Served = SkipValidation[Service]


def create_app(
    bundle: Bundle,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_batch: int = MAX_BATCH,
) -> Litestar:
    """The API over ``bundle`` (its models are put in eval mode here, once)."""
    service = _service(bundle, Limits(max_text_chars, max_image_pixels), max_batch)
    bodies = request_bodies(max_text_chars)
    posted = [
        (predict_image, "/predict/image"),
        (predict_text, "/predict/text"),
        (predict_combined, "/predict/combined"),
        (recommend, "/recommend"),
    ]
    handlers = [get("/health", sync_to_thread=False)(health)] + [
        post(path, status_code=200, operation_class=_with_request_body(bodies[path]), responses=ERROR_RESPONSES)(handler)
        for handler, path in posted
    ]
    return Litestar(
        route_handlers=handlers,
        dependencies={"service": Provide(lambda: service, use_cache=True, sync_to_thread=False)},
        exception_handlers={ApiError: _error_response},
        request_max_body_size=max_body_bytes,
        openapi_config=OpenAPIConfig(title="fbml", version=__version__),
        logging_config=LoggingConfig(configure_root_logger=False),
    )


def app_from_env() -> Litestar:
    """``create_app`` over the bundle named by ``$FBML_BUNDLE`` (a uvicorn factory: one load per worker)."""
    if BUNDLE_ENV not in os.environ:
        raise FbmlError(f"set {BUNDLE_ENV} to the bundle directory to serve")
    if THREADS_ENV in os.environ:
        torch.set_num_threads(int(os.environ[THREADS_ENV]))
    return create_app(load_bundle(Path(os.environ[BUNDLE_ENV])))


def serving_threads(workers: int) -> int:
    """Torch threads per worker process: its share of the cores, less one for the event loop and
    photo decoding (on a busy 2-core machine two inference threads ran several times slower than one)."""
    return max(1, (os.cpu_count() or 1) // workers - 1)


def serve(bundle_dir: Path, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1) -> None:
    """Serve the bundle with uvicorn in ``workers`` processes (``serving_threads`` torch threads each)."""
    import uvicorn

    threads = serving_threads(workers)
    bundle = load_bundle(bundle_dir)
    if workers == 1:
        torch.set_num_threads(threads)
        uvicorn.run(create_app(bundle), host=host, port=port)
        return
    os.environ[BUNDLE_ENV] = str(bundle_dir.resolve())
    os.environ[THREADS_ENV] = str(threads)
    uvicorn.run("fbml.serving.app:app_from_env", factory=True, host=host, port=port, workers=workers)


@contextlib.contextmanager
def serving(app: Litestar, *, startup_seconds: float = 60.0) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free 127.0.0.1 port, for the block: its base URL."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, name="fbml-serving", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_seconds
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise FbmlError("the server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def free_port() -> int:
    """A port free on 127.0.0.1 just now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def health(service: Served) -> Health:
    """Readiness, the models served, the class count and the bundle format."""
    bundle = service.bundle
    indexed = None if bundle.index is None else len(bundle.index)
    return Health(True, sorted(bundle.predictors), bundle.codec.num_classes, BUNDLE_FORMAT, indexed)


async def predict_image(request: Request, service: Served) -> Prediction:
    """The category of a photo (multipart field ``image``)."""
    service.require("image")
    fields = await _form(request, (MULTIPART,), ("image",))
    image = await service.decoded_image(_required(fields, "image"))
    return _prediction(await service.batchers["image"](Example(image=image)), service.bundle.codec.classes)


async def predict_text(request: Request, service: Served) -> Prediction:
    """The category of a listing's text (JSON ``{"text": ...}`` or form field ``text``)."""
    service.require("text")
    if _media_type(request) == JSON:
        text = _json(await _body(request), TextInput).text
    else:
        text = _decoded(_required(await _form(request, (URLENCODED, MULTIPART), ("text",)), "text"), "text")
    example = Example(text=service.checked_text(text))
    return _prediction(await service.batchers["text"](example), service.bundle.codec.classes)


async def predict_combined(request: Request, service: Served) -> Prediction:
    """The category of a photo and its text (multipart fields ``image`` and ``text``)."""
    service.require("combined")
    fields = await _form(request, (MULTIPART,), ("image", "text"))
    text = service.checked_text(_decoded(_required(fields, "text"), "text"))
    image = await service.decoded_image(_required(fields, "image"))
    return _prediction(await service.batchers["combined"](Example(image, text)), service.bundle.codec.classes)


async def recommend(request: Request, service: Served) -> Recommendations:
    """The ``k`` listings most like a known product (``product_id``), or like an image and/or text."""
    index = service.require_index()
    query = await _recommend_input(request)
    k = _k(query.k)
    if query.product_id is not None:
        if query.text is not None or query.image is not None:
            raise ApiError(422, "give a product_id, or an image and/or text, not both", "product_id")
        try:
            return _recommendations(index, index.neighbours(query.product_id, k))
        except UnknownProductError as error:
            raise ApiError(404, str(error), "product_id") from None
    if query.text is None and query.image is None:
        raise ApiError(422, "give a product_id, an image or text to look for")
    text = None if query.text is None else service.checked_text(query.text)
    image = None if query.image is None else await service.decoded_image(query.image)
    vector = await service.batchers["embed"](Example(image, text))
    return _recommendations(index, index.nearest(vector, k))


@attrs.frozen(eq=False)
class _RecommendQuery:
    product_id: str | None
    text: str | None
    image: bytes | None
    k: float


async def _recommend_input(request: Request) -> _RecommendQuery:
    if _media_type(request) == JSON:
        given = _json(await _body(request), RecommendInput)
        return _RecommendQuery(given.product_id, given.text, None, given.k)
    fields = await _form(request, (MULTIPART,), ("image", "text", "product_id", "k"))
    text = fields.get("text")
    product_id = fields.get("product_id")
    return _RecommendQuery(
        None if product_id is None else _decoded(product_id, "product_id"),
        None if text is None else _decoded(text, "text"),
        fields.get("image"),
        _integer(fields["k"], "k") if "k" in fields else DEFAULT_K,
    )


def _k(k: float) -> int:
    if not float(k).is_integer():
        raise ApiError(422, f"k must be an integer, got {k}", "k")
    if not 1 <= k <= MAX_K:
        raise ApiError(422, f"k must be between 1 and {MAX_K}, got {k:g}", "k")
    return int(k)


def _recommendations(index: SearchIndex, neighbours: Sequence[Neighbour]) -> Recommendations:
    listings = []
    for neighbour in neighbours:
        row = index.listing(neighbour.row)
        listings.append(Listing(row["id"], row["product_name"], row["category"], row["price"], neighbour.score))
    return Recommendations(listings)


def _prediction(probabilities: np.ndarray, classes: Sequence[str]) -> Prediction:
    order = np.argsort(-probabilities, kind="stable")
    top = [CategoryScore(classes[i], float(probabilities[i])) for i in order[:TOP_CATEGORIES]]
    return Prediction(top[0].category, dict(zip(classes, map(float, probabilities), strict=True)), top)


def prepared_image(data: bytes, settings: ImageSettings, max_pixels: int, field: str = "image") -> Tensor:
    """An uploaded photo as the image models read it: decoded (refusing more than ``max_pixels``),
    upright RGB letterboxed to ``settings.size``, normalised; 422 naming ``field`` when unusable."""
    from PIL import Image, UnidentifiedImageError

    from fbml.modeling.datasets import eval_transform
    from fbml.vision.cleaning import clean_image, open_image

    try:
        with open_image(BytesIO(data), size=settings.size, max_pixels=max_pixels) as image:
            square = clean_image(image, settings.size)
    except UnidentifiedImageError:
        raise ApiError(422, f"{field} is not an image", field) from None
    except Image.DecompressionBombError:
        raise ApiError(422, f"{field} has more than {max_pixels} pixels", field) from None
    except Exception as error:  # PIL raises many kinds for broken files: each is the client's bad input
        raise ApiError(422, f"{field} is a truncated or corrupt image ({type(error).__name__})", field) from None
    pixels = torch.from_numpy(np.asarray(square).transpose(2, 0, 1).copy())
    return eval_transform(settings.size, settings.mean, settings.std)(pixels)


def class_probabilities(bundle: Bundle, role: str, examples: list[Example]) -> list[np.ndarray]:
    """Each example's class probabilities under the ``role`` predictor."""
    images = [example.image for example in examples if example.image is not None]
    texts = [example.text for example in examples if example.text is not None]
    batch = Batch(torch.stack(images) if images else None, texts or None)
    return list(predictor_probabilities(bundle, role, batch))


def query_vectors(bundle: Bundle, examples: list[Example]) -> list[np.ndarray]:
    """Each example's listing vector (a photo and/or text)."""
    return list(listing_queries(bundle, [example.image for example in examples], [example.text for example in examples]))


def _service(bundle: Bundle, limits: Limits, max_batch: int) -> Service:
    for kind in bundle.models:
        bundle.model(kind)  # eval mode, once
    inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fbml-inference")
    decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fbml-decode")
    batchers: dict[str, MicroBatcher[Example, np.ndarray]] = {
        role: MicroBatcher(_bound(class_probabilities, bundle, role), inference, max_batch) for role in bundle.predictors
    }
    if bundle.index is not None:
        batchers["embed"] = MicroBatcher(_bound(query_vectors, bundle), inference, max_batch)
    return Service(bundle, limits, decoder, batchers)


def _bound(function: Callable[..., list[np.ndarray]], *arguments: Any) -> Callable[[list[Example]], list[np.ndarray]]:
    return lambda examples: function(*arguments, examples)


def _with_request_body(body: RequestBody) -> type[Operation]:
    """An ``Operation`` documenting ``body``: these handlers parse their bodies themselves."""

    @dataclasses.dataclass
    class WithRequestBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return WithRequestBody


ERROR_RESPONSES = {
    400: ResponseSpec(ErrorBody, description="The body is not valid JSON, form or multipart data", generate_examples=False),
    404: ResponseSpec(ErrorBody, description="The bundle lacks the model or index, or no such product", generate_examples=False),
    413: ResponseSpec(ErrorBody, description="The body is over the size limit", generate_examples=False),
    415: ResponseSpec(ErrorBody, description="The body's media type is not one this endpoint reads", generate_examples=False),
    422: ResponseSpec(ErrorBody, description="A field is missing or unusable (named in `field`)", generate_examples=False),
}


def _error_response(_request: Request, error: ApiError) -> Response[ErrorBody]:
    return Response(ErrorBody(error.status_code, error.detail, error.field), status_code=error.status_code)


def _media_type(request: Request) -> str:
    return request.content_type[0]


async def _body(request: Request) -> bytes:
    """The body, at most the app's size limit (413 past it)."""
    return await request.body()


def _json(body: bytes, shape: type[msgspec.Struct]) -> Any:
    """``body`` decoded as ``shape``: 400 when it is not JSON, 422 naming the field when it does not fit."""
    try:
        return msgspec.json.decode(body, type=shape)
    except msgspec.ValidationError as error:
        raise ApiError(422, str(error), _json_error_field(str(error))) from None
    except msgspec.DecodeError as error:
        raise ApiError(400, f"the body is not JSON: {error}") from None


def _json_error_field(message: str) -> str | None:
    match = re.search(r"field `([^`]+)`|at `\$\.([^`.\[]+)", message)
    return None if match is None else match.group(1) or match.group(2)


async def _form(request: Request, accepted: tuple[str, ...], names: tuple[str, ...]) -> dict[str, bytes]:
    """The fields of a form body of one of the ``accepted`` media types (415 for any other); a field
    not in ``names`` is 422."""
    media_type = _media_type(request)
    if media_type not in accepted:
        raise ApiError(415, f"expected a body of type {' or '.join(accepted)}, got {media_type or 'none'}")
    body = await _body(request)
    if media_type == URLENCODED:
        fields = _urlencoded_fields(body)
    else:
        fields = _multipart_fields(body, request.content_type[1].get("boundary", ""))
    unknown = next((name for name in fields if name not in names), None)
    if unknown is not None:
        raise ApiError(422, f"unknown field {unknown!r} (expected {', '.join(names)})", unknown)
    return fields


def _multipart_fields(body: bytes, boundary: str) -> dict[str, bytes]:
    """The parts of a multipart body by name, kept in memory (400 when malformed, 422 for a repeated name)."""
    from multipart import MultipartError, MultipartSegment, PushMultipartParser

    fields: dict[str, bytes] = {}
    name, chunks = "", []
    try:
        with PushMultipartParser(boundary, max_segment_count=MAX_FORM_PARTS) as parser:
            for event in [*parser.parse(body), *parser.parse(b"")]:
                if isinstance(event, MultipartSegment):
                    name, chunks = event.name or "", []
                elif event is not None:
                    chunks.append(event)
                elif name in fields:
                    raise ApiError(422, f"field {name} is given more than once", name)
                else:
                    fields[name] = b"".join(chunks)
    except MultipartError as error:
        raise ApiError(400, f"the body is not valid multipart/form-data: {error}") from None
    return fields


def _urlencoded_fields(body: bytes) -> dict[str, bytes]:
    try:
        pairs = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=MAX_FORM_PARTS)
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(400, f"the body is not valid form data: {error}") from None
    repeated = next((name for name, values in pairs.items() if len(values) > 1), None)
    if repeated is not None:
        raise ApiError(422, f"field {repeated} is given more than once", repeated)
    return {name: values[0].encode() for name, values in pairs.items()}


def _required(fields: Mapping[str, bytes], name: str) -> bytes:
    if name not in fields:
        raise ApiError(422, f"field {name} is missing", name)
    return fields[name]


def _decoded(value: bytes, field: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, f"{field} is not UTF-8 text", field) from None


def _integer(value: bytes, field: str) -> int:
    text = _decoded(value, field).strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,9}", text):
        raise ApiError(422, f"{field} must be an integer", field)
    return int(text)
