"""Load benchmark of the HTTP API against the models called directly, in the same run.

Starts uvicorn on a free 127.0.0.1 port with a bundle (``--bundle``, or a small one trained here on
the sample marketplace), runs ``--clients`` concurrent asyncio keep-alive clients for ``--seconds``
against each endpoint, and reports requests/s, p50/p99 latency and errors per endpoint beside the
direct throughput: the same preparation and model call, one request at a time, in this process
(ratio = HTTP throughput / direct). Then MET / NOT MET per target. Loopback only; stops by itself.

    uv run python benchmarks/bench_api.py [--bundle DIR] [--seconds 10] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import numpy as np

STARTUP_SECONDS = 180
TEXT_P50_TARGET_MS = 20.0
THROUGHPUT_RATIO_TARGET = 0.8
PHOTO_SIZE = 224


@attrs.frozen
class Payloads:
    """What the clients send: photos (JPEG bytes), texts and catalogue product ids."""

    photos: tuple[bytes, ...]
    texts: tuple[str, ...]
    product_ids: tuple[str, ...]


@attrs.frozen
class LoadResult:
    """One endpoint under load."""

    endpoint: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray = attrs.field(eq=False)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else float("nan")


def main() -> None:
    from fbml.serving.app import serving_threads

    args = _arguments()
    with tempfile.TemporaryDirectory(prefix="fbml-bench-api-") as scratch:
        bundle_dir = args.bundle or small_bundle(Path(scratch))
        payloads = payloads_for(bundle_dir)
        threads = args.threads or serving_threads(args.workers)
        direct = direct_rates(bundle_dir, payloads, seconds=min(args.seconds, 5.0), threads=threads)
        with server(bundle_dir, workers=args.workers, threads=threads) as base_url:
            results = [
                asyncio.run(load(base_url, endpoint, payloads, clients=args.clients, seconds=args.seconds))
                for endpoint in ENDPOINTS
            ]
            alone = asyncio.run(load(base_url, "/predict/text", payloads, clients=1, seconds=min(args.seconds, 5.0)))
    print(f"{args.workers} worker(s), {threads} torch thread(s) each, {args.clients} clients, {args.seconds:g} s per endpoint")
    print(report(results, direct, args.clients))
    print(
        f"(one client alone: /predict/text p50 {alone.percentile(50):.1f} ms, "
        f"p99 {alone.percentile(99):.1f} ms, {alone.rate:.0f} req/s)"
    )


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle to serve (default: train a small one)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per endpoint (default 10)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: as fbml serve)")
    return parser.parse_args()


def small_bundle(scratch: Path) -> Path:
    """Text, image and combined models (one epoch each, 64 px) trained on the sample marketplace."""
    from fbml.workflows.train import train_into_bundle, train_request
    from fbml.vision.cleaning import clean_images
    from fbml.tables.clean import clean_tables
    from fbml.sample.marketplace import write_sample

    print("no --bundle: training a small one on the sample marketplace", file=sys.stderr)
    sample = write_sample(scratch / "sample", products=650, seed=0, progress=False)
    clean_images(sample.image_dir, scratch / "images", size=PHOTO_SIZE, progress=False)
    tables = clean_tables(sample.products_csv, sample.images_csv)
    for kind in ("text", "image", "combined"):
        request = train_request(kind, epochs=1, image_size=64)
        train_into_bundle(tables, scratch / "images", scratch / "bundle", request, work_dir=scratch / "work", progress=False)
    return scratch / "bundle"


def payloads_for(bundle_dir: Path) -> Payloads:
    """Synthetic photos, and the catalogue's names and ids (stock texts when the bundle has no index)."""
    from PIL import Image

    from fbml.bundle.store import load_bundle

    rng = np.random.default_rng(0)
    photos = []
    for _ in range(16):
        pixels = rng.integers(0, 256, size=(PHOTO_SIZE, PHOTO_SIZE, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    index = load_bundle(bundle_dir).index
    if index is None:
        return Payloads(tuple(photos), ("red mountain bike, 21 gears, good condition", "oak dining table and chairs"), ())
    return Payloads(tuple(photos), tuple(index.catalogue["product_name"].head(64)), tuple(index.catalogue["id"].head(64)))


def direct_rates(bundle_dir: Path, payloads: Payloads, *, seconds: float, threads: int) -> dict[str, float]:
    """Calls per second of each endpoint's work done directly, one request at a time: preparing the
    input (decoding the photo, normalising the text) and the model call (and the search)."""
    import torch

    from fbml.serving.app import DEFAULT_MAX_IMAGE_PIXELS, Example, class_probabilities, prepared_image, query_vectors
    from fbml.bundle.store import load_bundle

    torch.set_num_threads(threads)
    bundle = load_bundle(bundle_dir)
    settings = bundle.image

    def image(i: int) -> Any:
        return prepared_image(payloads.photos[i % len(payloads.photos)], settings, DEFAULT_MAX_IMAGE_PIXELS)

    def text(i: int) -> str:
        return payloads.texts[i % len(payloads.texts)]

    work: dict[str, Callable[[int], object]] = {
        "/predict/text": lambda i: class_probabilities(bundle, "text", [Example(text=text(i))]),
        "/predict/image": lambda i: class_probabilities(bundle, "image", [Example(image=image(i))]),
        "/predict/combined": lambda i: class_probabilities(bundle, "combined", [Example(image(i), text(i))]),
        "/recommend": lambda i: bundle.index.nearest(query_vectors(bundle, [Example(image(i), text(i))])[0], 10),
    }
    return {endpoint: _calls_per_second(call, seconds) for endpoint, call in work.items() if _served(bundle, endpoint)}


def _served(bundle: Any, endpoint: str) -> bool:
    return bundle.index is not None if endpoint == "/recommend" else endpoint.rsplit("/", 1)[1] in bundle.models


def _calls_per_second(call: Callable[[int], object], seconds: float) -> float:
    call(0)  # warm up
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call(calls)
        calls += 1
    return calls / (time.perf_counter() - started)


@contextmanager
def server(bundle_dir: Path, *, workers: int, threads: int) -> Iterator[str]:
    """uvicorn serving the bundle on a free loopback port, until the block ends."""
    import httpx

    from fbml.serving.app import free_port

    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "fbml.serving.app:app_from_env", "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning",
    ]
    env = {**os.environ, "FBML_BUNDLE": str(bundle_dir.resolve()), "FBML_TORCH_THREADS": str(threads)}
    process = subprocess.Popen(command, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode}")
            try:
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not answer within {STARTUP_SECONDS} s") from None
                time.sleep(0.5)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def request_bytes(endpoint: str, payloads: Payloads, i: int, host: str) -> bytes:
    """Request ``i`` to ``endpoint`` as the bytes of an HTTP/1.1 keep-alive POST."""
    photo = payloads.photos[i % len(payloads.photos)]
    text = payloads.texts[i % len(payloads.texts)]
    if endpoint == "/predict/text":
        body, media_type = json.dumps({"text": text}).encode(), "application/json"
    else:
        fields = [("image", photo, 'filename="photo.jpg"\r\nContent-Type: image/jpeg')]
        if endpoint != "/predict/image":
            fields.append(("text", text.encode(), None))
        body, media_type = multipart(fields), f"multipart/form-data; boundary={BOUNDARY}"
    head = f"POST {endpoint} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {media_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def multipart(fields: list[tuple[str, bytes, str | None]]) -> bytes:
    """A multipart/form-data body of (name, value, extra disposition) fields."""
    parts = []
    for name, value, extra in fields:
        disposition = f'form-data; name="{name}"' + (f"; {extra}" if extra else "")
        parts.append(f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


ENDPOINTS = ("/predict/text", "/predict/image", "/predict/combined", "/recommend")
BOUNDARY = "fbml-bench-boundary"


async def load(base_url: str, endpoint: str, payloads: Payloads, *, clients: int, seconds: float) -> LoadResult:
    """``clients`` concurrent clients posting to ``endpoint`` back to back for ``seconds``.

    Each client holds one keep-alive connection and sends prepared request bytes with asyncio
    streams: a general HTTP client (httpx) spends more CPU per request than the server does, and on
    two shared cores that would measure the client.
    """
    host, port = base_url.removeprefix("http://").split(":")
    requests = [request_bytes(endpoint, payloads, i, f"{host}:{port}") for i in range(64)]
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def one_client(offset: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            await exchange(reader, writer, requests[offset % len(requests)])  # warm up
            i = offset
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    ok = await exchange(reader, writer, requests[i % len(requests)]) == 200
                except (OSError, asyncio.IncompleteReadError, KeyError, ValueError):
                    ok = False
                latencies.append((time.perf_counter() - sent) * 1000)
                errors += not ok
                i += clients
        finally:
            writer.close()

    await asyncio.gather(*(one_client(offset) for offset in range(clients)))
    return LoadResult(endpoint, len(latencies), errors, time.perf_counter() - started, np.array(latencies))


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one request and read its whole response (Content-Length bodies): the status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split(" ", 2)[1])


def report(results: list[LoadResult], direct: dict[str, float], clients: int) -> str:
    """The table and the targets."""
    lines = [f"{'endpoint':20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'direct/s':>10}{'ratio':>7}"]
    for result in results:
        rate = direct.get(result.endpoint, float("nan"))
        lines.append(
            f"{result.endpoint:20}{result.rate:>9.1f}{result.percentile(50):>9.1f}{result.percentile(99):>9.1f}"
            f"{result.errors:>8}{rate:>10.1f}{result.rate / rate:>7.2f}"
        )
    by_endpoint = {result.endpoint: result for result in results}
    text_p50 = by_endpoint["/predict/text"].percentile(50)
    targets = [
        (f"zero errors at {clients} clients", sum(result.errors for result in results) == 0),
        (f"/predict/text p50 under {TEXT_P50_TARGET_MS:.0f} ms (got {text_p50:.1f})", text_p50 < TEXT_P50_TARGET_MS),
    ]
    for endpoint in ("/predict/image", "/predict/combined"):
        ratio = by_endpoint[endpoint].rate / direct[endpoint]
        name = f"{endpoint} throughput >= {THROUGHPUT_RATIO_TARGET}x direct (got {ratio:.2f}x)"
        targets.append((name, ratio >= THROUGHPUT_RATIO_TARGET))
    lines += [f"{'MET' if met else 'NOT MET':8} {name}" for name, met in targets]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
