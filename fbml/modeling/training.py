"""Training: ``fit(model, data, config) -> History`` with early stopping, checkpoints and TensorBoard.

A dataset brings its own ``collate`` (items -> batch); a batch is a frozen attrs class with
``inputs`` (the model's positional arguments), ``labels`` and ``rows``, whose tensor fields move to
the device together (``fbml.modeling.devices.to_device``); the model returns ``ModelOutput(logits, embedding)``.
Training and prediction run on any device (``fbml.modeling.devices.resolve_device``), in mixed precision on CUDA.
Training draws every random number from generators of its own (``fbml.modeling.randomness``), never from torch's
global ones, which it neither reads nor reseeds.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol, cast

import attrs
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from fbml.errors import FbmlError
from fbml.files import write_atomically
from fbml.modeling.devices import (
    Loaded,
    LoaderSettings,
    LoadingCollate,
    autocast,
    grad_scaler,
    loader_settings,
    resolve_device,
    to_device,
)
from fbml.modeling.distributed import World, data_parallel, per_process_batch, rank_seed
from fbml.modeling.randomness import TrainingGenerators, seed_worker, training_generators

CHECKPOINT = "last.pt"
BEST_WEIGHTS = "best.pt"


class Batch(attrs.AttrsInstance, Protocol):
    """What the training loop needs of a batch (an attrs class: ``to_device`` moves its tensor fields)."""

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
    keep_last: bool = False,
    device: torch.device | str = "cpu",
    world: World = World(),
) -> History:
    """Train ``model`` in place on ``data``; it ends with the weights of its best validation epoch.

    The model trains on ``device`` (``resolve_device``: ``auto``, ``cpu``, ``cuda[:N]``, ``mps``; mixed
    precision on CUDA) and is back on the CPU when ``fit`` returns or raises, for callers to save it.
    Training draws its shuffles, dropout and augmentation from generators of its own seeded by ``config.seed``,
    never from torch's global ones, which it neither reads nor reseeds (``fbml.modeling.randomness``): for its
    duration it lends the device's generator to the model's ``Drawing`` modules (fbml's ``Dropout``, the text CNN's
    word dropout) and the CPU's to those of the training data's transform (``train_transform``'s augmentation). So
    another thread drawing from torch's global generators meanwhile changes nothing here. A model with one of
    torch's dropout modules is refused (it would draw from the global generator). Loader workers, ``num_workers > 0``,
    augment from generators of their own seeds, drawn from ``config.seed`` once per ``fit``, and are kept between
    epochs, so augmentation in workers after a resume differs from the uninterrupted run's.
    Validation runs in ``eval()`` mode under ``inference_mode``, scored with the training loss. With
    ``checkpoint_dir`` every epoch is checkpointed (model, optimiser, schedule, loss scale, history,
    generator states; CPU tensors, so a run resumes on any device) and ``resume`` continues after the last
    completed epoch. ``keep_start``: the starting weights are scored on validation first and kept
    unless an epoch beats them (for a model started from trained parts). ``keep_last``: train every
    epoch of ``config`` and end with the last one's weights (a refit whose epoch count was chosen on
    validation before, the validation data now being part of its training data).

    ``world``: this process among several training the same model in data parallel (``fbml.modeling.distributed``;
    every one calls ``fit`` alike). Each takes its share of every batch (``DistributedSampler``: the same order,
    drawn from the seed and the epoch, cut among them), gradients are averaged (``DistributedDataParallel``), and
    rank 0 alone validates, checkpoints and logs: its epoch figures, batch-norm statistics and so its stopping
    decisions are every rank's. Each rank seeds its own generators (``rank_seed``); a checkpoint keeps every rank's
    generator states. With one process (the default) nothing of ``torch.distributed`` is touched.
    """
    target = resolve_device(device)
    model.to(target)
    shown = progress and world.is_main
    writer = _writer(logdir if world.is_main else None)
    try:
        trainer = _trainer(model, data, config, target, world)
        with trainer.generators.lent_to(model, data.train):
            state = _first_state(trainer, checkpoint_dir, resume, keep_start)
            for epoch in range(len(state.history) + 1, config.epochs + 1):
                if state.epochs_without_improvement >= config.patience and not keep_last:
                    break
                metrics = trainer.epoch(epoch, shown)
                state = state.after(metrics, model, trainer.scaler.state_dict())
                _log_epoch(writer, metrics, shown)
                if checkpoint_dir is not None:
                    trainer.checkpoint(checkpoint_dir, state)
            if state.best_weights is not None and not keep_last:
                model.load_state_dict(state.best_weights)
            history = state.to_history(config)
            if writer is not None:
                _log_summary(writer, trainer.validate(), config, history, class_names)
            return history
    finally:
        model.to("cpu")
        if writer is not None:
            writer.close()


def predict(
    model: nn.Module,
    dataset: BatchedDataset,
    *,
    batch_size: int = 64,
    progress: bool = False,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> Predictions:
    """Probabilities, labels, rows and embeddings (CPU, float32) for every example, in ``eval()`` under
    ``inference_mode`` on ``device``; the model goes back to the device it was on."""
    target = resolve_device(device)
    home = _device_of(model)
    model.to(target)
    try:
        loader = _loader(dataset, batch_size, loader_settings(target, num_workers))
        return _predictions(model, loader, target, progress)
    finally:
        model.to(home)


@attrs.frozen
class _TrainingState:
    """What a checkpoint holds besides the model, optimiser and schedule."""

    history: list[EpochMetrics] = attrs.Factory(list)
    best_weights: dict[str, Tensor] | None = None
    best_accuracy: float = -1.0
    epochs_without_improvement: int = 0
    start: StartMetrics | None = None
    loss_scaling: dict[str, Any] = attrs.Factory(dict)

    def after(self, metrics: EpochMetrics, model: nn.Module, loss_scaling: dict[str, Any]) -> _TrainingState:
        history = [*self.history, metrics]
        if metrics.validation_accuracy > self.best_accuracy:
            return attrs.evolve(
                self, history=history, best_weights=_weights(model), best_accuracy=metrics.validation_accuracy,
                epochs_without_improvement=0, loss_scaling=loss_scaling,
            )
        return attrs.evolve(
            self, history=history, epochs_without_improvement=self.epochs_without_improvement + 1,
            loss_scaling=loss_scaling,
        )

    def to_history(self, config: TrainConfig) -> History:
        if not self.history:
            raise FbmlError("no epoch was trained")
        best = max(self.history, key=lambda metrics: (metrics.validation_accuracy, -metrics.epoch))
        stopped = len(self.history) < config.epochs
        kept_start = self.start is not None and self.start.validation_accuracy >= best.validation_accuracy
        return History(tuple(self.history), 0 if kept_start else best.epoch, stopped, self.start)


@attrs.frozen(eq=False)
class _Shuffled:
    """This process's training batches, each epoch in an order drawn from the seed and the epoch alone (a
    resumed run repeats it), cut among the processes: rank ``r`` takes every ``size``-th example from ``r``."""

    loader: DataLoader[Loaded[Any]]
    sampler: DistributedSampler[Any]

    def epoch(self, number: int) -> DataLoader[Loaded[Any]]:
        self.sampler.set_epoch(number)
        return self.loader


@attrs.frozen(eq=False)
class _Trainer:
    """One ``fit``: the model on its device, its optimisation and its loaders."""

    model: nn.Module
    network: nn.Module
    config: TrainConfig
    device: torch.device
    world: World
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_function: nn.CrossEntropyLoss
    train: _Shuffled
    validation: DataLoader[Loaded[Any]]
    generators: TrainingGenerators

    def epoch(self, number: int, progress: bool) -> EpochMetrics:
        """Train one epoch, step the schedule, score validation (rank 0's figures, on every rank)."""
        started = time.perf_counter()
        rate = self.optimizer.param_groups[0]["lr"]
        batches = tqdm(self.train.epoch(number), desc=f"epoch {number}/{self.config.epochs}", leave=False,
                       disable=not progress)
        train_loss, train_accuracy = self._train(batches, progress)
        self.schedule.step()
        self.world.share_buffers(self.model)
        validation_loss, validation_accuracy = self.validation_figures()
        return self.world.broadcast(EpochMetrics(
            number, train_loss, train_accuracy, validation_loss, validation_accuracy, rate,
            time.perf_counter() - started,
        ))

    def validate(self) -> Predictions:
        return _predictions(self.model, self.validation, self.device)

    def validation_figures(self) -> tuple[float, float]:
        """The loss and accuracy on validation, computed by rank 0 alone (the others' are not read: zeros)."""
        return _loss_and_accuracy(self.validate(), self.loss_function) if self.world.is_main else (0.0, 0.0)

    def checkpoint(self, directory: Path, state: _TrainingState) -> None:
        """Rank 0 saves the checkpoint, with every rank's generator states."""
        states = self.world.gather(self.generators.state())
        if self.world.is_main:
            _save_checkpoint(directory, self.model, self.optimizer, self.schedule, state, states)

    def _train(self, batches: tqdm[Loaded[Any]], progress: bool) -> tuple[float, float]:
        """Mean loss and accuracy over the epoch of every process's batches, summed on the device (read once,
        unless ``progress`` shows this process's)."""
        self.network.train()
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        for loaded in batches:
            batch = to_device(loaded.batch, self.device)
            logits, loss = self._step(batch)
            total_loss += loss * len(batch.labels)
            correct += (logits.argmax(dim=1) == batch.labels).sum()
            seen += len(batch.labels)
            if progress:
                batches.set_postfix(loss=f"{float(total_loss) / seen:.3f}", accuracy=f"{int(correct) / seen:.3f}")
        if self.world.size > 1:
            counted = self.world.sum(torch.tensor([seen], dtype=torch.int64, device=self.device))
            total_loss, correct, seen = self.world.sum(total_loss), self.world.sum(correct), int(counted)
        return float(total_loss) / max(seen, 1), int(correct) / max(seen, 1)

    def _step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """One optimiser step on ``batch`` (forward under autocast, loss in float32, scaled if float16)."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device):
            logits = self.network(*batch.inputs).logits.float()
        loss = self.loss_function(logits, batch.labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logits.detach(), loss.detach()


def _trainer(model: nn.Module, data: TrainData, config: TrainConfig, device: torch.device, world: World) -> _Trainer:
    """The optimiser, schedule, loss scaler, loss and loaders for ``model``, already on ``device``; this process's
    share of each batch and, with several processes, the model in ``DistributedDataParallel``; the generators of
    this process, seeded from the seed and its rank."""
    settings = loader_settings(device, config.num_workers)
    optimizer = _optimizer([parameter for parameter in model.parameters() if parameter.requires_grad], config)
    sampler: DistributedSampler[Any] = DistributedSampler(cast("Dataset[Any]", data.train), num_replicas=world.size, rank=world.rank,
                                 seed=config.seed * 1000)
    batch_size = per_process_batch(config.batch_size, world)
    seed = rank_seed(config.seed, world)
    train = _loader(data.train, batch_size, settings, sampler=sampler, seed=seed, drop_last=len(sampler) > batch_size)
    return _Trainer(
        model, data_parallel(model, world, device), config, device, world, optimizer, _schedule(optimizer, config),
        grad_scaler(device), nn.CrossEntropyLoss(label_smoothing=config.label_smoothing), _Shuffled(train, sampler),
        _loader(data.validation, config.batch_size, settings), training_generators(device, seed),
    )


def _first_state(trainer: _Trainer, checkpoint_dir: Path | None, resume: bool, keep_start: bool) -> _TrainingState:
    """The resumed state (restoring model, optimiser, schedule, loss scale and generators), else a fresh one; every
    rank reads the same checkpoint, before rank 0 writes any."""
    world = trainer.world
    state = _resume(checkpoint_dir, trainer, world.rank) if resume else None
    if len(set(world.gather(-1 if state is None else len(state.history)))) > 1:
        raise FbmlError(f"{checkpoint_dir}: the training processes found different checkpoints; "
                        "the work folder must be one every process sees")
    if state is not None:
        if state.loss_scaling:  # empty when saved where no loss was scaled; ignored by a disabled scaler
            trainer.scaler.load_state_dict(state.loss_scaling)
        return state
    state = _starting_state(trainer) if keep_start else _TrainingState()
    if checkpoint_dir is not None and state.start is not None:
        trainer.checkpoint(checkpoint_dir, state)
    return state


def _starting_state(trainer: _Trainer) -> _TrainingState:
    """The starting weights as the best so far, with their validation figures (rank 0's, on every rank)."""
    loss, accuracy = trainer.world.broadcast(trainer.validation_figures())
    return _TrainingState(best_weights=_weights(trainer.model), best_accuracy=accuracy, start=StartMetrics(loss, accuracy))


def _loader(
    dataset: BatchedDataset,
    batch_size: int,
    settings: LoaderSettings,
    *,
    sampler: DistributedSampler[Any] | None = None,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader[Loaded[Any]]:
    """``dataset``'s batches in ``Loaded`` (pinned where ``settings`` say); workers seeded from ``seed``,
    not from the global RNG, each one's transform drawing from a generator of its own seed (``seed_worker``)."""
    return DataLoader(
        cast("Dataset[Any]", dataset), batch_size=batch_size, sampler=sampler, collate_fn=LoadingCollate(dataset.collate),
        generator=torch.Generator().manual_seed(seed), worker_init_fn=seed_worker, drop_last=drop_last,
        **attrs.asdict(settings),
    )


def _predictions(
    model: nn.Module, loader: DataLoader[Loaded[Any]], device: torch.device, progress: bool = False
) -> Predictions:
    """``predict`` for a model already on ``device``."""
    was_training = model.training
    model.eval()
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    try:
        with torch.inference_mode(), autocast(device):
            for loaded in tqdm(loader, desc="predicting", leave=False, disable=not progress):
                output = model(*to_device(loaded.batch, device).inputs)
                scores = torch.softmax(output.logits.float(), dim=1)
                parts.append((scores, output.embedding.float(), loaded.batch.labels, loaded.batch.rows))
    finally:
        model.train(was_training)
    if not parts:
        raise FbmlError("nothing to predict: the dataset is empty")
    probabilities, embeddings, labels, rows = (torch.cat(column).cpu().numpy() for column in zip(*parts, strict=True))
    return Predictions(probabilities, labels, rows, embeddings)


def _device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s first parameter (or buffer) is; the CPU for a model without either."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _weights(model: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of ``model``'s state."""
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}


def _on_cpu(value: Any) -> Any:
    """``value`` (a state dict: nested dicts, lists and tuples) with every tensor on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    return value


def _loss_and_accuracy(predictions: Predictions, loss_function: nn.Module) -> tuple[float, float]:
    """The training loss and the accuracy of ``predictions``: the loss of the log-probabilities equals the
    loss of the logits (log_softmax of log p is log p), label smoothing included."""
    probabilities = torch.from_numpy(predictions.probabilities).clamp_min(1e-12)
    labels = torch.from_numpy(predictions.labels)
    loss = float(loss_function(probabilities.log(), labels))
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
    rng: Sequence[dict[str, Tensor]],
) -> None:
    """``last.pt`` (and ``best.pt`` when this epoch is the best), every tensor on the CPU. ``rng``: each rank's
    generator states (``rng`` holds rank 0's, ``rng_ranks`` every one's when there are several)."""
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "model": _on_cpu(model.state_dict()),
        "optimizer": _on_cpu(optimizer.state_dict()),
        "schedule": schedule.state_dict(),
        "loss_scaling": state.loss_scaling,
        "history": json.dumps([attrs.asdict(metrics) for metrics in state.history]),
        "best_accuracy": state.best_accuracy,
        "epochs_without_improvement": state.epochs_without_improvement,
        "start": json.dumps(None if state.start is None else attrs.asdict(state.start)),
        "rng": rng[0],
    }
    if len(rng) > 1:
        checkpoint["rng_ranks"] = list(rng)
    if state.epochs_without_improvement == 0 and state.best_weights is not None:
        _atomic_save(state.best_weights, directory / BEST_WEIGHTS)  # before the checkpoint that names it best
    _atomic_save(checkpoint, directory / CHECKPOINT)


def _resume(directory: Path | None, trainer: _Trainer, rank: int = 0) -> _TrainingState | None:
    """Load ``last.pt`` into the trainer's model (on any device), optimiser, schedule and generators (``rank``'s);
    its state."""
    if directory is None or not (directory / CHECKPOINT).is_file():
        return None
    try:
        return _resumed(directory, trainer, rank)
    except Exception as error:  # a truncated, foreign or tampered checkpoint: torch, json and KeyError alike
        detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise FbmlError(f"{directory / CHECKPOINT}: cannot resume from this checkpoint ({type(error).__name__}: {detail}); "
                        "train without --resume to start again") from None


def _resumed(directory: Path, trainer: _Trainer, rank: int) -> _TrainingState:
    checkpoint = torch.load(directory / CHECKPOINT, map_location="cpu", weights_only=True)
    trainer.model.load_state_dict(checkpoint["model"])
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])  # moves the optimiser's state to its parameters' device
    trainer.schedule.load_state_dict(checkpoint["schedule"])
    states = checkpoint.get("rng_ranks") or [checkpoint["rng"] if "rng" in checkpoint else {"cpu": checkpoint["torch_rng"]}]
    if rank < len(states):  # a rank the checkpoint's run did not have keeps its fresh seed
        trainer.generators.restore(states[rank])
    history = [EpochMetrics(**metrics) for metrics in json.loads(checkpoint["history"])]
    best_path = directory / BEST_WEIGHTS
    best = torch.load(best_path, map_location="cpu", weights_only=True) if best_path.is_file() else None
    start = json.loads(checkpoint.get("start", "null"))
    return _TrainingState(
        history, best, checkpoint["best_accuracy"], checkpoint["epochs_without_improvement"],
        None if start is None else StartMetrics(**start), checkpoint.get("loss_scaling", {}),
    )


def _atomic_save(value: Any, path: Path) -> None:
    buffer = BytesIO()
    torch.save(value, buffer)
    write_atomically(path, buffer.getvalue())


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
    validation: Predictions,
    config: TrainConfig,
    history: History,
    class_names: Sequence[str] | None,
) -> None:
    from fbml.modeling.charts import confusion_chart
    from fbml.modeling.metrics import confusion_matrix, top_classes

    names = list(class_names) if class_names else [str(index) for index in range(validation.probabilities.shape[1])]
    matrix = confusion_matrix(validation.labels, top_classes(validation.probabilities), len(names))
    writer.add_image("confusion_matrix/validation", np.asarray(confusion_chart(matrix, names)), history.best_epoch,
                     dataformats="HWC")
    best = history.best
    writer.add_hparams(
        {key: value for key, value in attrs.asdict(config).items()},
        {"hparam/validation_accuracy": best.validation_accuracy, "hparam/validation_loss": best.validation_loss},
        run_name=".",
    )
