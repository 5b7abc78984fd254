"""``fbml predict --engine ray``: the parts of a catalogue scored by Ray Data on a Ray cluster.

The driver cleans the tables and cuts the parts as for the default engine; each part not written yet becomes
one row of a Ray dataset (its products and photo rows as Arrow IPC bytes), and ``map_batches`` hands the rows
to a pool of ``PartScorer`` actors: each loads the bundle once, lists the photo folder once, and reads, decodes
and scores its parts' photos itself (``fbml.workflows.predict_parts``, the default engine's code). The scored
parts come back to the driver, which writes them as the default engine does, so both write the same table.

The cluster is the one at ``address``, or one started on this machine for the run (a CPU per actor) and
stopped after. Ray is imported only here, only when this engine runs: it is the optional extra ``fbml[ray]``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from contracts.bundle import Role
from tqdm import tqdm

from fbml.tables.ray_engine import ray_cluster
from fbml.vision.cache import PhotoFolder
from fbml.workflows.predict import Catalogue, PredictOptions, available_cores, batch_bundle
from fbml.workflows.predict_parts import PART, Part, ScoredPart, Sources, decoded_part, ipc_bytes, scored_part


class PartScorer:
    """A Ray actor's state: the bundle and the listed photo folder, loaded once; called with a batch of parts."""

    def __init__(self, bundle_dir: str, image_dir: str | None, options: dict[str, Any], sources: tuple[str, str],
                 roles: list[str] | None) -> None:  # fmt: skip
        self.options = PredictOptions(**options)
        self.bundle = batch_bundle(Path(bundle_dir), self.options, None if roles is None else frozenset(map(Role, roles)))
        reads_photos = image_dir is not None and self.bundle.image is not None
        self.folder = PhotoFolder.listed(Path(image_dir)) if reads_photos and image_dir is not None else None
        self.sources = Sources(*sources)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[object]]:
        """Each part of ``batch`` (``Part.to_ipc``'s columns) scored: its number, predictions and rejected rows (IPC bytes)."""
        size = self.bundle.image.size if self.bundle.image is not None else 0
        answer: dict[str, list[object]] = {PART: [], "predictions": [], "rejected": []}
        for number, products, photos in zip(batch[PART], batch["products"], batch["photos"], strict=True):
            part = Part.from_ipc(int(number), bytes(products), bytes(photos))
            decoded = decoded_part(part, self.folder, size, self.options.decode_workers)
            scored = scored_part(self.bundle, decoded, self.sources, batch_size=self.options.batch_size,
                                 embeddings=self.options.embeddings)  # fmt: skip
            answer[PART].append(scored.number)
            answer["predictions"].append(ipc_bytes(scored.predictions))
            answer["rejected"].append(ipc_bytes(scored.rejected))
        return answer


def ray_scored(bundle_dir: Path, parts: Sequence[Part], catalogue: Catalogue, options: PredictOptions, roles: frozenset[Role] | None, *,
               address: str | None, bar: tqdm[Any]) -> Iterator[ScoredPart]:  # fmt: skip
    """Each part scored by a pool of actors on the cluster at ``address`` (or a local one started for the run),
    as they finish."""
    if not parts:
        return
    sizes = {part.number: part.products.height for part in parts}
    with ray_cluster(address, num_cpus=available_cores()) as ray:
        actors = max(1, min(len(parts), int(ray.cluster_resources().get("CPU", 1))))
        dataset = ray.data.from_items([part.to_ipc() for part in parts], override_num_blocks=len(parts))
        options_json = {name: getattr(options, name) for name in ("runtime", "device", "batch_size", "part_size", "embeddings",
                                                                  "decode_workers")} | {"threads": 1}  # fmt: skip
        image_dir = None if catalogue.image_dir is None else str(catalogue.image_dir.resolve())
        scored = dataset.map_batches(
            PartScorer, batch_size=1, batch_format="numpy", concurrency=actors, num_cpus=1,
            fn_constructor_kwargs={"bundle_dir": str(bundle_dir.resolve()), "image_dir": image_dir, "options": options_json,
                                   "sources": (catalogue.sources.products, catalogue.sources.photos),
                                   "roles": None if roles is None else sorted(roles)},
        )  # fmt: skip
        for batch in scored.iter_batches(batch_size=1, batch_format="numpy"):
            for number, predictions, rejected in zip(batch[PART], batch["predictions"], batch["rejected"], strict=True):
                yield ScoredPart(int(number), pl.read_ipc(io.BytesIO(bytes(predictions))), pl.read_ipc(io.BytesIO(bytes(rejected))))
                bar.update(sizes[int(number)])
