"""A model's results are checked on the way in, and the figures the page shows of them are the metrics'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fbml.errors import FbmlError
from fbml.modeling.metrics import calibration_bins, confusion_matrix, per_class_scores, worst_mistakes
from fbml.workflows.report.results import ModelResults, model_figures

from report_examples import CLASSES, example_results


def test_figures_are_the_metrics_of_the_results(tmp_path: Path) -> None:
    results = example_results("text", 50, [None], seed=4)
    figures = model_figures(results, "1-text", mistakes=5)
    predicted = results.probabilities.argmax(axis=1)
    np.testing.assert_array_equal(figures.predicted, predicted)
    np.testing.assert_array_equal(figures.matrix, confusion_matrix(results.labels, predicted, len(CLASSES)))
    assert figures.scores == per_class_scores(results.labels, predicted, len(CLASSES))
    assert figures.accuracy == pytest.approx((predicted == results.labels).mean())
    assert figures.macro_f1 == figures.scores.macro_f1
    assert figures.bins == calibration_bins(results.labels, results.probabilities)
    assert figures.ece == figures.bins.expected_calibration_error
    np.testing.assert_array_equal(figures.mistakes, worst_mistakes(results.labels, results.probabilities, 5))


def test_results_are_read_only_copies() -> None:
    labels = np.arange(4) % 2
    results = ModelResults("m", ("a", "b"), ["p0", "p1", "p2", "p3"], labels, np.full((4, 2), 0.5), ["t"] * 4, [None] * 4)
    labels[0] = 1
    assert results.labels[0] == 0
    with pytest.raises(ValueError, match="read-only"):
        results.probabilities[0, 0] = 1.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("titles", ["only one"], "titles"),
        ("photos", [None] * 11, "photos"),
        ("product_ids", [f"p{index}" for index in range(9)], "product_ids"),
        ("probabilities", np.full((10, 4), 0.25), "probabilities"),
        ("probabilities", np.full((10, 5), 0.5), "sum to 1"),
        ("labels", np.arange(10) % 6, "labels"),
        ("labels", np.zeros(10) + 0.5, "integer"),
        ("class_names", ("a", "a", "b", "c", "d"), "distinct"),
        ("titles", "a string", "sequence of strings"),
    ],
)
def test_inconsistent_results_are_refused(field: str, value: object, message: str) -> None:
    fields: dict[str, object] = {
        "name": "text",
        "class_names": CLASSES,
        "product_ids": [f"p{index}" for index in range(10)],
        "labels": np.arange(10) % 5,
        "probabilities": np.full((10, 5), 0.2),
        "titles": ["t"] * 10,
        "photos": [None] * 10,
    }
    ModelResults(**fields)  # type: ignore[arg-type]  # the valid base case
    with pytest.raises(FbmlError, match=message):
        ModelResults(**{**fields, field: value})  # type: ignore[arg-type]
