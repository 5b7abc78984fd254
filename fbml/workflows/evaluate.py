"""Evaluate a bundle: every predictor and model on clean tables (e.g. products it never saw), per example
and per product, as a table, as JSON, or as an HTML report with pictures (``fbml.workflows.report``)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path

import attrs
import numpy as np
import polars as pl

from fbml.bundle.store import Bundle
from fbml.errors import FbmlError
from fbml.modeling.metrics import per_product
from fbml.tables.clean import CleanTables
from fbml.workflows.report import ModelResults, write_report
from fbml.workflows.runs import IMAGE_KINDS, Run, Scores, known_categories, scored


@attrs.frozen
class Evaluation:
    """One predictor's or model's predictions on some examples (products or photos), and its scores."""

    frame: pl.DataFrame
    probabilities: np.ndarray
    labels: np.ndarray
    scores: Scores

def evaluate_bundle(
    bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
    device: str = "cpu",
) -> dict[str, Scores]:
    """Every predictor and model of ``bundle`` on all of ``tables`` (e.g. held-back products), per
    example and per product. Text is scored per product; photo models per photo."""
    return {name: evaluation.scores for name, evaluation in evaluations(bundle, tables, image_dir, work_dir=work_dir,
                                                                        progress=progress, device=device).items()}

def evaluations(
    bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
    device: str = "cpu",
) -> dict[str, Evaluation]:
    """``evaluate_bundle`` with the predictions behind each score (for reports)."""
    known = known_categories(tables, bundle.codec)
    run = Run(known, image_dir, work_dir, device=device, progress=progress)
    frames: dict[str, pl.DataFrame] = {"products": known.cleaned.products}
    if known.manifest is not None and image_dir is not None and bundle.image is not None:
        frames["photos"] = run.with_photos(known.manifest.images, bundle)
    totals = {"products": tables.cleaned.products.height, "photos": 0 if tables.manifest is None else tables.manifest.images.height}
    memo: dict[tuple[str, str], np.ndarray] = {}
    results: dict[str, Evaluation] = {}
    for name in [*bundle.predictors, *bundle.models]:
        on = evaluated_on(bundle, name)
        if on in frames:
            frame = frames[on]
            probabilities = _memoised(run, bundle, name, on, frame, memo)
            labels = bundle.codec.encode(frame["category"])
            results[name] = Evaluation(frame, probabilities, labels, scored(probabilities, labels, frame, totals[on] - frame.height))
    return results

def evaluated_on(bundle: Bundle, name: str) -> str:
    """``photos`` for a predictor or model that reads photos, else ``products``."""
    members = bundle.predictors[name].ensemble.names if name in bundle.predictors else (name,)
    return "photos" if set(members) & set(IMAGE_KINDS) else "products"

def _memoised(run: Run, bundle: Bundle, name: str, on: str, frame: pl.DataFrame, memo: dict[tuple[str, str], np.ndarray]) -> np.ndarray:
    """``run.probabilities`` of a predictor or model over ``frame``, each model computed once per frame."""
    if (name, on) not in memo:
        if name in bundle.predictors:
            ensemble = bundle.predictors[name].ensemble
            memo[name, on] = ensemble.combine({member: _memoised(run, bundle, member, on, frame, memo) for member in ensemble.names})
        else:
            memo[name, on] = run.outputs(bundle, name, bundle.torch_model(name), frame).probabilities
    return memo[name, on]


# --- the three trainings --------------------------------------------------------------------------------------

def scores_table(scores: Mapping[str, Scores], classes: tuple[str, ...]) -> str:
    """Accuracy and macro-F1 per predictor and model, per example and per product."""
    lines = [f"{'model':12}{'examples':>10}{'accuracy':>10}{'macro-F1':>10}{'products':>10}{'accuracy':>10}{'macro-F1':>10}"]
    for kind, score in scores.items():
        example, product = score.per_example, score.per_product
        lines.append(
            f"{kind:12}{example.examples:>10}{example.accuracy:>10.3f}{example.macro_f1:>10.3f}"
            f"{product.examples:>10}{product.accuracy:>10.3f}{product.macro_f1:>10.3f}"
        )
    lines.append(f"classes: {len(classes)}; rows left out (no photo or unknown category): "
                 + ", ".join(f"{kind} {score.excluded}" for kind, score in scores.items()))
    return "\n".join(lines)

def _manifest(tables: CleanTables) -> pl.DataFrame:
    if tables.manifest is None:
        raise FbmlError("evaluating a photo model needs an images table")
    return tables.manifest.images


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
        "written": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
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
