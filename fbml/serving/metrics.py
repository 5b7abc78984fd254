"""The app's Prometheus metrics, in a registry of its own (``create_app`` makes one per app).

Requests by route template and status, latency by route, requests in flight, micro-batch sizes,
photo decode and model inference seconds, inference requests shed (``--max-queue``), and ``fbml_model_info`` (value 1) naming the model version
and runtime. With ``$PROMETHEUS_MULTIPROC_DIR`` set (``fbml serve --workers N`` sets it to a fresh
folder), every worker process writes its values there and any worker answers ``/metrics`` with the
sum over all of them (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"
"""The route label of a request that matched no route (a 404 of the router)."""
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


@attrs.frozen(eq=False)
class Metrics:
    """The metrics of one app and the registry that holds them."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    in_flight: Gauge
    batch_size: Histogram
    decode_seconds: Histogram
    inference_seconds: Histogram
    shed: Counter


def app_metrics(model_version: str, runtime: str) -> Metrics:
    """A new registry with the app's metrics, the info metric set."""
    registry = CollectorRegistry()
    info = Gauge("fbml_model_info", "The model version (the bundle manifest's SHA-256) and runtime served",
                 ["model_version", "runtime"], registry=registry, multiprocess_mode="max")  # fmt: skip
    info.labels(model_version, runtime).set(1)
    return Metrics(
        registry,
        Counter("fbml_http_requests", "HTTP requests answered, by route template, method and status",
                ["route", "method", "status"], registry=registry),  # fmt: skip
        Histogram("fbml_http_request_duration_seconds", "Time to answer a request, by route template",
                  ["route"], registry=registry, buckets=SECONDS),  # fmt: skip
        Gauge("fbml_http_requests_in_flight", "Requests being answered", registry=registry, multiprocess_mode="livesum"),
        Histogram("fbml_batch_size", "Requests per model call, by batcher", ["batcher"], registry=registry, buckets=BATCH_SIZES),
        Histogram("fbml_decode_duration_seconds", "Time to decode and prepare an uploaded photo", registry=registry, buckets=SECONDS),
        Histogram("fbml_inference_duration_seconds", "Time of one batched model call, by batcher",
                  ["batcher"], registry=registry, buckets=SECONDS),  # fmt: skip
        Counter("fbml_http_requests_shed", "Inference requests refused with 503: as many were waiting as --max-queue allows",
                registry=registry),  # fmt: skip
    )


def exposition(metrics: Metrics) -> bytes:
    """The metrics in Prometheus' text format: this app's, or every worker's in multiprocess mode."""
    folder = os.environ.get(MULTIPROCESS_ENV)
    if not folder:
        return generate_latest(metrics.registry)
    workers = CollectorRegistry()
    MultiProcessCollector(workers, path=folder)  # type: ignore[no-untyped-call]
    return generate_latest(workers)
