"""A model's figures on some examples: accuracy and macro-F1 per example (a photo, or a product for text) and per
product (the mean of a product's photos' probabilities)."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import polars as pl

from fbml.modeling.metrics import ClassificationReport, classification_report, per_product


@attrs.frozen
class Scores:
    """A model's figures on some data: per example (photo or product) and per product; for a predictor of a
    bundle that predicts subcategories, the subcategory accuracy per product too."""

    per_example: ClassificationReport
    per_product: ClassificationReport
    excluded: int
    subcategory_accuracy: float | None = None
    """A predictor's share of products whose predicted subcategory is right (None: not scored)."""

    def to_json(self) -> dict[str, Any]:
        found = {"per_example": self.per_example.to_json(), "per_product": self.per_product.to_json(), "excluded": self.excluded}
        return found if self.subcategory_accuracy is None else {**found, "subcategory_accuracy": self.subcategory_accuracy}


def scored(probabilities: np.ndarray, labels: np.ndarray, frame: pl.DataFrame, excluded: int) -> Scores:
    """The figures of ``probabilities`` of ``frame``'s rows (whose ``id`` is their product's) against ``labels``."""
    product_labels, product_probabilities = per_product(frame["id"].to_list(), labels, probabilities)
    return Scores(
        classification_report(labels, probabilities),
        classification_report(product_labels, product_probabilities),
        excluded,
    )
