"""The serving prediction log: rows buffered in memory, written as Parquet parts by a background thread every N
rows or T seconds, the folder kept under its size bound (oldest parts deleted), no text or photo kept, and read
back as ``fbml monitor --predictions`` reads it."""

from __future__ import annotations

import contextvars
import time
from pathlib import Path

import polars as pl
import pytest
from contracts.bundle import Role
from contracts.prediction_log import LOG_SCHEMA, PART_NAME
from fbml.bundle.predictions import Prediction
from fbml.errors import FbmlError, InputError
from fbml.serving.prediction_log import PredictionLog, check_log_folder
from fbml.workflows.prediction_log import log_parts, logged_observations, read_prediction_log

SECRET = "a very private listing text"


def prediction(confidence: float = 0.8) -> Prediction:
    return Prediction("Phones", {"Phones": confidence, "Other": 1 - confidence}, Role.TEXT, "v1")


def test_each_part_holds_its_rows_and_no_text(tmp_path: Path) -> None:
    ids: contextvars.ContextVar[str | None] = contextvars.ContextVar("rid", default="req-1")
    log = PredictionLog(tmp_path, request_ids=ids, part_rows=10, part_seconds=3600)
    log.start()
    for _ in range(25):
        log.record(prediction(), text=SECRET, photo=b"\xff" * 1234)
    log.close()
    parts = log_parts(tmp_path)
    assert len(parts) == 3 and all(PART_NAME.fullmatch(part.name) for part in parts)
    frame = read_prediction_log(tmp_path)
    assert frame.schema == LOG_SCHEMA and frame.height == 25
    assert frame["request_id"].unique().to_list() == ["req-1"]
    assert frame["text_length"].unique().to_list() == [len(SECRET)] and frame["photo_bytes"].unique().to_list() == [1234]
    assert frame["confidence"].unique().to_list() == [pytest.approx(0.8)]
    assert not any(SECRET.encode() in part.read_bytes() for part in parts)


def test_a_part_is_written_after_part_seconds_without_more_rows(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, part_rows=1000, part_seconds=0.05) as log:
        log.record(prediction(), text="x")
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("predictions-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read_prediction_log(tmp_path).height == 1


def test_the_folder_stays_under_its_size_bound(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, part_rows=20, part_seconds=3600, max_bytes=20_000)
    sizes = []
    for _ in range(40):
        for _ in range(20):
            log.record(prediction(), text="some text")
        assert log.flush() is not None
        sizes.append(sum(part.stat().st_size for part in tmp_path.iterdir()))
    part = max(path.stat().st_size for path in tmp_path.iterdir())
    assert max(sizes) <= 20_000 + part
    assert sum(path.stat().st_size for path in tmp_path.iterdir()) <= 20_000
    kept = log_parts(tmp_path)
    assert 1 < len(kept) < 40 and kept[-1].name.endswith(f"{40:06d}.parquet")  # the newest parts are the ones kept


def test_a_full_buffer_drops_rows_instead_of_waiting(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, part_rows=10, part_seconds=3600, max_buffered=15)  # not started: nothing writes
    for _ in range(40):
        log.record(prediction())
    assert log.dropped == 25
    log.flush()
    assert read_prediction_log(tmp_path).height == 15


def test_logged_rows_become_observations_per_role(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, part_rows=100)
    for index in range(30):
        log.record(prediction(0.5 + index / 100), text="t" * index)
    log.flush()
    observed = logged_observations(read_prediction_log(tmp_path))
    assert sorted(observed.numeric) == ["photos.bytes", "predictions.text.confidence", "text.length"]
    assert observed.numeric["predictions.text.confidence"].size == 30 and observed.numeric["photos.bytes"].size == 0
    assert observed.categorical["predictions.text.category"] == ["Phones"] * 30


def test_what_is_not_a_log_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(FbmlError, match="no prediction log parts"):
        log_parts(tmp_path)
    (tmp_path / "predictions-20260101T000000-1-000001.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_prediction_log(tmp_path)
    pl.DataFrame({"other": [1]}).write_parquet(tmp_path / "predictions-20260101T000000-1-000001.parquet")
    with pytest.raises(InputError, match="not a prediction log part"):
        read_prediction_log(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FbmlError, match="not a folder"):
        check_log_folder(tmp_path / "file")
