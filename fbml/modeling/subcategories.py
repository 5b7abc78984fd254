"""Subcategories: the first two levels of a listing's category path (``Home & Garden / Kitchen``), predicted
from its text within the category its predictor chose.

``SubcategoryModel`` is a TF-IDF linear model (``fbml.modeling.linear_text``) over the subcategories that
had at least ``MIN_EXAMPLES`` training listings. Its probabilities are combined with a predictor's category
probabilities as ``P(category) * P(subcategory | category)`` (``joint``), so a subcategory is always a child
of a category and a listing's photos (through the category) count in its subcategory too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import polars as pl

from fbml.errors import FbmlError
from fbml.modeling.linear_text import LinearTextModel, LinearTextOptions, fit_linear_text
from fbml.text.labels import LabelCodec

SEPARATOR = " / "
MIN_EXAMPLES = 2
"""A subcategory needs this many training listings to be learned (the linear model's calibration folds)."""


def subcategory_labels(paths: pl.Series) -> pl.Series:
    """Each category path's first two levels (``A / B / C`` -> ``A / B``); null for a one-level path."""
    levels = paths.str.split(SEPARATOR)
    return pl.select(
        pl.when(levels.list.len() >= 2).then(levels.list.slice(0, 2).list.join(SEPARATOR)).otherwise(None)
    ).to_series().alias("subcategory_label")


def parent_of(subcategory: str) -> str:
    """The category a subcategory belongs to (its first level)."""
    return subcategory.split(SEPARATOR, 1)[0]


def _parent_indices(subcategories: LabelCodec, categories: LabelCodec) -> np.ndarray:
    missing = sorted({parent_of(name) for name in subcategories.classes} - set(categories.classes))
    if missing:
        raise FbmlError(f"subcategories of categories the codec lacks: {missing[:5]}")
    return np.asarray(categories.encode([parent_of(name) for name in subcategories.classes]), np.int64)


@attrs.frozen
class SubcategoryModel:
    """The subcategory codec (each name ``category / subcategory``) and the linear text model that scores them."""

    codec: LabelCodec
    model: LinearTextModel
    report: dict[str, Any] = attrs.field(factory=dict, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.model.num_classes != self.codec.num_classes:
            raise FbmlError(f"the subcategory model has {self.model.num_classes} classes, its codec {self.codec.num_classes}")
        bad = [name for name in self.codec.classes if SEPARATOR not in name]
        if bad:
            raise FbmlError(f"a subcategory is 'category / subcategory', got {bad[0]!r}")

    @property
    def num_classes(self) -> int:
        """How many subcategories it tells apart."""
        return self.codec.num_classes

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """Each raw listing text's subcategory probabilities, float32 (n, subcategories)."""
        return np.asarray(self.model.predict_proba(list(texts)), np.float32)

    def joint(self, categories: LabelCodec, category_probabilities: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """``P(category) * P(subcategory | category)`` per listing (float32 (n, subcategories)): the subcategory
        model's probabilities renormalised within each category, times the category's (a predictor's)."""
        parents = _parent_indices(self.codec, categories)
        within = np.zeros((probabilities.shape[0], categories.num_classes), np.float64)
        np.add.at(within.T, parents, probabilities.T.astype(np.float64))
        conditional = probabilities / np.where(within[:, parents] > 0, within[:, parents], 1.0)
        return np.asarray(category_probabilities[:, parents] * conditional, np.float32)

    def best_within(self, categories: LabelCodec, predicted: np.ndarray, joint: np.ndarray) -> list[tuple[str, float] | None]:
        """Per listing, the most likely subcategory of its ``predicted`` category (indices into ``categories``) and its
        joint probability (a row of ``joint``); None for a listing whose category has no subcategory."""
        parents = _parent_indices(self.codec, categories)
        children = parents[np.newaxis, :] == np.asarray(predicted, np.int64)[:, np.newaxis]
        best = np.argmax(np.where(children, joint, -np.inf), axis=1)
        values = joint[np.arange(joint.shape[0]), best]
        return [(self.codec.classes[index], float(value)) if has else None
                for index, value, has in zip(best.tolist(), values.tolist(), children.any(axis=1).tolist(), strict=True)]


def fit_subcategory_model(texts: Sequence[str], paths: pl.Series, categories: LabelCodec, *, options: LinearTextOptions,
                          seed: int, like: LinearTextModel | None = None) -> SubcategoryModel | None:  # fmt: skip
    """The subcategory model of these listings (raw texts, their category paths); the listings of a
    subcategory with fewer than ``MIN_EXAMPLES`` of them, or of a one-level path, are left out. None when
    fewer than two subcategories remain. ``like``: the linear model whose n-gram vocabularies it counts over
    (``fit_linear_text``'s ``like``): the category model of the same listings, so that the two share them."""
    labels = subcategory_labels(paths)
    counts = labels.drop_nulls().value_counts()
    kept = sorted(counts.filter(pl.col("count") >= MIN_EXAMPLES)[labels.name].to_list())
    if len(kept) < 2:
        return None
    chosen = labels.is_in(kept).fill_null(False).to_numpy()
    codec = LabelCodec(tuple(kept))
    _parent_indices(codec, categories)
    rows = np.flatnonzero(chosen)
    model = fit_linear_text([texts[int(row)] for row in rows], codec.encode(labels.filter(pl.Series(chosen))), codec.num_classes,
                            options=options, seed=seed, like=like)  # fmt: skip
    report = {"subcategories": codec.num_classes, "listings": int(rows.size), "left_out": int(len(texts) - rows.size)}
    return SubcategoryModel(codec, model, report)


def subcategory_accuracy(model: SubcategoryModel, products: pl.DataFrame) -> float:
    """The share of ``products`` (raw listings with ``product_name``, ``product_description`` and
    ``category_path``) whose subcategory the model's most likely one is (a product of a one-level path,
    or of a subcategory the model does not know, counts as missed)."""
    if products.height == 0:
        return 0.0
    from fbml.text.listings import listing_texts

    truth = subcategory_labels(products["category_path"]).to_list()
    predicted = model.codec.decode(np.argmax(model.probabilities(listing_texts(products)), axis=1))
    return float(np.mean([guess == label for guess, label in zip(predicted, truth, strict=True)]))
