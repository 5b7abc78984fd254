"""Train models into a bundle, choosing on the validation split only and scoring the test split once.

``train_into_bundle`` trains one of the three things ``fbml train`` offers, on the product-level
training split:

* ``text``: the word2vec text CNN and the TF-IDF linear model; the bundle's ``text`` predictor is
  the CNN, the linear model or both (log-linear pooling), whichever scores best on validation
  (cross-validated over validation products), with its weights fitted there;
* ``image``: a classifier on a pretrained backbone whose frozen part's output is computed once per
  photo and cached on disk; the ``image`` predictor is it, temperature-scaled on validation;
* ``combined``: the seed's architecture (both branches to 128, concatenated, one linear layer) and
  late fusion of the models; the ``combined`` predictor is whichever scores best there. It also
  builds the similar-listings index. Text or image models the bundle lacks are trained first.

Once chosen, the models are trained again on the training and validation splits together (the
epochs validation chose; ``refit``), and the test split is scored with them, once, through the
bundle's prediction path (``Bundle.probabilities``), as a caller's or the HTTP API's would be.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import polars as pl
import torch
from contracts.bundle import CombinedOptions, ImageOptions, ModelKind, Role, TextCnnOptions
from torch import nn

from fbml.bundle.bundle import Bundle, BundleModel, Predictor
from fbml.bundle.locks import bundle_writer
from fbml.bundle.store import MANIFEST, load_bundle, save_bundle, sharing_backbones
from fbml.errors import FbmlError
from fbml.files import check_output_folder
from fbml.modeling.backbones import DEFAULT_BACKBONE, backbone
from fbml.modeling.devices import resolve_device, seeded_rng
from fbml.modeling.distributed import World, held_by_main, on_main, process_group, rank_device
from fbml.modeling.ensembles import cross_validated_scores, fit_ensemble
from fbml.modeling.inference import FrozenFeatures
from fbml.modeling.linear_text import LinearTextModel, LinearTextOptions, fit_linear_text
from fbml.modeling.models import (
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
    image_from_options,
    text_cnn_from_options,
)
from fbml.modeling.settings import ImageSettings, TextSettings
from fbml.modeling.subcategories import SubcategoryModel, fit_subcategory_model, subcategory_accuracy
from fbml.modeling.training import History, TrainConfig
from fbml.tables.clean import CleanTables
from fbml.text.labels import label_codec
from fbml.text.listings import listing_texts
from fbml.text.vocabulary import build_vocabulary, tokens
from fbml.text.word2vec import embedding_matrix, train_word2vec
from fbml.vision.cache import check_photo_folder
from fbml.workflows.fitting import FitSettings, Phase, cached_features, fitted, network_probabilities, refitted
from fbml.workflows.inputs import (
    Examples,
    SplitFrames,
    TrainingData,
    frame_listings,
    keys_of,
    split_frames,
    training_data,
    training_photos,
)
from fbml.workflows.profiling import profiled_bundle
from fbml.workflows.scores import Scores, scored
from fbml.workflows.validation_store import ValidationStore


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
        stages = backbone(self.backbone).trainable(self.trainable_stages)
        return ImageOptions(self.backbone, stages, self.embedding_dim, self.dropout)

    def start(self) -> str:
        """The weights the new model starts from."""
        return backbone(self.backbone).default_weights if self.weights is None else self.weights

@attrs.frozen
class TrainRequest:
    """What ``fbml train`` asks for."""

    kind: Role = attrs.field(converter=Role)
    config: TrainConfig = TrainConfig()
    image: ImageRecipe = ImageRecipe()
    text: TextRecipe = TextRecipe()
    split_seed: int = 0
    device: str = "cpu"
    refit: bool = True
    keep_test_split: bool = False

    @property
    def shipped(self) -> Phase:
        """The training whose models the bundle gets: on every product (the default, once the test split is
        scored), on training and validation (``keep_test_split``), or on the training split (no refit)."""
        if not self.refit:
            return Phase.SPLIT
        return Phase.REFIT if self.keep_test_split else Phase.ALL

@attrs.frozen
class TrainResult:
    """What one ``fbml train`` did: per model trained, its history; the test scores of the predictor
    it set and of each model; the seconds it took; the search index summary for ``combined``."""

    kind: Role
    histories: Mapping[str, History]
    test: Scores
    model_tests: Mapping[str, Scores]
    choice: Mapping[str, Any]
    seconds: float
    index: Mapping[str, Any] | None = None

    def summary(self) -> str:
        """What was trained, what was chosen on validation and how it scored on the test split."""
        folds = self.choice.get("validation_folds", {})
        spread = f" +- {folds['std']:.3f} over {folds['folds']} folds" if folds else ""
        lines = [f"{self.kind}: trained {', '.join(self.histories) or 'no network'} in {self.seconds:.0f} s; "
                 f"chose {' + '.join(self.choice['members'])} (validation accuracy per product "
                 f"{self.choice['validation_accuracy']:.3f}{spread}); test scored with models trained on "
                 f"{'train+validation' if self.choice.get('refit') else 'train'}; ships models trained on {self.choice.get('shipped')}"]
        for name, scores in {self.kind: self.test, **self.model_tests}.items():
            lines.append(f"  {name:12} test accuracy {scores.per_example.accuracy:.3f} per example, "
                         f"{scores.per_product.accuracy:.3f} per product; macro-F1 {scores.per_product.macro_f1:.3f}")
        if self.index is not None:
            from fbml.workflows.index import index_summary

            lines.append(f"  {index_summary(self.index)}")
        return "\n".join(lines)

RECIPES = {
    Role.TEXT: TrainConfig(epochs=20, learning_rate=1e-2, weight_decay=1e-2, patience=5, label_smoothing=0.1),
    Role.IMAGE: TrainConfig(epochs=30, learning_rate=1e-3, weight_decay=1e-4, patience=5, label_smoothing=0.1),
    Role.COMBINED: TrainConfig(epochs=10, learning_rate=1e-3, weight_decay=1e-2, patience=3),
}

def train_request(
    kind: Role | str,
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
    keep_test_split: bool = False,
) -> TrainRequest:
    """A request with ``kind``'s recipe, as ``fbml train`` builds it. ``refit``: once chosen on
    validation, the models are trained again on the training and validation splits together, scored on the
    test split, then trained on every product and shipped (``keep_test_split``: the ones that never saw the
    test split ship)."""
    config = attrs.evolve(RECIPES[Role(kind)], seed=seed)
    if epochs:
        config = attrs.evolve(config, epochs=epochs)
    if batch_size:
        config = attrs.evolve(config, batch_size=batch_size)
    image = ImageRecipe(backbone=backbone, size=image_size, weights=weights, trainable_stages=trainable_stages,
                        feature_cache=feature_cache)
    image.options()  # an unknown backbone or a trainable_stages out of range stops here, before any work
    return TrainRequest(kind, config=config, image=image, split_seed=seed, device=device, refit=refit,
                        keep_test_split=keep_test_split)

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
    world: World = World(),
) -> TrainResult:
    """Train ``request.kind`` on the product-level train split and add it to the bundle at ``bundle_dir``.

    The bundle's writer lock is held from before it is read until it is saved: a second training
    into the same bundle is refused at once. Inputs and output folders are checked before any work.

    ``world``: this process among several that call this alike to train in data parallel
    (``fbml.modeling.distributed``; each process on ``rank_device``), inside a process group created here and
    destroyed on return. Every process runs the whole training (the linear model, word2vec and the ensembles
    are deterministic, so each computes the same); rank 0 alone holds the lock, builds the caches, writes the
    checkpoints, logs, validation store and bundle, and the others wait for it where they need its files."""
    started = time.perf_counter()
    if request.kind.reads_photos and (tables.manifest is None or image_dir is None):
        raise FbmlError(f"a {request.kind} model needs an images table and --image-dir")
    if request.kind.reads_photos:
        check_photo_folder(image_dir)
    device = rank_device(resolve_device(request.device), world)
    data = training_data(tables, image_dir, work_dir, split_seed=request.split_seed, world=world, progress=progress and world.is_main)
    settings = FitSettings(request.config, str(device), request.image.feature_cache, logdir, resume)
    with process_group(world, device), held_by_main(world, lambda: bundle_writer(bundle_dir, f"fbml train --model {request.kind}")):
        on_main(world, lambda: _check_output_folders(work_dir, logdir))
        bundle = _starting_bundle(bundle_dir, tables, request.image)
        if request.kind is Role.COMBINED:
            bundle = _with_branches(bundle, bundle_dir, data, settings, request)
        bundle, outcome = TRAINERS[request.kind](bundle, data, settings, request)
        scored_by = tested_models(bundle, data)
        bundle = profiled_bundle(bundle, data, scored_by=scored_by, features=cached_features(scored_by, data, settings))
        on_main(world, lambda: save_bundle(bundle, bundle_dir))
    return attrs.evolve(outcome, seconds=time.perf_counter() - started)


def _check_output_folders(*folders: Path | None) -> None:
    for folder in folders:
        check_output_folder(folder)


def validation_store(data: TrainingData) -> ValidationStore:
    """Where the models trained on the training split alone keep their validation predictions."""
    return ValidationStore(data.work_dir / f"validation-{data.split_seed}", data.world)


def tested_store(data: TrainingData) -> ValidationStore:
    """Where the models the test split was scored with are kept when the bundle ships models trained on every
    product (a later training scores its test split with these, never with models that saw it)."""
    return ValidationStore(data.work_dir / f"tested-{data.split_seed}", data.world)


def _train_text(bundle: Bundle, data: TrainingData, settings: FitSettings, request: TrainRequest) -> tuple[Bundle, TrainResult]:
    """The text CNN, the linear model and the subcategory model; the ``text`` predictor chosen among the first
    two on validation."""
    frames = split_frames(data, Examples.PRODUCTS)
    if bundle.text is None:
        bundle = attrs.evolve(bundle, text=_text_settings(frames.train, request.text, request.config.seed))
    recipe, seed, store = request.text, request.config.seed, validation_store(data)
    cnn = _new_text_cnn(bundle, recipe, seed)
    history = fitted(bundle, ModelKind.TEXT_CNN, cnn, data, settings)
    linear = _linear_model(bundle, Phase.SPLIT.products(frames), recipe.linear, seed)
    keys = frames.validation["id"].to_list()
    store.save(ModelKind.TEXT_CNN, keys, network_probabilities(bundle, ModelKind.TEXT_CNN, cnn, frames.validation, data, settings), cnn)
    store.save(ModelKind.TEXT_LINEAR, keys, linear.predict_proba(listing_texts(frames.validation)))
    store.save_model(ModelKind.TEXT_LINEAR, linear)
    histories = {Phase.SPLIT.run_name(ModelKind.TEXT_CNN): history}
    subcategories = _subcategory_model(bundle, frames, Phase.SPLIT, request, linear)
    if subcategories is not None:
        store.save_subcategories(subcategories)
    tested = Phase.REFIT if request.refit else Phase.SPLIT
    if request.refit:
        cnn = _new_text_cnn(bundle, recipe, seed)
        histories |= _refit_history(ModelKind.TEXT_CNN, refitted(bundle, ModelKind.TEXT_CNN, cnn, data, settings, history.best_epoch),
                                    Phase.REFIT)  # fmt: skip
        linear = _linear_model(bundle, Phase.REFIT.products(frames), recipe.linear, seed)
        subcategories = _subcategory_model(bundle, frames, Phase.REFIT, request, linear, subcategories)
    bundle = _with_text_models(bundle, cnn, linear, subcategories, _report(history, request, tested), request)
    candidates = [(ModelKind.TEXT_CNN,), (ModelKind.TEXT_LINEAR,), (ModelKind.TEXT_CNN, ModelKind.TEXT_LINEAR)]
    bundle, result = _with_chosen(bundle, Role.TEXT, candidates, frames, histories, data, request)
    if request.shipped is not Phase.ALL:
        return bundle, result
    kept = tested_store(data)
    kept.save_model(ModelKind.TEXT_CNN, cnn)
    kept.save_model(ModelKind.TEXT_LINEAR, linear)
    if subcategories is not None:
        kept.save_subcategories(subcategories)
    cnn = _new_text_cnn(bundle, recipe, seed)
    shipped = _refit_history(ModelKind.TEXT_CNN, refitted(bundle, ModelKind.TEXT_CNN, cnn, data, settings, history.best_epoch,
                                                          Phase.ALL), Phase.ALL)  # fmt: skip
    linear = _linear_model(bundle, Phase.ALL.products(frames), recipe.linear, seed)
    subcategories = _subcategory_model(bundle, frames, Phase.ALL, request, linear, subcategories)
    bundle = _with_text_models(bundle, cnn, linear, subcategories, _report(history, request, Phase.ALL), request)
    return bundle, attrs.evolve(result, histories={**result.histories, **shipped})


def _linear_model(bundle: Bundle, products: pl.DataFrame, options: LinearTextOptions, seed: int) -> LinearTextModel:
    return fit_linear_text(listing_texts(products), bundle.codec.encode(products["category"]), bundle.codec.num_classes,
                           options=options, seed=seed)  # fmt: skip


def _with_text_models(bundle: Bundle, cnn: TextClassifier, linear: LinearTextModel, subcategories: SubcategoryModel | None,
                      report: dict[str, Any], request: TrainRequest) -> Bundle:  # fmt: skip
    """``bundle`` with these text models (the linear model's report: its options and what it learned from)."""
    linear_report = {"config": attrs.asdict(request.text.linear), "trained_on": report["trained_on"]}
    bundle = bundle.with_model(BundleModel(ModelKind.TEXT_CNN, cnn, request.text.cnn, report))
    bundle = bundle.with_model(BundleModel(ModelKind.TEXT_LINEAR, linear, None, linear_report))
    return attrs.evolve(bundle, subcategories=subcategories)


def _subcategory_model(bundle: Bundle, frames: SplitFrames, phase: Phase, request: TrainRequest, linear: LinearTextModel,
                       first: SubcategoryModel | None = None) -> SubcategoryModel | None:  # fmt: skip
    """The subcategory model fitted on ``phase``'s products over the n-gram vocabularies of ``linear`` (the text-linear
    model of those products, so that the two share them); on the training split, its accuracy on validation is
    measured and reported (``first``: that model, whose report later fits carry on)."""
    model = fit_subcategory_model(listing_texts(phase.products(frames)), phase.products(frames)["category_path"], bundle.codec,
                                  options=request.text.linear, seed=request.config.seed, like=linear)  # fmt: skip
    if model is None:
        return None
    measured = {"validation_accuracy": subcategory_accuracy(model, frames.validation)} if first is None else {
        "validation_accuracy": first.report.get("validation_accuracy")}
    return attrs.evolve(model, report={**model.report, **measured, "trained_on": phase.trained_on})


def _train_image(bundle: Bundle, data: TrainingData, settings: FitSettings, request: TrainRequest) -> tuple[Bundle, TrainResult]:
    """A classifier on the backbone's cached frozen features; the ``image`` predictor is it, calibrated."""
    recipe, kind = request.image, ModelKind.IMAGE_CNN
    bundle = attrs.evolve(bundle, image=_image_settings(bundle.image, recipe))
    model = _new_image_cnn(bundle, recipe, request.config.seed)
    history = fitted(bundle, kind, model, data, settings)
    frames = split_frames(data, Examples.PHOTOS, training_photos(data, bundle.image_settings().size))
    validation_store(data).save(kind, keys_of(kind, frames.validation),
                                network_probabilities(bundle, kind, model, frames.validation, data, settings), model)  # fmt: skip
    histories = {Phase.SPLIT.run_name(kind): history}
    tested = Phase.REFIT if request.refit else Phase.SPLIT
    if request.refit:
        model = _new_image_cnn(bundle, recipe, request.config.seed)
        histories |= _refit_history(kind, refitted(bundle, kind, model, data, settings, history.best_epoch), Phase.REFIT)
    bundle = bundle.with_model(BundleModel(kind, model, recipe.options(), _report(history, request, tested)))
    bundle, result = _with_chosen(bundle, Role.IMAGE, [(kind,)], frames, histories, data, request, cached_features(bundle, data, settings))
    if request.shipped is not Phase.ALL:
        return bundle, result
    tested_store(data).save_model(kind, model)
    model = _new_image_cnn(bundle, recipe, request.config.seed)
    shipped = _refit_history(kind, refitted(bundle, kind, model, data, settings, history.best_epoch, Phase.ALL), Phase.ALL)
    bundle = bundle.with_model(BundleModel(kind, model, recipe.options(), _report(history, request, Phase.ALL)))
    return bundle, attrs.evolve(result, histories={**result.histories, **shipped})


def _train_combined(bundle: Bundle, data: TrainingData, settings: FitSettings, request: TrainRequest) -> tuple[Bundle, TrainResult]:
    """The seed's combined network and late fusion of the text predictor's models with the image
    model (and with the network too); the ``combined`` predictor is the best of those on validation.

    The network is trained from the branches as the training split alone made them, so its validation
    figures are fair; with refitting, it is then trained again from the branches the test split is scored
    with (trained on training and validation), and, shipping models trained on every product, once more from
    those. The similar-listings index is built last."""
    kind, store = ModelKind.COMBINED_NN, validation_store(data)
    branches = _training_split_branches(bundle, store)
    network, options = _combined_network(branches)
    history = fitted(branches, kind, network, data, settings, keep_start=True)
    frames = split_frames(data, Examples.PHOTOS, training_photos(data, bundle.image_settings().size))
    store.save(kind, keys_of(kind, frames.validation), network_probabilities(bundle, kind, network, frames.validation, data, settings),
               network)  # fmt: skip
    histories = {Phase.SPLIT.run_name(kind): history}
    tested_phase = Phase.REFIT if request.refit else Phase.SPLIT
    tested = tested_models(bundle, data)
    if request.refit:
        network, options = _combined_network(tested)
        histories |= _refit_history(kind, refitted(tested, kind, network, data, settings, history.best_epoch), Phase.REFIT)
    tested = tested.with_model(BundleModel(kind, network, options, _report(history, request, tested_phase)))
    fusion = (*(ModelKind(name) for name in bundle.predictor(Role.TEXT).ensemble.names), ModelKind.IMAGE_CNN)
    candidates = [(kind,), fusion, (*fusion, kind)]
    features = cached_features(tested, data, settings)
    tested, result = _with_chosen(tested, Role.COMBINED, candidates, frames, histories, data, request, features)
    bundle = bundle.with_predictor(Role.COMBINED, tested.predictor(Role.COMBINED)).with_model(tested.models[kind])
    if request.shipped is Phase.ALL:
        tested_store(data).save_model(kind, network)
        network, options = _combined_network(bundle)
        shipped = _refit_history(kind, refitted(bundle, kind, network, data, settings, history.best_epoch, Phase.ALL), Phase.ALL)
        bundle = bundle.with_model(BundleModel(kind, network, options, _report(history, request, Phase.ALL)))
        result = attrs.evolve(result, histories={**result.histories, **shipped})
    from fbml.workflows.index import indexed_bundle

    bundle = indexed_bundle(bundle, data, chosen_with=split_models(bundle, data), tested=tested, features=features)
    return bundle, attrs.evolve(result, index=dict(bundle.search_index().report))


def tested_models(bundle: Bundle, data: TrainingData) -> Bundle:
    """``bundle`` with the models (and subcategory model) the test split was scored with: those the trainings
    kept when they shipped models trained on every product, else the bundle's."""
    return _kept_models(bundle, tested_store(data), Phase.REFIT, lambda trained_on: trained_on == Phase.ALL.trained_on)


def split_models(bundle: Bundle, data: TrainingData) -> Bundle:
    """``bundle`` with its models (and subcategory model) as the training split alone made them, those the
    validation store kept."""
    return _kept_models(bundle, validation_store(data), Phase.SPLIT, lambda trained_on: trained_on != Phase.SPLIT.trained_on)


def _kept_models(bundle: Bundle, store: ValidationStore, phase: Phase, replaced: Callable[[object], bool]) -> Bundle:
    """``bundle`` with each model (and the subcategory model) whose report's ``trained_on`` is ``replaced`` swapped
    for the one ``store`` kept, reported as trained in ``phase``; swapped image and combined networks share their
    frozen backbone (``sharing_backbones``: the same weights, run once per photo)."""
    swapped: dict[ModelKind, BundleModel] = {}
    for kind, entry in bundle.models.items():
        if not replaced(entry.report.get("trained_on")):
            continue
        if isinstance(entry.module, LinearTextModel):
            module: nn.Module | LinearTextModel = store.load_linear(kind)
        else:
            assert isinstance(entry.module, nn.Module)  # training's bundles run on torch
            module = store.load_weights(kind, copy.deepcopy(entry.module))
        swapped[ModelKind(kind)] = attrs.evolve(entry, module=module, report={**entry.report, "trained_on": phase.trained_on})
    subcategories = bundle.subcategories
    if subcategories is not None and replaced(subcategories.report.get("trained_on")):
        subcategories = attrs.evolve(store.load_subcategories(), report={**subcategories.report, "trained_on": phase.trained_on})
    return attrs.evolve(bundle, models={**bundle.models, **sharing_backbones(swapped)}, subcategories=subcategories)


def _new_text_cnn(bundle: Bundle, recipe: TextRecipe, seed: int) -> TextClassifier:
    assert bundle.text is not None
    embeddings = embedding_matrix(bundle.text.word_vectors, bundle.text.vocabulary, seed=seed)
    with seeded_rng(torch.device("cpu"), seed):
        return text_cnn_from_options(recipe.cnn, embeddings, bundle.codec.num_classes)


def _new_image_cnn(bundle: Bundle, recipe: ImageRecipe, seed: int) -> ImageClassifier:
    with seeded_rng(torch.device("cpu"), seed):
        return image_from_options(recipe.options(), bundle.codec.num_classes, weights=recipe.start())


def _refit_history(kind: ModelKind, history: History | None, phase: Phase) -> dict[str, History]:
    return {} if history is None else {phase.run_name(kind): history}


def _training_split_branches(bundle: Bundle, store: ValidationStore) -> Bundle:
    """``bundle`` with its image and text CNNs as the training split alone made them."""
    branches = {kind: copy.deepcopy(bundle.models[kind]) for kind in (ModelKind.IMAGE_CNN, ModelKind.TEXT_CNN)}
    for kind, entry in branches.items():
        assert isinstance(entry.module, nn.Module)
        store.load_weights(kind, entry.module)
    return attrs.evolve(bundle, models={**bundle.models, **branches})


TRAINERS = {Role.TEXT: _train_text, Role.IMAGE: _train_image, Role.COMBINED: _train_combined}


def _with_branches(bundle: Bundle, bundle_dir: Path, data: TrainingData, settings: FitSettings, request: TrainRequest) -> Bundle:
    """The bundle with text and image predictors, training (and saving) the missing ones first."""
    for kind in (Role.TEXT, Role.IMAGE):
        if kind not in bundle.predictors:
            if data.progress:
                print(f"the combined model needs a trained {kind} model: training it first", flush=True)
            branch = _branch_request(request, kind)
            bundle, _ = TRAINERS[kind](bundle, data, attrs.evolve(settings, config=branch.config), branch)
            on_main(data.world, functools.partial(save_bundle, bundle, bundle_dir))
    return bundle


def _branch_request(request: TrainRequest, kind: Role) -> TrainRequest:
    config = attrs.evolve(RECIPES[kind], seed=request.config.seed, batch_size=request.config.batch_size)
    return attrs.evolve(request, kind=kind, config=config)


def _with_chosen(
    bundle: Bundle,
    role: Role,
    candidates: Sequence[tuple[ModelKind, ...]],
    frames: SplitFrames,
    histories: Mapping[str, History],
    data: TrainingData,
    request: TrainRequest,
    features: FrozenFeatures | None = None,
) -> tuple[Bundle, TrainResult]:
    """The bundle with ``role``'s predictor chosen on validation, with the validation predictions of the models
    trained on the training split alone: each candidate ensemble (members, with or without a class bias) is
    scored by per-product accuracy on 20 held-out folds of validation products (grouped by product, stratified
    by category); the simplest candidate (fewest members, then no bias) that the best does not beat by more
    than the folds' noise (``FoldScores.falls_short_of``) is chosen, so a member that does not earn its place
    across folds is dropped; it is fitted on all of validation, then the test split is scored once, through the
    bundle's prediction path with the bundle's models (their image branches starting from the cached frozen
    ``features`` when given)."""
    validation, test = frames.validation, frames.test
    names = sorted({name for members in candidates for name in members})
    store = validation_store(data)
    validated = {name: store.probabilities(name, keys_of(name, validation)) for name in names}
    labels = {"validation": bundle.codec.encode(validation["category"]), "test": bundle.codec.encode(test["category"])}
    products = validation["id"].to_list()
    choices = [(members, bias) for members in candidates for bias in (False, True)]
    tried = {
        choice: cross_validated_scores({name: validated[name] for name in choice[0]}, labels["validation"], products,
                                       seed=request.config.seed, fit_bias=choice[1])
        for choice in choices
    }
    best = max(choices, key=lambda choice: (tried[choice].mean, -len(choice[0]), not choice[1]))
    simplest = sorted(choices, key=lambda choice: (len(choice[0]), choice[1]))
    members, bias = next(choice for choice in simplest if not tried[choice].falls_short_of(tried[best]))
    ensemble = fit_ensemble({name: validated[name] for name in members}, labels["validation"], fit_bias=bias)
    choice = {"members": list(members), "bias": bias, "validation_accuracy": tried[(members, bias)].mean,
              "validation_folds": tried[(members, bias)].to_json(), "best_on_validation": _candidate_name(*best),
              "candidates": {_candidate_name(*option): scores.to_json() for option, scores in tried.items()},
              "weights": dict(ensemble.members), "refit": request.refit, "shipped": request.shipped.trained_on}
    bundle = bundle.with_predictor(role, Predictor(ensemble))
    photos = training_photos(data, bundle.image_settings().size) if role.reads_photos else None
    texts, images = frame_listings(test, photos, features)
    tested = bundle.probabilities([role, *names], texts=texts, images=images, progress=data.progress)
    test_scores = scored(tested[role], labels["test"], test, 0)
    model_tests = {str(name): scored(tested[name], labels["test"], test, 0) for name in names}
    tested_by = {"test_scored_with": (Phase.REFIT if request.refit else Phase.SPLIT).trained_on}
    bundle = bundle.with_predictor(role, Predictor(ensemble, {"choice": choice, "test": test_scores.to_json(), **tested_by}))
    return bundle, TrainResult(role, histories, test_scores, model_tests, choice, 0.0)


def _candidate_name(members: Sequence[ModelKind], bias: bool) -> str:
    return " + ".join(members) + (" + bias" if bias else "")


def _combined_network(bundle: Bundle) -> tuple[CombinedClassifier, CombinedOptions]:
    """The seed's combined model from the trained branches: the image branch's frozen backbone shared with
    the image model (frozen stages never train), the rest copied; the text branch frozen (trained already;
    tuning it again on photo rows only over-fits it), the output layer starting as the text model's with
    the photo's weights at zero, so it starts scoring exactly as the text CNN."""
    image, text = bundle.models[ModelKind.IMAGE_CNN], bundle.models[ModelKind.TEXT_CNN]
    assert isinstance(image.options, ImageOptions) and isinstance(text.options, TextCnnOptions)
    image_model = bundle.model(ModelKind.IMAGE_CNN)
    assert isinstance(image_model, ImageClassifier)
    image_branch = copy.deepcopy(image_model)
    image_branch.frozen = image_model.frozen
    text_branch = copy.deepcopy(bundle.model(ModelKind.TEXT_CNN))
    assert isinstance(text_branch, TextClassifier)
    text_branch.requires_grad_(False)
    network = combined_model(image_branch, text_branch, bundle.codec.num_classes, from_branch_heads=True, image_weight=0.0)
    return network, CombinedOptions(image.options, text.options)


def _report(history: History, request: TrainRequest, phase: Phase) -> dict[str, Any]:
    """A network's report: its training split's history (the epochs every later training ran), the request,
    and which splits the weights it ships were trained on."""
    return {"history": history.to_json(), "config": attrs.asdict(request, value_serializer=_serialisable),
            "trained_on": phase.trained_on}


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
    token_lists = pl.DataFrame({"text": listing_texts(train)}).select(tokens(pl.col("text"))).to_series()
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
