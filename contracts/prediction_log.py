"""The serving prediction log's format: ``fbml serve --log-predictions DIR`` writes Parquet parts named
``predictions-<UTC time>-<process id>-<sequence>.parquet``, one row per prediction with ``LOG_SCHEMA``'s columns:
when, the request's id, the predictor's role, the predicted category and its probability, the text's length in
characters and the photo's size in bytes (null where the request had none). No text and no photo is kept."""

from __future__ import annotations

import re

import polars as pl

LOG_SCHEMA = pl.Schema([
    ("time", pl.Datetime("us", "UTC")),
    ("request_id", pl.String),
    ("role", pl.String),
    ("category", pl.String),
    ("confidence", pl.Float64),
    ("text_length", pl.Int64),
    ("photo_bytes", pl.Int64),
])
PART_NAME = re.compile(r"predictions-\d{8}T\d{6}-\d{1,10}-\d{6}\.parquet")
