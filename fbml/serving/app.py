"""The HTTP API: ``create_app(bundle)`` builds a Litestar app over a loaded bundle.

Models are loaded once (by the caller) and put in eval mode once. The app's lifespan opens the
service's threads (``fbml.serving.service``) and closes them. Handlers read the body in memory (at
most ``max_body_bytes``, else 413; uploads are never written anywhere), photos are decoded on
``decode_workers`` threads within ``PhotoLimits``, and inference runs on one thread, micro-batched.
Every answer carries security headers; the OpenAPI document is served as JSON only (``/schema``),
with no browser pages, whose scripts would come from a CDN.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.logging import LoggingConfig
from litestar.middleware import ASGIMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from fbml import __version__
from fbml.bundle.store import Bundle
from fbml.errors import FbmlError
from fbml.serving.batching import MAX_BATCH
from fbml.serving.errors import ApiError, api_error_response, http_error_response
from fbml.serving.handlers import ENDPOINTS, ERROR_RESPONSES, body_provider, bundle_serves, health
from fbml.serving.photos import DEFAULT_DECODE_SECONDS, DEFAULT_MAX_IMAGE_PIXELS, PhotoLimits
from fbml.serving.requests import TextRules, operation_with
from fbml.serving.service import STATE_KEY, running_service, service_of

DEFAULT_MAX_BODY_BYTES = 10 * 2**20
DEFAULT_MAX_TEXT_CHARS = 20_000
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
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
) -> Litestar:
    """The API over ``bundle`` (its models are put in eval mode here, once)."""
    for name, value in [("max_body_bytes", max_body_bytes), ("max_text_chars", max_text_chars),
                        ("max_image_pixels", max_image_pixels), ("decode_seconds", decode_seconds),
                        ("decode_workers", decode_workers), ("max_batch", max_batch)]:  # fmt: skip
        if value <= 0:
            raise FbmlError(f"{name} must be positive, got {value}")
    for kind in bundle.models:
        bundle.model(kind)  # eval mode, once
    text = TextRules(max_text_chars)
    photos = PhotoLimits(max_image_pixels, decode_seconds)
    routes = [
        post(
            endpoint.path,
            status_code=200,
            guards=[bundle_serves],
            opt={"needs": endpoint.needs},
            dependencies={"given": body_provider(endpoint.body)},
            operation_class=operation_with(endpoint.body.request_body(text)),
            responses=ERROR_RESPONSES,
        )(endpoint.handler)
        for endpoint in ENDPOINTS
    ]
    lifespan = functools.partial(_lifespan, bundle=bundle, text=text, photos=photos, max_batch=max_batch,
                                 decode_workers=decode_workers)  # fmt: skip
    return Litestar(
        route_handlers=[get("/health", sync_to_thread=False)(health), *routes],
        dependencies={"service": Provide(service_of, sync_to_thread=False)},
        lifespan=[lifespan],
        exception_handlers={ApiError: api_error_response, HTTPException: http_error_response},
        middleware=[ReadsRefusedBodies(2 * max_body_bytes)],
        before_send=[with_security_headers],
        request_max_body_size=max_body_bytes,
        openapi_config=OpenAPIConfig(title="fbml", version=__version__, render_plugins=[JsonRenderPlugin(path=["/openapi.json", "/"])]),
        logging_config=LoggingConfig(configure_root_logger=False),
    )


@contextlib.asynccontextmanager
async def _lifespan(
    app: Litestar, *, bundle: Bundle, text: TextRules, photos: PhotoLimits, max_batch: int, decode_workers: int
) -> AsyncIterator[None]:
    """The service's threads, open while the app runs (in the app's state for the handlers)."""
    with running_service(bundle, text, photos, max_batch=max_batch, decode_workers=decode_workers) as service:
        app.state[STATE_KEY] = service
        try:
            yield
        finally:
            del app.state[STATE_KEY]


async def with_security_headers(message: Message, _scope: Scope) -> None:
    """``before_send`` hook: every answer says not to sniff, frame, load anything or send a referrer."""
    if message["type"] == "http.response.start":
        message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]


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
