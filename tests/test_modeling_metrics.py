"""Classification figures (fbml.modeling.metrics) against scikit-learn and hand computations; the
figures computed in more than one way agree."""

from __future__ import annotations

import numpy as np
import pytest
from fbml.errors import FbmlError
from fbml.modeling.metrics import (
    calibration_bins,
    class_scores,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    per_class_scores,
    worst_mistakes,
)
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from sklearn.metrics import f1_score, precision_recall_fscore_support


def test_ece_by_hand() -> None:
    probabilities = np.array([[0.55, 0.45], [0.35, 0.65], [0.7, 0.3], [0.9, 0.1], [0.05, 0.95]])
    labels = np.array([0, 0, 0, 0, 0])  # correct, wrong, correct, correct, wrong
    # 5 bins: (0.4,0.6] {0.55 right}: gap 0.45; (0.6,0.8] {0.65 wrong, 0.7 right}: |0.5-0.675|;
    # (0.8,1] {0.9 right, 0.95 wrong}: |0.5-0.925|  ->  (0.45 + 2 * 0.175 + 2 * 0.425) / 5
    assert expected_calibration_error(labels, probabilities, bins=5) == pytest.approx(0.33)
    assert calibration_bins(labels, probabilities, bins=5).counts.tolist() == [0, 0, 1, 2, 2]
    # 15 bins put every product in its own bin: mean of |correct - confidence|
    assert expected_calibration_error(labels, probabilities) == pytest.approx((0.45 + 0.65 + 0.3 + 0.1 + 0.95) / 5)


def test_ece_bins_are_closed_on_the_right() -> None:
    probabilities = [[0.6, 0.4, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.8, 0.2, 0.0], [0.4, 0.3, 0.3]]
    binned = calibration_bins([0, 0, 0, 1, 0], probabilities, bins=5)
    # 0.4 in (0.2, 0.4]; 0.5 and 0.6 in (0.4, 0.6]; 0.8 in (0.6, 0.8]; 1.0 in (0.8, 1]
    assert binned.counts.tolist() == [0, 1, 2, 1, 1]
    assert binned.accuracy.tolist() == [0, 1, 1, 0, 1]
    assert binned.confidence.tolist() == pytest.approx([0, 0.4, 0.55, 0.8, 1.0])


def test_ece_is_zero_when_calibrated_and_not_otherwise() -> None:
    rows, labels = [], []
    for top, correct, total in ((0.7, 7, 10), (0.5, 2, 4), (1.0, 5, 5)):
        rest = (1 - top) / 2
        for index in range(total):
            rows.append([top, rest, rest])
            labels.append(0 if index < correct else 1)
    probabilities = np.array(rows)
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.0, abs=1e-12)
    over_confident = np.array([[0.9, 0.05, 0.05]] * 10)
    assert expected_calibration_error([0] * 5 + [1] * 5, over_confident) == pytest.approx(0.4)


def test_ece_of_nothing_is_zero() -> None:
    assert expected_calibration_error(np.zeros(0, dtype=np.int64), np.zeros((0, 3))) == 0.0


def test_per_class_scores_equal_scikit_learn() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, 300)  # class 4 is only predicted, class 5 never occurs
    predicted = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 5, 300))
    scores = per_class_scores(labels, predicted, 6)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=list(range(6)), zero_division=0
    )
    np.testing.assert_allclose(scores.precision, precision)
    np.testing.assert_allclose(scores.recall, recall)
    np.testing.assert_allclose(scores.f1, f1)
    np.testing.assert_array_equal(scores.support, support)
    assert scores.f1[4] == 0 and scores.precision[4] == 0 and scores.support[5] == 0


def test_per_class_scores_by_hand() -> None:
    with np.errstate(all="raise"):
        scores = per_class_scores([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 3)
    # class 0: tp 1, predicted 2, true 2; class 1: tp 2, predicted 3, true 3; class 2: nothing at all
    assert scores.precision.tolist() == [0.5, pytest.approx(2 / 3), 0.0]
    assert scores.recall.tolist() == [0.5, pytest.approx(2 / 3), 0.0]
    assert scores.f1.tolist() == [0.5, pytest.approx(2 / 3), 0.0]
    assert scores.support.tolist() == [2, 3, 0]


def test_worst_mistakes_are_the_most_confident_wrong_ones() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95], [0.7, 0.3]])
    labels = np.array([0, 0, 0, 0, 1])
    assert worst_mistakes(labels, probabilities, 3).tolist() == [3, 1, 4]
    assert worst_mistakes(labels, probabilities, 10).tolist() == [3, 1, 4, 2]
    assert worst_mistakes(labels, probabilities, 0).tolist() == []


def test_confusion_matrix_equals_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    labels, predicted = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    expected = sklearn_confusion_matrix(labels, predicted, labels=list(range(6)))
    np.testing.assert_array_equal(confusion_matrix(labels, predicted, 6), expected)


def test_macro_f1_is_the_mean_per_class_f1_over_the_classes_present() -> None:
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, 250)  # class 4 is only predicted, class 5 never occurs
    predicted = np.where(rng.random(250) < 0.5, labels, rng.integers(0, 5, 250))
    matrix = confusion_matrix(labels, predicted, 6)
    scores = per_class_scores(labels, predicted, 6)
    assert scores == class_scores(matrix)
    assert macro_f1(matrix) == pytest.approx(scores.f1[:5].mean())
    assert macro_f1(matrix) == pytest.approx(f1_score(labels, predicted, labels=list(range(5)), average="macro"))
    assert macro_f1(np.zeros((3, 3), dtype=np.int64)) == 0.0


def test_classification_report_agrees_with_the_per_class_scores() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 90)
    probabilities = rng.dirichlet(np.ones(3), 90)
    report = classification_report(labels, probabilities)
    predicted = probabilities.argmax(axis=1)
    assert report.examples == 90
    assert report.accuracy == pytest.approx((predicted == labels).mean())
    assert report.macro_f1 == per_class_scores(labels, predicted, 3).macro_f1
    np.testing.assert_array_equal(np.array(report.confusion), confusion_matrix(labels, predicted, 3))


def test_calibration_bins_carry_the_ece() -> None:
    rng = np.random.default_rng(8)
    labels, probabilities = rng.integers(0, 4, 120), rng.dirichlet(np.ones(4), 120)
    binned = calibration_bins(labels, probabilities, bins=7)
    assert binned.counts.sum() == 120
    assert binned.expected_calibration_error == expected_calibration_error(labels, probabilities, bins=7)


@pytest.mark.parametrize(
    ("labels", "predicted", "classes", "message"),
    [
        ([0, 1, 2], [0, 1], 3, "3 labels but 2 predictions"),
        ([0, 3], [0, 1], 3, "labels must lie in 0..2"),
        ([0.5, 1.0], [0, 1], 3, "class indices"),
        ([0, 1], [0, 1], 0, "at least 1"),
    ],
)
def test_bad_class_indices_are_refused(labels: list[float], predicted: list[int], classes: int, message: str) -> None:
    with pytest.raises(FbmlError, match=message):
        per_class_scores(labels, predicted, classes)
