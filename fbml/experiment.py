"""Train a model into a bundle and evaluate a bundle, from clean tables and a photo folder.

``train_into_bundle``: split by product, reuse or build the codec, vocabulary and word vectors,
decode the photos once, (optionally) cache the frozen ResNet stages, fit, score the test split,
save. ``evaluate_bundle``: every model of a bundle on any clean data, per example and per product.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import polars as pl
import torch
from torch import nn

from fbml.bundle import MANIFEST, Bundle, BundleModel, ImageSettings, TextSettings, load_bundle, save_bundle
from fbml.datasets import TextDataset, eval_transform, normalisation, train_transform
from fbml.encoding import LabelCodec, label_codec
from fbml.errors import FbmlError
from fbml.features import FeatureDataset, FromFeatures, frozen_features
from fbml.models import image_model, text_model
from fbml.photos import build_image_cache, load_photos
from fbml.pipeline import CleanTables, split_tables
from fbml.reports import ClassificationReport, classification_report, per_product
from fbml.search import SearchIndex, index_summary, indexed_bundle
from fbml.text import build_vocabulary, product_text, tokens
from fbml.training import History, Predictions, TrainConfig, TrainData, fit, predict, seed_everything
from fbml.word2vec import embedding_matrix, train_word2vec

MODEL_KINDS = ("image", "text", "combined")


@attrs.frozen
class TextRecipe:
    """How the text branch is prepared: vocabulary, word2vec and sequence length."""

    length: int = 64
    min_count: int = 2
    word2vec_dim: int = 100
    word2vec_epochs: int = 10
    word2vec_window: int = 5


@attrs.frozen
class ImageRecipe:
    """How the image branch is built and fed."""

    size: int = 224
    weights: str | None = None
    trainable_stages: int = 1
    feature_cache: bool = True


@attrs.frozen
class TrainRequest:
    """What ``fbml train`` asks for."""

    kind: str = attrs.field(validator=attrs.validators.in_(MODEL_KINDS))
    config: TrainConfig = TrainConfig()
    image: ImageRecipe = ImageRecipe()
    text: TextRecipe = TextRecipe()
    split_seed: int = 0


@attrs.frozen
class Scores:
    """A model's figures on some data: per example (photo or product) and per product."""

    per_example: ClassificationReport
    per_product: ClassificationReport
    excluded: int

    def to_json(self) -> dict[str, Any]:
        return {"per_example": self.per_example.to_json(), "per_product": self.per_product.to_json(), "excluded": self.excluded}


@attrs.frozen
class TrainResult:
    """The training history and the test-split scores of the model saved into the bundle (and, for a
    combined model, the search index built from it)."""

    kind: str
    history: History
    test: Scores
    seconds: float
    index: SearchIndex | None = None

    def summary(self) -> str:
        """What was trained and how it scored."""
        best, epoch = self.history.best, self.history.best_epoch
        chosen = f"best epoch {epoch}" if epoch else "no epoch beat the starting weights, kept"
        return (
            f"{self.kind} model: {len(self.history.epochs)} epochs in {self.seconds:.0f} s, {chosen} "
            f"(validation accuracy {best.validation_accuracy:.3f})\n"
            f"  test accuracy {self.test.per_example.accuracy:.3f} per example, "
            f"{self.test.per_product.accuracy:.3f} per product; macro-F1 {self.test.per_product.macro_f1:.3f} per product"
        ) + ("" if self.index is None else f"\n  {index_summary(self.index)}")


RECIPES = {
    "text": TrainConfig(epochs=20, learning_rate=1e-2, weight_decay=1e-2, patience=5, label_smoothing=0.1),
    "image": TrainConfig(epochs=10, learning_rate=1e-3, weight_decay=1e-4, patience=5),
    "combined": TrainConfig(epochs=10, learning_rate=1e-3, weight_decay=1e-2, patience=3),
}


def train_request(
    kind: str,
    *,
    epochs: int | None = None,
    image_size: int = 224,
    weights: str | None = None,
    trainable_stages: int = 1,
    feature_cache: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
) -> TrainRequest:
    """A request with ``kind``'s recipe, as ``fbml train`` builds it (``weights``: none, imagenet or a path)."""
    overrides = {"epochs": epochs, "batch_size": batch_size}
    config = attrs.evolve(RECIPES[kind], seed=seed, **{key: value for key, value in overrides.items() if value})
    start = None if weights in (None, "none") else weights
    image = ImageRecipe(size=image_size, weights=start, trainable_stages=trainable_stages, feature_cache=feature_cache)
    return TrainRequest(kind, config=config, image=image, split_seed=seed)


def scores_table(scores: dict[str, Scores], classes: tuple[str, ...]) -> str:
    """Accuracy and macro-F1 per model, per example and per product."""
    lines = [f"{'model':10}{'examples':>10}{'accuracy':>10}{'macro-F1':>10}{'products':>10}{'accuracy':>10}{'macro-F1':>10}"]
    for kind, score in scores.items():
        example, product = score.per_example, score.per_product
        lines.append(
            f"{kind:10}{example.examples:>10}{example.accuracy:>10.3f}{example.macro_f1:>10.3f}"
            f"{product.examples:>10}{product.accuracy:>10.3f}{product.macro_f1:>10.3f}"
        )
    lines.append(f"classes: {len(classes)}; rows left out (no photo or unknown category): "
                 + ", ".join(f"{kind} {score.excluded}" for kind, score in scores.items()))
    return "\n".join(lines)


def train_into_bundle(
    tables: CleanTables,
    image_dir: Path | None,
    bundle_dir: Path,
    request: TrainRequest,
    *,
    work_dir: Path,
    logdir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``request.kind`` on the product-level train split and add it to the bundle at ``bundle_dir``."""
    started = time.perf_counter()
    seed_everything(request.config.seed)  # the new model's initial weights (and frozen features) depend on it
    kind = request.kind
    splits = split_tables(tables, seed=request.split_seed)
    bundle = _starting_bundle(bundle_dir, tables)
    if kind in ("text", "combined") and bundle.text is None:
        bundle = attrs.evolve(bundle, text=_text_settings(splits.products.train, request.text))
    if kind in ("image", "combined"):
        bundle = attrs.evolve(bundle, image=_image_settings(bundle.image, request.image))
        if splits.images is None or image_dir is None:
            raise FbmlError(f"a {kind} model needs an images table and --image-dir")
    model, options = _new_model(kind, bundle, request)
    frames = splits.products if kind == "text" else splits.images
    inputs = _Inputs(bundle, tables, image_dir, work_dir, request, progress)
    trainable, datasets = inputs.datasets(model, (frames.train, frames.validation, frames.test))
    history = fit(
        trainable, TrainData(datasets[0], datasets[1]), request.config,
        checkpoint_dir=work_dir / "checkpoints" / kind, logdir=logdir, resume=resume,
        class_names=bundle.codec.classes, progress=progress, keep_start=kind == "combined",
    )
    test = _scores(predict(trainable, datasets[2], batch_size=request.config.batch_size), frames.test, inputs.excluded)
    report = {"history": history.to_json(), "test": test.to_json(), "config": attrs.asdict(request)}
    bundle = bundle.with_model(BundleModel(kind, model, options, report))
    if kind == "combined":
        bundle = indexed_bundle(bundle, tables, image_dir, work_dir=work_dir, split_seed=request.split_seed, progress=progress)
    save_bundle(bundle, bundle_dir)
    return TrainResult(kind, history, test, time.perf_counter() - started, bundle.index if kind == "combined" else None)


def evaluate_bundle(
    bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True
) -> dict[str, Scores]:
    """Every model of ``bundle`` on all of ``tables`` (e.g. held-back products), per example and product."""
    request = TrainRequest("text", image=ImageRecipe(size=bundle.image.size, feature_cache=False) if bundle.image else ImageRecipe())
    known = _known_categories(tables, bundle.codec)
    results = {}
    for kind, entry in bundle.models.items():
        frame = known.cleaned.products if kind == "text" else _manifest(known, kind)
        inputs = _Inputs(bundle, known, image_dir, work_dir, attrs.evolve(request, kind=kind), progress)
        model, datasets = inputs.datasets(entry.module, (frame,))
        excluded = inputs.excluded + (tables.cleaned.products if kind == "text" else _manifest(tables, kind)).height - frame.height
        results[kind] = _scores(predict(model, datasets[0]), frame, excluded)
    return results


@attrs.define
class _Inputs:
    """Builds a model kind's datasets over frames of products or photos (mutable: counts exclusions)."""

    bundle: Bundle
    tables: CleanTables
    image_dir: Path | None
    work_dir: Path
    request: TrainRequest
    progress: bool
    excluded: int = 0

    def datasets(self, model: nn.Module, frames: tuple[pl.DataFrame, ...]) -> tuple[nn.Module, list[Any]]:
        kind = self.request.kind
        labels = [self.bundle.codec.encode(frame["category"]) for frame in frames]
        if kind == "text":
            token_ids = [_token_ids(frame, self.bundle.text) for frame in frames]
            return model, [TextDataset(ids, label, np.arange(len(label))) for ids, label in zip(token_ids, labels, strict=True)]
        photos = self._photos(frames)
        token_ids = [_token_ids(frame, self.bundle.text) for frame in frames] if kind == "combined" else None
        if self._uses_feature_cache(model):
            return self._feature_datasets(model, frames, photos, labels, token_ids)
        return model, self._pixel_datasets(frames, photos, labels, token_ids)

    def _uses_feature_cache(self, model: nn.Module) -> bool:
        image = model.image if hasattr(model, "image") else model
        frozen_parameters = any(True for _ in image.frozen.parameters())
        return self.request.image.feature_cache and frozen_parameters

    def _photos(self, frames: tuple[pl.DataFrame, ...]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per frame: the decoded-photo cache, the cache positions of its photos and their frame rows."""
        size = self.bundle.image.size
        cache = build_image_cache(
            pl.concat(frames), self.image_dir, self.work_dir / f"photos-{size}", size=size, progress=self.progress
        )
        self.excluded += cache.rejected.height
        result = []
        for frame in frames:
            present = cache.cached(frame["image_id"])
            positions = cache.rows_for(frame["image_id"].filter(pl.Series(present)))
            result.append((cache.pixels, positions, np.flatnonzero(present)))
        return result

    def _feature_datasets(self, model, frames, photos, labels, token_ids):
        image = model.image if hasattr(model, "image") else model
        transform = eval_transform(self.bundle.image.size, self.bundle.image.mean, self.bundle.image.std)
        pixels = photos[0][0]
        features = frozen_features(image, pixels, transform, progress=self.progress)
        datasets = []
        for index, (_, positions, rows) in enumerate(photos):
            tokens_ = None if token_ids is None else token_ids[index][rows]
            datasets.append(FeatureDataset(features[positions], labels[index][rows], rows, tokens_))
        return FromFeatures(model), datasets

    def _pixel_datasets(self, frames, photos, labels, token_ids):
        from fbml.datasets import ImageDataset, ProductDataset

        settings = self.bundle.image
        augment = train_transform(settings.size, settings.mean, settings.std)
        plain = eval_transform(settings.size, settings.mean, settings.std)
        datasets = []
        for index, (pixels, positions, rows) in enumerate(photos):
            transform = augment if index == 0 and len(frames) > 1 else plain
            if token_ids is None:
                datasets.append(ImageDataset(pixels, labels[index][rows], rows, transform, positions=positions))
            else:
                datasets.append(
                    ProductDataset(pixels, token_ids[index][rows], labels[index][rows], rows, transform, positions=positions)
                )
        return datasets


def _starting_bundle(bundle_dir: Path, tables: CleanTables) -> Bundle:
    categories = tables.cleaned.products["category"]
    if not (bundle_dir / MANIFEST).is_file():
        return Bundle(label_codec(categories))
    bundle = load_bundle(bundle_dir)
    unknown = sorted(set(categories) - set(bundle.codec.classes))
    if unknown:
        raise FbmlError(f"{bundle_dir}: the data has categories the bundle's codec lacks: {unknown[:5]}")
    return bundle


def _text_settings(train: pl.DataFrame, recipe: TextRecipe) -> TextSettings:
    token_lists = train.select(tokens(product_text(pl.col("product_name"), pl.col("product_description")))).to_series()
    vocabulary = build_vocabulary(token_lists, min_count=recipe.min_count)
    vectors = train_word2vec(
        token_lists.to_list(), dim=recipe.word2vec_dim, epochs=recipe.word2vec_epochs, window=recipe.word2vec_window
    )
    return TextSettings(vocabulary, vectors, recipe.length)


def _image_settings(existing: ImageSettings | None, recipe: ImageRecipe) -> ImageSettings:
    if existing is not None:
        if existing.size != recipe.size:
            raise FbmlError(f"the bundle's image models use {existing.size} px photos, not {recipe.size}")
        return existing
    weights = None
    if recipe.weights == "imagenet":
        from torchvision.models import ResNet50_Weights

        weights = ResNet50_Weights.IMAGENET1K_V2
    mean, std = normalisation(weights)
    return ImageSettings(recipe.size, tuple(mean), tuple(std))


def _new_model(kind: str, bundle: Bundle, request: TrainRequest) -> tuple[nn.Module, dict[str, Any]]:
    classes = bundle.codec.num_classes
    image_options = {"trainable_stages": request.image.trainable_stages}
    text_options: dict[str, Any] = {}
    if kind == "image":
        return image_model(classes, weights=request.image.weights, **image_options), image_options
    embeddings = embedding_matrix(bundle.text.word_vectors, bundle.text.vocabulary, seed=request.config.seed)
    if kind == "text":
        return text_model(embeddings, classes, **text_options), text_options
    image = _branch(bundle, "image") or image_model(classes, weights=request.image.weights, **image_options)
    text = _branch(bundle, "text") or text_model(embeddings, classes, **text_options)
    options = {"image": bundle.models["image"].options if "image" in bundle.models else image_options,
               "text": bundle.models["text"].options if "text" in bundle.models else text_options}
    from fbml.models import combined_model

    trained_branches = "image" in bundle.models and "text" in bundle.models
    if "text" in bundle.models:
        text.requires_grad_(False)  # trained already: tuning it again on photo rows only over-fits it
    return combined_model(image, text, classes, from_branch_heads=trained_branches, image_weight=0.0), options


def _branch(bundle: Bundle, kind: str) -> nn.Module | None:
    """A copy of the bundle's trained model of ``kind`` to start a combined model's branch from."""
    return copy.deepcopy(bundle.models[kind].module) if kind in bundle.models else None


def _token_ids(frame: pl.DataFrame, text: TextSettings) -> np.ndarray:
    texts = frame.select(product_text(pl.col("product_name"), pl.col("product_description"))).to_series()
    return text.vocabulary.encode_texts(texts, text.length)


def _scores(predictions: Predictions, frame: pl.DataFrame, excluded: int) -> Scores:
    product_ids = frame["id"].gather(predictions.rows).to_list()
    labels, probabilities = per_product(product_ids, predictions.labels, predictions.probabilities)
    return Scores(
        classification_report(predictions.labels, predictions.probabilities),
        classification_report(labels, probabilities),
        excluded,
    )


def _known_categories(tables: CleanTables, codec: LabelCodec) -> CleanTables:
    """``tables`` without the products (and photos) whose category the codec does not know."""
    known = pl.col("category").is_in(list(codec.classes))
    cleaned = attrs.evolve(tables.cleaned, products=tables.cleaned.products.filter(known))
    manifest = None if tables.manifest is None else attrs.evolve(tables.manifest, images=tables.manifest.images.filter(known))
    return attrs.evolve(tables, cleaned=cleaned, manifest=manifest)


def _manifest(tables: CleanTables, kind: str) -> pl.DataFrame:
    if tables.manifest is None:
        raise FbmlError(f"evaluating a {kind} model needs an images table")
    return tables.manifest.images
