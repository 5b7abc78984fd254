"""Classification figures: confusion matrices, per-class scores, accuracy and macro-F1, calibration, the
most confident mistakes, and per-product aggregation. Numbers only: ``fbml.modeling.charts`` draws them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import polars as pl
from numpy.typing import ArrayLike, NDArray

from fbml.errors import FbmlError

CALIBRATION_BINS = 15


def _array_eq(left: NDArray[Any], right: NDArray[Any]) -> bool:
    return bool(np.array_equal(left, right))


@attrs.frozen
class ClassificationReport:
    """Accuracy and macro-F1 over ``examples`` with the confusion matrix (rows: truth, columns: predicted)."""

    examples: int
    accuracy: float
    macro_f1: float
    confusion: tuple[tuple[int, ...], ...]

    def to_json(self) -> dict[str, object]:
        return {
            "examples": self.examples,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "confusion": [list(row) for row in self.confusion],
        }


@attrs.frozen
class ClassScores:
    """Per class: precision, recall and F1 (0 where undefined), true count (support) and predicted count."""

    precision: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    recall: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    f1: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    support: NDArray[np.int64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    predicted: NDArray[np.int64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)

    @property
    def macro_f1(self) -> float:
        """The unweighted mean F1 over the classes that occur in truth or prediction (0 when none does)."""
        present = (self.support + self.predicted) > 0
        return float(self.f1[present].mean()) if present.any() else 0.0


@attrs.frozen
class CalibrationBins:
    """Top-class confidence in equal-width bins: bin m holds confidences in (edges[m], edges[m + 1]]
    (the first also 0); per bin the product count, accuracy and mean confidence (0 for an empty bin)."""

    edges: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    counts: NDArray[np.int64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    accuracy: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    confidence: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)

    @property
    def expected_calibration_error(self) -> float:
        """The count-weighted mean |accuracy - mean confidence| over the bins (0 when they are empty)."""
        total = int(self.counts.sum())
        gaps = self.counts * np.abs(self.accuracy - self.confidence)
        return float(gaps.sum() / total) if total else 0.0


def confusion_matrix(labels: ArrayLike, predicted: ArrayLike, num_classes: int) -> NDArray[np.int64]:
    """Counts of (true class, predicted class) pairs."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def top_classes(probabilities: ArrayLike) -> NDArray[np.int64]:
    """The most probable class of each row of (examples, classes) probabilities."""
    top: NDArray[np.int64] = np.asarray(probabilities).argmax(axis=1).astype(np.int64)
    return top


def accuracy(labels: ArrayLike, predicted: ArrayLike) -> float:
    """The share of predictions equal to their label; 0 for no examples."""
    truth, guess = np.asarray(labels), np.asarray(predicted)
    return float((truth == guess).mean()) if len(truth) else 0.0


def class_scores(matrix: NDArray[np.int64]) -> ClassScores:
    """Precision, recall, F1, support and predicted count of each class of a confusion matrix, 0 where a
    ratio is undefined."""
    hits = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(axis=1).astype(np.int64), matrix.sum(axis=0).astype(np.int64)
    return ClassScores(
        precision=_ratio(hits, predicted),
        recall=_ratio(hits, support),
        f1=_ratio(2 * hits, support + predicted),
        support=support,
        predicted=predicted,
    )


def macro_f1(matrix: NDArray[np.int64]) -> float:
    """The unweighted mean F1 over the classes that occur in truth or prediction."""
    return class_scores(matrix).macro_f1


def per_class_scores(labels: ArrayLike, predicted: ArrayLike, num_classes: int) -> ClassScores:
    """Precision, recall, F1 and support for each of ``num_classes`` classes, 0 where a ratio is undefined."""
    truth, guess = class_indices(labels, num_classes, "labels"), class_indices(predicted, num_classes, "predicted")
    if truth.shape != guess.shape:
        raise FbmlError(f"{len(truth)} labels but {len(guess)} predictions")
    return class_scores(confusion_matrix(truth, guess, num_classes))


def classification_report(labels: np.ndarray, probabilities: np.ndarray) -> ClassificationReport:
    """Figures for one prediction per example."""
    predicted = top_classes(probabilities)
    matrix = confusion_matrix(labels, predicted, probabilities.shape[1])
    return ClassificationReport(
        examples=len(labels),
        accuracy=accuracy(labels, predicted),
        macro_f1=macro_f1(matrix),
        confusion=tuple(tuple(int(value) for value in row) for row in matrix),
    )


def class_indices(values: ArrayLike, num_classes: int, what: str) -> NDArray[np.int64]:
    """``values`` as a 1-D int64 array of class indices in 0..num_classes-1."""
    if num_classes < 1:
        raise FbmlError(f"num_classes must be at least 1, got {num_classes}")
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise FbmlError(f"{what} must be a 1-D array of class indices")
    classes = array.astype(np.int64)
    check_class_range(classes, num_classes, what)
    return classes


def check_class_range(labels: NDArray[np.int64], num_classes: int, where: str) -> None:
    """Refuse class indices outside 0..num_classes-1, naming ``where`` they come from."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise FbmlError(f"{where}: labels must lie in 0..{num_classes - 1}")


def _ratio(numerator: NDArray[Any], denominator: NDArray[Any]) -> NDArray[np.float64]:
    """``numerator / denominator`` elementwise, 0 where the denominator is 0 (no warning)."""
    top, bottom = numerator.astype(np.float64), denominator.astype(np.float64)
    return np.divide(top, bottom, out=np.zeros_like(top), where=bottom > 0)


def calibration_bins(labels: ArrayLike, probabilities: ArrayLike, bins: int = CALIBRATION_BINS) -> CalibrationBins:
    """Top-class confidence against accuracy in ``bins`` equal-width bins over [0, 1]."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if bins < 1:
        raise FbmlError(f"bins must be at least 1, got {bins}")
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise FbmlError(f"probabilities must be (examples, classes), got {probs.shape}")
    truth = class_indices(labels, probs.shape[1], "labels")
    if len(truth) != len(probs):
        raise FbmlError(f"{len(truth)} labels but {len(probs)} rows of probabilities")
    edges = np.linspace(0.0, 1.0, bins + 1)
    confidence = probs.max(axis=1, initial=0.0)
    correct = (top_classes(probs) == truth).astype(np.float64)
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(which, minlength=bins).astype(np.int64)
    return CalibrationBins(
        edges=edges,
        counts=counts,
        accuracy=_ratio(np.bincount(which, weights=correct, minlength=bins), counts),
        confidence=_ratio(np.bincount(which, weights=confidence, minlength=bins), counts),
    )


def expected_calibration_error(labels: ArrayLike, probabilities: ArrayLike, bins: int = CALIBRATION_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - mean confidence| over equal-width bins of top-class confidence."""
    return calibration_bins(labels, probabilities, bins).expected_calibration_error


def worst_mistakes(labels: ArrayLike, probabilities: ArrayLike, count: int) -> NDArray[np.int64]:
    """Rows of the ``count`` wrong predictions made with the highest probability, most confident first."""
    probs = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(labels, dtype=np.int64)
    if not len(truth) or count < 1:
        return np.zeros(0, dtype=np.int64)
    predicted = top_classes(probs)
    wrong = np.flatnonzero(predicted != truth)
    order = np.argsort(-probs[wrong, predicted[wrong]], kind="stable")
    return wrong[order[:count]].astype(np.int64)


def per_product(product_ids: Sequence[str], labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per product: its label and the mean of its examples' probabilities (in first-seen order)."""
    frame = pl.DataFrame({"product": list(product_ids), "label": labels})
    firsts = frame.unique("product", keep="first", maintain_order=True)["label"].to_numpy()
    return firsts, product_means(product_ids, probabilities)[1]


def product_means(product_ids: Sequence[str], probabilities: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each product (in first-seen order) and the mean of its examples' probabilities: a product's prediction
    from its photos' (``fbml evaluate``'s per-product scores, ``fbml predict``'s combined rows)."""
    first_seen: dict[str, int] = {}
    groups = np.fromiter((first_seen.setdefault(product, len(first_seen)) for product in product_ids), np.int64, len(product_ids))
    return list(first_seen), group_means(groups, probabilities, len(first_seen))


def group_means(groups: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    """The mean of ``values``' rows in each of ``count`` groups (row ``i`` is in group ``groups[i]``), summed in
    float64, in ``values``' dtype; zeros for a group without rows. A listing's vector parts from its photos'
    (``fbml.bundle.listings``) and a product's prediction from its photos' (``product_means``) alike."""
    sums = np.zeros((count, values.shape[1]), np.float64)
    np.add.at(sums, groups, values)
    sizes = np.bincount(groups, minlength=count)
    means = np.zeros_like(sums)
    filled = sizes > 0
    means[filled] = sums[filled] / sizes[filled, None]
    return means.astype(values.dtype)
