"""Load benchmark of the HTTP API on both runtimes side by side: torch and ONNX Runtime, in the same run.

Serves one bundle (``--bundle``, or a small one trained here on the sample marketplace) with
``fbml serve --runtime torch`` and ``fbml serve --runtime onnx`` in turn on a free 127.0.0.1 port,
runs ``--clients`` concurrent asyncio keep-alive clients for ``--seconds`` against each endpoint
with the same requests, and prints requests/s, p50/p99 latency and errors per runtime and endpoint.
``--repeats`` rounds (the runtimes' order alternating) give the spread; the ONNX/torch ratio of each
round is paired. Then MET / NOT MET for photos at ``PHOTO_RATIO_TARGET`` x torch. A bundle without
ONNX graphs is refused (run ``fbml export-onnx`` first). Loopback only; stops by itself.

    uv run python benchmarks/bench_api.py [--bundle DIR] [--photo-dir DIR] [--seconds 10] [--clients 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import numpy as np

STARTUP_SECONDS = 300
PHOTO_RATIO_TARGET = 1.2
PHOTO_SIZE = 224
RUNTIMES = ("torch", "onnx")


@attrs.frozen
class Payloads:
    """What the clients send: photos (JPEG bytes) and texts."""

    photos: tuple[bytes, ...]
    texts: tuple[str, ...]


@attrs.frozen
class LoadResult:
    """One endpoint under load on one runtime."""

    runtime: str
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
    args = _arguments()
    with tempfile.TemporaryDirectory(prefix="fbml-bench-api-") as scratch:
        bundle_dir = args.bundle or small_bundle(Path(scratch))
        _check_graphs(bundle_dir)
        payloads = payloads_for(bundle_dir, args.photo_dir)
        endpoints = [endpoint for endpoint in ENDPOINTS if endpoint in args.endpoints.split(",")]
        rounds: list[list[LoadResult]] = []
        for repeat in range(args.repeats):
            results = []
            for runtime in RUNTIMES if repeat % 2 == 0 else RUNTIMES[::-1]:
                with server(bundle_dir, runtime, workers=args.workers) as base_url:
                    for endpoint in endpoints:
                        results.append(asyncio.run(load(base_url, runtime, endpoint, payloads, clients=args.clients, seconds=args.seconds)))
            rounds.append(results)
            print(f"round {repeat + 1}:\n{table(results)}", flush=True)
    print(f"{args.workers} worker(s), {args.clients} clients, {args.seconds:g} s per endpoint, {args.repeats} round(s)")
    print(summary(rounds, endpoints))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle with ONNX graphs to serve (default: train a small one)")
    parser.add_argument("--photo-dir", type=Path, default=None, help="JPEG photos to send (default: 16 synthetic 224 px ones)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per endpoint (default 10)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both runtimes (default 3)")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS), help="comma-separated endpoints (default all)")
    return parser.parse_args()


def small_bundle(scratch: Path) -> Path:
    """Text, image and combined models (one epoch each, 64 px) trained on the sample marketplace, exported to ONNX."""
    from fbml.sample.marketplace import write_sample
    from fbml.tables.clean import clean_tables
    from fbml.vision.cleaning import clean_images
    from fbml.workflows.export import export_onnx
    from fbml.workflows.train import train_into_bundle, train_request

    print("no --bundle: training a small one on the sample marketplace", file=sys.stderr)
    sample = write_sample(scratch / "sample", products=650, seed=0, progress=False)
    clean_images(sample.image_dir, scratch / "images", size=PHOTO_SIZE, progress=False)
    tables = clean_tables(sample.products_csv, sample.images_csv)
    for kind in ("text", "image", "combined"):
        request = train_request(kind, epochs=1, image_size=64)
        train_into_bundle(tables, scratch / "images", scratch / "bundle", request, work_dir=scratch / "work", progress=False)
    export_onnx(scratch / "bundle")
    return scratch / "bundle"


def _check_graphs(bundle_dir: Path) -> None:
    from fbml.bundle.store import read_manifest

    missing = [kind for kind, entry in read_manifest(bundle_dir).models.items() if getattr(entry, "onnx", True) is None]
    if missing:
        raise SystemExit(f"{bundle_dir}: {', '.join(missing)} without ONNX graphs; run `fbml export-onnx {bundle_dir}` first")


def payloads_for(bundle_dir: Path, photo_dir: Path | None) -> Payloads:
    """The photos (the first 16 of ``photo_dir``, else synthetic), and the catalogue's names (stock texts without an index)."""
    from fbml.bundle.store import load_bundle
    from PIL import Image

    if photo_dir is not None:
        photos = [path.read_bytes() for path in sorted(photo_dir.glob("*.jpg"))[:16]]
    else:
        rng = np.random.default_rng(0)
        photos = []
        for _ in range(16):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, size=(PHOTO_SIZE, PHOTO_SIZE, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
            photos.append(buffer.getvalue())
    index = load_bundle(bundle_dir, runtime="onnx").index
    if index is None:
        return Payloads(tuple(photos), ("red mountain bike, 21 gears, good condition", "oak dining table and chairs"))
    return Payloads(tuple(photos), tuple(index.catalogue["product_name"].head(64)))


@contextmanager
def server(bundle_dir: Path, runtime: str, *, workers: int) -> Iterator[str]:
    """``fbml serve --runtime RUNTIME`` on a free loopback port (its logs dropped), ready, until the block ends."""
    import httpx
    from fbml.serving.server import free_port

    port = free_port()
    command = [sys.executable, "-m", "fbml.cli", "serve", str(bundle_dir), "--runtime", runtime, "--port", str(port),
               "--workers", str(workers)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the {runtime} server exited with status {process.returncode}")
            try:
                if httpx.get(f"{base_url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {runtime} server was not ready within {STARTUP_SECONDS} s")
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


async def load(base_url: str, runtime: str, endpoint: str, payloads: Payloads, *, clients: int, seconds: float) -> LoadResult:
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
    return LoadResult(runtime, endpoint, len(latencies), errors, time.perf_counter() - started, np.array(latencies))


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one request and read its whole response (Content-Length bodies): the status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split(" ", 2)[1])


def table(results: list[LoadResult]) -> str:
    """One round: each runtime and endpoint's rate, latencies and errors."""
    lines = [f"  {'runtime':8}{'endpoint':20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"]
    lines += [f"  {r.runtime:8}{r.endpoint:20}{r.rate:>9.1f}{r.percentile(50):>9.1f}{r.percentile(99):>9.1f}{r.errors:>8}"
              for r in results]  # fmt: skip
    return "\n".join(lines)


def summary(rounds: list[list[LoadResult]], endpoints: list[str]) -> str:
    """Over the rounds: each runtime's median rate [min-max], the paired ONNX/torch ratio, errors, the target."""
    lines = [f"{'endpoint':20}{'torch req/s':>24}{'onnx req/s':>24}{'onnx/torch':>22}{'errors':>8}"]
    ratios: dict[str, list[float]] = {}
    for endpoint in endpoints:
        rates = {runtime: [r.rate for results in rounds for r in results if (r.runtime, r.endpoint) == (runtime, endpoint)]
                 for runtime in RUNTIMES}  # fmt: skip
        ratios[endpoint] = [onnx / torch for torch, onnx in zip(rates["torch"], rates["onnx"], strict=True)]
        errors = sum(r.errors for results in rounds for r in results if r.endpoint == endpoint)
        lines.append(f"{endpoint:20}{_spread(rates['torch']):>24}{_spread(rates['onnx']):>24}"
                     f"{_spread(ratios[endpoint], 2, 'x'):>22}{errors:>8}")  # fmt: skip
    if "/predict/image" in ratios:
        ratio = statistics.median(ratios["/predict/image"])
        met = ratio >= PHOTO_RATIO_TARGET
        lines.append(f"{'MET' if met else 'NOT MET':8} photos on ONNX Runtime >= {PHOTO_RATIO_TARGET}x torch (median {ratio:.2f}x)")
    return "\n".join(lines)


def _spread(values: list[float], digits: int = 1, unit: str = "") -> str:
    """``median [min-max]``."""
    return f"{statistics.median(values):.{digits}f}{unit} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


if __name__ == "__main__":
    main()
