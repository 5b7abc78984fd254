"""The training loop: it learns, is deterministic, keeps the best epoch, validates cleanly, stops early,
resumes after a kill, and logs TensorBoard curves and the confusion matrix; it draws every random number from
its own generators, for fbml's text, image (cached or augmented) and combined models alike.

Everything runs on tiny synthetic problems over ``FeatureDataset`` (features -> labels), in seconds.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fbml.errors import FbmlError
from fbml.modeling import training
from fbml.modeling.datasets import ImageDataset, ProductDataset, TextDataset, eval_transform, train_transform
from fbml.modeling.features import FeatureDataset, FromFeatures
from fbml.modeling.models import ModelOutput, combined_model, image_model, text_model
from fbml.modeling.randomness import Dropout
from fbml.modeling.training import BEST_WEIGHTS, CHECKPOINT, History, TrainConfig, TrainData, fit, predict
from torch import Tensor, nn

REPOSITORY = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- synthetic problems ------------------------------------------------------------------------------


def blobs(count: int, seed: int, classes: int = 4, dim: int = 8, marker: float = 0.0) -> FeatureDataset:
    """Gaussian blobs around fixed class centres; feature 0 is ``marker`` (tells train from validation)."""
    centres = np.random.default_rng(1234).normal(0.0, 2.0, (classes, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    features = centres[labels] + rng.normal(0.0, 1.0, (count, dim)).astype(np.float32)
    features[:, 0] = marker
    return FeatureDataset(features.astype(np.float32), labels, np.arange(count))


def blob_data(train: int = 160, validation: int = 80) -> TrainData:
    return TrainData(blobs(train, seed=1), blobs(validation, seed=2, marker=1.0))


class Mlp(nn.Module):
    """features -> (dropout, batch norm) -> embedding -> logits."""

    def __init__(self, dim: int = 8, classes: int = 4, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), Dropout(0.2))
        self.classify = nn.Linear(hidden, classes)

    def forward(self, features: Tensor) -> ModelOutput:
        embedding = self.embed(features)
        return ModelOutput(self.classify(embedding), embedding)


def new_mlp(seed: int = 0) -> Mlp:
    torch.manual_seed(seed)
    return Mlp()


def weights_of(model: nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def assert_same_weights(left: dict[str, Tensor], right: dict[str, Tensor]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


class Threshold(nn.Module):
    """logits ``[0, x + b]`` with one parameter ``b``: trained on class-1 examples at ``x = 0``, ``b``
    rises a little every epoch (Adam: about ``learning_rate`` per step)."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, features: Tensor) -> ModelOutput:
        score = features[:, 0] + self.b
        return ModelOutput(torch.stack([torch.zeros_like(score), score], dim=1), features)


def peaked_data() -> TrainData:
    """Validation accuracy as a function of ``b``: 2/3 below 0.25, 1 between 0.25 and 0.35, 1/3 above.

    With ``b`` about 0.1 per epoch the accuracies run 2/3, 2/3, 1, 1/3, 1/3, ...: best epoch 3.
    """
    train = FeatureDataset(np.zeros((8, 1), np.float32), np.ones(8), np.arange(8))
    validation = FeatureDataset(np.array([[-0.25], [-0.35], [-0.35]], np.float32), np.array([1, 0, 0]), np.arange(3))
    return TrainData(train, validation)


PEAKED = TrainConfig(epochs=8, batch_size=8, learning_rate=0.1, weight_decay=0.0, schedule="constant", patience=3)


# --- learning and determinism ------------------------------------------------------------------------


def test_fit_learns_a_learnable_problem() -> None:
    data = blob_data()
    model = new_mlp()
    history = fit(model, data, TrainConfig(epochs=8, batch_size=32, learning_rate=1e-2), progress=False)
    assert isinstance(history, History)
    assert [metrics.epoch for metrics in history.epochs] == list(range(1, len(history.epochs) + 1))
    assert history.best.validation_accuracy >= 0.85  # chance is 0.25
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss
    predictions = predict(model, data.validation)
    assert predictions.probabilities.shape == (80, 4)
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert predictions.embeddings.shape == (80, 16)
    np.testing.assert_array_equal(predictions.rows, np.arange(80))
    accuracy = float((predictions.probabilities.argmax(axis=1) == predictions.labels).mean())
    assert accuracy == pytest.approx(history.best.validation_accuracy)


def test_fit_is_deterministic_for_a_seed() -> None:
    data = blob_data(train=96, validation=32)
    config = TrainConfig(epochs=3, batch_size=16, learning_rate=1e-2, seed=7)
    first, second, other_seed = new_mlp(), new_mlp(), new_mlp()
    history_first = fit(first, data, config, progress=False)
    history_second = fit(second, data, config, progress=False)
    assert_same_weights(weights_of(first), weights_of(second))
    strip = [{**attrs_dict, "seconds": 0} for attrs_dict in history_first.to_json()["epochs"]]
    assert strip == [{**attrs_dict, "seconds": 0} for attrs_dict in history_second.to_json()["epochs"]]
    # the seed matters (shuffling and dropout), so the equality above is not vacuous
    fit(other_seed, data, TrainConfig(epochs=3, batch_size=16, learning_rate=1e-2, seed=8), progress=False)
    assert any(not torch.equal(value, weights_of(other_seed)[name]) for name, value in weights_of(first).items())


def test_model_ends_with_the_best_epochs_weights(tmp_path: Path) -> None:
    model = Threshold()
    history = fit(model, peaked_data(), PEAKED, checkpoint_dir=tmp_path, progress=False)
    accuracies = [round(metrics.validation_accuracy, 3) for metrics in history.epochs]
    assert accuracies[:4] == [0.667, 0.667, 1.0, 0.333]  # the data makes epoch 3 the best one
    assert history.best_epoch == 3
    assert 0.25 < model.b.item() < 0.35
    # re-predicting gives the best epoch's figures, not the last epoch's
    predictions = predict(model, peaked_data().validation)
    assert float((predictions.probabilities.argmax(axis=1) == predictions.labels).mean()) == 1.0
    best = torch.load(tmp_path / BEST_WEIGHTS, weights_only=True)
    assert_same_weights(weights_of(model), best)
    last = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert float(last["model"]["b"]) > 0.35  # the checkpoint holds the last epoch, not the best


@pytest.mark.parametrize(("patience", "epochs"), [(1, 2), (2, 5), (3, 6), (8, 8)])
def test_early_stopping_with_patience(patience: int, epochs: int) -> None:
    """Accuracies 2/3, 2/3, 1, 1/3, ...: ``patience`` epochs without improvement stop the run."""
    import attrs

    history = fit(Threshold(), peaked_data(), attrs.evolve(PEAKED, patience=patience), progress=False)
    assert len(history.epochs) == epochs
    assert history.stopped_early == (epochs < PEAKED.epochs)
    assert history.best_epoch == (1 if patience == 1 else 3)


def test_best_epoch_ties_go_to_the_earliest() -> None:
    """Epochs 1 and 2 both score 2/3: stopped after 2, the best is the first (whose weights it keeps)."""
    import attrs

    model = Threshold()
    history = fit(model, peaked_data(), attrs.evolve(PEAKED, epochs=2), progress=False)
    assert history.epochs[0].validation_accuracy == history.epochs[1].validation_accuracy
    assert history.best_epoch == 1
    assert 0.0 < model.b.item() < 0.15  # epoch 1's b, not epoch 2's


def rng_states() -> tuple[Tensor, tuple, object]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def assert_same_rng_states(left: tuple[Tensor, tuple, object], right: tuple[Tensor, tuple, object]) -> None:
    assert torch.equal(left[0], right[0]), "torch's global RNG changed"
    assert left[1][0] == right[1][0] and np.array_equal(left[1][1], right[1][1]) and left[1][2:] == right[1][2:], \
        "NumPy's global RNG changed"
    assert left[2] == right[2], "Python's global RNG changed"


def test_fit_leaves_the_callers_random_state_alone() -> None:
    """``fit`` trains on its own seeded generators: the global states are the same after, and what the caller drew
    before does not change the result."""
    data = blob_data(train=96, validation=32)
    config = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-2, seed=5)
    first, second = new_mlp(), new_mlp()
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    before = rng_states()
    fit(first, data, config, progress=False)
    predict(first, data.validation)
    assert_same_rng_states(before, rng_states())
    torch.rand(1000), np.random.rand(10), random.random()  # a caller that drew from every global RNG meanwhile
    fit(second, data, config, progress=False)
    assert_same_weights(weights_of(first), weights_of(second))


def test_workers_change_nothing_but_the_speed() -> None:
    """The same run with two (persistent) loader workers: the order is drawn in the main process, so the weights match."""
    import attrs

    data = blob_data(train=96, validation=32)
    config = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-2, seed=3)
    alone, with_workers = new_mlp(), new_mlp()
    fit(alone, data, config, progress=False)
    fit(with_workers, data, attrs.evolve(config, num_workers=2), progress=False)
    assert_same_weights(weights_of(alone), weights_of(with_workers))


# --- fbml's models: every random draw from fit's own generators -------------------------------------------------

CLASSES = 3
PHOTO = 32
WORDS = 30
KINDS = ["text", "image-cached", "image-plain", "image-augmented", "combined-cached", "combined-plain",
         "combined-augmented"]
"""Model and data: the text CNN; the image model and the combined one on cached features, or on photos through
the evaluation transform (plain) or the training one (augmented)."""
MODEL_CONFIG = TrainConfig(epochs=2, batch_size=8, learning_rate=1e-2, patience=5)
Case = Callable[[], tuple[nn.Module, TrainData]]


def examples(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random photos (uint8), token ids (no padding), labels and rows."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (count, 3, PHOTO, PHOTO), dtype=np.uint8)
    return pixels, rng.integers(1, WORDS, (count, 8)), rng.integers(0, CLASSES, count), np.arange(count)


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    """Each kind's model (built once: EfficientNet-Lite0 without weights, frozen but for its head, and a small text
    CNN, dropout and word dropout on) and data, a fresh copy of the model per call."""
    torch.manual_seed(0)
    image = image_model(CLASSES, weights="none", trainable_stages=0, embedding_dim=8)
    text = text_model(np.random.default_rng(0).normal(size=(WORDS, 6)).astype(np.float32), CLASSES, embedding_dim=8,
                      channels=4)
    combined = combined_model(copy.deepcopy(image), copy.deepcopy(text), CLASSES)
    splits = {"train": examples(24, seed=1), "validation": examples(9, seed=2)}
    with torch.inference_mode():
        features = {name: image.eval().frozen_features(eval_transform(PHOTO)(torch.from_numpy(split[0]))).numpy()
                    for name, split in splits.items()}

    def dataset(kind: str, split: str) -> training.BatchedDataset:
        pixels, tokens, labels, rows = splits[split]
        feed = kind.partition("-")[2]
        transform = (train_transform if feed == "augmented" and split == "train" else eval_transform)(PHOTO)
        if kind == "text":
            return TextDataset(tokens, labels, rows)
        if feed == "cached":
            return FeatureDataset(features[split], labels, rows, tokens if kind.startswith("combined") else None)
        if kind.startswith("image"):
            return ImageDataset(pixels, labels, rows, transform)
        return ProductDataset(pixels, tokens, labels, rows, transform)

    def case(kind: str) -> Case:
        def fresh() -> tuple[nn.Module, TrainData]:
            model: nn.Module = copy.deepcopy({"text": text, "image": image, "combined": combined}[kind.partition("-")[0]])
            if kind.endswith("cached"):
                model = FromFeatures(model)
            return model, TrainData(dataset(kind, "train"), dataset(kind, "validation"))

        return fresh

    return {kind: case(kind) for kind in KINDS}


def fitted_weights(case: Case, seed: int, **config) -> dict[str, Tensor]:
    """The weights a fresh copy of ``case``'s model ends with (``MODEL_CONFIG`` with ``seed`` and ``config``)."""
    import attrs

    model, data = case()
    fit(model, data, attrs.evolve(MODEL_CONFIG, seed=seed, **config), progress=False)
    return weights_of(model)


def global_states() -> list[Tensor]:
    """torch's global generator states: the CPU's and, where there is CUDA, every device's."""
    return [torch.random.get_rng_state(), *(torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])]


def forbid_global_seeding(patch: pytest.MonkeyPatch) -> None:
    """torch's functions that read, fork or reseed its global generators raise (while ``patch`` lasts)."""
    def forbidden(name: str) -> Callable[..., None]:
        def call(*_args, **_kwargs) -> None:
            raise AssertionError(f"fit called {name}")

        return call

    for module, names in ((torch, ("manual_seed", "seed", "get_rng_state", "set_rng_state")),
                          (torch.random, ("manual_seed", "seed", "get_rng_state", "set_rng_state", "fork_rng")),
                          (torch.cuda, ("manual_seed", "manual_seed_all", "get_rng_state", "set_rng_state",
                                        "get_rng_state_all", "set_rng_state_all"))):
        for name in names:
            patch.setattr(module, name, forbidden(f"{module.__name__}.{name}"))


@pytest.mark.parametrize("kind", KINDS)
def test_fit_never_reads_or_reseeds_torchs_global_generators(cases: dict[str, Case], kind: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Training, checkpointing and resuming draw from fit's own generators: torch's global ones are never forked,
    reseeded or read, and are where they were after."""
    import attrs

    torch.manual_seed(11)
    before = global_states()
    with monkeypatch.context() as patch:
        forbid_global_seeding(patch)
        model, data = cases[kind]()
        fit(model, data, attrs.evolve(MODEL_CONFIG, epochs=1), checkpoint_dir=tmp_path, progress=False)
        fit(model, data, MODEL_CONFIG, checkpoint_dir=tmp_path, resume=True, progress=False)
    after = global_states()
    assert all(torch.equal(left, right) for left, right in zip(before, after, strict=True)), "a global generator moved"


def disturbing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draw from torch's global generators before every batch moves to the device (as another thread might)."""
    move = training.to_device

    def drawing_then_moving(batch, device):
        torch.rand(7)
        if torch.cuda.is_available():
            torch.rand(7, device="cuda")
        return move(batch, device)

    monkeypatch.setattr(training, "to_device", drawing_then_moving)


@pytest.mark.parametrize("kind", KINDS)
def test_draws_from_torchs_global_generators_meanwhile_change_nothing(cases: dict[str, Case], kind: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout, word dropout and augmentation come from fit's generators: draws from torch's global generators
    between batches leave the weights as they were."""
    undisturbed = fitted_weights(cases[kind], seed=5)
    disturbing(monkeypatch)
    assert_same_weights(fitted_weights(cases[kind], seed=5), undisturbed)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_of_every_model_kind_is_reproducible_for_a_seed(cases: dict[str, Case], kind: str) -> None:
    """The same seed, the same weights; another seed (its shuffles, dropout and augmentation), others."""
    first = fitted_weights(cases[kind], seed=5)
    assert_same_weights(fitted_weights(cases[kind], seed=5), first)
    other = fitted_weights(cases[kind], seed=6)
    assert any(not torch.equal(value, other[name]) for name, value in first.items()), "the seed changed nothing"


def test_another_thread_drawing_meanwhile_changes_nothing(cases: dict[str, Case]) -> None:
    """A thread drawing from torch's global generator all through ``fit`` (a host service's other work)."""
    undisturbed = fitted_weights(cases["combined-augmented"], seed=5)
    done = threading.Event()
    draws = [0]

    def draw() -> None:
        while not done.is_set():
            torch.rand(16)
            draws[0] += 1

    thread = threading.Thread(target=draw)
    thread.start()
    try:
        disturbed = fitted_weights(cases["combined-augmented"], seed=5)
    finally:
        done.set()
        thread.join()
    assert draws[0] > 100
    assert_same_weights(disturbed, undisturbed)


def test_loader_workers_augment_reproducibly(cases: dict[str, Case]) -> None:
    """With two loader workers, each augmenting from a generator of its own seed (drawn from the run's seed), a
    second run ends with the same weights."""
    case = cases["image-augmented"]
    assert_same_weights(fitted_weights(case, seed=5, num_workers=2), fitted_weights(case, seed=5, num_workers=2))


def test_validation_loss_is_the_training_loss() -> None:
    """With label smoothing the validation loss is the smoothed cross-entropy of the logits (as in
    training), not the plain negative log-likelihood."""
    data = blob_data(train=96, validation=40)
    model = new_mlp()
    history = fit(model, data, TrainConfig(epochs=2, batch_size=16, label_smoothing=0.2), progress=False)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.validation.features)).logits
    labels = torch.from_numpy(data.validation.labels)
    smoothed = nn.CrossEntropyLoss(label_smoothing=0.2)(logits, labels).item()
    plain = nn.functional.cross_entropy(logits, labels).item()
    assert history.best.validation_loss == pytest.approx(smoothed, rel=1e-5)
    assert abs(history.best.validation_loss - plain) > 0.01


def test_fit_refuses_a_device_the_machine_lacks() -> None:
    with pytest.raises(FbmlError, match="device gpu is not a device"):
        fit(new_mlp(), blob_data(train=32, validation=16), TrainConfig(epochs=1), device="gpu", progress=False)


# --- keep_start: a model started from trained parts -------------------------------------------------


def test_keep_start_keeps_the_starting_weights_when_no_epoch_beats_them(tmp_path: Path) -> None:
    """Started at b = 0.3 (validation accuracy 1), training pushes b up and accuracy down."""
    import attrs

    model = Threshold()
    with torch.no_grad():
        model.b.fill_(0.3)
    history = fit(model, peaked_data(), attrs.evolve(PEAKED, patience=2), checkpoint_dir=tmp_path,
                  keep_start=True, progress=False)
    assert history.start is not None and history.start.validation_accuracy == 1.0
    assert history.best_epoch == 0 and history.best == history.start
    assert len(history.epochs) == 2 and all(metrics.validation_accuracy < 1.0 for metrics in history.epochs)
    assert model.b.item() == pytest.approx(0.3)
    assert float(torch.load(tmp_path / BEST_WEIGHTS, weights_only=True)["b"]) == pytest.approx(0.3)


def test_keep_start_yields_to_an_epoch_that_beats_the_start() -> None:
    history = fit(Threshold(), peaked_data(), PEAKED, keep_start=True, progress=False)
    assert history.start is not None and history.start.validation_accuracy == pytest.approx(2 / 3)
    assert history.best_epoch == 3


def test_resume_remembers_the_start(tmp_path: Path) -> None:
    import attrs

    model = Threshold()
    with torch.no_grad():
        model.b.fill_(0.3)
    fit(model, peaked_data(), attrs.evolve(PEAKED, epochs=1), checkpoint_dir=tmp_path, keep_start=True, progress=False)
    resumed = fit(Threshold(), peaked_data(), attrs.evolve(PEAKED, patience=2), checkpoint_dir=tmp_path,
                  resume=True, keep_start=True, progress=False)
    assert resumed.start is not None and resumed.start.validation_accuracy == 1.0
    assert resumed.best_epoch == 0 and len(resumed.epochs) == 2


# --- validation: eval mode, inference mode, no optimiser steps ---------------------------------------


class Recorder(Mlp):
    """An Mlp that records, per forward call, whether it saw validation data (feature 0 is 1) and the modes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, bool]] = []

    def forward(self, features: Tensor) -> ModelOutput:
        self.calls.append(
            {
                "validation": bool((features[:, 0] == 1.0).all()),
                "training": self.training,
                "inference_mode": torch.is_inference_mode_enabled(),
                "grad": torch.is_grad_enabled(),
            }
        )
        return super().forward(features)


def test_validation_runs_in_eval_and_inference_mode_and_never_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = Recorder()
    steps: list[dict[str, bool]] = []
    make_optimizer = training._optimizer

    def counting_optimizer(parameters, config):
        optimizer = make_optimizer(parameters, config)
        optimizer.register_step_pre_hook(lambda *_: steps.append(model.calls[-1]))
        return optimizer

    monkeypatch.setattr(training, "_optimizer", counting_optimizer)
    data = blob_data(train=100, validation=40)
    history = fit(model, data, TrainConfig(epochs=3, batch_size=32, learning_rate=1e-2, patience=5), progress=False)
    validation_calls = [call for call in model.calls if call["validation"]]
    train_calls = [call for call in model.calls if not call["validation"]]
    assert len(validation_calls) == 3 * 2  # two batches of 32 + 8 per epoch
    assert all(not call["training"] and call["inference_mode"] for call in validation_calls)
    assert all(call["training"] and not call["inference_mode"] and call["grad"] for call in train_calls)
    assert len(train_calls) == 3 * 3  # 100 // 32 full batches (the last partial one is dropped)
    # one optimiser step per training batch, and the batch before each step was a training one
    assert len(steps) == len(train_calls) == len(history.epochs) * 3
    assert all(not call["validation"] for call in steps)


def test_predict_changes_nothing() -> None:
    model = new_mlp()
    model.train()
    before = weights_of(model)
    first = predict(model, blobs(50, seed=3), batch_size=16)
    second = predict(model, blobs(50, seed=3), batch_size=7)
    assert_same_weights(before, weights_of(model))  # batch-norm statistics included
    assert model.training  # the mode is restored
    np.testing.assert_allclose(first.probabilities, second.probabilities, rtol=1e-5, atol=1e-6)  # no dropout


def test_predict_on_an_empty_dataset() -> None:
    empty = FeatureDataset(np.zeros((0, 8), np.float32), np.zeros(0), np.zeros(0))
    with pytest.raises(FbmlError, match="nothing to predict"):
        predict(new_mlp(), empty)


def test_train_config_validation() -> None:
    for bad in ({"epochs": 0}, {"batch_size": 0}, {"learning_rate": 0}, {"optimizer": "lbfgs"}, {"label_smoothing": 1}):
        with pytest.raises((ValueError, TypeError)):
            TrainConfig(**bad)


# --- checkpoints and resume --------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads({threads})  # the parent's: float sums depend on the thread count
    sys.path.insert(0, {tests!r})
    from test_training import blob_data, new_mlp, RESUME
    from fbml.modeling.features import FeatureDataset
    from fbml.modeling.training import fit

    class Slow(FeatureDataset):
        def collate(self, indices):
            time.sleep({delay})  # slow enough to be killed between checkpoints; no effect on the numbers
            return super().collate(indices)

    data = blob_data()
    slow = type(data)(Slow(data.train.features, data.train.labels, data.train.rows), data.validation)
    fit(new_mlp(), slow, RESUME, checkpoint_dir=Path(sys.argv[1]), progress=False)
    """
)
RESUME = TrainConfig(epochs=6, batch_size=32, learning_rate=1e-2, patience=10, seed=3)


def run_and_kill(checkpoint_dir: Path, delay: float = 0.25) -> int:
    """Start ``fit`` in a child process, SIGKILL it once the first checkpoint exists; the epochs it saved."""
    script = CHILD.format(tests=str(Path(__file__).parent), delay=delay, threads=torch.get_num_threads())
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    child = subprocess.Popen([sys.executable, "-c", script, str(checkpoint_dir)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (checkpoint_dir / CHECKPOINT).is_file():
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    checkpoint = torch.load(checkpoint_dir / CHECKPOINT, weights_only=True)
    return len(json.loads(checkpoint["history"]))


def test_resume_after_a_kill(tmp_path: Path) -> None:
    saved = run_and_kill(tmp_path)
    assert 1 <= saved < RESUME.epochs, "the child was killed too late to test resuming"

    resumed_model = new_mlp()
    resumed = fit(resumed_model, blob_data(), RESUME, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert [metrics.epoch for metrics in resumed.epochs] == list(range(1, RESUME.epochs + 1))
    assert not resumed.stopped_early

    whole_model = new_mlp()
    whole = fit(whole_model, blob_data(), RESUME, progress=False)
    # deterministic on CPU: the checkpoint restores model, optimiser, schedule and the torch RNG, and
    # each epoch's shuffle has its own seeded generator, so the resumed run is the uninterrupted one
    strip = lambda history: [{**epoch, "seconds": 0} for epoch in history.to_json()["epochs"]]  # noqa: E731
    assert strip(resumed) == strip(whole)
    assert resumed.best_epoch == whole.best_epoch
    assert_same_weights(weights_of(resumed_model), weights_of(whole_model))


def test_resume_with_a_constant_schedule_after_stopping(tmp_path: Path) -> None:
    import attrs

    config = attrs.evolve(RESUME, epochs=5, schedule="constant")
    first = new_mlp()
    fit(first, blob_data(), attrs.evolve(config, epochs=2), checkpoint_dir=tmp_path, progress=False)
    resumed_model = new_mlp(seed=99)  # the checkpoint overrides the initial weights
    resumed = fit(resumed_model, blob_data(), config, checkpoint_dir=tmp_path, resume=True, progress=False)
    whole_model = new_mlp()
    whole = fit(whole_model, blob_data(), config, progress=False)
    assert [metrics.epoch for metrics in resumed.epochs] == [1, 2, 3, 4, 5]
    assert [m.validation_accuracy for m in resumed.epochs] == [m.validation_accuracy for m in whole.epochs]
    assert_same_weights(weights_of(resumed_model), weights_of(whole_model))


def test_resume_without_a_checkpoint_starts_afresh(tmp_path: Path) -> None:
    history = fit(new_mlp(), blob_data(), TrainConfig(epochs=2, batch_size=32), checkpoint_dir=tmp_path,
                  resume=True, progress=False)
    assert [metrics.epoch for metrics in history.epochs] == [1, 2]
    assert (tmp_path / CHECKPOINT).is_file() and (tmp_path / BEST_WEIGHTS).is_file()


def test_resume_of_a_finished_run_trains_nothing_more(tmp_path: Path) -> None:
    model = Threshold()
    history = fit(model, peaked_data(), PEAKED, checkpoint_dir=tmp_path, progress=False)
    again = Threshold()
    resumed = fit(again, peaked_data(), PEAKED, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert resumed.epochs == history.epochs
    assert resumed.best_epoch == 3 and resumed.stopped_early
    assert_same_weights(weights_of(again), weights_of(model))  # the best epoch's weights, from best.pt


class Crash(Exception):
    """Stands for the process dying at that point."""


@pytest.mark.parametrize(("crash_at", "count"), [(BEST_WEIGHTS, 2), (CHECKPOINT, 3)])
def test_crash_while_checkpointing_keeps_the_best_weights(tmp_path: Path, monkeypatch, crash_at: str, count: int) -> None:
    """A crash while epoch 3 (the best) is being checkpointed, then resume: the model still ends with the
    best epoch's weights. (A last.pt saying "epoch 3 is best" must never sit beside an older best.pt.)"""
    real_save = training._atomic_save
    saves: list[str] = []

    def crashing_save(value, path: Path) -> None:
        saves.append(path.name)
        if path.name == crash_at and saves.count(crash_at) == count:  # epoch 3's file (best.pt: epochs 1, 3)
            raise Crash
        real_save(value, path)

    monkeypatch.setattr(training, "_atomic_save", crashing_save)
    with pytest.raises(Crash):
        fit(Threshold(), peaked_data(), PEAKED, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(training, "_atomic_save", real_save)

    model = Threshold()
    history = fit(model, peaked_data(), PEAKED, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert history.best_epoch == 3
    assert [metrics.epoch for metrics in history.epochs] == list(range(1, 7))
    assert 0.25 < model.b.item() < 0.35, "the model ended with another epoch's weights than the best one"


# --- TensorBoard -------------------------------------------------------------------------------------


def test_tensorboard_curves_and_confusion_matrix(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing import event_accumulator

    data = blob_data(train=64, validation=32)
    classes = ["alpha", "beta", "gamma", "delta"]
    history = fit(new_mlp(), data, TrainConfig(epochs=3, batch_size=16, patience=5), logdir=tmp_path,
                  class_names=classes, progress=False)
    accumulator = event_accumulator.EventAccumulator(
        str(tmp_path), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    curves = ["loss/train", "loss/validation", "accuracy/train", "accuracy/validation", "learning_rate"]
    assert set(curves) <= set(tags["scalars"])
    for curve in curves:
        events = accumulator.Scalars(curve)
        assert [event.step for event in events] == [1, 2, 3], curve
    by_name = {
        "loss/train": "train_loss", "loss/validation": "validation_loss", "accuracy/train": "train_accuracy",
        "accuracy/validation": "validation_accuracy", "learning_rate": "learning_rate",
    }
    for curve, field in by_name.items():
        logged = [event.value for event in accumulator.Scalars(curve)]
        np.testing.assert_allclose(logged, [getattr(epoch, field) for epoch in history.epochs], rtol=1e-6)
    assert "confusion_matrix/validation" in tags["images"]
    (image,) = accumulator.Images("confusion_matrix/validation")
    assert image.step == history.best_epoch
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(image.encoded_image_string)).size == (image.width, image.height)
    assert image.width > 100 and image.height > 100  # the chart itself: tests/test_charts.py


def test_no_logdir_writes_no_events(tmp_path: Path) -> None:
    fit(new_mlp(), blob_data(train=32, validation=16), TrainConfig(epochs=1, batch_size=16), progress=False)
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
