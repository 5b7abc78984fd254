"""The service the handlers share: the bundle, its version, the request limits, the metrics, and the
threads that work for them.

``running_service`` opens the threads and closes them (the app's lifespan holds it open): one
inference thread that the micro-batchers share, and ``decode_workers`` photo-decoding threads, so the
event loop waits on neither. ``warm_up`` sends one request through each batcher; the service is ready
(``/health/ready``) once each has answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

import attrs
import numpy as np
from litestar.datastructures import State

from fbml.bundle.search import SearchIndex
from fbml.bundle.store import Bundle
from fbml.serving.batching import MicroBatcher
from fbml.serving.errors import ApiError
from fbml.serving.inference import Example, class_probabilities, query_vectors
from fbml.serving.metrics import Metrics
from fbml.serving.photos import PhotoLimits, normalised, prepared_image
from fbml.serving.requests import TextRules

EMBED = "embed"
"""The batcher of query vectors (``/recommend``), beside one per predictor role."""
STATE_KEY = "service"
"""Where the app's state holds the running ``Service``."""
WARM_UP_TEXT = "warm up"
T = TypeVar("T")


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
    batchers: Mapping[str, MicroBatcher[Example, np.ndarray]]
    warm: asyncio.Event = attrs.field(factory=asyncio.Event)

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

    async def decoded_image(self, data: bytes, field: str) -> np.ndarray:
        """The upload decoded on a decoding thread and prepared like the training photos (422 naming ``field``)."""
        if self.bundle.image is None:
            raise ApiError(404, "the bundle has no image settings: it serves no photos")
        prepare = functools.partial(prepared_image, data, self.bundle.image, self.photos, field)
        return await asyncio.get_running_loop().run_in_executor(self.decoder, timed, prepare, self.metrics.decode_seconds.observe)

    async def warm_up(self) -> None:
        """One request through each batcher (a blank photo and/or a short text), then ``warm`` is set."""
        image = None if self.bundle.image is None else normalised(np.zeros((self.bundle.image.size,) * 2 + (3,), np.uint8), self.bundle.image)
        for name, batcher in self.batchers.items():
            await batcher(Example(image if name in ("image", "combined", EMBED) else None,
                                  WARM_UP_TEXT if name in ("text", "combined", EMBED) else None))  # fmt: skip
        self.warm.set()


@contextlib.contextmanager
def running_service(
    bundle: Bundle, model_version: str, text: TextRules, photos: PhotoLimits, metrics: Metrics, *, max_batch: int, decode_workers: int
) -> Iterator[Service]:
    """A ``Service`` whose threads run for the block and are shut down after it."""
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="fbml-inference") as inference,
        ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="fbml-decode") as decoder,
    ):
        infers: dict[str, Callable[[list[Example]], list[np.ndarray]]] = {
            role: functools.partial(class_probabilities, bundle, role) for role in bundle.predictors
        }
        if bundle.index is not None:
            infers[EMBED] = functools.partial(query_vectors, bundle)
        batchers = {name: MicroBatcher(functools.partial(measured, infer, metrics, name), inference, max_batch)
                    for name, infer in infers.items()}  # fmt: skip
        yield Service(bundle, model_version, text, photos, metrics, decoder, batchers)


def measured(infer: Callable[[list[Example]], list[np.ndarray]], metrics: Metrics, name: str, examples: list[Example]) -> list[np.ndarray]:
    """``infer(examples)``, its batch size and seconds recorded under the batcher's ``name``."""
    metrics.batch_size.labels(name).observe(len(examples))
    return timed(functools.partial(infer, examples), metrics.inference_seconds.labels(name).observe)


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
