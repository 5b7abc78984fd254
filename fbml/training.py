"""Training: ``fit(model, data, config) -> History`` with early stopping, checkpoints and TensorBoard.

A dataset brings its own ``collate`` (items -> batch); a batch has ``inputs`` (the model's
positional arguments), ``labels`` and ``rows``; the model returns ``ModelOutput(logits, embedding)``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fbml.errors import FbmlError

CHECKPOINT = "last.pt"
BEST_WEIGHTS = "best.pt"


class Batch(Protocol):
    """What the training loop needs of a batch."""

    @property
    def inputs(self) -> tuple[Tensor, ...]: ...

    labels: Tensor
    rows: Tensor


@attrs.frozen
class TrainConfig:
    """How to train: optimiser, schedule, stopping, batching and the seed."""

    epochs: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    batch_size: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    learning_rate: float = attrs.field(default=1e-3, validator=attrs.validators.gt(0))
    weight_decay: float = attrs.field(default=1e-4, validator=attrs.validators.ge(0))
    optimizer: str = attrs.field(default="adamw", validator=attrs.validators.in_(("adamw", "sgd")))
    schedule: str = attrs.field(default="cosine", validator=attrs.validators.in_(("cosine", "constant")))
    patience: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    label_smoothing: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
    seed: int = 0
    num_workers: int = attrs.field(default=0, validator=attrs.validators.ge(0))


@attrs.frozen
class EpochMetrics:
    """One epoch's figures."""

    epoch: int
    train_loss: float
    train_accuracy: float
    validation_loss: float
    validation_accuracy: float
    learning_rate: float
    seconds: float


@attrs.frozen
class StartMetrics:
    """The starting weights' figures on validation (``fit(..., keep_start=True)``)."""

    validation_loss: float
    validation_accuracy: float


@attrs.frozen
class History:
    """Every epoch trained, the best one (whose weights the model ends with) and why it stopped.

    ``best_epoch`` 0 means no epoch beat the starting weights (``start``), which the model kept.
    """

    epochs: tuple[EpochMetrics, ...]
    best_epoch: int
    stopped_early: bool
    start: StartMetrics | None = None

    @property
    def best(self) -> EpochMetrics | StartMetrics:
        if self.best_epoch == 0 and self.start is not None:
            return self.start
        return next(metrics for metrics in self.epochs if metrics.epoch == self.best_epoch)

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class BatchedDataset(Protocol):
    """A map-style dataset that batches its own items."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def collate(self, items: Sequence[Any]) -> Batch: ...


@attrs.frozen
class TrainData:
    """The training and validation datasets."""

    train: BatchedDataset
    validation: BatchedDataset


@attrs.frozen
class Predictions:
    """Class probabilities per example, with its label and manifest row."""

    probabilities: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    embeddings: np.ndarray


def fit(
    model: nn.Module,
    data: TrainData,
    config: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    logdir: Path | None = None,
    resume: bool = False,
    class_names: Sequence[str] | None = None,
    progress: bool = True,
    keep_start: bool = False,
) -> History:
    """Train ``model`` in place on ``data``; it ends with the weights of its best validation epoch.

    Validation runs in ``eval()`` mode under ``inference_mode``. With ``checkpoint_dir`` every epoch
    is checkpointed (model, optimiser, schedule, history, random state) and ``resume`` continues
    after the last completed epoch. ``keep_start``: the starting weights are scored on validation
    first and kept unless an epoch beats them (for a model started from trained parts).
    """
    seed_everything(config.seed)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = _optimizer(parameters, config)
    schedule = _schedule(optimizer, config)
    loss_function = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    state = _resume(checkpoint_dir, model, optimizer, schedule) if resume else None
    if state is None:
        state = _starting_state(model, data, config, loss_function) if keep_start else _TrainingState()
        if checkpoint_dir is not None and state.start is not None:
            _save_checkpoint(checkpoint_dir, model, optimizer, schedule, state)
    writer = _writer(logdir)
    try:
        for epoch in range(len(state.history) + 1, config.epochs + 1):
            if state.epochs_without_improvement >= config.patience:
                break
            started = time.perf_counter()
            rate = optimizer.param_groups[0]["lr"]
            train_loss, train_accuracy = _train_epoch(model, data, config, optimizer, loss_function, epoch, progress)
            schedule.step()
            validation = predict(model, data.validation, batch_size=config.batch_size)
            validation_loss, validation_accuracy = _loss_and_accuracy(validation, loss_function)
            metrics = EpochMetrics(
                epoch, train_loss, train_accuracy, validation_loss, validation_accuracy, rate,
                time.perf_counter() - started,
            )
            state = state.after(metrics, model)
            _log_epoch(writer, metrics, progress)
            if checkpoint_dir is not None:
                _save_checkpoint(checkpoint_dir, model, optimizer, schedule, state)
        if state.best_weights is not None:
            model.load_state_dict(state.best_weights)
        history = state.to_history(config)
        if writer is not None:
            _log_summary(writer, model, data, config, history, class_names)
        return history
    finally:
        if writer is not None:
            writer.close()


def predict(
    model: nn.Module, dataset: BatchedDataset, *, batch_size: int = 64, progress: bool = False
) -> Predictions:
    """Probabilities, labels, rows and embeddings for every example, in ``eval()`` under ``inference_mode``."""
    was_training = model.training
    model.eval()
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate)
    with torch.inference_mode():
        for batch in tqdm(loader, desc="predicting", leave=False, disable=not progress):
            output = model(*batch.inputs)
            parts.append((torch.softmax(output.logits, dim=1), batch.labels, batch.rows, output.embedding))
    model.train(was_training)
    if not parts:
        raise FbmlError("nothing to predict: the dataset is empty")
    probabilities, labels, rows, embeddings = (torch.cat(column).numpy() for column in zip(*parts, strict=True))
    return Predictions(probabilities, labels, rows, embeddings)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@attrs.frozen
class _TrainingState:
    history: list[EpochMetrics] = attrs.Factory(list)
    best_weights: dict[str, Tensor] | None = None
    best_accuracy: float = -1.0
    epochs_without_improvement: int = 0
    start: StartMetrics | None = None

    def after(self, metrics: EpochMetrics, model: nn.Module) -> _TrainingState:
        history = [*self.history, metrics]
        if metrics.validation_accuracy > self.best_accuracy:
            return _TrainingState(history, _weights(model), metrics.validation_accuracy, 0, self.start)
        return attrs.evolve(self, history=history, epochs_without_improvement=self.epochs_without_improvement + 1)

    def to_history(self, config: TrainConfig) -> History:
        if not self.history:
            raise FbmlError("no epoch was trained")
        best = max(self.history, key=lambda metrics: (metrics.validation_accuracy, -metrics.epoch))
        stopped = len(self.history) < config.epochs
        kept_start = self.start is not None and self.start.validation_accuracy >= best.validation_accuracy
        return History(tuple(self.history), 0 if kept_start else best.epoch, stopped, self.start)


def _starting_state(model: nn.Module, data: TrainData, config: TrainConfig, loss_function: nn.Module) -> _TrainingState:
    """The starting weights as the best so far, with their validation figures."""
    validation = predict(model, data.validation, batch_size=config.batch_size)
    loss, accuracy = _loss_and_accuracy(validation, loss_function)
    return _TrainingState(best_weights=_weights(model), best_accuracy=accuracy, start=StartMetrics(loss, accuracy))


def _weights(model: nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _train_epoch(
    model: nn.Module,
    data: TrainData,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    loss_function: nn.Module,
    epoch: int,
    progress: bool,
) -> tuple[float, float]:
    model.train()
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    loader = DataLoader(
        data.train, batch_size=config.batch_size, shuffle=True, generator=generator, collate_fn=data.train.collate,
        num_workers=config.num_workers, drop_last=len(data.train) > config.batch_size,
    )
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=not progress)
    for batch in bar:
        optimizer.zero_grad(set_to_none=True)
        logits = model(*batch.inputs).logits
        loss = loss_function(logits, batch.labels)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(batch.labels)
        correct += int((logits.argmax(dim=1) == batch.labels).sum())
        seen += len(batch.labels)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", accuracy=f"{correct / seen:.3f}")
    return total_loss / max(seen, 1), correct / max(seen, 1)


def _loss_and_accuracy(predictions: Predictions, loss_function: nn.Module) -> tuple[float, float]:
    probabilities = torch.from_numpy(predictions.probabilities).clamp_min(1e-12)
    labels = torch.from_numpy(predictions.labels)
    loss = nn.functional.nll_loss(probabilities.log(), labels).item()
    accuracy = float((probabilities.argmax(dim=1) == labels).float().mean())
    return loss, accuracy


def _optimizer(parameters: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    state: _TrainingState,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "history": json.dumps([attrs.asdict(metrics) for metrics in state.history]),
        "best_accuracy": state.best_accuracy,
        "epochs_without_improvement": state.epochs_without_improvement,
        "start": json.dumps(None if state.start is None else attrs.asdict(state.start)),
        "torch_rng": torch.get_rng_state(),
    }
    if state.epochs_without_improvement == 0 and state.best_weights is not None:
        _atomic_save(state.best_weights, directory / BEST_WEIGHTS)  # before the checkpoint that names it best
    _atomic_save(checkpoint, directory / CHECKPOINT)


def _resume(
    directory: Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> _TrainingState | None:
    if directory is None or not (directory / CHECKPOINT).is_file():
        return None
    checkpoint = torch.load(directory / CHECKPOINT, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    schedule.load_state_dict(checkpoint["schedule"])
    torch.set_rng_state(checkpoint["torch_rng"])
    history = [EpochMetrics(**metrics) for metrics in json.loads(checkpoint["history"])]
    best_path = directory / BEST_WEIGHTS
    best = torch.load(best_path, map_location="cpu", weights_only=True) if best_path.is_file() else None
    start = json.loads(checkpoint.get("start", "null"))
    return _TrainingState(
        history, best, checkpoint["best_accuracy"], checkpoint["epochs_without_improvement"],
        None if start is None else StartMetrics(**start),
    )


def _atomic_save(value: Any, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(value, temporary)
    os.replace(temporary, path)


def _writer(logdir: Path | None) -> Any:
    if logdir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(logdir))


def _log_epoch(writer: Any, metrics: EpochMetrics, progress: bool) -> None:
    if writer is not None:
        for name, value in (
            ("loss/train", metrics.train_loss),
            ("loss/validation", metrics.validation_loss),
            ("accuracy/train", metrics.train_accuracy),
            ("accuracy/validation", metrics.validation_accuracy),
            ("learning_rate", metrics.learning_rate),
        ):
            writer.add_scalar(name, value, metrics.epoch)
        writer.flush()
    if progress:
        tqdm.write(
            f"epoch {metrics.epoch}: train loss {metrics.train_loss:.3f} accuracy {metrics.train_accuracy:.3f} | "
            f"validation loss {metrics.validation_loss:.3f} accuracy {metrics.validation_accuracy:.3f} "
            f"({metrics.seconds:.1f} s)"
        )


def _log_summary(
    writer: Any,
    model: nn.Module,
    data: TrainData,
    config: TrainConfig,
    history: History,
    class_names: Sequence[str] | None,
) -> None:
    from fbml.reports import confusion_matrix, confusion_matrix_image

    validation = predict(model, data.validation, batch_size=config.batch_size)
    names = list(class_names) if class_names else [str(index) for index in range(validation.probabilities.shape[1])]
    matrix = confusion_matrix(validation.labels, validation.probabilities.argmax(axis=1), len(names))
    writer.add_image("confusion_matrix/validation", confusion_matrix_image(matrix, names), history.best_epoch,
                     dataformats="HWC")
    best = history.best
    writer.add_hparams(
        {key: value for key, value in attrs.asdict(config).items()},
        {"hparam/validation_accuracy": best.validation_accuracy, "hparam/validation_loss": best.validation_loss},
        run_name=".",
    )
