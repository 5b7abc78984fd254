"""The two baselines: honest figures on the product-level test split, from raw inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from fbml.tables.clean import clean_tables
from fbml.vision.cache import Photos
from fbml.workflows.baselines import image_baseline, price_baseline, run_baselines


def products(categories: list[str], prices: list[float]) -> pl.DataFrame:
    return pl.DataFrame({"category": categories, "price": prices})


def test_price_regression_learns_category_means_and_keeps_the_price_range() -> None:
    train = products(["a", "a", "b", "b", "c"], [10.0, 12.0, 100.0, 104.0, 5000.0])
    test = products(["a", "b", "b", "c"], [11.0, 102.0, 102.0, 2.0])
    result = price_baseline(train, test, price_range=(1.0, 1000.0))
    assert (result.train_products, result.test_products) == (4, 4)
    assert result.mae == pytest.approx(abs(11 - 11) / 4 + 0 + 0 + abs(2 - 56.5) / 4, abs=1e-6)
    assert result.rmse < result.mean_rmse


def photos(pixels: np.ndarray) -> Photos:
    count = len(pixels)
    return Photos(tuple(str(index) for index in range(count)), np.arange(count), pixels, pl.DataFrame())


def test_pixel_regression_beats_the_majority_on_separable_colours() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 120)
    pixels = rng.integers(0, 40, (120, 3, 4, 4), dtype=np.uint8)
    pixels[np.arange(120), labels] += 200
    result = image_baseline(photos(pixels[:80]), labels[:80], photos(pixels[80:]), labels[80:])
    assert result.accuracy > 0.9 > result.majority_rate
    assert (result.train_photos, result.test_photos, result.pixel_size, result.classes) == (80, 40, 4, 3)


def test_baselines_on_the_sample(sample, tmp_path) -> None:
    tables = clean_tables(sample.products_csv, sample.images_csv)
    result = run_baselines(tables, sample.image_dir, pixel_size=16, progress=False)
    assert result.image is not None
    assert result.image.accuracy > result.image.majority_rate
    assert result.price.rmse > 0
    assert "always the majority class" in result.table()


def test_baselines_command_prints_json(sample) -> None:
    command = [
        sys.executable, "-m", "fbml.cli", "baselines", "--products", str(sample.products_csv),
        "--images", str(sample.images_csv), "--image-dir", str(sample.image_dir), "--pixel-size", "8", "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert set(figures) == {"price", "image", "seed"}
    assert figures["image"]["accuracy"] > figures["image"]["majority_rate"]
    assert figures["price"]["rmse"] > 0 and figures["price"]["test_products"] > 0
