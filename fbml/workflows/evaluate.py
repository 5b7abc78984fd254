"""Evaluate a bundle: every predictor and model on clean tables (e.g. products it never saw), per example
and per product, subcategories included, and how alike the products' nearest others are by the bundle's
listing vectors, as a table, as JSON, or as an HTML report with pictures (``fbml.workflows.report``).

The probabilities come from the bundle's prediction path (``Bundle.probabilities``), as a caller's or the
HTTP API's would: texts per product, and each decoded photo with its product's text.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path

import attrs
import numpy as np
import polars as pl
from contracts.bundle import ModelKind, Role

from fbml.bundle.bundle import Bundle
from fbml.bundle.listings import alikeness, exact_neighbours
from fbml.bundle.predictions import Name, predictions
from fbml.bundle.search import PRECISION_K
from fbml.modeling.metrics import per_product
from fbml.modeling.subcategories import subcategory_labels
from fbml.tables.clean import CleanTables
from fbml.text.listings import listing_texts
from fbml.workflows.inputs import Examples, decoded_photos, frame_listings, known_categories, labels_of, with_decoded_photos
from fbml.workflows.report import ModelResults, SimilarListings, write_report
from fbml.workflows.report.similar import ShownListing, shown_queries
from fbml.workflows.scores import Scores, scored

SHOWN_QUERIES = 12
"""Queries the report shows with their ten nearest listings."""


@attrs.frozen
class Evaluation:
    """One predictor's or model's predictions on some examples (products or photos), and its scores."""

    frame: pl.DataFrame
    probabilities: np.ndarray
    labels: np.ndarray
    scores: Scores


def evaluate_bundle(
    bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
) -> dict[Name, Scores]:
    """Every predictor and model of ``bundle`` on all of ``tables`` (e.g. held-back products), per
    example and per product. Text is scored per product; photo models per photo."""
    return {name: evaluation.scores for name, evaluation in evaluations(bundle, tables, image_dir, work_dir=work_dir,
                                                                        progress=progress).items()}


def evaluations(
    bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
) -> dict[Name, Evaluation]:
    """``evaluate_bundle`` with the predictions behind each score (for reports): predictors first, then models."""
    known = known_categories(tables, bundle.codec)
    totals = {Examples.PRODUCTS: tables.cleaned.products.height,
              Examples.PHOTOS: 0 if tables.manifest is None else tables.manifest.images.height}  # fmt: skip
    names: list[Name] = [*bundle.predictors, *bundle.models]
    on = {name: evaluated_on(bundle, name) for name in names}
    results: dict[Name, Evaluation] = {}
    for examples in Examples:
        scored_here = [name for name in names if on[name] is examples]
        if not scored_here or (examples is Examples.PHOTOS and (known.manifest is None or image_dir is None or bundle.image is None)):
            continue
        photos = None
        frame: pl.DataFrame = known.cleaned.products
        if examples is Examples.PHOTOS:
            assert known.manifest is not None and bundle.image is not None
            photos = decoded_photos(known, image_dir, work_dir, bundle.image.size, progress=progress)
            frame = with_decoded_photos(known.manifest.images, photos)
        texts, images = frame_listings(frame, photos)
        found = bundle.probabilities(scored_here, texts=texts, images=images, progress=progress)
        labels = labels_of(frame, bundle.codec)
        for name in scored_here:
            scores = scored(found[name], labels, frame, totals[examples] - frame.height)
            if isinstance(name, Role):
                scores = attrs.evolve(scores, subcategory_accuracy=subcategory_accuracy(bundle, name, frame, found[name], known.cleaned.products))
            results[name] = Evaluation(frame, found[name], labels, scores)
    return {name: results[name] for name in names if name in results}


def subcategory_accuracy(bundle: Bundle, role: Role, frame: pl.DataFrame, probabilities: np.ndarray,
                         products: pl.DataFrame) -> float | None:  # fmt: skip
    """The share of the products of ``frame`` (rows of ``products``, or of their photos) whose predicted
    subcategory, as ``Bundle.predict`` gives it from the mean of the product's rows' probabilities and its
    text, is the first two levels of its category path; None when the bundle predicts no subcategory."""
    if bundle.subcategories is None or frame.height == 0:
        return None
    _, means = per_product(frame["id"].to_list(), np.zeros(frame.height, np.int64), probabilities)
    order = pl.DataFrame({"id": frame["id"].unique(maintain_order=True)})
    listings = order.join(products, on="id", how="left", maintain_order="left")
    texts = listing_texts(listings)
    found = predictions(bundle, means, role, bundle.subcategory_joint(texts, means))
    truth = subcategory_labels(listings["category_path"]).to_list()
    return float(np.mean([prediction.subcategory == label for prediction, label in zip(found, truth, strict=True)]))


def similar_listings(bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
                     shown: int = SHOWN_QUERIES) -> SimilarListings | None:  # fmt: skip
    """How alike the ten nearest others of each product of ``tables`` (known categories) are among those
    products, their listing vectors made as the bundle's index makes them, and ``shown`` queries spread over
    the products with their neighbours; None when the bundle has no index (so no part weights) or no photos."""
    from fbml.workflows.index import catalogue_parts

    if bundle.index is None or tables.manifest is None or image_dir is None:
        return None
    known = known_categories(tables, bundle.codec)
    products = known.cleaned.products
    if products.height < 2:
        return None
    vectors = catalogue_parts(bundle, known, image_dir, products, work_dir=work_dir, progress=progress).vectors(bundle.listing_recipe())
    paths = products["category_path"].to_numpy()
    everything = np.arange(products.height)
    figures = alikeness(vectors, paths, everything).to_json()
    rows = np.unique(np.linspace(0, products.height - 1, min(shown, products.height)).round().astype(np.int64))
    neighbours, scores = exact_neighbours(vectors, rows, None, PRECISION_K)
    photos_of = _first_photos(known.manifest.images if known.manifest is not None else None, image_dir)
    listings = [ShownListing(product_id, name, path, photos_of.get(product_id))
                for product_id, name, path in products.select("id", "product_name", "category_path").iter_rows()]  # fmt: skip
    found = [list(zip(map(int, row), map(float, score), strict=True)) for row, score in zip(neighbours, scores, strict=True)]
    return SimilarListings(figures, shown_queries(rows.tolist(), found, listings))


def evaluated_on(bundle: Bundle, name: Name) -> Examples:
    """``PHOTOS`` for a predictor or model that reads photos, else ``PRODUCTS``."""
    return Examples.PHOTOS if (name.reads_photos if isinstance(name, Role) else ModelKind(name).reads_photos) else Examples.PRODUCTS


# --- the three trainings --------------------------------------------------------------------------------------

def scores_table(scores: Mapping[Name, Scores], classes: tuple[str, ...]) -> str:
    """Accuracy and macro-F1 per predictor and model, per example and per product."""
    lines = [f"{'model':12}{'examples':>10}{'accuracy':>10}{'macro-F1':>10}{'products':>10}{'accuracy':>10}{'macro-F1':>10}"]
    for kind, score in scores.items():
        example, product = score.per_example, score.per_product
        lines.append(
            f"{kind:12}{example.examples:>10}{example.accuracy:>10.3f}{example.macro_f1:>10.3f}"
            f"{product.examples:>10}{product.accuracy:>10.3f}{product.macro_f1:>10.3f}"
        )
    subcategories = [f"{kind} {score.subcategory_accuracy:.3f}" for kind, score in scores.items() if score.subcategory_accuracy is not None]
    if subcategories:
        lines.append("subcategory accuracy per product (within the predicted category): " + ", ".join(subcategories))
    lines.append(f"classes: {len(classes)}; rows left out (no photo or unknown category): "
                 + ", ".join(f"{kind} {score.excluded}" for kind, score in scores.items()))
    return "\n".join(lines)

def model_results(name: Name, evaluation: Evaluation, classes: tuple[str, ...], photos_of: Mapping[str, Path]) -> ModelResults:
    """One predictor's or model's evaluation per product, with each product's title and a photo of it."""
    frame = evaluation.frame
    labels, probabilities = per_product(frame["id"].to_list(), evaluation.labels, evaluation.probabilities)
    products = frame.unique("id", keep="first", maintain_order=True)
    photos = tuple(photos_of.get(product_id) for product_id in products["id"].to_list())
    return ModelResults(
        name=name,
        class_names=classes,
        product_ids=tuple(products["id"].to_list()),
        labels=labels,
        probabilities=probabilities,
        titles=tuple(products["product_name"].to_list()),
        photos=photos,
    )


def write_evaluation_report(
    directory: Path, bundle: Bundle, evaluations: Mapping[Name, Evaluation], *, bundle_path: Path,
    products: str, manifest: pl.DataFrame | None, image_dir: Path | None, similar: SimilarListings | None = None,
) -> Path:
    """The report of every evaluation, predictors first, and of the similar listings; returns the page's path."""
    photos_of = _first_photos(manifest, image_dir)
    results = [model_results(name, evaluation, bundle.codec.classes, photos_of) for name, evaluation in evaluations.items()]
    notes = {
        "bundle": str(bundle_path),
        "products": products,
        "photos": str(image_dir) if image_dir else "none",
        "written": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return write_report(directory, results, title="fbml evaluation", notes=notes, similar=similar)


def _first_photos(manifest: pl.DataFrame | None, image_dir: Path | None) -> dict[str, Path]:
    """Each product's first photo file (``image_dir/<image_id>.*``) that exists."""
    if manifest is None or image_dir is None or not image_dir.is_dir():
        return {}
    files = {path.stem: path for path in sorted(image_dir.iterdir()) if path.is_file()}
    found: dict[str, Path] = {}
    for product_id, image_id in manifest.select("id", "image_id").iter_rows():
        if product_id not in found and image_id in files:
            found[product_id] = files[image_id]
    return found
