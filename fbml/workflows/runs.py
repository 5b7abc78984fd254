"""A run over clean tables and a photo folder: the splits, the decoded photos, frozen features, predictions.

``Run`` is the work that training, evaluation and indexing share: it splits the tables by product,
decodes every photo once into a cache, computes a backbone's frozen features once (on disk, shared
by every run of the same backbone and photos), turns frames of products or photos into the datasets
``fit`` and ``predict`` take, and predicts with a bundle's models. ``ValidationStore`` keeps the
validation predictions of models trained on the training split alone.

A run of several processes training in data parallel (``world``) does all of it in every process; rank 0
alone builds the caches (the others wait, then memory-map them) and writes the store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import polars as pl
from torch import nn

from fbml.bundle.store import Bundle, ImageSettings, TextSettings
from fbml.errors import FbmlError
from fbml.files import write_atomically
from fbml.modeling.datasets import ImageDataset, ProductDataset, TextDataset, eval_transform, train_transform
from fbml.modeling.distributed import World, main_first, on_main
from fbml.modeling.features import FeatureDataset, FromFeatures, feature_cache
from fbml.modeling.linear_text import LinearTextModel
from fbml.modeling.metrics import ClassificationReport, classification_report, per_product
from fbml.modeling.models import CombinedClassifier, ImageClassifier
from fbml.modeling.training import History, Predictions, TrainConfig, TrainData, fit, predict
from fbml.tables.clean import CleanTables, restricted_tables
from fbml.tables.splits import split_tables
from fbml.text.labels import LabelCodec
from fbml.text.vocabulary import product_text
from fbml.vision.cache import ImageCache, build_image_cache

IMAGE_KINDS = ("image-cnn", "combined-nn")

@attrs.frozen
class Scores:
    """A model's figures on some data: per example (photo or product) and per product."""

    per_example: ClassificationReport
    per_product: ClassificationReport
    excluded: int

    def to_json(self) -> dict[str, Any]:
        return {"per_example": self.per_example.to_json(), "per_product": self.per_product.to_json(), "excluded": self.excluded}

@attrs.define
class Run:
    """One training's inputs and the work they share: splits, the photo cache, frozen features."""

    tables: CleanTables
    image_dir: Path | None
    work_dir: Path
    config: TrainConfig = TrainConfig()
    device: str = "cpu"
    split_seed: int = 0
    feature_cache: bool = True
    logdir: Path | None = None
    resume: bool = False
    progress: bool = True
    world: World = World()
    _splits: Any = None
    _photos: ImageCache | None = None

    @property
    def splits(self) -> Any:
        if self._splits is None:
            self._splits = split_tables(self.tables, seed=self.split_seed)
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
        """Every photo of the tables decoded once at ``size`` (in ``work_dir``; by rank 0, the others then open it)."""
        if self._photos is None or self._photos.size != size:
            manifest, image_dir = self.tables.manifest, self.image_dir
            assert manifest is not None and image_dir is not None
            self._photos = main_first(self.world, lambda: build_image_cache(
                manifest.images, image_dir, self.work_dir / f"photos-{size}", size=size, progress=self.progress,
            ))
        return self._photos

    def with_photos(self, frame: pl.DataFrame, bundle: Bundle) -> pl.DataFrame:
        """The rows of a photo frame whose photo decoded (at the bundle's image size)."""
        if bundle.image is None:
            raise FbmlError("the bundle has no image settings")
        return frame.filter(pl.Series(self.photo_cache(bundle.image.size).cached(frame["image_id"])))

    def features(self, model: ImageClassifier, settings: ImageSettings) -> np.ndarray:
        """The frozen part's output for every cached photo (disk cache shared by every run; computed by rank 0,
        the others then memory-map it)."""
        photos = self.photo_cache(settings.size)
        return main_first(self.world, lambda: feature_cache(model, photos, (settings.mean, settings.std), self.work_dir,
                                                            progress=self.progress))

    def predictor_probabilities(self, bundle: Bundle, role: str, frame: pl.DataFrame) -> np.ndarray:
        """The ``role`` predictor's probabilities for each row of ``frame``."""
        ensemble = bundle.predictor(role).ensemble
        return ensemble.combine({kind: self.model_probabilities(bundle, kind, frame) for kind in ensemble.names})

    def model_probabilities(self, bundle: Bundle, kind: str, frame: pl.DataFrame) -> np.ndarray:
        """The ``kind`` model's probabilities for each row of ``frame``."""
        return self.outputs(bundle, kind, bundle.torch_model(kind), frame).probabilities

    def outputs(self, bundle: Bundle, kind: str, model: nn.Module | LinearTextModel, frame: pl.DataFrame) -> Predictions:
        """A model's predictions (probabilities and embeddings) for each row of ``frame`` (photos must decode)."""
        if isinstance(model, LinearTextModel):
            probabilities = model.predict_proba(listing_texts(frame))
            return Predictions(probabilities, np.zeros(len(frame), np.int64), np.arange(len(frame)), np.zeros((len(frame), 0)))
        trainable, dataset = self.dataset(bundle, kind, model, frame)
        return predict(trainable, dataset, batch_size=self.config.batch_size, device=self.device)

    def dataset(
        self, bundle: Bundle, kind: str, model: nn.Module, frame: pl.DataFrame, *, augment: bool = False
    ) -> tuple[nn.Module, Any]:
        """What ``fit``/``predict`` take for ``model`` over ``frame``: the model (wrapped to start from
        cached frozen features for image kinds, unless the run turns the cache off) and its dataset.
        ``augment``: training transforms for photos read without the cache."""
        labels = bundle.codec.encode(frame["category"]) if frame.height else np.zeros(0, np.int64)
        rows = np.arange(frame.height)
        token_ids = listing_token_ids(frame, bundle.text) if kind in ("text-cnn", "combined-nn") and bundle.text else None
        if kind == "text-cnn":
            assert token_ids is not None
            return model, TextDataset(token_ids, labels, rows)
        assert bundle.image is not None
        image = model.image if isinstance(model, CombinedClassifier) else model
        assert isinstance(image, ImageClassifier)
        photos = self.photo_cache(bundle.image.size)
        positions = photos.rows_for(frame["image_id"])
        if self.feature_cache and any(True for _ in image.frozen.parameters()):
            features = self.features(image, bundle.image)
            assert isinstance(model, ImageClassifier | CombinedClassifier)
            return FromFeatures(model), FeatureDataset(features[positions], labels, rows, token_ids)
        settings = bundle.image
        transform = (train_transform if augment else eval_transform)(settings.size, settings.mean, settings.std)
        if token_ids is None:
            return model, ImageDataset(photos.pixels, labels, rows, transform, positions=positions)
        return model, ProductDataset(photos.pixels, token_ids, labels, rows, transform, positions=positions)

    def fit(self, bundle: Bundle, kind: str, model: nn.Module, *, keep_start: bool = False) -> History:
        """Train ``model`` (a bundle ``kind``) on the training split, early-stopped on validation."""
        train, validation, _ = self.frames(examples(kind), bundle)
        return self._fit(bundle, kind, model, train, validation, self.config, keep_start=keep_start)

    def refit(self, bundle: Bundle, kind: str, model: nn.Module, epochs: int) -> History | None:
        """Train ``model`` afresh on the training and validation splits for the ``epochs`` validation chose
        (none: it stays as it starts); the last epoch's weights are kept."""
        if epochs < 1:
            return None
        train, validation, _ = self.frames(examples(kind), bundle)
        config = attrs.evolve(self.config, epochs=epochs)
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
            keep_last=keep_last, device=self.device, world=self.world,
        )

    @property
    def store(self) -> ValidationStore:
        """Where the models trained on the training split alone keep their validation predictions."""
        return ValidationStore(self.work_dir / f"validation-{self.split_seed}", self.world)

def examples(kind: str) -> str:
    return "products" if kind in ("text-cnn", "text-linear") else "photos"

@attrs.frozen
class ValidationStore:
    """The validation-split probabilities (and, for networks, the weights) of models trained on the
    training split alone. Fusion and the combined network are chosen on these, so that refitting the
    branches on the validation products afterwards does not leak them into the choice."""

    directory: Path
    world: World = World()

    def save(self, kind: str, keys: Sequence[str], probabilities: np.ndarray, model: nn.Module | None = None) -> None:
        """Keep ``kind``'s probabilities for the validation examples ``keys`` (product or photo ids): rank 0 writes
        them while the others wait, so that every rank then reads them."""
        on_main(self.world, lambda: self._write(kind, keys, probabilities, model))

    def _write(self, kind: str, keys: Sequence[str], probabilities: np.ndarray, model: nn.Module | None) -> None:
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
        chosen: np.ndarray = values[[row_of[key] for key in keys]]
        return chosen

    def load_weights(self, kind: str, model: nn.Module) -> nn.Module:
        """``model`` with the weights ``kind`` had when trained on the training split alone."""
        from safetensors.torch import load_file

        path = self.directory / f"{kind}.safetensors"
        if not path.is_file():
            raise FbmlError(f"{self.directory}: no training-split weights of the {kind} model; train it again with the same --work-dir")
        model.load_state_dict(load_file(path))
        return model

def listing_texts(frame: pl.DataFrame) -> list[str]:
    return frame.select(product_text(pl.col("product_name"), pl.col("product_description"))).to_series().to_list()

def listing_token_ids(frame: pl.DataFrame, text: TextSettings) -> np.ndarray:
    return text.vocabulary.encode_texts(listing_texts(frame), text.length)

def scored(probabilities: np.ndarray, labels: np.ndarray, frame: pl.DataFrame, excluded: int) -> Scores:
    product_labels, product_probabilities = per_product(frame["id"].to_list(), labels, probabilities)
    return Scores(
        classification_report(labels, probabilities),
        classification_report(product_labels, product_probabilities),
        excluded,
    )

def known_categories(tables: CleanTables, codec: LabelCodec) -> CleanTables:
    """``tables`` without the products (and photos) whose category the codec does not know."""
    return restricted_tables(tables, pl.col("category").is_in(list(codec.classes)))

