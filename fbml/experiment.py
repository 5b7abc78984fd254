"""Train models into a bundle and evaluate a bundle, from clean tables and a photo folder.

``train_into_bundle`` trains one of the three things ``fbml train`` offers, on the product-level
training split, choosing on the validation split only and scoring the test split once:

* ``text``: the word2vec text CNN and the TF-IDF linear model; the bundle's ``text`` predictor is
  the CNN, the linear model or both (log-linear pooling), whichever scores best on validation
  (cross-validated over validation products), with its weights fitted there;
* ``image``: a classifier on a pretrained backbone whose frozen part's output is computed once per
  photo and cached on disk; the ``image`` predictor is it, temperature-scaled on validation;
* ``combined``: the seed's architecture (both branches to 128, concatenated, one linear layer) and
  late fusion of the text and image predictors' members fitted on validation; the ``combined``
  predictor is whichever scores better there. It also builds the similar-listings index. Text or
  image models the bundle lacks are trained first.

``evaluate_bundle``: every predictor and model of a bundle on any clean data, per example and per
product.
"""

from __future__ import annotations

import copy
import json
import time
from io import BytesIO
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import polars as pl
import torch
from torch import nn

from contracts.bundle import CombinedOptions, ImageOptions, TextCnnOptions
from fbml.backbones import DEFAULT_BACKBONE, backbone
from fbml.bundle import (
    MANIFEST,
    Bundle,
    BundleModel,
    ImageSettings,
    Predictor,
    TextSettings,
    image_from_options,
    load_bundle,
    save_bundle,
    text_cnn_from_options,
)
from fbml.devices import seeded_rng
from fbml.datasets import ImageDataset, ProductDataset, TextDataset, eval_transform, train_transform
from fbml.encoding import LabelCodec, label_codec
from fbml.ensembles import Ensemble, cross_validated_accuracy, fit_ensemble
from fbml.errors import FbmlError
from fbml.files import write_atomically
from fbml.features import FeatureDataset, FromFeatures, feature_cache
from fbml.linear_text import LinearTextModel, LinearTextOptions, fit_linear_text
from fbml.models import (
    DEFAULT_BRANCH_SCALE,
    DEFAULT_EMBEDDING_DIM,
    DEFAULT_KERNEL_SIZES,
    DEFAULT_POSITIONS,
    DEFAULT_TEXT_CHANNELS,
    DEFAULT_TEXT_DROPOUT,
    DEFAULT_WORD_DROPOUT,
    CombinedClassifier,
    ImageClassifier,
    TextClassifier,
    combined_model,
)
from fbml.photos import ImageCache, build_image_cache
from fbml.pipeline import CleanTables, restricted_tables, split_tables
from fbml.reports import ClassificationReport, classification_report, per_product
from fbml.text import build_vocabulary, product_text, tokens
from fbml.training import History, Predictions, TrainConfig, TrainData, fit, predict
from fbml.word2vec import embedding_matrix, train_word2vec

MODEL_KINDS = ("image", "text", "combined")
IMAGE_KINDS = ("image-cnn", "combined-nn")


@attrs.frozen
class TextRecipe:
    """How the text models are prepared: vocabulary, word2vec, sequence length, the CNN and the linear model."""

    length: int = 64
    min_count: int = 2
    word2vec_dim: int = 100
    word2vec_epochs: int = 10
    word2vec_window: int = 5
    cnn: TextCnnOptions = TextCnnOptions(
        embedding_dim=DEFAULT_EMBEDDING_DIM, kernel_sizes=list(DEFAULT_KERNEL_SIZES), channels=DEFAULT_TEXT_CHANNELS,
        dropout=DEFAULT_TEXT_DROPOUT, freeze_embeddings=False, normalise_embeddings=True, positions=DEFAULT_POSITIONS,
        word_dropout=DEFAULT_WORD_DROPOUT, branch_scale=DEFAULT_BRANCH_SCALE,
    )
    linear: LinearTextOptions = LinearTextOptions()


@attrs.frozen
class ImageRecipe:
    """How the image branch is built and fed: backbone, photo side (None: the backbone's), starting
    weights (None: the backbone's default), trainable stages (None: the backbone's default)."""

    backbone: str = DEFAULT_BACKBONE
    size: int | None = None
    weights: str | None = None
    trainable_stages: int | None = None
    feature_cache: bool = True
    embedding_dim: int = DEFAULT_EMBEDDING_DIM
    dropout: float = 0.3

    def options(self) -> ImageOptions:
        """The factory arguments this recipe pins in the bundle."""
        spec = backbone(self.backbone)
        stages = spec.default_trainable_stages if self.trainable_stages is None else self.trainable_stages
        return ImageOptions(self.backbone, stages, self.embedding_dim, self.dropout)

    def start(self) -> str:
        """The weights the new model starts from."""
        return backbone(self.backbone).default_weights if self.weights is None else self.weights


@attrs.frozen
class TrainRequest:
    """What ``fbml train`` asks for."""

    kind: str = attrs.field(validator=attrs.validators.in_(MODEL_KINDS))
    config: TrainConfig = TrainConfig()
    image: ImageRecipe = ImageRecipe()
    text: TextRecipe = TextRecipe()
    split_seed: int = 0
    device: str = "cpu"
    refit: bool = True


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
    """What one ``fbml train`` did: per model trained, its history; the test scores of the predictor
    it set and of each model; the seconds it took; the search index summary for ``combined``."""

    kind: str
    histories: Mapping[str, History]
    test: Scores
    model_tests: Mapping[str, Scores]
    choice: Mapping[str, Any]
    seconds: float
    index: Mapping[str, Any] | None = None

    def summary(self) -> str:
        """What was trained, what was chosen on validation and how it scored on the test split."""
        lines = [f"{self.kind}: trained {', '.join(self.histories) or 'no network'} in {self.seconds:.0f} s; "
                 f"chose {' + '.join(self.choice['members'])} (validation accuracy per product "
                 f"{self.choice['validation_accuracy']:.3f})"]
        for name, scores in {self.kind: self.test, **self.model_tests}.items():
            lines.append(f"  {name:12} test accuracy {scores.per_example.accuracy:.3f} per example, "
                         f"{scores.per_product.accuracy:.3f} per product; macro-F1 {scores.per_product.macro_f1:.3f}")
        if self.index is not None:
            from fbml.listings import index_summary

            lines.append(f"  {index_summary(self.index)}")
        return "\n".join(lines)


RECIPES = {
    "text": TrainConfig(epochs=20, learning_rate=1e-2, weight_decay=1e-2, patience=5, label_smoothing=0.1),
    "image": TrainConfig(epochs=30, learning_rate=1e-3, weight_decay=1e-4, patience=5, label_smoothing=0.1),
    "combined": TrainConfig(epochs=10, learning_rate=1e-3, weight_decay=1e-2, patience=3),
}


def train_request(
    kind: str,
    *,
    epochs: int | None = None,
    backbone: str = DEFAULT_BACKBONE,
    image_size: int | None = None,
    weights: str | None = None,
    trainable_stages: int | None = None,
    feature_cache: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    device: str = "cpu",
    refit: bool = True,
) -> TrainRequest:
    """A request with ``kind``'s recipe, as ``fbml train`` builds it. ``refit``: once chosen on
    validation, the models are trained again on the training and validation splits together."""
    overrides = {"epochs": epochs, "batch_size": batch_size}
    config = attrs.evolve(RECIPES[kind], seed=seed, **{key: value for key, value in overrides.items() if value})
    image = ImageRecipe(backbone=backbone, size=image_size, weights=weights, trainable_stages=trainable_stages,
                        feature_cache=feature_cache)
    image.options()  # an unknown backbone or a trainable_stages out of range stops here, before any work
    return TrainRequest(kind, config=config, image=image, split_seed=seed, device=device, refit=refit)


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
    if request.kind in ("image", "combined") and (tables.manifest is None or image_dir is None):
        raise FbmlError(f"a {request.kind} model needs an images table and --image-dir")
    run = _Run(tables, image_dir, work_dir, request, logdir, resume, progress)
    bundle = _starting_bundle(bundle_dir, tables, request.image)
    if request.kind == "combined":
        bundle = _with_branches(bundle, bundle_dir, run)
    bundle, outcome = TRAINERS[request.kind](bundle, run)
    save_bundle(bundle, bundle_dir)
    return attrs.evolve(outcome, seconds=time.perf_counter() - started)


def evaluate_bundle(
    bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
    device: str = "cpu",
) -> dict[str, Scores]:
    """Every predictor and model of ``bundle`` on all of ``tables`` (e.g. held-back products), per
    example and per product. Text is scored per product; photo models per photo."""
    return {name: evaluation.scores for name, evaluation in evaluations(bundle, tables, image_dir, work_dir=work_dir,
                                                                        progress=progress, device=device).items()}


@attrs.frozen
class Evaluation:
    """One predictor's or model's predictions on some examples (products or photos), and its scores."""

    frame: pl.DataFrame
    probabilities: np.ndarray
    labels: np.ndarray
    scores: Scores


def evaluations(
    bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
    device: str = "cpu",
) -> dict[str, Evaluation]:
    """``evaluate_bundle`` with the predictions behind each score (for reports)."""
    known = _known_categories(tables, bundle.codec)
    run = _Run(known, image_dir, work_dir, TrainRequest("text", device=device), None, False, progress)
    frames = {"products": known.cleaned.products}
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
            results[name] = Evaluation(frame, probabilities, labels, _scores(probabilities, labels, frame, totals[on] - frame.height))
    return results


def reindex(
    bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, progress: bool = True,
    device: str = "cpu",
) -> Bundle:
    """``bundle`` with its similar-listings index rebuilt over the products of ``tables`` it knows the category of."""
    from fbml.listings import reindexed_bundle

    known = _known_categories(tables, bundle.codec)
    return reindexed_bundle(bundle, _Run(known, image_dir, work_dir, TrainRequest("text", device=device), None, False, progress))


def evaluated_on(bundle: Bundle, name: str) -> str:
    """``photos`` for a predictor or model that reads photos, else ``products``."""
    members = bundle.predictors[name].ensemble.names if name in bundle.predictors else (name,)
    return "photos" if set(members) & set(IMAGE_KINDS) else "products"


def _memoised(run: _Run, bundle: Bundle, name: str, on: str, frame: pl.DataFrame, memo: dict[tuple[str, str], np.ndarray]) -> np.ndarray:
    """``run.probabilities`` of a predictor or model over ``frame``, each model computed once per frame."""
    if (name, on) not in memo:
        if name in bundle.predictors:
            ensemble = bundle.predictors[name].ensemble
            memo[name, on] = ensemble.combine({member: _memoised(run, bundle, member, on, frame, memo) for member in ensemble.names})
        else:
            memo[name, on] = run.outputs(bundle, name, bundle.model(name), frame).probabilities
    return memo[name, on]


# --- the three trainings --------------------------------------------------------------------------------------


@attrs.define
class _Run:
    """One training's inputs and the work they share: splits, the photo cache, frozen features."""

    tables: CleanTables
    image_dir: Path | None
    work_dir: Path
    request: TrainRequest
    logdir: Path | None
    resume: bool
    progress: bool
    _splits: Any = None
    _photos: ImageCache | None = None

    @property
    def splits(self) -> Any:
        if self._splits is None:
            self._splits = split_tables(self.tables, seed=self.request.split_seed)
        return self._splits

    def frames(self, on: str, bundle: Bundle) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        """Train, validation and test frames of products, or of photos that decoded."""
        parts = self.splits.products if on == "products" else self.splits.images
        frames = (parts.train, parts.validation, parts.test)
        if on == "products":
            return frames
        train, validation, test = (self.with_photos(frame, bundle) for frame in frames)
        return train, validation, test

    def photo_cache(self, size: int) -> ImageCache:
        """Every photo of the tables decoded once at ``size`` (in ``work_dir``)."""
        if self._photos is None or self._photos.size != size:
            assert self.tables.manifest is not None and self.image_dir is not None
            self._photos = build_image_cache(self.tables.manifest.images, self.image_dir, self.work_dir / f"photos-{size}",
                                             size=size, progress=self.progress)
        return self._photos

    def with_photos(self, frame: pl.DataFrame, bundle: Bundle) -> pl.DataFrame:
        """The rows of a photo frame whose photo decoded (at the bundle's image size)."""
        if bundle.image is None:
            raise FbmlError("the bundle has no image settings")
        return frame.filter(pl.Series(self.photo_cache(bundle.image.size).cached(frame["image_id"])))

    def features(self, model: ImageClassifier, settings: ImageSettings) -> np.ndarray:
        """The frozen part's output for every cached photo (disk cache shared by every run)."""
        return feature_cache(model, self.photo_cache(settings.size), (settings.mean, settings.std), self.work_dir,
                             progress=self.progress)

    def predictor_probabilities(self, bundle: Bundle, role: str, frame: pl.DataFrame) -> np.ndarray:
        """The ``role`` predictor's probabilities for each row of ``frame``."""
        ensemble = bundle.predictor(role).ensemble
        return ensemble.combine({kind: self.model_probabilities(bundle, kind, frame) for kind in ensemble.names})

    def model_probabilities(self, bundle: Bundle, kind: str, frame: pl.DataFrame) -> np.ndarray:
        """The ``kind`` model's probabilities for each row of ``frame``."""
        return self.outputs(bundle, kind, bundle.model(kind), frame).probabilities

    def outputs(self, bundle: Bundle, kind: str, model: nn.Module | LinearTextModel, frame: pl.DataFrame) -> Predictions:
        """A model's predictions (probabilities and embeddings) for each row of ``frame`` (photos must decode)."""
        if isinstance(model, LinearTextModel):
            probabilities = model.predict_proba(_texts(frame))
            return Predictions(probabilities, np.zeros(len(frame), np.int64), np.arange(len(frame)), np.zeros((len(frame), 0)))
        trainable, dataset = self.dataset(bundle, kind, model, frame)
        return predict(trainable, dataset, batch_size=self.request.config.batch_size, device=self.request.device)

    def dataset(
        self, bundle: Bundle, kind: str, model: nn.Module, frame: pl.DataFrame, *, augment: bool = False
    ) -> tuple[nn.Module, Any]:
        """What ``fit``/``predict`` take for ``model`` over ``frame``: the model (wrapped to start from
        cached frozen features for image kinds, unless the request turns the cache off) and its dataset.
        ``augment``: training transforms for photos read without the cache."""
        labels = bundle.codec.encode(frame["category"]) if frame.height else np.zeros(0, np.int64)
        rows = np.arange(frame.height)
        token_ids = _token_ids(frame, bundle.text) if kind in ("text-cnn", "combined-nn") and bundle.text else None
        if kind == "text-cnn":
            return model, TextDataset(token_ids, labels, rows)
        assert bundle.image is not None
        image = model.image if isinstance(model, CombinedClassifier) else model
        assert isinstance(image, ImageClassifier)
        photos = self.photo_cache(bundle.image.size)
        positions = photos.rows_for(frame["image_id"])
        if self.request.image.feature_cache and any(True for _ in image.frozen.parameters()):
            features = self.features(image, bundle.image)
            return FromFeatures(model), FeatureDataset(features[positions], labels, rows, token_ids)
        settings = bundle.image
        transform = (train_transform if augment else eval_transform)(settings.size, settings.mean, settings.std)
        if token_ids is None:
            return model, ImageDataset(photos.pixels, labels, rows, transform, positions=positions)
        return model, ProductDataset(photos.pixels, token_ids, labels, rows, transform, positions=positions)

    def fit(self, bundle: Bundle, kind: str, model: nn.Module, *, keep_start: bool = False) -> History:
        """Train ``model`` (a bundle ``kind``) on the training split, early-stopped on validation."""
        train, validation, _ = self.frames(_examples(kind), bundle)
        return self._fit(bundle, kind, model, train, validation, self.request.config, keep_start=keep_start)

    def refit(self, bundle: Bundle, kind: str, model: nn.Module, epochs: int) -> History | None:
        """Train ``model`` afresh on the training and validation splits for the ``epochs`` validation chose
        (none: it stays as it starts); the last epoch's weights are kept."""
        if epochs < 1:
            return None
        train, validation, _ = self.frames(_examples(kind), bundle)
        config = attrs.evolve(self.request.config, epochs=epochs)
        return self._fit(bundle, f"{kind}-refit", model, pl.concat([train, validation]), validation, config, keep_last=True)

    def _fit(
        self, bundle: Bundle, name: str, model: nn.Module, train: pl.DataFrame, validation: pl.DataFrame,
        config: TrainConfig, *, keep_start: bool = False, keep_last: bool = False,
    ) -> History:
        kind = name.removesuffix("-refit")
        trainable, train_data = self.dataset(bundle, kind, model, train, augment=True)
        _, validation_data = self.dataset(bundle, kind, model, validation)
        return fit(
            trainable, TrainData(train_data, validation_data), config,
            checkpoint_dir=self.work_dir / "checkpoints" / name, logdir=None if self.logdir is None else self.logdir / name,
            resume=self.resume, class_names=bundle.codec.classes, progress=self.progress, keep_start=keep_start,
            keep_last=keep_last, device=self.request.device,
        )

    @property
    def store(self) -> ValidationStore:
        """Where the models trained on the training split alone keep their validation predictions."""
        return ValidationStore(self.work_dir / f"validation-{self.request.split_seed}")


def _examples(kind: str) -> str:
    return "products" if kind in ("text-cnn", "text-linear") else "photos"


@attrs.frozen
class ValidationStore:
    """The validation-split probabilities (and, for networks, the weights) of models trained on the
    training split alone. Fusion and the combined network are chosen on these, so that refitting the
    branches on the validation products afterwards does not leak them into the choice."""

    directory: Path

    def save(self, kind: str, keys: Sequence[str], probabilities: np.ndarray, model: nn.Module | None = None) -> None:
        """Keep ``kind``'s probabilities for the validation examples ``keys`` (product or photo ids)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(self.directory / f"{kind}.json", json.dumps(list(keys)).encode())
        buffer = BytesIO()
        np.save(buffer, np.asarray(probabilities, dtype=np.float32), allow_pickle=False)
        write_atomically(self.directory / f"{kind}.npy", buffer.getvalue())
        if model is not None:
            from safetensors.torch import save

            state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
            write_atomically(self.directory / f"{kind}.safetensors", save(state))

    def probabilities(self, kind: str, keys: Sequence[str]) -> np.ndarray:
        """``kind``'s validation probabilities of the examples ``keys`` (each key once or more, in order)."""
        try:
            known = json.loads((self.directory / f"{kind}.json").read_text(encoding="utf-8"))
            values = np.load(self.directory / f"{kind}.npy", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise FbmlError(f"{self.directory}: no validation predictions of the {kind} model ({type(error).__name__}); "
                            f"train it again with the same --work-dir") from None
        row_of = {key: row for row, key in enumerate(known)}
        missing = [key for key in keys if key not in row_of]
        if missing or values.shape[0] != len(known):
            raise FbmlError(f"{self.directory}: the {kind} model's validation predictions are not of these products "
                            f"({len(missing)} missing); train it again on this data")
        return values[[row_of[key] for key in keys]]

    def load_weights(self, kind: str, model: nn.Module) -> nn.Module:
        """``model`` with the weights ``kind`` had when trained on the training split alone."""
        from safetensors.torch import load_file

        path = self.directory / f"{kind}.safetensors"
        if not path.is_file():
            raise FbmlError(f"{self.directory}: no training-split weights of the {kind} model; train it again with the same --work-dir")
        model.load_state_dict(load_file(path))
        return model


def _train_text(bundle: Bundle, run: _Run) -> tuple[Bundle, TrainResult]:
    """The text CNN and the linear model; the ``text`` predictor chosen among them on validation."""
    train, validation, test = run.frames("products", bundle)
    if bundle.text is None:
        bundle = attrs.evolve(bundle, text=_text_settings(train, run.request.text, run.request.config.seed))
    recipe, seed = run.request.text, run.request.config.seed
    cnn = _new_text_cnn(bundle, recipe, seed)
    history = run.fit(bundle, "text-cnn", cnn)
    linear = fit_linear_text(_texts(train), bundle.codec.encode(train["category"]), bundle.codec.num_classes,
                             options=recipe.linear, seed=seed)
    keys = validation["id"].to_list()
    run.store.save("text-cnn", keys, run.outputs(bundle, "text-cnn", cnn, validation).probabilities, cnn)
    run.store.save("text-linear", keys, linear.predict_proba(_texts(validation)))
    histories = {"text-cnn": history}
    if run.request.refit:
        cnn = _new_text_cnn(bundle, recipe, seed)
        histories |= _refit_history("text-cnn", run.refit(bundle, "text-cnn", cnn, history.best_epoch))
        both = pl.concat([train, validation])
        linear = fit_linear_text(_texts(both), bundle.codec.encode(both["category"]), bundle.codec.num_classes,
                                 options=recipe.linear, seed=seed)
    bundle = bundle.with_model(BundleModel("text-cnn", cnn, recipe.cnn, _report(history, run)))
    bundle = bundle.with_model(BundleModel("text-linear", linear, None, {"config": attrs.asdict(recipe.linear)}))
    candidates = [("text-cnn",), ("text-linear",), ("text-cnn", "text-linear")]
    return _with_chosen(bundle, "text", candidates, (validation, test), histories, run)


def _train_image(bundle: Bundle, run: _Run) -> tuple[Bundle, TrainResult]:
    """A classifier on the backbone's cached frozen features; the ``image`` predictor is it, calibrated."""
    recipe = run.request.image
    bundle = attrs.evolve(bundle, image=_image_settings(bundle.image, recipe))
    model = _new_image_cnn(bundle, recipe, run.request.config.seed)
    history = run.fit(bundle, "image-cnn", model)
    _, validation, test = run.frames("photos", bundle)
    run.store.save("image-cnn", validation["image_id"].to_list(), run.outputs(bundle, "image-cnn", model, validation).probabilities, model)
    histories = {"image-cnn": history}
    if run.request.refit:
        model = _new_image_cnn(bundle, recipe, run.request.config.seed)
        histories |= _refit_history("image-cnn", run.refit(bundle, "image-cnn", model, history.best_epoch))
    bundle = bundle.with_model(BundleModel("image-cnn", model, recipe.options(), _report(history, run)))
    return _with_chosen(bundle, "image", [("image-cnn",)], (validation, test), histories, run)


def _train_combined(bundle: Bundle, run: _Run) -> tuple[Bundle, TrainResult]:
    """The seed's combined network and late fusion of the text predictor's models with the image
    model (and with the network too); the ``combined`` predictor is the best of those on validation.

    The network is trained from the branches as the training split alone made them, so its validation
    figures are fair; with refitting, it is then trained again from the refitted branches."""
    branches = _training_split_branches(bundle, run.store)
    network, options = _combined_network(branches)
    history = run.fit(branches, "combined-nn", network, keep_start=True)
    _, validation, _ = run.frames("photos", bundle)
    run.store.save("combined-nn", validation["image_id"].to_list(), run.outputs(bundle, "combined-nn", network, validation).probabilities)
    histories = {"combined-nn": history}
    if run.request.refit:
        network, options = _combined_network(bundle)
        histories |= _refit_history("combined-nn", run.refit(bundle, "combined-nn", network, history.best_epoch))
    bundle = bundle.with_model(BundleModel("combined-nn", network, options, _report(history, run)))
    _, validation, test = run.frames("photos", bundle)
    fusion = (*bundle.predictor("text").ensemble.names, "image-cnn")
    candidates = [("combined-nn",), fusion, (*fusion, "combined-nn")]
    bundle, result = _with_chosen(bundle, "combined", candidates, (validation, test), histories, run)
    from fbml.listings import indexed_bundle

    bundle = indexed_bundle(bundle, run, split_seed=run.request.split_seed)
    assert bundle.index is not None
    return bundle, attrs.evolve(result, index=dict(bundle.index.report))


def _new_text_cnn(bundle: Bundle, recipe: TextRecipe, seed: int) -> TextClassifier:
    assert bundle.text is not None
    embeddings = embedding_matrix(bundle.text.word_vectors, bundle.text.vocabulary, seed=seed)
    with seeded_rng(torch.device("cpu"), seed):
        return text_cnn_from_options(recipe.cnn, embeddings, bundle.codec.num_classes)


def _new_image_cnn(bundle: Bundle, recipe: ImageRecipe, seed: int) -> ImageClassifier:
    with seeded_rng(torch.device("cpu"), seed):
        return image_from_options(recipe.options(), bundle.codec.num_classes, weights=recipe.start())


def _refit_history(kind: str, history: History | None) -> dict[str, History]:
    return {} if history is None else {f"{kind}-refit": history}


def _training_split_branches(bundle: Bundle, store: ValidationStore) -> Bundle:
    """``bundle`` with its image and text CNNs as the training split alone made them."""
    branches = {kind: copy.deepcopy(bundle.models[kind]) for kind in ("image-cnn", "text-cnn")}
    for kind, entry in branches.items():
        assert isinstance(entry.module, nn.Module)
        store.load_weights(kind, entry.module)
    return attrs.evolve(bundle, models={**bundle.models, **branches})


TRAINERS = {"text": _train_text, "image": _train_image, "combined": _train_combined}


def _with_branches(bundle: Bundle, bundle_dir: Path, run: _Run) -> Bundle:
    """The bundle with text and image predictors, training (and saving) the missing ones first."""
    for kind in ("text", "image"):
        if kind not in bundle.predictors:
            if run.progress:
                print(f"the combined model needs a trained {kind} model: training it first", flush=True)
            bundle, _ = TRAINERS[kind](bundle, attrs.evolve(run, request=_branch_request(run.request, kind)))
            save_bundle(bundle, bundle_dir)
    return bundle


def _branch_request(request: TrainRequest, kind: str) -> TrainRequest:
    config = attrs.evolve(RECIPES[kind], seed=request.config.seed, batch_size=request.config.batch_size)
    return attrs.evolve(request, kind=kind, config=config)


def _with_chosen(
    bundle: Bundle,
    role: str,
    candidates: Sequence[tuple[str, ...]],
    frames: tuple[pl.DataFrame, pl.DataFrame],
    histories: Mapping[str, History],
    run: _Run,
) -> tuple[Bundle, TrainResult]:
    """The bundle with ``role``'s predictor: the candidate ensemble (members, with or without a class
    bias) best on validation by cross-validated per-product accuracy (ties: fewer members, then no
    bias), fitted on all of validation, with the validation predictions of the models trained on the
    training split alone; then scored on the test split once, with the bundle's (refitted) models."""
    validation, test = frames
    names = sorted({name for members in candidates for name in members})
    scored = {name: run.store.probabilities(name, _keys(name, validation)) for name in names}
    labels = {"validation": bundle.codec.encode(validation["category"]), "test": bundle.codec.encode(test["category"])}
    products = validation["id"].to_list()
    tried = {
        _candidate_name(members, bias): cross_validated_accuracy(
            {name: scored[name] for name in members}, labels["validation"], products,
            seed=run.request.config.seed, fit_bias=bias,
        )
        for members in candidates
        for bias in (False, True)
    }
    best, bias = max(((members, bias) for members in candidates for bias in (False, True)),
                     key=lambda choice: (tried[_candidate_name(*choice)], -len(choice[0]), not choice[1]))
    ensemble = fit_ensemble({name: scored[name] for name in best}, labels["validation"], fit_bias=bias)
    choice = {"members": list(best), "bias": bias, "validation_accuracy": tried[_candidate_name(best, bias)],
              "candidates": tried, "weights": dict(ensemble.members), "refit": run.request.refit}
    tested = {name: run.model_probabilities(bundle, name, test) for name in names}
    test_scores = _scores(ensemble.combine(tested), labels["test"], test, 0)
    model_tests = {name: _scores(tested[name], labels["test"], test, 0) for name in names}
    bundle = bundle.with_predictor(role, Predictor(ensemble, {"choice": choice, "test": test_scores.to_json()}))
    return bundle, TrainResult(role, histories, test_scores, model_tests, choice, 0.0)


def _keys(kind: str, frame: pl.DataFrame) -> list[str]:
    """The validation store's keys of ``frame``'s rows for ``kind``: product ids for text, photo ids otherwise."""
    return frame["id" if _examples(kind) == "products" else "image_id"].to_list()


def _candidate_name(members: tuple[str, ...], bias: bool) -> str:
    return " + ".join(members) + (" + bias" if bias else "")


def _combined_network(bundle: Bundle) -> tuple[CombinedClassifier, CombinedOptions]:
    """The seed's combined model from copies of the trained branches: the text branch frozen (trained
    already; tuning it again on photo rows only over-fits it), the output layer starting as the text
    model's with the photo's weights at zero, so it starts scoring exactly as the text CNN."""
    image, text = bundle.models["image-cnn"], bundle.models["text-cnn"]
    assert isinstance(image.options, ImageOptions) and isinstance(text.options, TextCnnOptions)
    image_branch = copy.deepcopy(bundle.model("image-cnn"))
    text_branch = copy.deepcopy(bundle.model("text-cnn"))
    assert isinstance(image_branch, ImageClassifier) and isinstance(text_branch, TextClassifier)
    text_branch.requires_grad_(False)
    network = combined_model(image_branch, text_branch, bundle.codec.num_classes, from_branch_heads=True, image_weight=0.0)
    return network, CombinedOptions(image.options, text.options)


def _report(history: History, run: _Run) -> dict[str, Any]:
    return {"history": history.to_json(), "config": attrs.asdict(run.request, value_serializer=_serialisable)}


def _serialisable(_instance: object, _field: object, value: object) -> object:
    import msgspec

    return msgspec.to_builtins(value) if isinstance(value, msgspec.Struct) else value


def _starting_bundle(bundle_dir: Path, tables: CleanTables, recipe: ImageRecipe) -> Bundle:
    categories = tables.cleaned.products["category"]
    if not (bundle_dir / MANIFEST).is_file():
        return Bundle(label_codec(categories))
    bundle = load_bundle(bundle_dir)
    unknown = sorted(set(categories) - set(bundle.codec.classes))
    if unknown:
        raise FbmlError(f"{bundle_dir}: the data has categories the bundle's codec lacks: {unknown[:5]}")
    if bundle.image is not None:
        _image_settings(bundle.image, recipe)
    return bundle


def _text_settings(train: pl.DataFrame, recipe: TextRecipe, seed: int) -> TextSettings:
    token_lists = train.select(tokens(product_text(pl.col("product_name"), pl.col("product_description")))).to_series()
    vocabulary = build_vocabulary(token_lists, min_count=recipe.min_count)
    vectors = train_word2vec(
        token_lists.to_list(), dim=recipe.word2vec_dim, epochs=recipe.word2vec_epochs, window=recipe.word2vec_window,
        seed=seed,
    )
    return TextSettings(vocabulary, vectors, recipe.length)


def _image_settings(existing: ImageSettings | None, recipe: ImageRecipe) -> ImageSettings:
    """The bundle's image settings, or new ones from the recipe's backbone; a recipe that disagrees
    with the bundle's stops here."""
    preprocessing = backbone(recipe.backbone).preprocessing
    size = recipe.size or (existing.size if existing is not None else preprocessing.size)
    if existing is not None:
        if existing.backbone != recipe.backbone:
            raise FbmlError(f"the bundle's image models use the {existing.backbone} backbone, not {recipe.backbone}")
        if existing.size != size:
            raise FbmlError(f"the bundle's image models use {existing.size} px photos, not {size}")
        return existing
    return ImageSettings(recipe.backbone, size, preprocessing.mean, preprocessing.std)


def _texts(frame: pl.DataFrame) -> list[str]:
    return frame.select(product_text(pl.col("product_name"), pl.col("product_description"))).to_series().to_list()


def _token_ids(frame: pl.DataFrame, text: TextSettings) -> np.ndarray:
    return text.vocabulary.encode_texts(_texts(frame), text.length)


def _scores(probabilities: np.ndarray, labels: np.ndarray, frame: pl.DataFrame, excluded: int) -> Scores:
    product_labels, product_probabilities = per_product(frame["id"].to_list(), labels, probabilities)
    return Scores(
        classification_report(labels, probabilities),
        classification_report(product_labels, product_probabilities),
        excluded,
    )


def _known_categories(tables: CleanTables, codec: LabelCodec) -> CleanTables:
    """``tables`` without the products (and photos) whose category the codec does not know."""
    return restricted_tables(tables, pl.col("category").is_in(list(codec.classes)))


def _manifest(tables: CleanTables) -> pl.DataFrame:
    if tables.manifest is None:
        raise FbmlError("evaluating a photo model needs an images table")
    return tables.manifest.images
