"""The HTTP API: ``create_app(bundle)`` builds a Litestar app over a loaded bundle.

Models are loaded once (by the caller; a bundle keeps its networks in eval mode). The app's lifespan
opens the service's threads (``fbml.serving.service``) and closes them. Handlers parse the body in
memory (at most ``max_body_bytes``, else 413; uploads are never written anywhere), photos are decoded
on ``decode_workers`` threads within ``PhotoLimits``, and the bundle's prediction path
(``Bundle.predict_many``, ``Bundle.similar``) runs on one thread, micro-batched.
Every answer carries security headers and an ``X-Request-ID``, and is counted in the app's own
Prometheus registry (``/metrics``); predictions and recommendations name the model version in their
body and in ``X-Model-Version``. ``/health/live`` answers while the process runs, ``/health/ready``
once every model has answered a warm-up request. ``/`` is the page to try it (``fbml.serving.page``,
its own files only); the OpenAPI document is served as JSON (``/schema``), and as Swagger UI at ``/docs``
from files installed with the package (``fbml.serving.docs``; Litestar's own schema pages would load scripts from a CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
from contracts.api import Probe
from litestar import Litestar, get, post
from litestar.config.cors import CORSConfig
from litestar.datastructures import ResponseHeader, State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from fbml import __version__
from fbml.bundle.bundle import Bundle
from fbml.errors import FbmlError
from fbml.modeling.onnx_runtime import OnnxModel
from fbml.serving.batching import MAX_BATCH
from fbml.serving.docs import docs_handlers
from fbml.serving.errors import ApiError, api_error_response, http_error_response
from fbml.serving.handlers import (
    ENDPOINTS,
    ERROR_RESPONSES,
    PHOTOS_SERVED,
    body_provider,
    bundle_serves,
    health,
    live,
    metrics,
    ready,
)
from fbml.serving.metrics import Metrics, app_metrics
from fbml.serving.oip import oip_router
from fbml.serving.page import page_handlers
from fbml.serving.photos import PhotoFolder, photo_handler
from fbml.serving.prediction_log import PredictionLog
from fbml.serving.requests import TextRules, operation_with
from fbml.serving.service import STATE_KEY, running_service, service_of
from fbml.serving.telemetry import REQUEST_ID_HEADER, Observed, app_logger
from fbml.serving.tracing import Traced, Tracing, otel_tracing
from fbml.serving.traffic import Traffic
from fbml.vision.photos import DEFAULT_DECODE_SECONDS, DEFAULT_MAX_IMAGE_PIXELS, PhotoLimits

DEFAULT_MAX_BODY_BYTES = 10 * 2**20
DEFAULT_MAX_TEXT_CHARS = 20_000
MODEL_VERSION_HEADER = "X-Model-Version"
CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
"""The policy of every answer that does not set its own."""
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    CSP,
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def create_app(
    bundle: Bundle,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    decode_seconds: float = DEFAULT_DECODE_SECONDS,
    decode_workers: int = 1,
    max_batch: int = MAX_BATCH,
    log_format: str = "text",
    log_predictions: Path | None = None,
    max_queue: int | None = None,
    timeout: float | None = None,
    cors_origins: Sequence[str] = (),
    tracer_provider: Any = None,
    photo_dir: Path | None = None,
) -> Litestar:
    """The API over ``bundle``, answering that its models are ``bundle.model_version``; its logs in
    ``log_format`` (text or json) on stderr; each prediction's row in Parquet parts in ``log_predictions``
    (``fbml.serving.prediction_log``) when given; at most ``max_queue`` inference requests at once and
    ``timeout`` seconds a request (``fbml.serving.traffic``); readable by pages from ``cors_origins``; traced by
    OpenTelemetry when given a ``tracer_provider`` (``fbml.serving.tracing``); with ``photo_dir`` (the cleaned photo
    folder), ``GET /photos/{id}`` serves the catalogue's photos from it (``fbml.serving.photos``)."""
    for name, value in [("max_body_bytes", max_body_bytes), ("max_text_chars", max_text_chars),
                        ("max_image_pixels", max_image_pixels), ("decode_seconds", decode_seconds),
                        ("decode_workers", decode_workers), ("max_batch", max_batch)]:  # fmt: skip
        if value <= 0:
            raise FbmlError(f"{name} must be positive, got {value}")
    for name, limit in [("max_queue", max_queue), ("timeout", timeout)]:
        if limit is not None and limit <= 0:
            raise FbmlError(f"{name} must be positive, got {limit}")
    model_version = bundle.model_version
    text = TextRules(max_text_chars)
    photos = PhotoLimits(max_image_pixels, decode_seconds)
    current: contextvars.ContextVar[str | None] = contextvars.ContextVar("fbml_request_id", default=None)
    logger = app_logger(log_format, current)
    tracing = Tracing(None, current) if tracer_provider is None else otel_tracing(tracer_provider, current)
    measures = app_metrics(model_version, runtime_of(bundle))
    versioned = [ResponseHeader(name=MODEL_VERSION_HEADER, value=model_version, description="The model version")]
    routes = [
        post(
            endpoint.path,
            status_code=200,
            guards=[bundle_serves],
            opt={"needs": endpoint.needs},
            dependencies={"given": body_provider(endpoint.body)},
            operation_class=operation_with(endpoint.body.request_body(text)),
            responses=ERROR_RESPONSES,
            response_headers=versioned,
        )(endpoint.handler)
        for endpoint in ENDPOINTS
    ]
    probes = [
        get("/health/live", sync_to_thread=False)(live),
        get("/health/ready", sync_to_thread=False, responses={503: ResponseSpec(Probe, description="The models are warming up")})(ready),
        get("/metrics", sync_to_thread=False, media_type=CONTENT_TYPE_PLAIN_0_0_4)(metrics),
    ]
    lifespan = functools.partial(_lifespan, bundle=bundle, model_version=model_version, text=text, photos=photos,
                                 metrics=measures, logger=logger, max_batch=max_batch, decode_workers=decode_workers,
                                 log=None if log_predictions is None else PredictionLog(log_predictions, request_ids=current),
                                 tracing=tracing)  # fmt: skip
    photos_route = [] if photo_dir is None else [photo_handler(PhotoFolder.of(photo_dir, bundle.index))]
    app = Litestar(
        route_handlers=[get("/health", sync_to_thread=False)(health), *probes, *routes, *page_handlers(), *docs_handlers(),
                        oip_router(), *photos_route],
        state=State({PHOTOS_SERVED: bool(photos_route)}),
        dependencies={"service": Provide(service_of, sync_to_thread=False)},
        lifespan=[lifespan],
        exception_handlers={ApiError: api_error_response, HTTPException: http_error_response},
        middleware=[ReadsRefusedBodies(2 * max_body_bytes)],
        before_send=[with_security_headers],
        after_exception=[LogsFailures(logger)],
        request_max_body_size=max_body_bytes,
        cors_config=CORSConfig(allow_origins=list(cors_origins), expose_headers=[MODEL_VERSION_HEADER, REQUEST_ID_HEADER])
        if cors_origins else None,
        openapi_config=OpenAPIConfig(title="fbml", version=__version__, render_plugins=[JsonRenderPlugin(path=["/openapi.json", "/"])]),
        logging_config=None,
    )
    bounded = Traffic(app.asgi_handler, measures, model_version, SECURITY_HEADERS, max_queue, timeout)
    app.asgi_handler = Observed(Traced(bounded, tracing), measures, logger, current)  # around routing: every answer
    return app


def runtime_of(bundle: Bundle) -> str:
    """``onnx`` when the bundle's networks are ONNX Runtime sessions, else ``torch``."""
    return "onnx" if any(isinstance(model.module, OnnxModel) for model in bundle.models.values()) else "torch"


@contextlib.asynccontextmanager
async def _lifespan(
    app: Litestar, *, bundle: Bundle, model_version: str, text: TextRules, photos: PhotoLimits, metrics: Metrics,
    logger: logging.Logger, max_batch: int, decode_workers: int, log: PredictionLog | None, tracing: Tracing,
) -> AsyncIterator[None]:  # fmt: skip
    """The service's threads (and the prediction log's), open while the app runs (in the app's state for the
    handlers), and its warm-up."""
    with (
        log if log is not None else contextlib.nullcontext(),
        running_service(bundle, model_version, text, photos, metrics, max_batch=max_batch, decode_workers=decode_workers,
                        log=log, tracing=tracing) as service,
    ):
        app.state[STATE_KEY] = service
        warming = asyncio.create_task(service.warm_up())
        warming.add_done_callback(functools.partial(_warmed, logger))
        try:
            yield
        finally:
            warming.cancel()
            del app.state[STATE_KEY]


def _warmed(logger: logging.Logger, warming: asyncio.Task[None]) -> None:
    """Logs the end of the warm-up: ready, or what failed (the service then stays unready)."""
    if warming.cancelled():
        return
    if warming.exception() is not None:
        logger.error("warm-up failed: the service stays unready", exc_info=warming.exception())
    else:
        logger.info("every model answered its warm-up request: ready")


async def with_security_headers(message: Message, _scope: Scope) -> None:
    """``before_send`` hook: every answer says not to sniff, frame or send a referrer, and not to load
    anything unless it sets its own Content-Security-Policy (a page does)."""
    if message["type"] == "http.response.start":
        headers = [*message.get("headers", ())]
        own_policy = any(name.lower() == CSP[0] for name, _ in headers)
        message["headers"] = [*headers, *(header for header in SECURITY_HEADERS if not (own_policy and header is CSP))]


@attrs.frozen
class LogsFailures:
    """``after_exception`` hook: an exception that becomes a 5xx is logged with its traceback."""

    logger: logging.Logger

    async def __call__(self, exception: Exception, _scope: Scope) -> None:
        if getattr(exception, "status_code", 500) >= 500:
            self.logger.error(f"{type(exception).__name__} while answering a request", exc_info=exception)


class ReadsRefusedBodies(ASGIMiddleware):
    """Reads the rest of a body the app answers before reading it whole (a 413, 415 or 404) before the
    answer goes out, when the body is at most ``max_bytes``: a client that sends its whole body before
    reading (as urllib does, closing the connection after) then hears the answer, not a connection reset."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        ended = False

        async def tracked() -> Any:
            nonlocal ended
            message = await receive()
            ended = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def after_the_body(message: Message) -> None:
            if message["type"] == "http.response.start" and not ended and self._declared_within(scope):
                read = 0
                while not ended and read <= self.max_bytes:  # a body without a declared length may go on
                    read += len((await tracked()).get("body", b""))
            await send(message)

        await next_app(scope, tracked, after_the_body)

    def _declared_within(self, scope: Scope) -> bool:
        """Whether the request's declared length (if any) is at most ``max_bytes``."""
        length = dict(scope.get("headers", ())).get(b"content-length", b"0")
        return not length.isdigit() or int(length) <= self.max_bytes
