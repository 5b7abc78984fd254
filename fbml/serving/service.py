"""The service the handlers share: the bundle, its version, the request limits, the metrics, and the
threads that work for them.

``running_service`` opens the threads and closes them (the app's lifespan holds it open): one
inference thread that the micro-batchers share, and ``decode_workers`` photo-decoding threads, so the
event loop waits on neither. Photos are prepared on a decoding thread by the bundle's own preparation
(``Preparation.prepared``); each batcher calls the bundle's prediction path (``Bundle.predict_many``, or
``Bundle.embed_many`` for ``/recommend``) on the requests that arrived together. ``warm_up`` sends one
request through each batcher; the service is ready (``/health/ready``) once each has answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar, cast

import attrs
import numpy as np
from contracts.bundle import Role
from litestar.datastructures import State

from fbml.bundle.bundle import Bundle
from fbml.bundle.predictions import Prediction
from fbml.bundle.search import SearchIndex
from fbml.errors import InputError
from fbml.serving.batching import MicroBatcher
from fbml.serving.errors import ApiError
from fbml.serving.metrics import Metrics
from fbml.serving.prediction_log import PredictionLog
from fbml.serving.requests import TextRules
from fbml.serving.tracing import Tracing
from fbml.vision.photos import PhotoLimits, PreparedPhoto

EMBED = "embed"
"""The batcher of query vectors (``/recommend``), beside one per predictor role."""
STATE_KEY = "service"
"""Where the app's state holds the running ``Service``."""
WARM_UP_TEXT = "warm up"
T = TypeVar("T")


@attrs.frozen(eq=False)
class Example:
    """One request's listing: a photo prepared for the bundle's image networks and/or its raw text."""

    image: PreparedPhoto | None = None
    text: str | None = None


@attrs.frozen(eq=False)
class Batched(Generic[T]):
    """A batcher as a request calls it: its example through ``batcher``, within a ``batch`` span."""

    name: str
    batcher: MicroBatcher[Example, T]
    tracing: Tracing

    async def __call__(self, example: Example) -> T:
        with self.tracing.span("batch", **{"fbml.batcher": self.name}):
            return await self.batcher(example)


@attrs.frozen(eq=False)
class Service:
    """The bundle and its version, what a request's texts and photos may be, the metrics, the threads
    that serve requests, and whether each batcher has answered its warm-up request."""

    bundle: Bundle
    model_version: str
    text: TextRules
    photos: PhotoLimits
    metrics: Metrics
    decoder: ThreadPoolExecutor
    predictors: Mapping[Role, Batched[Prediction]]
    embedder: Batched[np.ndarray] | None
    tracing: Tracing = Tracing()
    warm: asyncio.Event = attrs.field(factory=asyncio.Event)
    log: PredictionLog | None = None
    """Where each prediction's row goes (``fbml serve --log-predictions``); None: nowhere."""

    def logged(self, found: Prediction, *, text: str | None = None, photo: bytes | None = None) -> Prediction:
        """``found``, its row (the text's length, the photo's size) buffered in the prediction log when there is one."""
        if self.log is not None:
            self.log.record(found, text=text, photo=photo)
        return found

    def require(self, role: str) -> None:
        """404 unless the bundle has the predictor of ``role``."""
        if role not in self.bundle.predictors:
            served = ", ".join(sorted(self.bundle.predictors)) or "none"
            raise ApiError(404, f"the bundle has no {role} model (it has: {served})")

    def require_index(self) -> SearchIndex:
        """The search index; 404 when the bundle has none."""
        if self.bundle.index is None:
            raise ApiError(404, "the bundle has no search index (build one with `fbml index`)")
        return self.bundle.index

    async def prepared_photo(self, data: bytes, field: str) -> PreparedPhoto:
        """The upload decoded on a decoding thread and prepared as the bundle's image networks read it (422 naming ``field``)."""
        if self.bundle.image is None:
            raise ApiError(404, "the bundle has no image settings: it serves no photos")
        prepare = functools.partial(_prepared, self.bundle, data, field, self.photos)
        with self.tracing.span("decode", **{"fbml.field": field}):
            return await asyncio.get_running_loop().run_in_executor(self.decoder, timed, prepare, self.metrics.decode_seconds.observe)

    async def warm_up(self) -> None:
        """One request through each batcher (a blank photo and/or a short text), then ``warm`` is set."""
        image = None
        if self.bundle.image is not None:
            image = self.bundle.image.preparation.prepared(np.zeros((self.bundle.image.size,) * 2 + (3,), np.uint8))
        for role, predictor in self.predictors.items():
            await predictor(Example(image if role.reads_photos else None, WARM_UP_TEXT if role.reads_text else None))
        if self.embedder is not None:
            await self.embedder(Example(image if Role.COMBINED in self.bundle.predictors else None, WARM_UP_TEXT))
        self.warm.set()


@contextlib.contextmanager
def running_service(
    bundle: Bundle, model_version: str, text: TextRules, photos: PhotoLimits, metrics: Metrics, *, max_batch: int, decode_workers: int,
    log: PredictionLog | None = None,
    tracing: Tracing = Tracing(),
) -> Iterator[Service]:
    """A ``Service`` whose threads run for the block and are shut down after it."""
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="fbml-inference") as inference,
        ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="fbml-decode") as decoder,
    ):
        def batcher(name: str, infer: Callable[[list[Example]], list[T]]) -> Batched[T]:
            return Batched(name, MicroBatcher(functools.partial(measured, infer, metrics, name), inference, max_batch), tracing)

        predictors = {role: batcher(role, functools.partial(predictions, bundle, role)) for role in bundle.predictors}
        embedder = None if bundle.index is None else batcher(EMBED, functools.partial(listing_vectors, bundle))
        yield Service(bundle, model_version, text, photos, metrics, decoder, predictors, embedder, tracing, log=log)


def predictions(bundle: Bundle, role: Role, examples: list[Example]) -> list[Prediction]:
    """The ``role`` predictor's prediction of each request's listing (the bundle's one prediction path)."""
    texts = [example.text or "" for example in examples] if role.reads_text else None
    images = [example.image for example in examples if example.image is not None] if role.reads_photos else None
    return bundle.predict_many(texts=texts, images=images, role=role, batch_size=len(examples))


def listing_vectors(bundle: Bundle, examples: list[Example]) -> list[np.ndarray]:
    """Each request's listing vector (a photo and/or text), as the index holds its catalogue's."""
    groups = [[example.image] if example.image is not None else [] for example in examples]
    return list(bundle.embed_many(texts=[example.text for example in examples], images=groups, batch_size=len(examples)))


def measured(infer: Callable[[list[Example]], list[T]], metrics: Metrics, name: str, examples: list[Example]) -> list[T]:
    """``infer(examples)``, its batch size and seconds recorded under the batcher's ``name``."""
    metrics.batch_size.labels(name).observe(len(examples))
    return timed(functools.partial(infer, examples), metrics.inference_seconds.labels(name).observe)


def _prepared(bundle: Bundle, data: bytes, field: str, limits: PhotoLimits) -> PreparedPhoto:
    """The bundle's preparation of an uploaded photo; 422 naming ``field`` when it is not a usable photo."""
    try:
        return bundle.image_settings().preparation.prepared(data, field, limits)
    except InputError as error:
        raise ApiError(422, f"{field} {error.problem}", field) from None


def timed(work: Callable[[], T], record: Callable[[float], None]) -> T:
    """``work()``, its seconds given to ``record`` whether it returns or raises."""
    started = time.perf_counter()
    try:
        return work()
    finally:
        record(time.perf_counter() - started)


def service_of(state: State) -> Service:
    """The running ``Service`` in the app's state (put there by the app's lifespan)."""
    if STATE_KEY not in state:
        raise RuntimeError("the app has not started: serve it, or enter `with TestClient(app)`, to run its lifespan")
    return cast(Service, state[STATE_KEY])
