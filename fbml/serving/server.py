"""Serving the app with uvicorn: ``serve`` (``fbml serve``), ``serving`` (a server in a thread, for a
block), and the connection timeouts both use.

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
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import h11
import msgspec
import torch
from litestar import Litestar
from uvicorn.protocols.http.h11_impl import H11Protocol

from fbml.bundle.store import load_bundle
from fbml.errors import FbmlError
from fbml.serving.app import create_app
from fbml.serving.photos import DEFAULT_MAX_IMAGE_PIXELS

BUNDLE_ENV = "FBML_BUNDLE"
THREADS_ENV = "FBML_TORCH_THREADS"
OPTIONS_ENV = "FBML_APP_OPTIONS"
DEFAULT_READ_TIMEOUT = 30.0
KEEP_ALIVE_SECONDS = 5


class AppOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``create_app`` settings ``fbml serve`` takes (passed to worker processes as JSON)."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    decode_workers: int = 1


def serve(
    bundle_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    decode_workers: int = 1,
) -> None:
    """Serve the bundle with uvicorn in ``workers`` processes (``serving_threads`` torch threads each)."""
    import uvicorn

    options = AppOptions(max_image_pixels, decode_workers)
    threads = serving_threads(workers)
    bundle = load_bundle(bundle_dir)
    timeouts = uvicorn_timeouts(DEFAULT_READ_TIMEOUT)
    if workers == 1:
        torch.set_num_threads(threads)
        uvicorn.run(create_app(bundle, **msgspec.structs.asdict(options)), host=host, port=port, **timeouts)
        return
    os.environ[BUNDLE_ENV] = str(bundle_dir.resolve())
    os.environ[THREADS_ENV] = str(threads)
    os.environ[OPTIONS_ENV] = msgspec.json.encode(options).decode()
    uvicorn.run("fbml.serving.server:app_from_env", factory=True, host=host, port=port, workers=workers, **timeouts)


def app_from_env() -> Litestar:
    """``create_app`` over the bundle named by ``$FBML_BUNDLE`` (a uvicorn factory: one load per worker)."""
    if BUNDLE_ENV not in os.environ:
        raise FbmlError(f"set {BUNDLE_ENV} to the bundle directory to serve")
    if THREADS_ENV in os.environ:
        torch.set_num_threads(int(os.environ[THREADS_ENV]))
    options = msgspec.json.decode(os.environ.get(OPTIONS_ENV, "{}"), type=AppOptions)
    return create_app(load_bundle(Path(os.environ[BUNDLE_ENV])), **msgspec.structs.asdict(options))


def serving_threads(workers: int) -> int:
    """Torch threads per worker process: its share of the cores, less one for the event loop and
    photo decoding (on a busy 2-core machine two inference threads ran several times slower than one)."""
    return max(1, (os.cpu_count() or 1) // workers - 1)


@contextlib.contextmanager
def serving(app: Litestar, *, read_timeout: float = DEFAULT_READ_TIMEOUT, startup_seconds: float = 60.0) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free 127.0.0.1 port, for the block: its base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", **uvicorn_timeouts(read_timeout))
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
