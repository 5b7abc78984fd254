"""Build the similar-listings index over a catalogue: every product's listing vector (``fbml.bundle.listings``),
with the part weights chosen on the validation products by precision@10 (same top-level category)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import polars as pl

from fbml.bundle.listings import IMAGE_MODEL, TEXT_MODEL, ListingParts, ListingWeights, precision_at_k
from fbml.bundle.locks import bundle_writer
from fbml.bundle.search import PRECISION_K, SearchIndex
from fbml.bundle.store import Bundle, load_bundle, save_bundle
from fbml.bundle.vector_index import Method, vector_index
from fbml.errors import FbmlError
from fbml.files import check_output_folder
from fbml.tables.clean import CleanTables
from fbml.vision.cache import check_photo_folder
from fbml.workflows.runs import Run, known_categories

PART_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
CATALOGUE_COLUMNS = ("id", "product_name", "category", "price")


def catalogue_parts(bundle: Bundle, run: Run, products: pl.DataFrame, photos: pl.DataFrame) -> ListingParts:
    """The parts of every product of ``products``; ``photos`` (decoded) are theirs, some have none."""
    text = run.outputs(bundle, TEXT_MODEL, bundle.torch_model(TEXT_MODEL), products).embeddings
    classes = run.predictor_probabilities(bundle, "text", products)
    image = np.zeros((products.height, bundle.embedding_dim(IMAGE_MODEL)), dtype=np.float32)
    if photos.height:
        rows = _product_rows(products, photos)
        image_embeddings = run.outputs(bundle, IMAGE_MODEL, bundle.torch_model(IMAGE_MODEL), photos).embeddings
        combined = run.predictor_probabilities(bundle, "combined", photos)
        image = _row_means(image_embeddings, rows, products.height, image)
        with_photos = np.unique(rows)
        classes[with_photos] = _row_means(combined, rows, products.height, classes)[with_photos]
    return ListingParts(np.asarray(text, np.float32), image, np.asarray(classes, np.float32))


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


def catalogue_index(
    bundle: Bundle, run: Run, products: pl.DataFrame, weights: ListingWeights, method: Method = "auto"
) -> SearchIndex:
    """The index of every product of ``products`` (with their decoded photos), searched by ``method``."""
    photos = _decoded_photos(run, bundle, products)
    parts = catalogue_parts(bundle, run, products, photos)
    vectors = parts.vectors(weights)
    catalogue = products.select(CATALOGUE_COLUMNS)
    return SearchIndex(vectors, catalogue, {"weights": weights.to_json()}, vector_index(vectors, method=method))


def indexed_bundle(bundle: Bundle, run: Run, *, split_seed: int) -> Bundle:
    """``bundle`` with the index of the whole catalogue: part weights chosen on the validation
    products; precision@10 reported for the test products against the whole catalogue."""
    splits = run.splits.products
    validation = splits.validation
    parts = catalogue_parts(bundle, run, validation, _decoded_photos(run, bundle, validation))
    weights, validation_precision = chosen_weights(parts, validation.select(CATALOGUE_COLUMNS))
    everything = pl.concat([splits.train, splits.validation, splits.test])
    index = catalogue_index(bundle, run, everything, weights)
    test_rows = np.arange(splits.train.height + splits.validation.height, everything.height)
    report = {
        "weights": weights.to_json(),
        "products": len(index),
        "method": index.engine.method,
        "split_seed": split_seed,
        "validation_precision_at_10": validation_precision,
        "test_products": int(test_rows.size),
        f"precision_at_{PRECISION_K}": precision_at_k(index, test_rows),
    }
    return attrs.evolve(bundle, index=attrs.evolve(index, report=report))


def reindexed_bundle(bundle: Bundle, run: Run, method: Method = "auto") -> Bundle:
    """``bundle`` with its index rebuilt over ``run``'s catalogue (every product, with its part weights
    as they were), searched by ``method``, reporting precision@10 over all of that catalogue."""
    weights = bundle.listing_weights()
    index = catalogue_index(bundle, run, run.tables.cleaned.products, weights, method)
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


def _decoded_photos(run: Run, bundle: Bundle, products: pl.DataFrame) -> pl.DataFrame:
    """The decoded photos of ``products`` (some products may have none)."""
    manifest = run.tables.manifest
    if manifest is None or run.image_dir is None:
        raise FbmlError("building the search index needs an images table and a photo folder")
    photos = manifest.images.filter(pl.col("id").is_in(products["id"].implode()))
    return run.with_photos(photos, bundle)


def _product_rows(products: pl.DataFrame, photos: pl.DataFrame) -> np.ndarray:
    """The ``products`` row of each photo."""
    ids = products["id"].to_list()
    return pl.Series(photos["id"]).replace_strict(ids, range(len(ids)), return_dtype=pl.Int64).to_numpy()


def _row_means(values: np.ndarray, rows: np.ndarray, count: int, base: np.ndarray) -> np.ndarray:
    """Per row of ``count``, the mean of ``values`` whose ``rows`` it is; ``base`` where there are none."""
    sums = np.zeros((count, values.shape[1]), dtype=np.float64)
    np.add.at(sums, rows, values)
    counts = np.bincount(rows, minlength=count)
    means = np.asarray(base, dtype=np.float64).copy()
    present = counts > 0
    means[present] = sums[present] / counts[present, None]
    return means.astype(np.float32)


def reindex(
    bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
    device: str = "cpu", method: Method = "auto",
) -> Bundle:
    """``bundle`` with its similar-listings index rebuilt over the products of ``tables`` it knows the category
    of, searched by ``method``."""
    known = known_categories(tables, bundle.codec)
    return reindexed_bundle(bundle, Run(known, image_dir, work_dir, device=device, progress=progress), method)


def index_bundle(
    bundle_dir: Path, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
    device: str = "cpu", method: Method = "auto",
) -> Mapping[str, Any]:
    """Rebuild the index of the bundle at ``bundle_dir`` over ``tables`` and save it (holding the bundle's
    writer lock from the load to the save); the new index's report."""
    check_photo_folder(image_dir)
    with bundle_writer(bundle_dir, "fbml index"):
        check_output_folder(work_dir)
        bundle = reindex(load_bundle(bundle_dir), tables, image_dir, work_dir=work_dir, progress=progress, device=device,
                         method=method)
        save_bundle(bundle, bundle_dir)
    assert bundle.index is not None
    return bundle.index.report
