"""Effect sizes between two samples, each symmetric in its two sides, and their noise-aware thresholds.

* ``psi``: the population stability index of two share vectors, sum (q - p) ln(q / p);
* ``wasserstein``: the mean absolute difference of two quantile functions (the 1-Wasserstein distance of
  the two distributions' 1st to 99th percentiles), in units of a given scale;
* ``js_distance``: the Jensen-Shannon distance of two label mixes (base 2: 0 same, 1 disjoint);
* ``rate_difference``: the absolute difference of two rates;
* ``domain_auc``: how well a cross-validated logistic regression tells two sets of vectors apart (0.5: not at all).

A threshold is a fixed effect size plus an allowance for sampling noise that shrinks as the samples grow,
so unseen listings of the same market stay below it at any size while a shift that matters does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

SHARE_FLOOR = 1e-4
"""The least share a bin is given (an empty bin would make PSI infinite)."""
PSI_BASE = 0.2
WASSERSTEIN_BASE = 0.25
JS_BASE = 0.1
RATE_BASE = 0.05
AUC_BASE = 0.7
_FOLDS = 5


def effective_size(first: int, second: int) -> float:
    """The effective sample size of comparing samples of ``first`` and ``second`` values."""
    return first * second / (first + second) if first and second else 0.0


def psi(first: np.ndarray, second: np.ndarray) -> float:
    """The population stability index of two share vectors over the same bins."""
    p, q = np.maximum(first, SHARE_FLOOR), np.maximum(second, SHARE_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_threshold(bins: int, first: int, second: int) -> float:
    """``PSI_BASE`` plus twice the PSI two samples of one distribution show by chance, about (bins - 1) / n."""
    return PSI_BASE + 2 * (bins - 1) / max(effective_size(first, second), 1.0)


def wasserstein(first: np.ndarray, second: np.ndarray, scale: float) -> float:
    """The mean absolute difference of two quantile functions (at the same levels), in units of ``scale``."""
    difference = float(np.mean(np.abs(np.asarray(first) - np.asarray(second))))
    return difference / scale if scale > 0 else (0.0 if difference == 0 else math.inf)


def wasserstein_threshold(first: int, second: int) -> float:
    """``WASSERSTEIN_BASE`` plus three times the chance distance of two samples, about 1 / sqrt(n)."""
    return WASSERSTEIN_BASE + 3 / math.sqrt(max(effective_size(first, second), 1.0))


def js_distance(first: Mapping[str, float], second: Mapping[str, float]) -> float:
    """The Jensen-Shannon distance (base 2) of two label mixes (shares by label; a missing label has none)."""
    labels = sorted(set(first) | set(second))
    p = np.array([first.get(label, 0.0) for label in labels])
    q = np.array([second.get(label, 0.0) for label in labels])
    middle = (p + q) / 2
    divergence = (_kl(p, middle) + _kl(q, middle)) / 2
    return math.sqrt(max(divergence, 0.0))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    held = p > 0
    return float(np.sum(p[held] * np.log2(p[held] / q[held])))


def js_threshold(labels: int, first: int, second: int) -> float:
    """``JS_BASE`` plus twice the chance distance of two samples of one mix of ``labels`` labels."""
    chance = math.sqrt(max(labels - 1, 1) / (8 * math.log(2) * max(effective_size(first, second), 1.0)))
    return JS_BASE + 2 * chance


def rate_difference(first: float, second: float) -> float:
    """The absolute difference of two rates."""
    return abs(first - second)


def rate_threshold(pooled: float, first: int, second: int) -> float:
    """``RATE_BASE`` plus four standard errors of the difference of two rates of ``pooled``."""
    return RATE_BASE + 4 * math.sqrt(pooled * (1 - pooled) / max(effective_size(first, second), 1.0))


def domain_auc(first: np.ndarray, second: np.ndarray, *, seed: int = 0) -> float:
    """The cross-validated ROC AUC of a logistic regression telling ``first``'s rows from ``second``'s; rows
    are put in a canonical order first, so the figure does not depend on theirs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rows = np.concatenate([first, second]).astype(np.float64)
    labels = np.concatenate([np.zeros(len(first)), np.ones(len(second))])
    order = np.lexsort(np.column_stack([rows, labels]).T[::-1])
    rows, labels = rows[order], labels[order]
    folds = min(_FOLDS, len(first), len(second))
    if folds < 2:
        return 0.5
    model = LogisticRegression(C=0.1, max_iter=1000)
    scores = cross_val_predict(model, rows, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                               method="decision_function")  # fmt: skip
    auc = float(roc_auc_score(labels, scores))
    return max(auc, 1 - auc)


def auc_threshold(first: int, second: int) -> float:
    """``AUC_BASE`` plus four standard errors of a chance AUC of samples of ``first`` and ``second``."""
    if not first or not second:
        return 1.0
    return AUC_BASE + 4 * math.sqrt((first + second + 1) / (12 * first * second))
