"""Optional OpenTelemetry tracing (``pip install 'fbml[otel]'``, ``fbml serve --otel``).

``Tracing`` makes spans when it has a tracer, and nothing otherwise (opentelemetry is imported only by
``otel_tracing``, when tracing is asked for). Every span carries the request id (``fbml.request_id``):
the request's span (``Traced``, around routing: ``POST /predict/text``), and within it the photo's decoding
(``decode``), the wait for and run of the request's micro-batch (``batch``, named by its batcher) and the
search of the index (``search``). ``fbml serve --otel`` exports them with OTLP over HTTP when
``opentelemetry-exporter-otlp-proto-http`` is installed (configured by the ``OTEL_EXPORTER_OTLP_*``
variables), else writes them to stderr.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import attrs
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from fbml import __version__

REQUEST_ID = "fbml.request_id"


@attrs.frozen
class Tracing:
    """Spans of ``tracer`` (None: no spans), each carrying the request id in ``current``."""

    tracer: Any | None = None
    current: contextvars.ContextVar[str | None] | None = None

    @contextlib.contextmanager
    def span(self, name: str, **attributes: str | int) -> Iterator[Any | None]:
        """A span named ``name`` for the block, current within it (None without a tracer)."""
        if self.tracer is None:
            yield None
            return
        with self.tracer.start_as_current_span(name, attributes={REQUEST_ID: self._request_id(), **attributes}) as span:
            yield span

    def _request_id(self) -> str:
        return (self.current.get() if self.current is not None else None) or ""


def otel_tracing(tracer_provider: Any, current: contextvars.ContextVar[str | None]) -> Tracing:
    """``Tracing`` with fbml's tracer from ``tracer_provider`` (an OpenTelemetry ``TracerProvider``)."""
    from opentelemetry import trace

    return Tracing(trace.get_tracer("fbml.serving", __version__, tracer_provider=tracer_provider), current)


def exporting_provider() -> Any:
    """An SDK ``TracerProvider`` exporting in batches: OTLP over HTTP where its exporter is installed, else to stderr."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        exporter = ConsoleSpanExporter()
    else:
        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "fbml"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


@attrs.frozen
class Traced:
    """The app's ASGI handler with a span for each HTTP request (its method and route, then its status)."""

    app: ASGIApp
    tracing: Tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.tracing.tracer is None or scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "")
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracing.span(f"{method} {scope['path']}", **{"http.request.method": method, "url.path": scope["path"]}) as span:
            try:
                await self.app(scope, receive, sending)
            finally:
                if span is not None:
                    span.set_attribute("http.response.status_code", status)
                    if scope.get("path_template"):
                        span.update_name(f"{method} {scope.get('path_template')}")
