"""Ensembles of calibrated models: log-linear pooling ``softmax(sum_m w_m log p_m + b)``, fitted on validation.

One model with its weight is temperature scaling; several are late fusion, as the SIGIR eCom'20
Rakuten multimodal challenge's winners fused per-modality probabilities. Weights are non-negative and
the bias is per class; both minimise the negative log-likelihood of validation examples (L-BFGS). A
product's prediction is the mean of its examples' (its photos') probabilities.
``cross_validated_accuracy`` scores a recipe on the same validation data honestly: fitted on some
products, scored on the others.
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


def cross_validated_accuracy(
    probabilities: Mapping[str, np.ndarray],
    labels: np.ndarray,
    products: Sequence[str],
    *,
    seed: int = 0,
    fit_bias: bool = True,
) -> float:
    """Per-product accuracy of ``fit_ensemble`` on each fold of products, fitted on the other folds."""
    distinct = sorted(set(products))
    fold_of = dict(zip(distinct, np.random.default_rng(seed).permutation(len(distinct)) % FOLDS, strict=True))
    folds = np.array([fold_of[product] for product in products])
    combined = np.zeros_like(next(iter(probabilities.values())), dtype=np.float64)
    for fold in range(FOLDS):
        held = folds == fold
        if not held.any() or held.all():
            continue
        fitted = fit_ensemble({name: p[~held] for name, p in probabilities.items()}, labels[~held], fit_bias=fit_bias)
        combined[held] = fitted.combine({name: p[held] for name, p in probabilities.items()})
    return product_accuracy(products, labels, combined)


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    probabilities: np.ndarray = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities
