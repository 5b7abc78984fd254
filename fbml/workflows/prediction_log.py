"""Reading the serving prediction log (its format: ``contracts.prediction_log``) back as ``Observations`` for
``fbml monitor --predictions``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from contracts.prediction_log import LOG_SCHEMA, PART_NAME

from fbml.errors import FbmlError, InputError
from fbml.workflows.profiling import Observations

MAX_LOG_ROWS = 10_000_000


def log_parts(directory: Path) -> list[Path]:
    """The log's parts in ``directory``, oldest first; ``FbmlError`` when it is no folder or holds none."""
    if not directory.is_dir():
        raise FbmlError(f"{directory}: no such prediction log folder" if not directory.exists() else f"{directory}: not a folder")
    parts = sorted(path for path in directory.iterdir() if PART_NAME.fullmatch(path.name) and path.is_file() and not path.is_symlink())
    if not parts:
        raise FbmlError(f"{directory}: holds no prediction log parts (predictions-*.parquet written by `fbml serve --log-predictions`)")
    return parts


def read_prediction_log(directory: Path) -> pl.DataFrame:
    """Every row of the log's parts; ``InputError`` naming a part that is not one (unreadable, other columns)."""
    frames = []
    rows = 0
    for part in log_parts(directory):
        try:
            frame = pl.read_parquet(part)
        except (OSError, pl.exceptions.PolarsError) as error:
            raise InputError(part, f"not a readable Parquet file ({str(error).splitlines()[0]})") from None
        if frame.schema != LOG_SCHEMA:
            raise InputError(part, f"not a prediction log part: columns {dict(frame.schema)}, expected {dict(LOG_SCHEMA)}")
        rows += frame.height
        if rows > MAX_LOG_ROWS:
            raise InputError(directory, f"over {MAX_LOG_ROWS} logged predictions; monitor a folder of fewer parts")
        frames.append(frame)
    return pl.concat(frames)


def logged_observations(log: pl.DataFrame) -> Observations:
    """Each role's predicted classes and confidence, the texts' lengths and the photos' sizes, as features."""
    numeric: dict[str, np.ndarray] = {
        "text.length": log["text_length"].drop_nulls().to_numpy().astype(np.float64),
        "photos.bytes": log["photo_bytes"].drop_nulls().to_numpy().astype(np.float64),
    }
    categorical: dict[str, list[str]] = {}
    for (role,), rows in log.group_by("role"):
        numeric[f"predictions.{role}.confidence"] = rows["confidence"].to_numpy().astype(np.float64)
        categorical[f"predictions.{role}.category"] = rows["category"].to_list()
    return Observations(numeric, categorical).scaled()
