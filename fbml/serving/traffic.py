"""Traffic: a bound on waiting inference work, a deadline for every request, and draining on SIGTERM.

``Traffic`` wraps the app's ASGI handler. With ``max_queue`` N, at most N inference requests (``POST`` to
``/predict/*``, ``/recommend`` or ``/v2/models/*/infer``) are being answered at once, from their head's arrival
to their answer: one more is refused at once with 503 and ``Retry-After`` (counted in
``fbml_http_requests_shed_total``), so a flood waits in no queue. With ``timeout`` S, a request not answered
within S seconds gets 504 (the JSON error shape). A ``Drain`` in the request's ASGI state (put there by
``fbml.serving.server``'s server on SIGTERM) turns the readiness probes to 503 at once and refuses every new
request but the liveness probe and the metrics with 503, while the requests already in flight are answered.
"""

from __future__ import annotations

import asyncio
import re
import time

import attrs
import msgspec
from contracts.api import ErrorBody, Probe
from contracts.oip import Readiness
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send

from fbml.serving.metrics import Metrics

DRAIN_KEY = "fbml.drain"
"""Where a request's ASGI state holds the server's ``Drain``."""
RETRY_AFTER_SECONDS = 1
INFERENCE_PATH = re.compile(r"/predict/[^/]+|/recommend|/v2/models/[^/]+/infer")
UNTOUCHED_WHILE_DRAINING = ("/health/live", "/v2/health/live", "/metrics")
Headers = tuple[tuple[bytes, bytes], ...]


@attrs.define(eq=False)
class Drain:
    """Whether the server is draining (since SIGTERM), until when, and the requests it is answering.

    Mutable by nature; touched on the event loop only (the signal handler runs there too)."""

    grace: float
    deadline: float | None = None
    in_flight: int = 0

    @property
    def started(self) -> bool:
        return self.deadline is not None

    def start(self) -> None:
        """Start draining: ``grace`` seconds from now for the requests in flight."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.grace

    def done(self) -> bool:
        """Whether draining has ended: no request in flight, or the grace is over."""
        return self.deadline is not None and (self.in_flight == 0 or time.monotonic() >= self.deadline)


@attrs.define(eq=False)
class Traffic:
    """The app's ASGI handler within the bounds (see the module); ``headers`` go on every answer it makes itself."""

    app: ASGIApp
    metrics: Metrics
    model_version: str
    headers: Headers
    max_queue: int | None = None
    timeout: float | None = None
    _inference: int = attrs.field(default=0, init=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        drain = (scope.get("state") or {}).get(DRAIN_KEY)
        path = scope["path"]
        if isinstance(drain, Drain) and drain.started and path not in UNTOUCHED_WHILE_DRAINING:
            await self._draining(path, send)
            return
        inference = scope.get("method") == "POST" and INFERENCE_PATH.fullmatch(path) is not None
        if inference and self.max_queue is not None and self._inference >= self.max_queue:
            self.metrics.shed.inc()
            detail = f"{self._inference} inference requests are waiting (the most, --max-queue): retry shortly"
            await self._refuse(send, 503, ErrorBody(503, detail), retry=True)
            return
        self._inference += inference
        if isinstance(drain, Drain):
            drain.in_flight += 1
        try:
            await self._answered(scope, receive, send)
        finally:
            self._inference -= inference
            if isinstance(drain, Drain):
                drain.in_flight -= 1

    async def _answered(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app's answer, or 504 when it has not begun within ``timeout``."""
        if self.timeout is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.timeout):
                await self.app(scope, receive, tracked)
        except TimeoutError:
            if started:
                raise
            await self._refuse(send, 504, ErrorBody(504, f"no answer within {self.timeout:g} s (--timeout)"))

    async def _draining(self, path: str, send: Send) -> None:
        """503: a readiness probe's answer (not ready), or any other request's refusal."""
        if path == "/health/ready":
            await self._refuse(send, 503, Probe("draining", self.model_version))
        elif path == "/v2/health/ready":
            await self._refuse(send, 503, Readiness(False))
        else:
            await self._refuse(send, 503, ErrorBody(503, "the server is shutting down"), retry=True, close=True)

    async def _refuse(self, send: Send, status: int, body: msgspec.Struct, *, retry: bool = False, close: bool = False) -> None:
        content = msgspec.json.encode(body)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()), *self.headers]
        if retry:
            headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
        if close:
            headers.append((b"connection", b"close"))
        await send(HTTPResponseStartEvent(type="http.response.start", status=status, headers=headers))
        await send(HTTPResponseBodyEvent(type="http.response.body", body=content, more_body=False))
