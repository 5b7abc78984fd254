"""Serving the app with uvicorn: ``serve`` (``fbml serve``), ``serving`` (a server in a thread, for a
block), and the connection timeouts both use.

``serve`` loads the bundle for its runtime (torch, or ONNX Runtime: then torch is never imported),
names its model version (the SHA-256 of its manifest), writes uvicorn's own lines in the app's log
format (the app writes the access lines, with request ids), and with several workers puts the
metrics in prometheus-client's multiprocess mode (a fresh ``$PROMETHEUS_MULTIPROC_DIR`` unless set).

uvicorn closes a connection idle between requests (``timeout_keep_alive``) but waits forever for a
request that stops arriving. ``ReadTimeoutH11Protocol`` closes those: a request's head must arrive
within ``read_timeout`` seconds of the connection opening (or of the last answer), and its body
may pause no longer than ``read_timeout`` between bytes and, once it has had ``read_timeout`` seconds,
must average ``MIN_BODY_RATE`` bytes a second (a trickle would hold its connection and buffer for ever).
SIGTERM stops ``serve`` gracefully with exit status 0: with one worker it drains first (``DrainingServer``:
readiness 503 at once, new requests refused, those in flight answered within ``grace`` seconds); with several,
uvicorn stops taking connections and gives those in flight ``grace`` seconds. ``$PROMETHEUS_MULTIPROC_DIR`` is
checked before any worker starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import h11
import msgspec
import uvicorn
from litestar import Litestar
from uvicorn.protocols.http.h11_impl import H11Protocol

from fbml.bundle.bundle import Bundle
from fbml.bundle.store import load_bundle
from fbml.errors import FbmlError
from fbml.serving.app import create_app
from fbml.serving.metrics import MULTIPROCESS_ENV
from fbml.serving.tracing import exporting_provider
from fbml.serving.traffic import DRAIN_KEY, Drain
from fbml.vision.photos import DEFAULT_MAX_IMAGE_PIXELS

BUNDLE_ENV = "FBML_BUNDLE"
THREADS_ENV = "FBML_THREADS"
OPTIONS_ENV = "FBML_APP_OPTIONS"
DEFAULT_READ_TIMEOUT = 30.0
MIN_BODY_RATE = 20_000.0
"""Bytes per second a body must average once it has had ``read_timeout`` seconds: a client trickling a byte
at a time never pauses long enough to be cut, but would hold its connection and what it sent for ever."""
KEEP_ALIVE_SECONDS = 5
DEFAULT_GRACE = 30.0
"""Seconds the requests in flight at SIGTERM have to be answered (Kubernetes waits 30 s before SIGKILL)."""
WORKER_STARTUP_SECONDS = 120
"""How long a worker may take to import, load its bundle and answer uvicorn's health check (5 s by
default, which a busy machine overran: the workers were restarted for ever)."""


class AppOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``create_app`` settings ``fbml serve`` takes (passed to worker processes as JSON)."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    decode_workers: int = 1
    runtime: str = "torch"
    log_format: str = "text"
    log_predictions: str | None = None
    """A folder for the prediction log (``fbml.serving.prediction_log``); None: no log."""
    max_queue: int | None = None
    timeout: float | None = None
    cors_origins: tuple[str, ...] = ()
    grace: float = DEFAULT_GRACE
    otel: bool = False
    photo_dir: str | None = None


def serve(bundle_dir: Path, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1, options: AppOptions = AppOptions()) -> None:
    """Serve the bundle with uvicorn in ``workers`` processes (``serving_threads`` inference threads each), until
    SIGTERM or Ctrl-C. SIGTERM is a normal stop: the server shuts down gracefully and this returns (exit 0)."""

    check_metrics_folder(os.environ.get(MULTIPROCESS_ENV))  # a bad setting stops here, before any worker starts
    threads = serving_threads(workers)
    served = served_bundle(bundle_dir, options.runtime, threads)  # in this process too: a bad bundle stops here
    settings = {"host": host, "port": port, "access_log": False, "log_config": uvicorn_logging(options.log_format),
                "timeout_graceful_shutdown": max(1, round(options.grace)), **uvicorn_timeouts(DEFAULT_READ_TIMEOUT)}  # fmt: skip
    # uvicorn handles SIGTERM, then raises it again to the handler it found: found this one, the process ends 0.
    signal.signal(signal.SIGTERM, _stopped)
    if workers == 1:
        DrainingServer(uvicorn.Config(app_over(served, options), **settings), Drain(options.grace)).run()
        return
    os.environ[BUNDLE_ENV] = str(bundle_dir.resolve())
    os.environ[THREADS_ENV] = str(threads)
    os.environ[OPTIONS_ENV] = msgspec.json.encode(options).decode()
    with contextlib.ExitStack() as stack:
        if not os.environ.get(MULTIPROCESS_ENV):
            os.environ[MULTIPROCESS_ENV] = stack.enter_context(tempfile.TemporaryDirectory(prefix="fbml-metrics-"))
        uvicorn.run("fbml.serving.server:app_from_env", factory=True, workers=workers,
                    timeout_worker_healthcheck=WORKER_STARTUP_SECONDS, **settings)  # fmt: skip


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining on SIGTERM (``fbml.serving.traffic``): its ``Drain`` goes in every request's
    ASGI state; the first SIGTERM starts it, and the server stops once it is done (a second signal: at once)."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.lifespan.state[DRAIN_KEY] = self.drain
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGTERM and not self.drain.started:
            self._captured_signals.append(sig)  # raised again once stopped, as uvicorn does
            self.drain.start()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain.done():
            self.should_exit = True
        return bool(await super().on_tick(counter))


def _stopped(_signal: int, _frame: object) -> None:
    """SIGTERM once the server has shut down: nothing more to do."""


def check_metrics_folder(folder: str | None) -> None:
    """Refuse ``$PROMETHEUS_MULTIPROC_DIR`` (when set) unless it names a folder this process can write files in:
    else every worker would fail at its first metric, and be restarted for ever."""
    if not folder:
        return
    path = Path(folder)
    if not path.is_dir():
        raise FbmlError(f"{MULTIPROCESS_ENV}={folder}: {'not a folder' if path.exists() else 'no such folder'}")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".fbml-check-"):
            pass
    except OSError as error:
        raise FbmlError(f"{MULTIPROCESS_ENV}={folder}: cannot write in it ({error.strerror or type(error).__name__})") from None


def app_from_env() -> Litestar:
    """``create_app`` over the bundle named by ``$FBML_BUNDLE`` (a uvicorn factory: one load per worker)."""
    if BUNDLE_ENV not in os.environ:
        raise FbmlError(f"set {BUNDLE_ENV} to the bundle directory to serve")
    options = msgspec.json.decode(os.environ.get(OPTIONS_ENV, "{}"), type=AppOptions)
    threads = int(os.environ.get(THREADS_ENV, serving_threads(1)))
    return app_over(served_bundle(Path(os.environ[BUNDLE_ENV]), options.runtime, threads), options)


def app_over(bundle: Bundle, options: AppOptions) -> Litestar:
    """``create_app`` over ``bundle`` with ``options``."""
    log_predictions = None if options.log_predictions is None else Path(options.log_predictions)
    photo_dir = None if options.photo_dir is None else Path(options.photo_dir)
    return create_app(bundle, max_image_pixels=options.max_image_pixels, decode_workers=options.decode_workers,
                      log_format=options.log_format, log_predictions=log_predictions, max_queue=options.max_queue,
                      timeout=options.timeout, cors_origins=options.cors_origins,
                      tracer_provider=exporting_provider() if options.otel else None, photo_dir=photo_dir)  # fmt: skip


def served_bundle(bundle_dir: Path, runtime: str, threads: int) -> Bundle:
    """The bundle loaded for ``runtime`` with ``threads`` inference threads (its model version: the SHA-256 of
    the manifest it was loaded from)."""
    if runtime == "torch":
        from fbml.modeling.torch_runtime import set_threads

        set_threads(threads)
    return load_bundle(bundle_dir, runtime=runtime, onnx_threads=threads if runtime == "onnx" else None)


def serving_threads(workers: int) -> int:
    """Inference threads per worker process: its share of the cores, less one for the event loop and
    photo decoding (on a busy 2-core machine two inference threads ran several times slower than one)."""
    return max(1, (os.cpu_count() or 1) // workers - 1)


def uvicorn_logging(log_format: str) -> dict[str, Any]:
    """uvicorn's logging settings: its own lines (start, stop, errors) in ``log_format`` on stderr."""
    formatter = "fbml.serving.telemetry.JsonFormatter" if log_format == "json" else "fbml.serving.telemetry.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"fbml": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "fbml", "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
    }


@contextlib.contextmanager
def serving(app: Litestar, *, read_timeout: float = DEFAULT_READ_TIMEOUT, startup_seconds: float = 60.0) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free 127.0.0.1 port, for the block: its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False,
                            **uvicorn_timeouts(read_timeout))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fbml-serving", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_seconds
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise FbmlError("the server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def free_port() -> int:
    """A port free on 127.0.0.1 just now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def uvicorn_timeouts(read_timeout: float) -> dict[str, Any]:
    """uvicorn's settings for closing connections that idle or stall (``ReadTimeoutH11Protocol``)."""
    protocol = functools.partial(ReadTimeoutH11Protocol, read_timeout=read_timeout)
    return {"http": cast(type[asyncio.Protocol], protocol), "timeout_keep_alive": KEEP_ALIVE_SECONDS}


class ReadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request stops arriving or trickles (see the module)."""

    def __init__(self, *args: Any, read_timeout: float, min_body_rate: float = MIN_BODY_RATE, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout
        self.min_body_rate = min_body_rate
        self._stall: asyncio.TimerHandle | None = None
        self._rate_check: asyncio.TimerHandle | None = None
        self._body: tuple[float, int] | None = None  # when the body began arriving, and the bytes since

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch(restart=True)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        reading_body = self.conn.their_state is h11.SEND_BODY
        if reading_body:
            started, received = self._body or (self.loop.time(), 0)
            self._body = (started, received + len(data))
            if self._rate_check is None:
                self._rate_check = self.loop.call_at(started + self.read_timeout, self._check_rate)
        else:
            self._end_body()
        self._watch(restart=reading_body)
        if reading_body and self._too_slow():
            self._close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._end_body()
        self._watch(restart=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._unwatch()
        self._end_body()
        super().connection_lost(exc)

    def _watch(self, *, restart: bool) -> None:
        """Time the request being read (``restart``: from now); stop timing once it is read."""
        if self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._unwatch()
        elif restart or self._stall is None:
            self._unwatch()
            self._stall = self.loop.call_later(self.read_timeout, self._close)

    def _unwatch(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _end_body(self) -> None:
        self._body = None
        if self._rate_check is not None:
            self._rate_check.cancel()
            self._rate_check = None

    def _too_slow(self) -> bool:
        """Whether the body, past its first ``read_timeout`` seconds, has come slower than ``min_body_rate`` on average."""
        if self._body is None or self.conn.their_state is not h11.SEND_BODY:
            return False
        started, received = self._body
        elapsed = self.loop.time() - started
        return elapsed >= self.read_timeout and received < self.min_body_rate * elapsed

    def _check_rate(self) -> None:
        self._rate_check = None
        if self._too_slow():
            self._close()
        elif self._body is not None:  # still coming, fast enough so far: look again
            self._rate_check = self.loop.call_later(self.read_timeout, self._check_rate)

    def _close(self) -> None:
        self._stall = None
        if not self.transport.is_closing():
            self.transport.close()
