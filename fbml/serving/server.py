"""Serving the app with uvicorn: ``serve`` (``fbml serve``), ``serving`` (a server in a thread, for a
block), and the connection timeouts both use.

``serve`` loads the bundle for its runtime (torch, or ONNX Runtime: then torch is never imported),
names its model version (the SHA-256 of its manifest), writes uvicorn's own lines in the app's log
format (the app writes the access lines, with request ids), and with several workers puts the
metrics in prometheus-client's multiprocess mode (a fresh ``$PROMETHEUS_MULTIPROC_DIR`` unless set).

uvicorn closes a connection idle between requests (``timeout_keep_alive``) but waits forever for a
request that stops arriving. ``ReadTimeoutH11Protocol`` closes those: a request's head must arrive
within ``read_timeout`` seconds of the connection opening (or of the last answer), and its body
may pause no longer than ``read_timeout`` between bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import attrs
import h11
import msgspec
from litestar import Litestar
from uvicorn.protocols.http.h11_impl import H11Protocol

from fbml.bundle.bundle import Bundle
from fbml.bundle.store import load_bundle
from fbml.errors import FbmlError
from fbml.modeling.onnx_runtime import onnx_model
from fbml.serving.app import create_app
from fbml.serving.metrics import MULTIPROCESS_ENV
from fbml.vision.photos import DEFAULT_MAX_IMAGE_PIXELS

BUNDLE_ENV = "FBML_BUNDLE"
THREADS_ENV = "FBML_THREADS"
OPTIONS_ENV = "FBML_APP_OPTIONS"
DEFAULT_READ_TIMEOUT = 30.0
KEEP_ALIVE_SECONDS = 5
WORKER_STARTUP_SECONDS = 120
"""How long a worker may take to import, load its bundle and answer uvicorn's health check (5 s by
default, which a busy machine overran: the workers were restarted for ever)."""


class AppOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``create_app`` settings ``fbml serve`` takes (passed to worker processes as JSON)."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    decode_workers: int = 1
    runtime: str = "torch"
    log_format: str = "text"


def serve(bundle_dir: Path, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1, options: AppOptions = AppOptions()) -> None:
    """Serve the bundle with uvicorn in ``workers`` processes (``serving_threads`` inference threads each)."""
    import uvicorn

    threads = serving_threads(workers)
    served = served_bundle(bundle_dir, options.runtime, threads)  # in this process too: a bad bundle stops here
    settings = {"host": host, "port": port, "access_log": False, "log_config": uvicorn_logging(options.log_format),
                **uvicorn_timeouts(DEFAULT_READ_TIMEOUT)}  # fmt: skip
    if workers == 1:
        uvicorn.run(app_over(served, options), **settings)
        return
    os.environ[BUNDLE_ENV] = str(bundle_dir.resolve())
    os.environ[THREADS_ENV] = str(threads)
    os.environ[OPTIONS_ENV] = msgspec.json.encode(options).decode()
    with contextlib.ExitStack() as stack:
        if not os.environ.get(MULTIPROCESS_ENV):
            os.environ[MULTIPROCESS_ENV] = stack.enter_context(tempfile.TemporaryDirectory(prefix="fbml-metrics-"))
        uvicorn.run("fbml.serving.server:app_from_env", factory=True, workers=workers,
                    timeout_worker_healthcheck=WORKER_STARTUP_SECONDS, **settings)  # fmt: skip


def app_from_env() -> Litestar:
    """``create_app`` over the bundle named by ``$FBML_BUNDLE`` (a uvicorn factory: one load per worker)."""
    if BUNDLE_ENV not in os.environ:
        raise FbmlError(f"set {BUNDLE_ENV} to the bundle directory to serve")
    options = msgspec.json.decode(os.environ.get(OPTIONS_ENV, "{}"), type=AppOptions)
    threads = int(os.environ.get(THREADS_ENV, serving_threads(1)))
    return app_over(served_bundle(Path(os.environ[BUNDLE_ENV]), options.runtime, threads), options)


def app_over(bundle: Bundle, options: AppOptions) -> Litestar:
    """``create_app`` over ``bundle`` with ``options``."""
    return create_app(bundle, max_image_pixels=options.max_image_pixels, decode_workers=options.decode_workers,
                      log_format=options.log_format)  # fmt: skip


def served_bundle(bundle_dir: Path, runtime: str, threads: int) -> Bundle:
    """The bundle loaded for ``runtime`` with ``threads`` inference threads (its model version: the SHA-256 of
    the manifest it was loaded from)."""
    bundle = load_bundle(bundle_dir, runtime=runtime)
    if runtime == "torch":
        from fbml.modeling.torch_runtime import set_threads

        set_threads(threads)
    else:  # the sessions again, on this many threads
        for kind, model in bundle.models.items():
            if model.onnx is not None:
                bundle = bundle.with_model(attrs.evolve(model, module=onnx_model(kind, model.onnx, threads=threads)))
    return bundle


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
    import uvicorn

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
    """uvicorn's h11 protocol, closing a connection whose request stops arriving (see the module)."""

    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout
        self._stall: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch(restart=True)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch(restart=self.conn.their_state is h11.SEND_BODY)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch(restart=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._unwatch()
        super().connection_lost(exc)

    def _watch(self, *, restart: bool) -> None:
        """Time the request being read (``restart``: from now); stop timing once it is read."""
        if self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._unwatch()
        elif restart or self._stall is None:
            self._unwatch()
            self._stall = self.loop.call_later(self.read_timeout, self._stalled)

    def _unwatch(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        if not self.transport.is_closing():
            self.transport.close()
