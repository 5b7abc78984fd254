"""``fbml predict --engine ray``: the parts of a catalogue scored by Ray Data on a Ray cluster.

The driver cleans the tables and cuts the parts as for the default engine; each part not written yet becomes
one row of a Ray dataset (its products and photo rows as Arrow IPC bytes), and ``map_batches`` hands the rows
to a pool of ``PartScorer`` actors (``fbml.workflows.predict_pool``'s workers): each loads the bundle once, lists
the photo folder once, and reads, decodes and scores its parts' photos itself, on one inference thread
(``fbml.workflows.predict_parts``, the default engine's code). The scored
parts come back to the driver, which writes them as the default engine does, so both write the same table.

The cluster is the one at ``address``, or one started on this machine for the run (a CPU per actor) and
stopped after. Ray is imported only here, only when this engine runs: it is the optional extra ``fbml[ray]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
from contracts.bundle import Role

from fbml.tables.ray_engine import ray_cluster
from fbml.workflows.predict import Catalogue, PredictOptions, available_cores
from fbml.workflows.predict_parts import PART, Part, ScoredPart
from fbml.workflows.predict_pool import PartScorer, scorer_arguments


def ray_scored(bundle_dir: Path, parts: Sequence[Part], catalogue: Catalogue, options: PredictOptions, roles: frozenset[Role] | None, *,
               address: str | None) -> Iterator[ScoredPart]:  # fmt: skip
    """Each part scored by a pool of actors on the cluster at ``address`` (or a local one started for the run),
    as they finish."""
    if not parts:
        return
    with ray_cluster(address, num_cpus=available_cores()) as ray:
        actors = max(1, min(len(parts), int(ray.cluster_resources().get("CPU", 1))))
        dataset = ray.data.from_items([part.to_ipc() for part in parts], override_num_blocks=len(parts))
        arguments = scorer_arguments(bundle_dir, catalogue.image_dir, attrs.evolve(options, threads=1), catalogue.sources, roles)
        scored = dataset.map_batches(PartScorer, batch_size=1, batch_format="numpy", concurrency=actors, num_cpus=1,
                                     fn_constructor_kwargs=arguments)  # fmt: skip
        for batch in scored.iter_batches(batch_size=1, batch_format="numpy"):
            for number, predictions, rejected in zip(batch[PART], batch["predictions"], batch["rejected"], strict=True):
                yield ScoredPart.from_ipc(int(number), bytes(predictions), bytes(rejected))
