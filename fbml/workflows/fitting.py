"""Training's steps as functions of ``TrainingData``: a network's training set, its fit on the training split
(early-stopped on validation), its refit on training and validation, and its validation predictions.

Image networks start from the frozen backbone's output, computed once per photo and cached on disk
(``fbml.modeling.features``), unless ``FitSettings.feature_cache`` is off or nothing is frozen.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import polars as pl
from contracts.bundle import ModelKind
from torch import nn

from fbml.bundle.bundle import Bundle
from fbml.errors import FbmlError
from fbml.modeling.datasets import ImageDataset, ProductDataset, TextDataset, eval_transform, train_transform
from fbml.modeling.distributed import main_first
from fbml.modeling.features import FeatureDataset, FromFeatures, feature_cache, stored_features
from fbml.modeling.inference import FrozenFeatures
from fbml.modeling.models import CombinedClassifier, ImageClassifier, weights_digest
from fbml.modeling.settings import ImageSettings
from fbml.modeling.training import History, TrainConfig, TrainData, fit, predict
from fbml.text.listings import listing_texts
from fbml.vision.cache import ImageCache
from fbml.workflows.inputs import Examples, SplitFrames, TrainingData, labels_of, split_frames, training_photos


class Phase(enum.Enum):
    """Which training of a model: on the training split (choices are made on its validation figures), the
    refit on the training and validation splits for the epochs validation chose (the test split is scored
    with it), or the same on every product, test split included (what ships by default)."""

    SPLIT = "split"
    REFIT = "refit"
    ALL = "all"

    def run_name(self, kind: ModelKind) -> str:
        """The name of this training's checkpoints and TensorBoard run."""
        return str(kind) if self is Phase.SPLIT else f"{kind}-{self.value}"

    @property
    def trained_on(self) -> str:
        """The splits this training learns from, as reports say it."""
        return {Phase.SPLIT: "train", Phase.REFIT: "train+validation", Phase.ALL: "train+validation+test"}[self]

    def products(self, frames: SplitFrames) -> pl.DataFrame:
        """The rows of ``frames`` this training learns from."""
        parts = {Phase.SPLIT: [frames.train], Phase.REFIT: [frames.train, frames.validation],
                 Phase.ALL: [frames.train, frames.validation, frames.test]}[self]
        return pl.concat(parts)


@attrs.frozen
class FitSettings:
    """How networks are trained: the recipe, the device, the feature cache, the TensorBoard folder, resuming."""

    config: TrainConfig
    device: str = "cpu"
    feature_cache: bool = True
    logdir: Path | None = None
    resume: bool = False


def fitted(bundle: Bundle, kind: ModelKind, model: nn.Module, data: TrainingData, settings: FitSettings, *,
           keep_start: bool = False) -> History:  # fmt: skip
    """``model`` (a bundle ``kind``) trained on the training split, early-stopped on validation."""
    frames = split_frames(data, Examples.of(kind), _photos(bundle, kind, data))
    return _fit(bundle, kind, model, (frames.train, frames.validation), data, settings, Phase.SPLIT, keep_start=keep_start)


def refitted(bundle: Bundle, kind: ModelKind, model: nn.Module, data: TrainingData, settings: FitSettings, epochs: int,
             phase: Phase = Phase.REFIT) -> History | None:  # fmt: skip
    """``model`` trained afresh on ``phase``'s splits (training and validation, or every product) for the
    ``epochs`` validation chose (none: it stays as it starts); the last epoch's weights are kept."""
    if epochs < 1:
        return None
    frames = split_frames(data, Examples.of(kind), _photos(bundle, kind, data))
    refit = attrs.evolve(settings, config=attrs.evolve(settings.config, epochs=epochs))
    return _fit(bundle, kind, model, (phase.products(frames), frames.validation), data, refit, phase, keep_last=True)


def network_probabilities(bundle: Bundle, kind: ModelKind, model: nn.Module, frame: pl.DataFrame, data: TrainingData,
                          settings: FitSettings) -> np.ndarray:  # fmt: skip
    """A network's probabilities of ``frame``'s rows as training computes them (from the cached frozen features):
    what the validation store keeps of a network being trained."""
    trainable, dataset = training_set(bundle, kind, model, frame, data, settings)
    return predict(trainable, dataset, batch_size=settings.config.batch_size, device=settings.device).probabilities


def training_set(bundle: Bundle, kind: ModelKind, model: nn.Module, frame: pl.DataFrame, data: TrainingData,
                 settings: FitSettings, *, augment: bool = False) -> tuple[nn.Module, Any]:  # fmt: skip
    """What ``fit``/``predict`` take for ``model`` over ``frame``: the model (wrapped to start from cached
    frozen features for image networks, unless the settings turn the cache off) and its dataset.
    ``augment``: training transforms for photos read without the cache."""
    labels, rows = labels_of(frame, bundle.codec), np.arange(frame.height)
    token_ids = None
    if kind.reads_text:
        if bundle.text is None:
            raise FbmlError(f"the {kind} model needs text settings")
        token_ids = bundle.text.vocabulary.encode_texts(listing_texts(frame), bundle.text.length)
    if not kind.reads_photos:
        assert token_ids is not None
        return model, TextDataset(token_ids, labels, rows)
    image_settings = bundle.image_settings()
    image = model.image if isinstance(model, CombinedClassifier) else model
    assert isinstance(image, ImageClassifier) and isinstance(model, ImageClassifier | CombinedClassifier)
    photos = training_photos(data, image_settings.size)
    positions = photos.rows_for(frame["image_id"])
    if settings.feature_cache and freezes_stages(image):
        features = backbone_features(image, image_settings, photos, data)
        return FromFeatures(model), FeatureDataset(features[positions], labels, rows, token_ids)
    transform = (train_transform if augment else eval_transform)(image_settings.size, image_settings.mean, image_settings.std)
    if token_ids is None:
        return model, ImageDataset(photos.pixels, labels, rows, transform, positions=positions)
    return model, ProductDataset(photos.pixels, token_ids, labels, rows, transform, positions=positions)


def backbone_features(model: ImageClassifier, settings: ImageSettings, photos: ImageCache, data: TrainingData) -> np.ndarray:
    """The frozen backbone's output for every cached photo (a disk cache shared by every training of the same
    backbone and photos; computed by rank 0, the others then memory-map it)."""
    return main_first(data.world, lambda: feature_cache(model, photos, (settings.mean, settings.std), data.work_dir,
                                                        progress=data.progress))


def cached_features(bundle: Bundle, data: TrainingData, settings: FitSettings) -> FrozenFeatures | None:
    """The frozen features of every training photo as the image trainings cached them for the bundle's image model
    (its frozen stages' weights and photo preparation named with them), for the prediction path to start from;
    None when the cache is off, the model freezes nothing or no training of this work folder computed them (they
    are never computed for this alone: that costs what the networks would)."""
    entry = bundle.models.get(ModelKind.IMAGE_CNN)
    if entry is None or not settings.feature_cache:
        return None
    model = entry.module
    if not isinstance(model, ImageClassifier) or not freezes_stages(model):
        return None
    image_settings = bundle.image_settings()
    photos = training_photos(data, image_settings.size)
    values = stored_features(model, photos, (image_settings.mean, image_settings.std), data.work_dir)
    return None if values is None else FrozenFeatures(weights_digest(model.frozen), image_settings.preparation, values)


def freezes_stages(model: ImageClassifier) -> bool:
    """Whether ``model`` has frozen stages (whose output a feature cache holds)."""
    return any(True for _ in model.frozen.parameters())


def _photos(bundle: Bundle, kind: ModelKind, data: TrainingData) -> ImageCache | None:
    return training_photos(data, bundle.image_settings().size) if kind.reads_photos else None


def _fit(bundle: Bundle, kind: ModelKind, model: nn.Module, frames: tuple[pl.DataFrame, pl.DataFrame], data: TrainingData,
         settings: FitSettings, phase: Phase, *, keep_start: bool = False, keep_last: bool = False) -> History:  # fmt: skip
    train, validation = frames
    trainable, train_data = training_set(bundle, kind, model, train, data, settings, augment=True)
    _, validation_data = training_set(bundle, kind, model, validation, data, settings)
    name = phase.run_name(kind)
    return fit(
        trainable, TrainData(train_data, validation_data), settings.config,
        checkpoint_dir=data.work_dir / "checkpoints" / name, logdir=None if settings.logdir is None else settings.logdir / name,
        resume=settings.resume, class_names=bundle.codec.classes, progress=data.progress, keep_start=keep_start,
        keep_last=keep_last, device=settings.device, world=data.world,
    )
