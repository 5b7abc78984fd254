"""Ensembles of calibrated models: log-linear pooling ``softmax(sum_m w_m log p_m + b)``, fitted on validation.

One model with its weight is temperature scaling; several are late fusion, as the SIGIR eCom'20
Rakuten multimodal challenge's winners fused per-modality probabilities. Weights are non-negative and
the bias is per class; both minimise the negative log-likelihood of validation examples (L-BFGS). A
product's prediction is the mean of its examples' (its photos') probabilities.
``cross_validated_scores`` scores a recipe on the same validation data honestly: fitted on some
products, scored on the others, fold by fold (grouped by product, stratified by category, repeated), so
that a choice can tell a real gain from a fold's noise (``FoldScores.falls_short_of``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import numpy as np

from fbml.errors import FbmlError
from fbml.modeling.metrics import accuracy, per_product, top_classes

FLOOR = 1e-7
BIAS_PENALTY = 1e-3
FOLDS = 5
REPEATS = 4
"""Rounds of ``FOLDS`` folds a recipe is scored on: 20 held-out figures, whose spread says what is noise."""
MAX_ITERATIONS = 200


@attrs.frozen
class Ensemble:
    """Member models by name with their weights, and a per-class bias."""

    members: tuple[tuple[str, float], ...]
    bias: tuple[float, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The member models, in order."""
        return tuple(name for name, _ in self.members)

    def combine(self, probabilities: Mapping[str, np.ndarray]) -> np.ndarray:
        """float32 (N, C) probabilities from each member's (N, C) probabilities."""
        missing = [name for name in self.names if name not in probabilities]
        if missing:
            raise FbmlError(f"the ensemble needs the probabilities of {', '.join(missing)}")
        scores = sum(weight * np.log(np.clip(probabilities[name], FLOOR, 1.0)) for name, weight in self.members)
        return _softmax(np.asarray(scores, dtype=np.float64) + np.asarray(self.bias))


def fit_ensemble(
    probabilities: Mapping[str, np.ndarray], labels: np.ndarray, *, fit_bias: bool = True
) -> Ensemble:
    """The non-negative weights (and per-class bias) that minimise the validation log-loss."""
    import torch

    names = tuple(probabilities)
    if not names:
        raise FbmlError("an ensemble needs at least one member")
    logs = torch.from_numpy(np.stack([np.log(np.clip(probabilities[name], FLOOR, 1.0)) for name in names]))
    targets = torch.from_numpy(np.array(labels, dtype=np.int64))
    raw_weights = torch.zeros(len(names), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(logs.shape[2], dtype=torch.float64, requires_grad=fit_bias)
    parameters = [raw_weights, bias] if fit_bias else [raw_weights]
    optimiser = torch.optim.LBFGS(parameters, max_iter=MAX_ITERATIONS, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        scores = (raw_weights.exp()[:, None, None] * logs).sum(dim=0) + bias
        value = torch.nn.functional.cross_entropy(scores, targets) + BIAS_PENALTY * bias.square().sum()
        value.backward()  # type: ignore[no-untyped-call]
        return value

    optimiser.step(loss)  # type: ignore[no-untyped-call]
    weights = raw_weights.detach().exp().tolist()
    return Ensemble(tuple(zip(names, weights, strict=True)), tuple(bias.detach().tolist()))


def product_accuracy(products: Sequence[str], labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Accuracy of the mean of each product's example probabilities."""
    truth, means = per_product(products, labels, probabilities)
    return accuracy(truth, top_classes(means))


@attrs.frozen
class FoldScores:
    """A recipe's per-product accuracy on each held-out fold (``repeats`` rounds of ``FOLDS`` folds)."""

    per_fold: tuple[float, ...]

    @property
    def mean(self) -> float:
        """The mean over folds."""
        return float(np.mean(self.per_fold))

    @property
    def spread(self) -> float:
        """The standard deviation over folds."""
        return float(np.std(self.per_fold))

    def to_json(self) -> dict[str, float]:
        """Mean, standard deviation, lowest and highest over folds."""
        return {"mean": self.mean, "std": self.spread, "min": min(self.per_fold), "max": max(self.per_fold),
                "folds": len(self.per_fold)}

    def falls_short_of(self, better: FoldScores) -> bool:
        """Whether ``better`` beats this recipe across the same folds by more than their noise: the mean of the
        paired differences is above one standard error of them (the one-standard-error rule)."""
        differences = np.asarray(better.per_fold) - np.asarray(self.per_fold)
        error = float(np.std(differences, ddof=1) / np.sqrt(differences.size)) if differences.size > 1 else 0.0
        return float(differences.mean()) > error


def product_folds(products: Sequence[str], labels: np.ndarray, *, seed: int, folds: int = FOLDS) -> np.ndarray:
    """Each example's fold: a product's examples in one fold, each category's products spread evenly over the
    folds (stratified), in an order drawn from ``seed``."""
    first_label: dict[str, int] = {}
    for product, label in zip(products, labels.tolist(), strict=True):
        first_label.setdefault(product, int(label))
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    by_label: dict[int, list[str]] = {}
    for product in sorted(first_label):
        by_label.setdefault(first_label[product], []).append(product)
    offset = 0
    for label in sorted(by_label):
        members = [by_label[label][row] for row in rng.permutation(len(by_label[label]))]
        for position, product in enumerate(members):
            fold_of[product] = (position + offset) % folds
        offset += len(members)
    return np.array([fold_of[product] for product in products], dtype=np.int64)


def cross_validated_scores(
    probabilities: Mapping[str, np.ndarray],
    labels: np.ndarray,
    products: Sequence[str],
    *,
    seed: int = 0,
    fit_bias: bool = True,
    repeats: int = REPEATS,
) -> FoldScores:
    """Per-product accuracy of ``fit_ensemble`` on each held-out fold of products (grouped by product,
    stratified by category), fitted on the other folds; ``repeats`` rounds of folds drawn from ``seed``."""
    scores: list[float] = []
    for repeat in range(repeats):
        folds = product_folds(products, labels, seed=seed + repeat)
        for fold in range(FOLDS):
            held = folds == fold
            if not held.any() or held.all():
                continue
            fitted = fit_ensemble({name: p[~held] for name, p in probabilities.items()}, labels[~held], fit_bias=fit_bias)
            combined = fitted.combine({name: p[held] for name, p in probabilities.items()})
            scores.append(product_accuracy([product for product, keep in zip(products, held, strict=True) if keep],
                                           labels[held], combined))  # fmt: skip
    if not scores:
        raise FbmlError("cross-validation needs at least two products")
    return FoldScores(tuple(scores))


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    probabilities: np.ndarray = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities
