"""What an operator reads of the service: the probes, the Prometheus metrics (one registry per app;
several workers summed in multiprocess mode), request ids in answers and log lines, text and JSON
logs, and the model version of a served bundle."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from fbml.bundle.bundle import Bundle, BundleModel, Predictor
from fbml.bundle.store import MANIFEST, save_bundle
from fbml.modeling.ensembles import Ensemble
from fbml.modeling.linear_text import fit_linear_text
from fbml.serving import service as service_module
from fbml.serving.app import MODEL_VERSION_HEADER, create_app
from fbml.serving.server import free_port
from fbml.text.labels import LabelCodec
from litestar import Litestar
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

TEXTS = ["red kettle", "blue toaster", "old novel", "short story", "toy bike", "rag doll"] * 3
VERSION = "v" * 8
WAIT = 30.0  # the most a test waits for a server


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    """A text-only bundle (a linear model)."""
    labels = np.arange(len(TEXTS)) // 2 % 3
    model = BundleModel("text-linear", fit_linear_text(TEXTS, labels, 3), None)
    built = Bundle(LabelCodec(("Appliances", "Books", "Toys"))).with_model(model)
    return built.with_predictor("text", Predictor(Ensemble((("text-linear", 1.0),), (0.0, 0.0, 0.0))))


def app_over(bundle: Bundle, log_format: str = "text") -> Litestar:
    return create_app(attrs.evolve(bundle, model_version=VERSION), log_format=log_format)


def until(condition: Callable[[], bool], seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def samples(client: TestClient, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The scraped samples called ``name``, by their sorted labels."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples
            if sample.name == name}  # fmt: skip


def held_inference(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Inference waits (bounded) until the returned event is set."""
    release = threading.Event()
    real = service_module.predictions

    def held(*args: Any) -> Any:
        assert release.wait(WAIT)
        return real(*args)

    monkeypatch.setattr(service_module, "predictions", held)
    return release


def test_ready_is_503_until_every_model_answered_its_warm_up_then_200(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    release = held_inference(monkeypatch)
    with TestClient(app_over(bundle)) as client:
        assert client.get("/health/live").json() == {"status": "live", "model_version": VERSION}
        starting = client.get("/health/ready")
        assert starting.status_code == 503 and starting.json() == {"status": "starting", "model_version": VERSION}
        assert client.get("/health").status_code == 200
        release.set()
        until(lambda: client.get("/health/ready").status_code == 200)
        assert client.get("/health/ready").json() == {"status": "ready", "model_version": VERSION}


def test_a_failed_warm_up_leaves_the_service_unready_and_says_why(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("no model")

    monkeypatch.setattr(service_module, "predictions", broken)
    with TestClient(app_over(bundle, "json")) as client:
        until(lambda: "warm-up failed" in capsys.readouterr().err)
        assert client.get("/health/ready").status_code == 503
        assert client.get("/health/live").status_code == 200


def test_metrics_count_requests_by_route_template_and_status_with_latencies(bundle: Bundle) -> None:
    with TestClient(app_over(bundle)) as client:
        until(lambda: client.get("/health/ready").status_code == 200)
        for _ in range(3):
            assert client.post("/predict/text", json={"text": "red kettle"}).status_code == 200
        assert client.post("/predict/text", json={"text": ""}).status_code == 422
        assert client.get("/nowhere/at/all").status_code == 404
        assert client.post("/predict/image", files={"image": ("a.jpg", b"x")}).status_code == 404
        counts = samples(client, "fbml_http_requests_total")
        assert counts[(("method", "POST"), ("route", "/predict/text"), ("status", "200"))] == 3
        assert counts[(("method", "POST"), ("route", "/predict/text"), ("status", "422"))] == 1
        assert counts[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 1
        assert counts[(("method", "POST"), ("route", "/predict/image"), ("status", "404"))] == 1
        assert not any("/nowhere" in value for labels in counts for _, value in labels)
        latency = samples(client, "fbml_http_request_duration_seconds_count")
        assert latency[(("route", "/predict/text"),)] == 4
        buckets = samples(client, "fbml_http_request_duration_seconds_bucket")
        assert buckets[(("le", "+Inf"), ("route", "/predict/text"))] == 4
        assert samples(client, "fbml_http_requests_in_flight")[()] == 1  # this scrape
        assert samples(client, "fbml_model_info")[(("model_version", VERSION), ("runtime", "torch"))] == 1


def test_metrics_record_batch_sizes_decode_and_inference_time(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    release = held_inference(monkeypatch)
    with TestClient(app_over(bundle)) as client:
        release.set()
        until(lambda: client.get("/health/ready").status_code == 200)
        assert client.post("/predict/text", json={"text": "old novel"}).status_code == 200
        sizes = samples(client, "fbml_batch_size_sum")
        assert sizes[(("batcher", "text"),)] == 2  # the warm-up and the request
        assert samples(client, "fbml_inference_duration_seconds_count")[(("batcher", "text"),)] == 2
        assert samples(client, "fbml_inference_duration_seconds_sum")[(("batcher", "text"),)] > 0
        assert samples(client, "fbml_decode_duration_seconds_count")[()] == 0  # a text-only bundle decodes nothing


def test_each_app_counts_in_a_registry_of_its_own(bundle: Bundle) -> None:
    with TestClient(app_over(bundle)) as first, TestClient(app_over(bundle)) as second:
        first.post("/predict/text", json={"text": "red kettle"})
        route = (("method", "POST"), ("route", "/predict/text"), ("status", "200"))
        assert samples(first, "fbml_http_requests_total")[route] == 1
        assert route not in samples(second, "fbml_http_requests_total")


def test_every_log_line_is_one_json_object_naming_its_request(bundle: Bundle, capsys: pytest.CaptureFixture[str]) -> None:
    with TestClient(app_over(bundle, "json")) as client:
        until(lambda: client.get("/health/ready").status_code == 200)
        capsys.readouterr()
        answered = client.post("/predict/text", json={"text": "red kettle"}, headers={"x-request-id": "abc-123"})
        made = client.get("/nowhere")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert answered.headers["x-request-id"] == "abc-123" and re.fullmatch("[0-9a-f]{32}", made.headers["x-request-id"])
    assert [line["request_id"] for line in lines] == ["abc-123", made.headers["x-request-id"]]
    first, second = lines
    assert set(first) == {"time", "level", "message", "request_id", "route", "status", "duration_ms"}
    assert first["route"] == "/predict/text" and first["status"] == 200 and first["level"] == "INFO"
    assert first["message"] == "POST /predict/text 200" and first["duration_ms"] > 0
    assert second["route"] == "unmatched" and second["status"] == 404


def test_a_failure_is_logged_with_its_request_id_and_traceback(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    release = held_inference(monkeypatch)
    with TestClient(app_over(bundle, "json"), raise_server_exceptions=False) as client:
        release.set()
        until(lambda: client.get("/health/ready").status_code == 200)

        def broken(*_: Any) -> Any:
            raise RuntimeError("the model fell over")

        monkeypatch.setattr(client.app.state["service"].predictors["text"].batcher, "infer", broken)
        capsys.readouterr()
        answer = client.post("/predict/text", json={"text": "red kettle"}, headers={"x-request-id": "broken-1"})
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "broken-1"
    failure, access = lines
    assert failure["level"] == "ERROR" and failure["request_id"] == "broken-1" and "the model fell over" in failure["exception"]
    assert access["request_id"] == "broken-1" and access["status"] == 500


def test_text_logs_are_one_line_each_with_the_request_id(bundle: Bundle, capsys: pytest.CaptureFixture[str]) -> None:
    with TestClient(app_over(bundle, "text")) as client:
        until(lambda: client.get("/health/ready").status_code == 200)
        capsys.readouterr()
        client.get("/health/live%0AINFO%20forged", headers={"x-request-id": "t-1"})
        client.get("/a%20request_id=forged%20status=200%20%22", headers={"x-request-id": "t-2"})
        lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first = json.dumps("GET " + ascii("/health/live\nINFO forged")[1:-1] + " 404")  # the path escaped, then quoted
    assert re.fullmatch(r"\S+ INFO " + re.escape(first) + r" request_id=t-1 route=unmatched status=404 duration_ms=[0-9.]+", lines[0])
    # a path with spaces and key=value in it stays inside the quoted message: the first fields are the real ones
    second = json.dumps('GET /a request_id=forged status=200 " 404')
    assert re.fullmatch(r"\S+ INFO " + re.escape(second) + r" request_id=t-2 route=unmatched status=404 duration_ms=[0-9.]+", lines[1])


@pytest.fixture(scope="module")
def saved(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("served") / "bundle"
    save_bundle(bundle, path)
    return path


@pytest.fixture(scope="module")
def serve_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs") / "serve.log"


@pytest.fixture(scope="module")
def two_workers(saved: Path, serve_log: Path) -> Iterator[str]:
    """``fbml serve --workers 2 --log-format json`` on a free loopback port, stopped after the module."""
    port = free_port()
    log = serve_log.open("w+")
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    fbml = Path(sys.executable).with_name("fbml")
    server = subprocess.Popen([str(fbml), "serve", str(saved), "--port", str(port), "--workers", "2", "--log-format", "json"],
                              stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: server.poll() is None and _status(f"{url}/health/ready") == 200, seconds=120)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        log.close()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def test_several_workers_answer_metrics_summed_over_every_worker(two_workers: str) -> None:
    body = json.dumps({"text": "red kettle"}).encode()
    for _ in range(20):
        request = urllib.request.Request(f"{two_workers}/predict/text", data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            assert response.status == 200
    route = (("method", "POST"), ("route", "/predict/text"), ("status", "200"))
    for _ in range(4):  # whichever worker answers the scrape
        with urllib.request.urlopen(f"{two_workers}/metrics", timeout=WAIT) as response:
            families = list(text_string_to_metric_families(response.read().decode()))
        counts = {tuple(sorted(s.labels.items())): s.value for f in families for s in f.samples if s.name == "fbml_http_requests_total"}
        assert counts[route] == 20
        infos = [s for f in families for s in f.samples if s.name == "fbml_model_info"]
        assert len(infos) == 1 and infos[0].value == 1


def test_a_served_bundle_names_its_manifests_digest(two_workers: str, saved: Path) -> None:
    digest = hashlib.sha256((saved / MANIFEST).read_bytes()).hexdigest()
    request = urllib.request.Request(f"{two_workers}/predict/text", data=b'{"text": "old novel"}', headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        assert response.headers[MODEL_VERSION_HEADER] == digest
        assert json.loads(response.read())["model_version"] == digest


def test_fbml_serve_logs_one_json_object_a_line_with_request_ids(two_workers: str, serve_log: Path) -> None:
    request = urllib.request.Request(f"{two_workers}/health/live", headers={"x-request-id": "from-the-test"})
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        assert response.headers["x-request-id"] == "from-the-test"
    until(lambda: "from-the-test" in serve_log.read_text())
    lines = [json.loads(line) for line in serve_log.read_text().splitlines()]
    access = [line for line in lines if line["request_id"] == "from-the-test"]
    assert len(access) == 1 and access[0]["route"] == "/health/live" and access[0]["status"] == 200
    assert any(line["message"].startswith("Started server process") for line in lines)  # uvicorn's own lines, as JSON


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_stops_fbml_serve_with_exit_status_0(saved: Path, workers: str) -> None:
    """SIGTERM is how a container runtime stops a service: a normal stop, not a failure (it was 143)."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    fbml = Path(sys.executable).with_name("fbml")
    server = subprocess.Popen([str(fbml), "serve", str(saved), "--port", str(port), "--workers", workers],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        until(lambda: server.poll() is None and _status(f"http://127.0.0.1:{port}/health/ready") == 200, seconds=120)
        server.terminate()
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
