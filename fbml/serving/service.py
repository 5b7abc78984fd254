"""The service the handlers share: the bundle, the request limits, and the threads that work for them.

``running_service`` opens the threads and closes them (the app's lifespan holds it open): one
inference thread that the micro-batchers share, and ``decode_workers`` photo-decoding threads, so the
event loop waits on neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import attrs
import numpy as np
from litestar.datastructures import State
from torch import Tensor

from fbml.bundle.search import SearchIndex
from fbml.bundle.store import Bundle
from fbml.serving.batching import MicroBatcher
from fbml.serving.errors import ApiError
from fbml.serving.inference import Example, class_probabilities, query_vectors
from fbml.serving.photos import PhotoLimits, prepared_image
from fbml.serving.requests import TextRules

EMBED = "embed"
"""The batcher of query vectors (``/recommend``), beside one per predictor role."""
STATE_KEY = "service"
"""Where the app's state holds the running ``Service``."""


@attrs.frozen(eq=False)
class Service:
    """The bundle, what a request's texts and photos may be, and the threads that serve requests."""

    bundle: Bundle
    text: TextRules
    photos: PhotoLimits
    decoder: ThreadPoolExecutor
    batchers: Mapping[str, MicroBatcher[Example, np.ndarray]]

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

    async def decoded_image(self, data: bytes, field: str) -> Tensor:
        """The upload decoded on a decoding thread and prepared like the training photos (422 naming ``field``)."""
        if self.bundle.image is None:
            raise ApiError(404, "the bundle has no image settings: it serves no photos")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decoder, prepared_image, data, self.bundle.image, self.photos, field)


@contextlib.contextmanager
def running_service(
    bundle: Bundle, text: TextRules, photos: PhotoLimits, *, max_batch: int, decode_workers: int
) -> Iterator[Service]:
    """A ``Service`` whose threads run for the block and are shut down after it."""
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="fbml-inference") as inference,
        ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="fbml-decode") as decoder,
    ):
        batchers: dict[str, MicroBatcher[Example, np.ndarray]] = {
            role: MicroBatcher(functools.partial(class_probabilities, bundle, role), inference, max_batch)
            for role in bundle.predictors
        }
        if bundle.index is not None:
            batchers[EMBED] = MicroBatcher(functools.partial(query_vectors, bundle), inference, max_batch)
        yield Service(bundle, text, photos, decoder, batchers)


def service_of(state: State) -> Service:
    """The running ``Service`` in the app's state (put there by the app's lifespan)."""
    if STATE_KEY not in state:
        raise RuntimeError("the app has not started: serve it, or enter `with TestClient(app)`, to run its lifespan")
    return cast(Service, state[STATE_KEY])
