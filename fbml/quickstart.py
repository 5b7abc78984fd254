"""``fbml quickstart``: the whole pipeline on the built-in sample marketplace, with a summary."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from fbml.images import clean_images
from fbml.pipeline import clean_tables, write_clean_tables
from fbml.sample import write_sample

QUICKSTART_IMAGE_SIZE = 224


def quickstart(out: Path, *, products: int = 650, seed: int = 0, image_size: int = QUICKSTART_IMAGE_SIZE) -> None:
    """Write the sample, clean its tables and photos into ``out``, and print what happened."""
    started = time.perf_counter()
    _step(f"1. sample marketplace ({products} products, seed {seed}) -> {out / 'sample'}")
    sample = write_sample(out / "sample", products=products, seed=seed, progress=True)

    _step(f"2. clean products and join images -> {out / 'clean'}")
    tables = clean_tables(sample.products_csv, sample.images_csv)
    write_clean_tables(tables, out / "clean")
    print(tables.summary())

    _step(f"3. clean photos to {image_size} px -> {out / 'images'}")
    report = clean_images(sample.image_dir, out / "images", size=image_size)
    print(f"photo files: {report.files.height} read, {report.cleaned} cleaned, {report.rejected} rejected")
    for reason, count in report.rejected_by_reason().items():
        print(f"  rejected {count:>6}  {reason}")
    usable = _photos_with_files(tables.manifest.images, out / "images")
    print(f"photos ready for training: {usable} of {tables.manifest.images.height} manifest rows")

    _step(f"done in {time.perf_counter() - started:.1f} s")


def _photos_with_files(manifest: pl.DataFrame, image_dir: Path) -> int:
    cleaned = {path.stem for path in image_dir.glob("*.jpg")}
    return int(manifest["image_id"].is_in(list(cleaned)).sum())


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)
