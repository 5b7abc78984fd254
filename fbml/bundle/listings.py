"""Listing vectors: how a listing (its text, its photos, or both) becomes one vector of the search index.

A listing's vector joins three unit-length parts, each weighted: the text CNN's embedding of its
text, the image model's embedding of its photos (their mean), and the square roots of its class
probabilities (so that their dot product is the Bhattacharyya coefficient of two predictions). A
part the listing lacks (no photo, or a query by text alone) is zero. The weights are chosen on the
validation products by precision@10 (same top-level category) and saved with the index.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from fbml.bundle.search import PRECISION_K, SearchIndex, unit_rows
from fbml.errors import FbmlError

TEXT_MODEL = "text-cnn"
IMAGE_MODEL = "image-cnn"


@attrs.frozen
class ListingWeights:
    """How much each part counts in a listing's vector."""

    text: float
    image: float
    classes: float

    def to_json(self) -> dict[str, float]:
        """The weights by part name."""
        return attrs.asdict(self)

    @classmethod
    def from_report(cls, report: Mapping[str, object]) -> ListingWeights:
        """The weights an index's report records; ``FbmlError`` when it records none that are usable."""
        weights = report.get("weights")
        if not isinstance(weights, Mapping) or set(weights) != {"text", "image", "classes"}:
            raise FbmlError("the search index does not say how its vectors were built")
        values = {name: weights[name] for name in ("text", "image", "classes")}
        if not all(type(value) in (int, float) and 0.0 <= value <= 100.0 for value in values.values()):
            raise FbmlError(f"the search index's part weights must be numbers from 0 to 100, got {values}")
        return cls(float(values["text"]), float(values["image"]), float(values["classes"]))


@attrs.frozen
class ListingParts:
    """Per listing: the text embedding, the photos' mean embedding and the class probabilities (zero rows: absent)."""

    text: np.ndarray
    image: np.ndarray
    classes: np.ndarray

    def vectors(self, weights: ListingWeights) -> np.ndarray:
        """Unit-length float32 vectors joining the weighted unit-length parts."""
        parts = [unit_rows(self.text) * weights.text, unit_rows(self.image) * weights.image,
                 np.sqrt(np.clip(self.classes, 0.0, 1.0)) * weights.classes]
        return unit_rows(np.concatenate(parts, axis=1))



def precision_at_k(index: SearchIndex, rows: np.ndarray, k: int = PRECISION_K) -> float:
    """Share of each query row's ``k`` nearest other rows with its category."""
    if rows.size == 0 or len(index) < 2:
        return 0.0
    neighbours, _ = index.search(index.vectors[rows], k, exclude=rows.tolist())
    categories = index.catalogue["category"].to_numpy()
    return float((categories[neighbours] == categories[rows][:, None]).mean())
