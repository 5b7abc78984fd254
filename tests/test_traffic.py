"""Traffic on a real ``fbml serve`` process (``fbml.serving.traffic``): ``--max-queue`` sheds with 503 and
Retry-After, ``--timeout`` answers 504, SIGTERM drains (readiness 503 at once, new requests refused, those in
flight answered within ``--grace``) and exits 0; ``--cors-origin`` lets the named origins read answers.

A request is held in flight by sending its head and part of its body: the server has admitted it and waits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path

import numpy as np
import pytest
from fbml.bundle.store import Bundle, BundleModel, Predictor, save_bundle
from fbml.modeling.ensembles import Ensemble
from fbml.modeling.linear_text import fit_linear_text
from fbml.serving.server import free_port
from fbml.text.labels import LabelCodec
from prometheus_client.parser import text_string_to_metric_families

TEXTS = ["red kettle", "blue toaster", "old novel", "short story", "toy bike", "rag doll"] * 3
BODY = json.dumps({"text": "red kettle"}).encode()
WAIT = 30.0
STARTUP = 120.0


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text-only bundle (a linear model), saved."""
    labels = np.arange(len(TEXTS)) // 2 % 3
    bundle = Bundle(LabelCodec(("Appliances", "Books", "Toys"))).with_model(BundleModel("text-linear", fit_linear_text(TEXTS, labels, 3), None))
    bundle = bundle.with_predictor("text", Predictor(Ensemble((("text-linear", 1.0),), (0.0, 0.0, 0.0))))
    path = tmp_path_factory.mktemp("traffic") / "bundle"
    save_bundle(bundle, path)
    return path


def until(condition: Callable[[], bool], seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def status(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int | None, Message, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return int(response.status), response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()
    except OSError:
        return None, Message(), b""


@pytest.fixture
def serve(saved: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], str]]]:
    """Starts ``fbml serve`` with extra options on a free port, ready; every process it started is stopped after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
        fbml = Path(sys.executable).with_name("fbml")
        process = subprocess.Popen([str(fbml), "serve", str(saved), "--port", str(port), *options],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        until(lambda: process.poll() is None and status(f"{url}/health/ready")[0] == 200, STARTUP)
        return process, url

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT)


def held(url: str, path: str = "/predict/text") -> socket.socket:
    """A request to ``path`` in flight: its head and all of its body but the last byte sent."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    sock.sendall(head.encode() + BODY[:-1])
    return sock


def answer_status(sock: socket.socket) -> int:
    """The status of the answer on ``sock``."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without answering"
        data += chunk
    return int(data.split(b" ", 2)[1])


def shed_count(url: str) -> float:
    _, _, body = status(f"{url}/metrics")
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples if s.name == "fbml_http_requests_shed_total"]
    return samples[0].value


def test_a_flood_past_max_queue_gets_only_200_and_503_with_retry_after(serve: Callable[..., tuple[subprocess.Popen[bytes], str]]) -> None:
    _, url = serve("--max-queue", "4")
    holding = [held(url) for _ in range(4)]
    try:
        until(lambda: status(f"{url}/predict/text", "POST", BODY)[0] == 503)  # the four are admitted and waiting
        code, headers, body = status(f"{url}/predict/text", "POST", BODY)
        assert code == 503 and headers["Retry-After"] == "1" and json.loads(body)["status_code"] == 503
        assert status(f"{url}/health/ready")[0] == 200  # probes are not inference work
    finally:
        for sock in holding:
            sock.sendall(BODY[-1:])
    assert [answer_status(sock) for sock in holding] == [200] * 4
    for sock in holding:
        sock.close()
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: status(f"{url}/predict/text", "POST", BODY), range(64)))
    codes = {code for code, _, _ in answers}
    assert codes <= {200, 503} and 200 in codes
    assert all(headers.get("Retry-After") == "1" for code, headers, _ in answers if code == 503)
    assert shed_count(url) >= 1 + sum(code == 503 for code, _, _ in answers)


def test_a_request_not_answered_within_the_timeout_gets_504(serve: Callable[..., tuple[subprocess.Popen[bytes], str]]) -> None:
    _, url = serve("--timeout", "1")
    sock = held(url)
    try:
        sock.settimeout(WAIT)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, "closed without an answer"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 504") and json.loads(body)["status_code"] == 504
    finally:
        sock.close()
    assert status(f"{url}/predict/text", "POST", BODY)[0] == 200  # one answered in time


def test_sigterm_drains_answers_the_requests_in_flight_and_exits_0(serve: Callable[..., tuple[subprocess.Popen[bytes], str]]) -> None:
    process, url = serve("--grace", "20")
    holding = [held(url), held(url, "/v2/models/text/infer")]
    time.sleep(0.5)  # both heads read: in flight
    process.send_signal(signal.SIGTERM)
    until(lambda: status(f"{url}/health/ready")[0] == 503)
    assert status(f"{url}/v2/health/ready")[0] == 503
    code, headers, _ = status(f"{url}/predict/text", "POST", BODY)
    assert code == 503 and headers["Retry-After"] == "1"
    assert process.poll() is None  # still answering what it took
    holding[0].sendall(BODY[-1:])
    assert answer_status(holding[0]) == 200
    holding[1].sendall(BODY[-1:])  # not an inference request: the body is not what OIP reads, but it is answered
    assert answer_status(holding[1]) == 400
    assert process.wait(timeout=WAIT) == 0
    for sock in holding:
        sock.close()


def test_sigterm_stops_within_the_grace_when_a_request_never_ends(serve: Callable[..., tuple[subprocess.Popen[bytes], str]]) -> None:
    process, url = serve("--grace", "2")
    sock = held(url)
    time.sleep(0.5)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=WAIT) == 0
    assert time.monotonic() - started < WAIT
    sock.close()


def test_cors_follows_cors_origin(serve: Callable[..., tuple[subprocess.Popen[bytes], str]]) -> None:
    _, url = serve("--cors-origin", "https://shop.example", "--cors-origin", "http://localhost:3000")
    preflight = {"origin": "https://shop.example", "access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    code, headers, _ = status(f"{url}/predict/text", "OPTIONS", headers=preflight)
    assert code in (200, 204) and headers["access-control-allow-origin"] == "https://shop.example"
    assert "POST" in headers["access-control-allow-methods"]
    code, headers, _ = status(f"{url}/predict/text", "POST", BODY, {"content-type": "application/json", "origin": "http://localhost:3000"})
    assert code == 200 and headers["access-control-allow-origin"] == "http://localhost:3000"
    code, headers, _ = status(f"{url}/predict/text", "POST", BODY, {"content-type": "application/json", "origin": "https://evil.example"})
    assert headers["access-control-allow-origin"] is None


def test_no_cors_origin_no_allow_header(serve: Callable[..., tuple[subprocess.Popen[bytes], str]]) -> None:
    _, url = serve()
    code, headers, _ = status(f"{url}/predict/text", "POST", BODY, {"content-type": "application/json", "origin": "https://shop.example"})
    assert code == 200 and headers["access-control-allow-origin"] is None
