"""``fbml serve --log-predictions DIR``: one row per prediction, appended to size-bounded, rotated Parquet parts.

The request path only appends a row to a buffer in memory (``PredictionLog.record``: no disk, no waiting
beyond a lock held for an append); a background thread writes the buffer as a new part every
``part_rows`` rows or ``part_seconds`` seconds, whichever comes first, each part written to a temporary
file and renamed into place (a reader never sees half a part), then deletes the oldest parts while all of
them together exceed ``max_bytes``. A buffer the writer cannot keep up with stops growing at
``max_buffered`` rows: later rows are dropped and counted (``dropped``), never waited for. Rows hold the
time, the request's id, the predictor's role, the category and its probability, the text's length and
the photo's size in bytes (``fbml.workflows.prediction_log.LOG_SCHEMA``); never a text or a photo.
"""

from __future__ import annotations

import contextvars
import datetime
import io
import os
import threading
from pathlib import Path
from typing import Any

import polars as pl
from contracts.prediction_log import LOG_SCHEMA, PART_NAME

from fbml.bundle.predictions import Prediction
from fbml.errors import FbmlError
from fbml.files import write_atomically

DEFAULT_PART_ROWS = 10_000
DEFAULT_PART_SECONDS = 60.0
DEFAULT_MAX_BYTES = 256 * 2**20


class PredictionLog:
    """Buffers prediction rows and writes them as Parquet parts in ``directory`` on a background thread
    (``start``/``close``, or use it as a context manager); the request ids come from ``request_ids``."""

    def __init__(self, directory: Path, *, request_ids: contextvars.ContextVar[str | None] | None = None,
                 part_rows: int = DEFAULT_PART_ROWS, part_seconds: float = DEFAULT_PART_SECONDS,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_buffered: int | None = None) -> None:  # fmt: skip
        if part_rows < 1 or part_seconds <= 0 or max_bytes < 1:
            raise FbmlError("a prediction log needs part_rows >= 1, part_seconds > 0 and max_bytes >= 1")
        self.directory = directory
        self.request_ids = request_ids
        self.part_rows, self.part_seconds, self.max_bytes = part_rows, part_seconds, max_bytes
        self.max_buffered = max_buffered if max_buffered is not None else 10 * part_rows
        self.dropped = 0
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sequence = 0
        self._thread: threading.Thread | None = None

    def start(self) -> PredictionLog:
        """Check the folder (created if missing) and start the writing thread."""
        check_log_folder(self.directory)
        self._thread = threading.Thread(target=self._run, name="fbml-prediction-log", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Write what is buffered and stop the writing thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> PredictionLog:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def record(self, prediction: Prediction, *, text: str | None = None, photo: bytes | None = None) -> None:
        """Buffer one prediction's row (the text's length and the photo's size only); never blocks on disk."""
        row = {
            "time": datetime.datetime.now(datetime.UTC),
            "request_id": None if self.request_ids is None else self.request_ids.get(),
            "role": str(prediction.role),
            "category": prediction.category,
            "confidence": float(prediction.probabilities[prediction.category]),
            "text_length": None if text is None else len(text),
            "photo_bytes": None if photo is None else len(photo),
        }
        with self._lock:
            if len(self._rows) >= self.max_buffered:
                self.dropped += 1
                return
            self._rows.append(row)
            full = len(self._rows) >= self.part_rows
        if full:
            self._wake.set()

    def flush(self) -> Path | None:
        """Write the buffered rows now, ``part_rows`` to a part, then bound the folder; the last part written
        (None when no row was buffered)."""
        with self._lock:
            rows, self._rows = self._rows, []
        parts = [self._write_part(rows[start:start + self.part_rows]) for start in range(0, len(rows), self.part_rows)]
        self._prune()
        return parts[-1] if parts else None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.part_seconds)
            self._wake.clear()
            self.flush()
        self.flush()

    def _write_part(self, rows: list[dict[str, Any]]) -> Path:
        buffer = io.BytesIO()
        pl.DataFrame(rows, schema=LOG_SCHEMA).write_parquet(buffer)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        self._sequence = (self._sequence + 1) % 1_000_000
        path = self.directory / f"predictions-{stamp}-{os.getpid()}-{self._sequence:06d}.parquet"
        write_atomically(path, buffer.getvalue())
        return path

    def _prune(self) -> None:
        """Delete the oldest parts while the parts together exceed ``max_bytes`` (the newest is always kept)."""
        parts = sorted(path for path in self.directory.iterdir() if PART_NAME.fullmatch(path.name) and path.is_file())
        sizes = [path.stat().st_size for path in parts]
        total = sum(sizes)
        for path, size in zip(parts[:-1], sizes[:-1], strict=True):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


def check_log_folder(directory: Path) -> None:
    """Create ``directory`` when missing; ``FbmlError`` when it is not a folder this process can write in."""
    if directory.exists() and not directory.is_dir():
        raise FbmlError(f"{directory}: not a folder; --log-predictions needs a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".fbml-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise FbmlError(f"{directory}: cannot write the prediction log there ({error.strerror or error})") from None
