"""OpenTelemetry tracing (``fbml.serving.tracing``) with the SDK's in-memory exporter: a span for the request, and
within it the photo's decoding, the request's batch and the search, each carrying the request id; without a tracer
provider the app needs no opentelemetry."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from fbml.serving.app import create_app
from litestar.testing import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from test_app import indexed, models_bundle, multipart, photo_bytes


@pytest.fixture(scope="module")
def traced(one_torch_thread: None) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with TestClient(create_app(indexed(models_bundle()), tracer_provider=provider)) as client:
        yield client, exporter


def spans_of(exporter: InMemorySpanExporter, request_id: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        if span.attributes.get("fbml.request_id") == request_id:
            found.setdefault(span.name, []).append(span)
    return found


def test_a_photo_request_has_its_span_with_decode_and_batch_within(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    client, exporter = traced
    response = client.post("/predict/combined", files=multipart(image=photo_bytes(3), text="red kettle"), headers={"x-request-id": "trace-1"})
    assert response.status_code == 200
    spans = spans_of(exporter, "trace-1")
    (request,) = spans["POST /predict/combined"]
    assert request.attributes["http.response.status_code"] == 200
    (decode,) = spans["decode"]
    (batch,) = spans["batch"]
    assert batch.attributes["fbml.batcher"] == "combined"
    for child in (decode, batch):
        assert child.parent is not None and child.parent.span_id == request.context.span_id
        assert child.context.trace_id == request.context.trace_id


def test_a_recommendation_has_its_batch_and_search_spans(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    client, exporter = traced
    response = client.post("/recommend", json={"text": "blue novel", "k": 3}, headers={"x-request-id": "trace-2"})
    assert response.status_code == 200
    spans = spans_of(exporter, "trace-2")
    (request,) = spans["POST /recommend"]
    assert [span.attributes["fbml.batcher"] for span in spans["batch"]] == ["embed"]
    (search,) = spans["search"]
    assert search.parent is not None and search.parent.span_id == request.context.span_id
    assert "decode" not in spans


def test_without_a_tracer_provider_the_app_serves_without_opentelemetry_installed() -> None:
    """(Litestar itself imports opentelemetry where it is installed, so only its absence can be checked.)"""
    script = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if not installed: importing it fails\n"
        "import numpy as np\n"
        "from fbml.bundle.store import Bundle, BundleModel, Predictor\n"
        "from fbml.modeling.ensembles import Ensemble\n"
        "from fbml.modeling.linear_text import fit_linear_text\n"
        "from fbml.serving.app import create_app\n"
        "from fbml.text.labels import LabelCodec\n"
        "from litestar.testing import TestClient\n"
        "texts = ['red kettle', 'old novel', 'toy bike'] * 4\n"
        "model = BundleModel('text-linear', fit_linear_text(texts, np.arange(12) % 3, 3), None)\n"
        "bundle = Bundle(LabelCodec(('A', 'B', 'C'))).with_model(model)\n"
        "bundle = bundle.with_predictor('text', Predictor(Ensemble((('text-linear', 1.0),), (0.0, 0.0, 0.0))))\n"
        "with TestClient(create_app(bundle)) as client: assert client.post('/predict/text', json={'text': 'red'}).status_code == 200\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
