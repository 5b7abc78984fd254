"""The API under a real uvicorn on 127.0.0.1 (``fbml.serving.server.serving``), over raw sockets and
urllib: clients that stop sending are closed within the read timeout, a refused body sent whole
still hears its 413, every answer carries the security headers and its request id, and the schema
is JSON only."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from fbml.bundle.store import Bundle, BundleModel, Predictor
from fbml.modeling.ensembles import Ensemble
from fbml.modeling.linear_text import fit_linear_text
from fbml.serving.app import DEFAULT_MAX_BODY_BYTES, SECURITY_HEADERS, create_app
from fbml.serving.server import MIN_BODY_RATE, serving
from fbml.text.labels import LabelCodec

READ_TIMEOUT = 1.0
WAIT = READ_TIMEOUT + 5.0  # the most a test waits on a socket
TEXTS = ["red kettle", "blue toaster", "old novel", "short story", "toy bike", "rag doll"] * 3
HEAD = b"POST /predict/text HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """A text-only bundle (a linear model) served with a short read timeout."""
    labels = np.arange(len(TEXTS)) // 2 % 3
    model = BundleModel("text-linear", fit_linear_text(TEXTS, labels, 3), None)
    bundle = Bundle(LabelCodec(("Appliances", "Books", "Toys"))).with_model(model)
    bundle = bundle.with_predictor("text", Predictor(Ensemble((("text-linear", 1.0),), (0.0, 0.0, 0.0))))
    with serving(create_app(bundle), read_timeout=READ_TIMEOUT) as url:
        yield url


def connection(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    return sock


def seconds_until_closed(sock: socket.socket) -> float:
    """Seconds until the server closes ``sock`` (reading and dropping what it sends); fails past ``WAIT``."""
    started = time.monotonic()
    try:
        while sock.recv(65536):
            assert time.monotonic() - started < WAIT, "the server kept sending"
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {WAIT} s")
    return time.monotonic() - started


def reply(sock: socket.socket) -> bytes:
    """The server's whole answer on ``sock`` (until it closes the connection)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "sent",
    [b"", HEAD[:30], HEAD + b"Content-Length: 100\r\n\r\n" + b'{"text": "red'],
    ids=["nothing", "half-a-head", "half-a-body"],
)
def test_a_client_that_stops_sending_is_closed_within_the_read_timeout(base_url: str, sent: bytes) -> None:
    with connection(base_url) as sock:
        sock.sendall(sent)
        assert READ_TIMEOUT * 0.8 < seconds_until_closed(sock) < READ_TIMEOUT + 2.0


def test_a_body_that_keeps_coming_is_read_however_long_it_takes(base_url: str) -> None:
    """The timeout is on a pause and on the body's average rate, not on the whole body: an upload arriving in
    parts at well above ``MIN_BODY_RATE`` still gets its answer, however many read timeouts it takes."""
    body = b'{"text": "red kettle"' + b" " * 150_000 + b"}"  # JSON's own whitespace: the text stays short
    part = int(MIN_BODY_RATE * READ_TIMEOUT * 0.4 * 2)  # twice the minimum rate, a part every 0.4 read timeouts
    with connection(base_url) as sock:
        sock.sendall(HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        started = time.monotonic()
        for start in range(0, len(body), part):
            time.sleep(READ_TIMEOUT * 0.4)
            sock.sendall(body[start : start + part])
        assert time.monotonic() - started > 2 * READ_TIMEOUT
        answer = reply(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_a_body_that_trickles_is_closed_once_it_has_had_the_read_timeout(base_url: str) -> None:
    """A byte every 0.3 read timeouts never pauses long enough to be cut, but averages far below ``MIN_BODY_RATE``:
    the connection is closed once the body has had ``read_timeout`` seconds, and what it sent is let go."""
    with connection(base_url) as sock:
        sock.sendall(HEAD + b"Content-Length: 1000000\r\n\r\n" + b'{"text": "')
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < WAIT and not closed:
            time.sleep(READ_TIMEOUT * 0.3)
            try:
                sock.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed or not sock.recv(100)
        assert time.monotonic() - started < READ_TIMEOUT + 2.0


def over_the_limit() -> bytes:
    return json.dumps({"text": "a" * (11 * 10**6)}).encode()


def test_a_body_over_the_limit_sent_whole_by_urllib_hears_its_413(base_url: str) -> None:
    request = urllib.request.Request(f"{base_url}/predict/text", data=over_the_limit(), headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=WAIT)
    assert refused.value.code == 413
    assert json.loads(refused.value.read()) == {"status_code": 413, "detail": "Request Entity Too Large", "field": None}
    assert re.fullmatch("[0-9a-f]{32}", refused.value.headers["x-request-id"])


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_sent_whole_on_a_socket_hears_its_413(base_url: str, declared: bool) -> None:
    body = over_the_limit()
    if declared:
        framed = b"Content-Length: %d\r\n\r\n" % len(body) + body
    else:
        chunks = (body[start : start + 2**16] for start in range(0, len(body), 2**16))
        framed = b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    assert len(body) > DEFAULT_MAX_BODY_BYTES
    with connection(base_url) as sock:
        sock.sendall(HEAD + b"Connection: close\r\n" + framed)
        answer = reply(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/health", None, 200),
        ("POST", "/predict/text", b'{"text": "red kettle"}', 200),
        ("POST", "/predict/text", b'{"text": ""}', 422),
        ("POST", "/predict/image", b"{}", 404),
        ("GET", "/predict/text", None, 405),
        ("GET", "/nowhere", None, 404),
        ("GET", "/schema", None, 200),
    ],
)
def test_every_answer_carries_the_security_headers_and_its_request_id(
    base_url: str, method: str, path: str, body: bytes | None, status: int
) -> None:
    headers = {"content-type": "application/json", "x-request-id": f"trace-{method}-{path}"}
    request = urllib.request.Request(f"{base_url}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            code, answered = response.status, response.headers
    except urllib.error.HTTPError as error:
        code, answered = error.code, error.headers
    assert code == status
    for name, value in SECURITY_HEADERS:
        assert answered[name.decode()] == value.decode()
    assert answered.get_all("x-request-id") == [f"trace-{method}-{path}"]


@pytest.mark.parametrize("given", [None, "", "a b", "x" * 129, "caf\xe9"], ids=["absent", "empty", "space", "long", "latin-1"])
def test_a_missing_or_unusable_request_id_is_replaced_by_a_new_one(base_url: str, given: str | None) -> None:
    """Sent on a raw socket: the id bytes go as they are (urllib would refuse some)."""
    line = b"" if given is None else b"X-Request-ID: " + given.encode("latin-1") + b"\r\n"
    with connection(base_url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + line + b"\r\n")
        answer = reply(sock)
    ids = re.findall(rb"(?im)^x-request-id: (.*?)\r$", answer)
    assert len(ids) == 1 and re.fullmatch(rb"[0-9a-f]{32}", ids[0]), answer[:300]


def test_the_schema_is_served_as_json_without_browser_pages(base_url: str) -> None:
    """The UI pages would load their scripts from a CDN: none is served, only the document."""
    for path in ("/schema", "/schema/openapi.json"):
        with urllib.request.urlopen(f"{base_url}{path}", timeout=WAIT) as response:
            assert response.headers["content-type"] == "application/vnd.oai.openapi+json"
            assert set(json.loads(response.read())["paths"]) == {"/health", "/health/live", "/health/ready", "/metrics",
                                                                 "/predict/image", "/predict/text", "/predict/combined", "/recommend"}
    for page in ("swagger", "redoc", "rapidoc", "elements", "scalar"):
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base_url}/schema/{page}", timeout=WAIT)
        assert missing.value.code == 404
        assert b"<script" not in missing.value.read()
