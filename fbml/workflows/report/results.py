"""What the report is about: one model's predictions per product (``ModelResults``, checked on the way
in) and the figures the page shows of them (``ModelFigures``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from numpy.typing import ArrayLike, NDArray

from fbml.errors import FbmlError
from fbml.modeling.metrics import (
    CALIBRATION_BINS,
    CalibrationBins,
    ClassScores,
    accuracy,
    calibration_bins,
    check_class_range,
    class_scores,
    confusion_matrix,
    top_classes,
    worst_mistakes,
)

_SUM_TOLERANCE = 1e-3


def _label_copy(value: ArrayLike) -> NDArray[Any]:
    """A read-only copy of ``value`` as an array; integer (or empty) arrays become int64."""
    try:
        array = np.array(value)
    except (TypeError, ValueError) as error:
        raise FbmlError(f"labels are not an array: {error}") from error
    if array.dtype.kind in "iu" or array.size == 0:
        array = array.astype(np.int64)
    array.setflags(write=False)
    return array


def _float_copy(value: ArrayLike) -> NDArray[np.float64]:
    """A read-only float64 copy of ``value``."""
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise FbmlError(f"probabilities are not numbers: {error}") from error
    array.setflags(write=False)
    return array


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    """``values`` as a tuple of strings (a lone string is refused, not split into characters)."""
    if isinstance(values, str):
        raise FbmlError(f"expected a sequence of strings, got the string {values!r}")
    return tuple(values)


def _photo_paths(values: Iterable[Path | str | None]) -> tuple[Path | None, ...]:
    """``values`` as paths, ``None`` kept for a product without a photo."""
    return tuple(None if value is None else Path(value) for value in values)


def _array_eq(left: NDArray[Any], right: NDArray[Any]) -> bool:
    return bool(np.array_equal(left, right))


@attrs.frozen
class ModelResults:
    """One model's predictions per product: true label, class probabilities, and the title and photo shown."""

    name: str
    class_names: tuple[str, ...] = attrs.field(converter=_strings)
    product_ids: tuple[str, ...] = attrs.field(converter=_strings)
    labels: NDArray[np.int64] = attrs.field(converter=_label_copy, eq=attrs.cmp_using(eq=_array_eq), hash=False)
    probabilities: NDArray[np.float64] = attrs.field(converter=_float_copy, eq=attrs.cmp_using(eq=_array_eq), hash=False)
    titles: tuple[str, ...] = attrs.field(converter=_strings)
    photos: tuple[Path | None, ...] = attrs.field(converter=_photo_paths)

    def __attrs_post_init__(self) -> None:
        _check_results(self)

    @property
    def size(self) -> int:
        """Number of products."""
        return len(self.product_ids)


def _check_results(results: ModelResults) -> None:
    """Refuse inconsistent results with one line naming the model and the problem."""
    where = f"model results {results.name!r}"
    if not isinstance(results.name, str) or not results.name.strip():
        raise FbmlError(f"{where}: the model needs a name")
    classes = len(results.class_names)
    if classes == 0 or len(set(results.class_names)) != classes:
        raise FbmlError(f"{where}: class names must be present and distinct")
    if results.labels.ndim != 1 or (results.labels.size and results.labels.dtype != np.int64):
        raise FbmlError(f"{where}: labels must be one integer per product, got {results.labels.dtype} {results.labels.shape}")
    count = len(results.labels)
    if results.probabilities.shape != (count, classes):
        raise FbmlError(f"{where}: probabilities must be (products, classes) = ({count}, {classes}), got {results.probabilities.shape}")
    lengths = {"product_ids": len(results.product_ids), "titles": len(results.titles), "photos": len(results.photos)}
    wrong = {field: length for field, length in lengths.items() if length != count}
    if wrong:
        raise FbmlError(f"{where}: {count} labels but " + ", ".join(f"{length} {field}" for field, length in wrong.items()))
    check_class_range(results.labels, classes, where)
    _check_probabilities(results.probabilities, where)


def _check_probabilities(probabilities: NDArray[np.float64], where: str) -> None:
    if not probabilities.size:
        return
    if not np.isfinite(probabilities).all() or probabilities.min() < 0:
        raise FbmlError(f"{where}: probabilities must be finite and non-negative")
    if np.abs(probabilities.sum(axis=1) - 1).max() > _SUM_TOLERANCE:
        raise FbmlError(f"{where}: each row of probabilities must sum to 1")


@attrs.frozen
class ModelFigures:
    """The figures of one model's results that the page shows; its files are named from ``stem``."""

    results: ModelResults
    stem: str
    predicted: NDArray[np.int64] = attrs.field(eq=False)
    matrix: NDArray[np.int64] = attrs.field(eq=False)
    scores: ClassScores
    accuracy: float
    bins: CalibrationBins
    mistakes: NDArray[np.int64] = attrs.field(eq=False)

    @property
    def macro_f1(self) -> float:
        """The mean F1 over the classes present in truth or prediction."""
        return self.scores.macro_f1

    @property
    def ece(self) -> float:
        """The expected calibration error of the top-class probability."""
        return self.bins.expected_calibration_error


def model_figures(results: ModelResults, stem: str, mistakes: int) -> ModelFigures:
    """Everything the page shows about ``results``, with the ``mistakes`` most confident wrong predictions."""
    predicted = top_classes(results.probabilities)
    matrix = confusion_matrix(results.labels, predicted, len(results.class_names))
    return ModelFigures(
        results=results,
        stem=stem,
        predicted=predicted,
        matrix=matrix,
        scores=class_scores(matrix),
        accuracy=accuracy(results.labels, predicted),
        bins=calibration_bins(results.labels, results.probabilities, CALIBRATION_BINS),
        mistakes=worst_mistakes(results.labels, results.probabilities, mistakes),
    )
