"""Log-linear ensembles: temperature recovery, late fusion that beats each modality, honest cross-validation."""

from __future__ import annotations

import numpy as np
import pytest
from fbml.errors import FbmlError
from fbml.modeling.ensembles import Ensemble, FoldScores, cross_validated_scores, fit_ensemble, product_accuracy, product_folds
from hypothesis import given
from hypothesis import strategies as st

CLASSES = 5


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def sampled_labels(probabilities: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([rng.choice(len(row), p=row) for row in probabilities])


def noisy_modality(labels: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """Probabilities whose scores favour the true class by ``strength`` under unit noise."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(len(labels), CLASSES))
    scores[np.arange(len(labels)), labels] += strength
    return softmax(scores)


@given(st.integers(1, 30), st.integers(2, 6), st.integers(0, 2**16))
def test_one_member_with_unit_weight_and_no_bias_is_the_member(rows: int, classes: int, seed: int) -> None:
    probabilities = softmax(np.random.default_rng(seed).normal(size=(rows, classes)) * 3)
    combined = Ensemble((("a", 1.0),), (0.0,) * classes).combine({"a": probabilities})
    assert combined.dtype == np.float32
    np.testing.assert_allclose(combined, probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(combined.sum(axis=1), 1.0, atol=1e-5)


def test_fitting_recovers_a_temperature() -> None:
    scores = np.random.default_rng(0).normal(size=(4000, CLASSES))
    labels = sampled_labels(softmax(2.0 * scores), seed=1)  # the truth is twice as sharp as the model says
    fitted = fit_ensemble({"model": softmax(scores)}, labels, fit_bias=False)
    assert fitted.names == ("model",)
    assert fitted.members[0][1] == pytest.approx(2.0, rel=0.1)


def test_fitting_recovers_a_class_prior() -> None:
    scores = np.random.default_rng(2).normal(size=(6000, CLASSES))
    prior = np.log(np.array([4.0, 1.0, 1.0, 1.0, 1.0]))
    labels = sampled_labels(softmax(scores + prior), seed=3)
    fitted = fit_ensemble({"model": softmax(scores)}, labels)
    bias = np.array(fitted.bias)
    assert bias[0] - bias[1:].mean() == pytest.approx(np.log(4.0), abs=0.25)


def test_late_fusion_beats_each_modality_and_weights_the_stronger_more() -> None:
    labels = np.random.default_rng(4).integers(0, CLASSES, 3000)
    text, image = noisy_modality(labels, 2.0, seed=5), noisy_modality(labels, 1.0, seed=6)
    fitted = fit_ensemble({"text": text, "image": image}, labels)
    weights = dict(fitted.members)
    assert weights["text"] > weights["image"] > 0.1
    fused = fitted.combine({"text": text, "image": image})
    accuracy = {name: float((p.argmax(1) == labels).mean()) for name, p in (("text", text), ("image", image), ("fused", fused))}
    assert accuracy["fused"] > accuracy["text"] + 0.03 > accuracy["image"]


def test_cross_validation_is_not_fooled_by_noise() -> None:
    """With probabilities unrelated to the labels, held-out accuracy stays near chance."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, CLASSES, 600)
    members = {name: softmax(rng.normal(size=(600, CLASSES)) * 2) for name in ("a", "b", "c")}
    products = [f"p{row}" for row in range(600)]
    assert cross_validated_scores(members, labels, products).mean < 1 / CLASSES + 0.08


def test_cross_validation_keeps_a_products_photos_in_one_fold() -> None:
    """Two photos of a product carry the same label: a fold split by photo would leak it."""
    rng = np.random.default_rng(8)
    labels = np.repeat(rng.integers(0, CLASSES, 300), 2)
    products = [f"p{row // 2}" for row in range(600)]
    signal = noisy_modality(labels, 1.5, seed=9)
    accuracy = cross_validated_scores({"a": signal}, labels, products).mean
    assert 0.4 < accuracy < 0.95
    assert accuracy == pytest.approx(product_accuracy(products, labels, signal), abs=0.05)


def test_product_accuracy_means_a_products_photos() -> None:
    labels = np.array([0, 0, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])  # product a: mean (0.55, 0.45) -> right
    assert product_accuracy(["a", "a", "b"], labels, probabilities) == 1.0
    assert product_accuracy(["a", "b", "c"], labels, probabilities) == pytest.approx(2 / 3)


def test_missing_members_are_named() -> None:
    ensemble = Ensemble((("text-cnn", 1.0), ("image", 0.5)), (0.0, 0.0))
    with pytest.raises(FbmlError, match="needs the probabilities of image"):
        ensemble.combine({"text-cnn": np.full((1, 2), 0.5)})
    with pytest.raises(FbmlError, match="at least one member"):
        fit_ensemble({}, np.zeros(3, dtype=np.int64))


def test_folds_keep_products_whole_and_spread_each_category_evenly() -> None:
    rng = np.random.default_rng(10)
    product_labels = rng.integers(0, CLASSES, 200)
    products = [f"p{row}" for row in range(200) for _ in range(2)]
    labels = np.repeat(product_labels, 2)
    folds = product_folds(products, labels, seed=3)
    assert (folds[0::2] == folds[1::2]).all()  # a product's photos in one fold
    for label in range(CLASSES):
        sizes = np.bincount(folds[0::2][product_labels == label], minlength=5)
        assert sizes.max() - sizes.min() <= 1  # stratified
    assert not (product_folds(products, labels, seed=4) == folds).all()  # another draw, other folds


def test_cross_validated_scores_give_every_fold_and_tell_noise_from_a_gain() -> None:
    rng = np.random.default_rng(11)
    labels = rng.integers(0, CLASSES, 1000)
    products = [f"p{row}" for row in range(1000)]
    strong, weak = noisy_modality(labels, 2.5, seed=12), noisy_modality(labels, 0.3, seed=13)
    scores = cross_validated_scores({"a": strong}, labels, products)
    assert len(scores.per_fold) == 20 and scores.spread > 0
    poor = cross_validated_scores({"a": weak}, labels, products)
    assert poor.falls_short_of(scores) and not scores.falls_short_of(poor)
    same = FoldScores(scores.per_fold)
    assert not same.falls_short_of(scores)  # no gain at all is within the noise
    nudged = FoldScores(tuple(value + 0.001 * (-1) ** fold for fold, value in enumerate(scores.per_fold)))
    assert not scores.falls_short_of(nudged)  # a difference that changes sign fold to fold is noise
