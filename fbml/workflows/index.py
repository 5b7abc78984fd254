"""Build the similar-listings index over a catalogue: every product's listing vector (``fbml.bundle.listings``,
through the bundle's prediction path, as queries are embedded), with the part weights chosen on the
validation products by precision@10 (same top-level category)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import polars as pl

from fbml.bundle.bundle import Bundle
from fbml.bundle.listings import ListingParts, ListingWeights, listing_parts, precision_at_k
from fbml.bundle.locks import bundle_writer
from fbml.bundle.predictions import DEFAULT_BATCH
from fbml.bundle.search import PRECISION_K, SearchIndex
from fbml.bundle.store import load_bundle, save_bundle
from fbml.bundle.vector_index import Method, vector_index
from fbml.errors import FbmlError
from fbml.files import check_output_folder
from fbml.tables.clean import CleanTables
from fbml.text.listings import listing_texts
from fbml.vision.cache import check_photo_folder
from fbml.workflows.inputs import TrainingData, decoded_photos, known_categories, product_photos, with_photo_ids

PART_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
CATALOGUE_COLUMNS = ("id", "product_name", "category", "category_path", "price", "photos")


def catalogue_parts(bundle: Bundle, tables: CleanTables, image_dir: Path | None, products: pl.DataFrame, *, work_dir: Path,
                    progress: bool) -> ListingParts:  # fmt: skip
    """The parts of every product of ``products`` (with its photos of ``tables`` that decode; some have none)."""
    if tables.manifest is None or image_dir is None:
        raise FbmlError("building the search index needs an images table and a photo folder")
    photos = decoded_photos(tables, image_dir, work_dir, bundle.image_settings().size, progress=progress)
    groups = product_photos(products, tables.manifest.images, photos)
    return listing_parts(bundle, listing_texts(products), groups, batch_size=DEFAULT_BATCH, progress=progress)


def catalogue_vectors(bundle: Bundle, tables: CleanTables, image_dir: Path | None, products: pl.DataFrame, *,
                      work_dir: Path, progress: bool) -> np.ndarray:  # fmt: skip
    """The listing vector of every product of ``products``, as the bundle's index builds them (its weights)."""
    return catalogue_parts(bundle, tables, image_dir, products, work_dir=work_dir, progress=progress).vectors(bundle.listing_weights())


def chosen_weights(parts: ListingParts, catalogue: pl.DataFrame) -> tuple[ListingWeights, float]:
    """The part weights with the best precision@10 among these listings (ties: the earlier in the grid)."""
    best: tuple[ListingWeights, float] | None = None
    rows = np.arange(catalogue.height)
    for text, image, classes in itertools.product(PART_WEIGHTS, repeat=3):
        if text == image == classes == 0.0:
            continue
        weights = ListingWeights(text, image, classes)
        vectors = parts.vectors(weights)  # scored exactly: 63 weightings, no graph built for each
        precision = precision_at_k(SearchIndex(vectors, catalogue, engine=vector_index(vectors, method="exact")), rows)
        if best is None or precision > best[1]:
            best = (weights, precision)
    assert best is not None
    return best


def catalogue_index(parts: ListingParts, products: pl.DataFrame, weights: ListingWeights, method: Method = "auto") -> SearchIndex:
    """The index of ``products`` from their listing parts, searched by ``method``."""
    vectors = parts.vectors(weights)
    return SearchIndex(vectors, products.select(CATALOGUE_COLUMNS), {"weights": weights.to_json()}, vector_index(vectors, method=method))


def indexed_bundle(bundle: Bundle, data: TrainingData) -> Bundle:
    """``bundle`` with the index of the whole catalogue: part weights chosen on the validation
    products; precision@10 reported for the test products against the whole catalogue."""
    splits = data.splits.products
    everything = with_photo_ids(pl.concat([splits.train, splits.validation, splits.test]), data.tables)
    parts = catalogue_parts(bundle, data.tables, data.image_dir, everything, work_dir=data.work_dir, progress=data.progress)
    validation_rows = np.arange(splits.train.height, splits.train.height + splits.validation.height)
    validation_parts = ListingParts(parts.text[validation_rows], parts.image[validation_rows], parts.classes[validation_rows])
    weights, validation_precision = chosen_weights(validation_parts, with_photo_ids(splits.validation, data.tables).select(CATALOGUE_COLUMNS))
    index = catalogue_index(parts, everything, weights)
    test_rows = np.arange(splits.train.height + splits.validation.height, everything.height)
    report = {
        "weights": weights.to_json(),
        "products": len(index),
        "method": index.engine.method,
        "split_seed": data.split_seed,
        "validation_precision_at_10": validation_precision,
        "test_products": int(test_rows.size),
        f"precision_at_{PRECISION_K}": precision_at_k(index, test_rows),
    }
    return attrs.evolve(bundle, index=attrs.evolve(index, report=report))


def reindexed_bundle(bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
                     method: Method = "auto") -> Bundle:  # fmt: skip
    """``bundle`` with its index rebuilt over the products of ``tables`` it knows the category of (every one,
    with its part weights as they were), searched by ``method``, reporting precision@10 over that catalogue."""
    weights = bundle.listing_weights()
    known = known_categories(tables, bundle.codec)
    products = with_photo_ids(known.cleaned.products, known)
    index = catalogue_index(catalogue_parts(bundle, known, image_dir, products, work_dir=work_dir, progress=progress),
                            products, weights, method)  # fmt: skip
    report = {"weights": weights.to_json(), "products": len(index), "method": index.engine.method,
              f"precision_at_{PRECISION_K}": precision_at_k(index, np.arange(len(index)))}
    return attrs.evolve(bundle, index=attrs.evolve(index, report=report))


def index_summary(report: Mapping[str, Any]) -> str:
    """What the index holds and how well its neighbours share a category."""
    precision = report.get(f"precision_at_{PRECISION_K}")
    summary = f"search index: {report.get('products')} products ({report.get('method', 'exact')} search)"
    if precision is None:
        return summary
    over = f"{report['test_products']} test products" if "test_products" in report else "the catalogue"
    return f"{summary}; precision@{PRECISION_K} {precision:.3f} over {over}"


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
