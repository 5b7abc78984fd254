"""``fbml evaluate --report DIR``: a bundle's evaluations as the HTML report of ``fbml.html_report``."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from fbml.bundle import Bundle
from fbml.experiment import Evaluation
from fbml.html_report import ModelResults, write_report
from fbml.reports import per_product


def model_results(name: str, evaluation: Evaluation, classes: tuple[str, ...], photos_of: Mapping[str, Path]) -> ModelResults:
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
    directory: Path, bundle: Bundle, evaluations: Mapping[str, Evaluation], *, bundle_path: Path,
    products: str, manifest: pl.DataFrame | None, image_dir: Path | None,
) -> Path:
    """The report of every evaluation, predictors first; returns the page's path."""
    photos_of = _first_photos(manifest, image_dir)
    results = [model_results(name, evaluation, bundle.codec.classes, photos_of) for name, evaluation in evaluations.items()]
    notes = {
        "bundle": str(bundle_path),
        "products": products,
        "photos": str(image_dir) if image_dir else "none",
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return write_report(directory, results, title="fbml evaluation", notes=notes)


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
