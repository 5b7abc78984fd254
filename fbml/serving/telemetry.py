"""Request ids, the access log and the request metrics, around every request the app answers.

``Observed`` wraps the app's whole ASGI handler (routing included, so a 404 of the router is seen
too): it takes the client's ``X-Request-ID`` when it is sane (1-128 visible ASCII characters) or
makes one (a uuid4's hex), sends it back on every answer, holds it in the app's context variable for
the log lines written while the request runs, and writes one access line per request with its route
template, status and duration. Logs are text or JSON (one object per line).
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys
import time
import uuid
from typing import Any

import attrs
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from fbml.serving.metrics import UNMATCHED, Metrics

REQUEST_ID_HEADER = "x-request-id"
SANE_REQUEST_ID = re.compile(rb"[!-~]{1,128}")
LOG_FORMATS = ("text", "json")
FIELDS = ("request_id", "route", "status", "duration_ms")
"""What a log line carries beside its time, level and message (null when it has none)."""
MAX_LOGGED_PATH = 200


def request_id(scope: Scope) -> str:
    """The request's own ``X-Request-ID`` when it is sane, else a new one."""
    given = dict(scope.get("headers", ())).get(REQUEST_ID_HEADER.encode())
    return given.decode() if given is not None and SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


@attrs.frozen(eq=False)
class Observed:
    """The app's ASGI handler, with request ids, the access log and the request metrics (see the module)."""

    app: ASGIApp
    metrics: Metrics
    logger: logging.Logger
    current: contextvars.ContextVar[str | None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        rid = request_id(scope)
        token = self.current.set(rid)
        status = 500  # if the app ends without answering
        started = time.perf_counter()

        async def identified(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER.encode(), rid.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, identified)
        finally:
            seconds = time.perf_counter() - started
            route = str(scope.get("path_template") or UNMATCHED)
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            path = ascii(scope["path"][:MAX_LOGGED_PATH])[1:-1]  # escaped: no line breaks from a client
            self.logger.info(f"{method} {path} {status}",
                             extra={"route": route, "status": status, "duration_ms": round(seconds * 1000, 3)})  # fmt: skip
            self.current.reset(token)


def app_logger(log_format: str, current: contextvars.ContextVar[str | None]) -> logging.Logger:
    """The app's own logger (not in logging's registry), writing ``log_format`` lines to stderr, each
    with the id of the request it was written for."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r} (one of {', '.join(LOG_FORMATS)})")
    logger = logging.Logger("fbml.serving", logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter(current))
    logger.addHandler(handler)
    return logger


@attrs.frozen(eq=False)
class RequestIdFilter:
    """Gives each record the id of the request being answered (``current``), unless it has one."""

    current: contextvars.ContextVar[str | None]

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = self.current.get()
        return True


def log_fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record as the fields of a log line: time (UTC, ISO 8601), level, message and ``FIELDS``."""
    fields = {
        "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "message": record.getMessage(),
        **{name: getattr(record, name, None) for name in FIELDS},
    }
    if record.exc_info:
        fields["exception"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``log_fields``)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(log_fields(record), ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """``time level "message" key=value ...`` on one line (``log_fields``): the message in double quotes, JSON-escaped,
    so that nothing a client sent (a path with spaces and ``key=value`` in it, line breaks) reads as a field."""

    def format(self, record: logging.LogRecord) -> str:
        fields = log_fields(record)
        pairs = " ".join(f"{name}={value}" for name, value in fields.items() if name in FIELDS and value is not None)
        message = json.dumps(str(fields["message"]), ensure_ascii=True)
        line = f"{fields['time']} {fields['level']} {message} {pairs}".rstrip()
        return line if "exception" not in fields else f"{line} {fields['exception']!r}"
