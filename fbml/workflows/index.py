"""Build the similar-listings index over a catalogue: every product's listing vector (``fbml.bundle.listings``,
through the bundle's prediction path, as queries are embedded), with the recipe (part weights, probability
power) chosen on the validation products as a catalogue of their own, their vectors made by the models trained
without them, by how often the ten nearest share the query's subcategory, among the recipes whose neighbours
keep the category (``MIN_CATEGORY_PRECISION``) and rarely tie (``MAX_TIED``)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import polars as pl

from fbml.bundle.bundle import Bundle
from fbml.bundle.listings import (
    PROBABILITY_POWERS,
    Alikeness,
    ListingParts,
    ListingRecipe,
    ListingWeights,
    alikeness,
    listing_parts,
)
from fbml.bundle.locks import bundle_writer
from fbml.bundle.predictions import DEFAULT_BATCH
from fbml.bundle.search import PRECISION_K, SearchIndex
from fbml.bundle.store import load_bundle, save_bundle
from fbml.bundle.vector_index import Method, vector_index
from fbml.errors import FbmlError
from fbml.files import check_output_folder
from fbml.modeling.inference import FrozenFeatures
from fbml.tables.clean import CleanTables
from fbml.text.listings import listing_texts
from fbml.vision.cache import check_photo_folder
from fbml.workflows.inputs import TrainingData, decoded_photos, known_categories, product_photos, with_photo_ids

PART_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
FOLDS = 5
MIN_CATEGORY_PRECISION = 0.80
MAX_TIED = 0.02
CATALOGUE_COLUMNS = ("id", "product_name", "category", "category_path", "price", "photos")


def catalogue_parts(bundle: Bundle, tables: CleanTables, image_dir: Path | None, products: pl.DataFrame, *, work_dir: Path,
                    progress: bool, features: FrozenFeatures | None = None) -> ListingParts:  # fmt: skip
    """The parts of every product of ``products`` (with its photos of ``tables`` that decode; some have none);
    ``features``: the frozen features of the photo cache's photos, which the networks of their backbone start from."""
    if tables.manifest is None or image_dir is None:
        raise FbmlError("building the search index needs an images table and a photo folder")
    photos = decoded_photos(tables, image_dir, work_dir, bundle.image_settings().size, progress=progress)
    groups = product_photos(products, tables.manifest.images, photos, features)
    return listing_parts(bundle, listing_texts(products), groups, batch_size=DEFAULT_BATCH, progress=progress)


def catalogue_vectors(bundle: Bundle, tables: CleanTables, image_dir: Path | None, products: pl.DataFrame, *,
                      work_dir: Path, progress: bool) -> np.ndarray:  # fmt: skip
    """The listing vector of every product of ``products``, as the bundle's index builds them (its recipe)."""
    parts = catalogue_parts(bundle, tables, image_dir, products, work_dir=work_dir, progress=progress)
    return parts.vectors(bundle.listing_recipe())


def recipes(subcategories: bool) -> list[ListingRecipe]:
    """The grid of recipes tried: each probability power with one part weighting of each proportional family
    (``(1, 1, 0, 0)`` stands for ``(2, 2, 0, 0)``), without the all-zero one; no subcategory weight when the
    bundle predicts none."""
    found: dict[tuple[float, ...], ListingWeights] = {}
    for values in itertools.product(PART_WEIGHTS, repeat=4 if subcategories else 3):
        if any(values):
            key = tuple(round(value / max(values), 6) for value in values)
            found.setdefault(key, ListingWeights(*values))
    return [ListingRecipe(weights, power) for power in PROBABILITY_POWERS for weights in found.values()]


def chosen_recipe(parts: ListingParts, paths: np.ndarray, queries: np.ndarray, candidates: np.ndarray) -> tuple[ListingRecipe, Alikeness]:
    """The recipe whose vectors' ``queries`` find the most neighbours of their subcategory among ``candidates``,
    among those whose neighbours tie for at most ``MAX_TIED`` of the
    queries and share the category for at least ``MIN_CATEGORY_PRECISION`` (when none meets both, those that meet
    the first, then any); scored by exact search. Ties: the higher category precision, then the earlier in the grid."""
    best: tuple[tuple[bool, bool, float, float], ListingRecipe, Alikeness] | None = None
    for recipe in recipes(parts.subcategories.shape[1] > 0):
        found = alikeness(parts.vectors(recipe), paths, queries, candidates)
        key = (found.tied <= MAX_TIED, found.category >= MIN_CATEGORY_PRECISION, found.subcategory, found.category)
        if best is None or key > best[0]:
            best = (key, recipe, found)
    assert best is not None
    return best[1], best[2]


def catalogue_index(parts: ListingParts, products: pl.DataFrame, recipe: ListingRecipe, method: Method = "auto") -> SearchIndex:
    """The index of ``products`` from their listing parts by ``recipe`` (its report records it), searched by ``method``."""
    vectors = parts.vectors(recipe)
    return SearchIndex(vectors, products.select(CATALOGUE_COLUMNS), recipe.to_json(), vector_index(vectors, method=method))


def indexed_bundle(bundle: Bundle, data: TrainingData, *, chosen_with: Bundle, tested: Bundle, features: FrozenFeatures | None = None
                   ) -> Bundle:  # fmt: skip
    """``bundle`` with the index of the whole catalogue, its vectors made by ``bundle``'s models (their image
    branches starting from the trainings' cached frozen ``features`` when given).

    The recipe is chosen with the validation products alone as the catalogue (each one's ten nearest among
    the others), their vectors made by ``chosen_with`` (the models trained on the training split alone): listings
    the models never saw, as the index meets new ones. How alike the test products' neighbours among themselves
    are is reported once, their vectors made by ``tested`` (the models the test split was scored with)."""
    splits = data.splits.products
    everything = with_photo_ids(pl.concat([splits.train, splits.validation, splits.test]), data.tables)
    parts = catalogue_parts(bundle, data.tables, data.image_dir, everything, work_dir=data.work_dir, progress=data.progress,
                            features=features)  # fmt: skip
    validation_rows = np.arange(splits.train.height, splits.train.height + splits.validation.height)
    test_rows = np.arange(splits.train.height + splits.validation.height, everything.height)
    paths = everything["category_path"].to_numpy()
    chosen_parts = _split_parts(chosen_with, bundle, parts, everything, validation_rows, data, features)
    own = np.arange(validation_rows.size)
    recipe, validation = chosen_recipe(chosen_parts, paths[validation_rows], own, own)
    tested_vectors = _split_parts(tested, bundle, parts, everything, test_rows, data, features).vectors(recipe)
    index = catalogue_index(parts, everything, recipe)
    report = {
        **index.report,
        "products": len(index),
        "method": index.engine.method,
        "split_seed": data.split_seed,
        "validation_products": int(validation_rows.size),
        "validation": validation.to_json(),
        "validation_folds": _fold_spread(chosen_parts.vectors(recipe), paths[validation_rows], own, own),
        "test_products": int(test_rows.size),
        **alikeness(tested_vectors, paths[test_rows], np.arange(test_rows.size)).to_json(),
    }
    return attrs.evolve(bundle, index=attrs.evolve(index, report=report))


def _split_parts(models: Bundle, bundle: Bundle, parts: ListingParts, everything: pl.DataFrame, rows: np.ndarray,
                 data: TrainingData, features: FrozenFeatures | None) -> ListingParts:  # fmt: skip
    """The parts of the products at ``rows`` of ``everything`` made by ``models``: ``bundle``'s ``parts`` of them
    when they are the same models."""
    if _same_models(models, bundle):
        return parts.rows(rows)
    return catalogue_parts(models, data.tables, data.image_dir, everything[rows.tolist()], work_dir=data.work_dir, progress=data.progress,
                           features=features)  # fmt: skip


def _same_models(first: Bundle, second: Bundle) -> bool:
    """Whether two bundles make the same listing vectors (the same model objects)."""
    same = first.models.keys() == second.models.keys() and all(
        first.models[kind].module is second.models[kind].module for kind in first.models)
    return same and first.subcategories is second.subcategories


def _fold_spread(vectors: np.ndarray, paths: np.ndarray, queries: np.ndarray, candidates: np.ndarray) -> dict[str, float]:
    """The subcategory precision of ``FOLDS`` disjoint fifths of the queries (their standard deviation and range):
    how much of the validation figure is which queries were drawn."""
    rng = np.random.default_rng(0)
    shares = [alikeness(vectors, paths, np.sort(part), candidates).subcategory
              for part in np.array_split(rng.permutation(queries), FOLDS) if part.size]  # fmt: skip
    return {"folds": len(shares), "std": float(np.std(shares)), "min": float(min(shares, default=0.0)),
            "max": float(max(shares, default=0.0))}


def reindexed_bundle(bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
                     method: Method = "auto") -> Bundle:  # fmt: skip
    """``bundle`` with its index rebuilt over the products of ``tables`` it knows the category of (every one,
    with its recipe as it was), searched by ``method``, reporting how alike every product's neighbours in that
    catalogue are."""
    recipe = bundle.listing_recipe()
    known = known_categories(tables, bundle.codec)
    products = with_photo_ids(known.cleaned.products, known)
    index = catalogue_index(catalogue_parts(bundle, known, image_dir, products, work_dir=work_dir, progress=progress),
                            products, recipe, method)  # fmt: skip
    found = alikeness(index.vectors, products["category_path"].to_numpy(), np.arange(len(index)), index=index)
    report = {**index.report, "products": len(index), "method": index.engine.method, **found.to_json()}
    return attrs.evolve(bundle, index=attrs.evolve(index, report=report))


def index_summary(report: Mapping[str, Any]) -> str:
    """What the index holds and how alike its neighbours are."""
    precision = report.get(f"precision_at_{PRECISION_K}")
    summary = f"search index: {report.get('products')} products ({report.get('method', 'exact')} search)"
    if precision is None:
        return summary
    over = f"{report['test_products']} test products among themselves" if "test_products" in report else "the catalogue"
    subcategory, tied = report.get(f"subcategory_precision_at_{PRECISION_K}"), report.get(f"tied_at_{PRECISION_K}")
    finer = "" if subcategory is None else f", subcategory {subcategory:.3f}"
    ties = "" if tied is None else f"; {tied:.1%} of queries with tied neighbours"
    return f"{summary}; precision@{PRECISION_K} over {over}: category {precision:.3f}{finer}{ties}"


def index_bundle(
    bundle_dir: Path, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
    device: str = "cpu", method: Method = "auto",
) -> Mapping[str, Any]:
    """Rebuild the index of the bundle at ``bundle_dir`` over ``tables`` and save it (holding the bundle's
    writer lock from the load to the save); the new index's report."""
    check_photo_folder(image_dir)
    with bundle_writer(bundle_dir, "fbml index"):
        check_output_folder(work_dir)
        bundle = reindexed_bundle(load_bundle(bundle_dir, device=device), tables, image_dir, work_dir=work_dir,
                                  progress=progress, method=method)
        save_bundle(bundle, bundle_dir)
    assert bundle.index is not None
    return bundle.index.report
