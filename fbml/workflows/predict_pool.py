"""``fbml predict --workers N``: the parts of a catalogue scored by N worker processes on this machine.

Scoring texts is mostly Python that holds the GIL (the linear models count each text's n-grams), so one process
scores them on one core however many the machine has; N workers score N parts at a time. Each worker is a fresh
interpreter (spawned: torch's threads do not survive a fork) that loads the bundle once, lists the photo folder
once, and scores the parts it is sent, reading and decoding their photos itself (``PartScorer``, the code Ray's
actors run too). The workers start before the tables are cleaned, so that their imports and the bundle's loading
overlap the cleaning. The driver sends each worker part as Arrow IPC bytes, at most ``IN_FLIGHT`` parts per
worker at a time, and takes the scored parts back as they finish; it writes them, in any order (the run
assembles them in order at the end).

A worker that cannot load the bundle, or that meets a bad part, sends its one-line error and the run ends with
it; a worker that dies ends the run too. The driver terminates its workers when it is done, fails or is
interrupted (told to leave when it is done: they exit cleanly, terminated otherwise); a killed driver's
workers leave on their own within ``WAIT_SECONDS`` of their part.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from contracts.bundle import Role

from fbml.errors import FbmlError
from fbml.vision.cache import PhotoFolder
from fbml.workflows.predict import PredictOptions, batch_bundle
from fbml.workflows.predict_parts import PART, Part, ScoredPart, Sources, decoded_part, scored_part

IN_FLIGHT = 2
"""Parts sent to each worker ahead of its answers: one to score, one waiting, so that a worker never idles."""
WAIT_SECONDS = 1.0
"""How often a waiting driver checks that its workers live, and a waiting worker that its driver does."""
STOP_SECONDS = 10.0
"""How long a worker told to leave, or terminated, is waited for before it is killed."""
Task = tuple[int, bytes, bytes]
"""A part as a worker receives it: its number, products and photos (Arrow IPC bytes; no photos: empty)."""
Answer = tuple[int, bytes, bytes]
"""A scored part as the driver receives it (``ScoredPart.to_ipc``'s)."""


class PartScorer:
    """A worker's state (a pool's process or a Ray actor): the bundle and the listed photo folder, loaded once.

    Inference runs on ``options.threads`` threads (torch's, set here for the torch runtime on the CPU, or each
    ONNX Runtime session's). With ``options.embeddings`` a bundle without an index is refused here, before any part."""

    def __init__(self, bundle_dir: str, image_dir: str | None, options: dict[str, Any], sources: tuple[str, str],
                 roles: list[str] | None) -> None:  # fmt: skip
        self.options = PredictOptions(**options)
        if self.options.runtime == "torch" and self.options.device == "cpu" and self.options.threads is not None:
            from fbml.modeling.torch_runtime import set_threads

            set_threads(self.options.threads)
        self.bundle = batch_bundle(Path(bundle_dir), self.options, None if roles is None else frozenset(map(Role, roles)))
        if self.options.embeddings:
            self.bundle.listing_recipe()
        reads_photos = image_dir is not None and self.bundle.image is not None
        self.folder = PhotoFolder.listed(Path(image_dir)) if reads_photos and image_dir is not None else None
        self.sources = Sources(*sources)

    def scored(self, number: int, products: bytes, photos: bytes) -> Answer:
        """One part (``Part.to_ipc``'s values) read, decoded and scored: its number, predictions and rejected rows."""
        part = Part.from_ipc(number, products, photos)
        size = self.bundle.image.size if self.bundle.image is not None else 0
        decoded = decoded_part(part, self.folder, size, self.options.decode_workers)
        return scored_part(self.bundle, decoded, self.sources, batch_size=self.options.batch_size, embeddings=self.options.embeddings).to_ipc()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[object]]:
        """Ray Data's ``map_batches``: each part of ``batch`` (``Part.to_ipc``'s columns) scored."""
        answer: dict[str, list[object]] = {PART: [], "predictions": [], "rejected": []}
        for number, products, photos in zip(batch[PART], batch["products"], batch["photos"], strict=True):
            for name, value in zip(answer, self.scored(int(number), bytes(products), bytes(photos)), strict=True):
                answer[name].append(value)
        return answer


def scorer_arguments(bundle_dir: Path, image_dir: Path | None, options: PredictOptions, sources: Sources,
                     roles: frozenset[Role] | None) -> dict[str, Any]:  # fmt: skip
    """``PartScorer``'s arguments as plain values (what a worker process or a Ray actor is sent)."""
    fields = ("runtime", "device", "batch_size", "part_size", "embeddings", "decode_workers", "threads")
    return {
        "bundle_dir": str(bundle_dir.resolve()),
        "image_dir": None if image_dir is None else str(image_dir.resolve()),
        "options": {name: getattr(options, name) for name in fields},
        "sources": (sources.products, sources.photos),
        "roles": None if roles is None else sorted(roles),
    }


def serve_parts(arguments: dict[str, Any], tasks: Queue[Task | None], answers: Queue[tuple[str, Any]]) -> None:
    """A worker process's life: load the ``PartScorer`` (then say ``ready`` with the bundle's model version) and
    score each task into ``answers`` until told to stop (``None``) or the driver is gone; a bad bundle or part is
    sent as ``error`` and ends the worker. Ctrl-C is the driver's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    driver = multiprocessing.parent_process()
    try:
        scorer = PartScorer(**arguments)
        answers.put(("ready", scorer.bundle.model_version))
        while driver is not None and driver.is_alive():
            try:
                task = tasks.get(timeout=WAIT_SECONDS)
            except queue.Empty:
                continue
            if task is None:
                return
            answers.put(("part", scorer.scored(*task)))
    except FbmlError as error:
        answers.put(("error", str(error)))
        answers.close()
        answers.join_thread()  # the error reaches the driver before the worker leaves
        return
    answers.cancel_join_thread()  # the driver is gone: no one reads what is left


@attrs.frozen
class WorkerPool:
    """Worker processes (``serve_parts``) started for one run, the queue of their tasks and that of their answers,
    and the model version the driver read the bundle as."""

    processes: tuple[SpawnProcess, ...]
    tasks: Queue[Task | None]
    answers: Queue[tuple[str, Any]]
    model_version: str

    def ready(self) -> None:
        """Wait for every worker to have loaded the bundle; ``FbmlError`` when one cannot, or loaded another bundle
        than the driver read."""
        for _ in self.processes:
            kind, value = self._answer()
            if kind == "error":
                raise FbmlError(value)
            if kind != "ready" or value != self.model_version:
                raise FbmlError(f"the bundle changed while the run started (model version {str(value)[:12]}, read as {self.model_version[:12]})")

    def scored(self, parts: Sequence[Part]) -> Iterator[ScoredPart]:
        """Each part scored by a worker (all ``ready``), as they finish; ``FbmlError`` when a worker cannot go on."""
        waiting = deque(parts)
        sent = 0
        for _ in range(min(len(waiting), IN_FLIGHT * len(self.processes))):
            self.tasks.put(_task(waiting.popleft()))
            sent += 1
        while sent:
            kind, value = self._answer()
            if kind == "error":
                raise FbmlError(value)
            sent -= 1
            if waiting:
                self.tasks.put(_task(waiting.popleft()))
                sent += 1
            yield ScoredPart.from_ipc(*value)

    def _answer(self) -> tuple[str, Any]:
        """The next answer of a worker, checking every ``WAIT_SECONDS`` that they all still run."""
        while True:
            try:
                answer: tuple[str, Any] = self.answers.get(timeout=WAIT_SECONDS)
                return answer
            except queue.Empty:
                stopped = [process.exitcode for process in self.processes if not process.is_alive()]
                if stopped:
                    raise FbmlError(f"a scoring worker stopped (exit code {stopped[0]}) before the run was done") from None


def _task(part: Part) -> Task:
    sent = part.to_ipc()
    return part.number, sent["products"], sent["photos"]  # type: ignore[return-value]


@contextmanager
def worker_pool(count: int, arguments: dict[str, Any], model_version: str) -> Iterator[WorkerPool]:
    """``count`` worker processes, each loading a ``PartScorer`` of ``arguments`` as it starts; stopped on leaving."""
    context = multiprocessing.get_context("spawn")
    tasks: Queue[Task | None] = context.Queue()
    answers: Queue[tuple[str, Any]] = context.Queue()
    processes = tuple(context.Process(target=serve_parts, args=(arguments, tasks, answers), name=f"fbml-predict-{number}",
                                      daemon=True) for number in range(count))  # fmt: skip
    finished = False
    try:
        for process in processes:
            process.start()
        yield WorkerPool(processes, tasks, answers, model_version)
        finished = True
    finally:
        _stopped(processes, tasks, answers, told=finished)


def _stopped(processes: tuple[SpawnProcess, ...], tasks: Queue[Task | None], answers: Queue[tuple[str, Any]], *, told: bool) -> None:
    """The workers stopped: ``told`` to leave (they finish what they hold, and clean up as they exit) and given
    ``STOP_SECONDS``, else terminated (a failed or interrupted run abandons their work); the queues closed
    without waiting for what no one will read."""
    started = [process for process in processes if process.pid is not None]
    for process in started:
        if told:
            tasks.put(None)
        elif process.is_alive():
            process.terminate()
    for process in started:
        process.join(STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join(STOP_SECONDS)
    for channel in (tasks, answers):
        channel.cancel_join_thread()
        channel.close()
